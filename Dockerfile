# The image of jobs/templates/kubernetes-cronjob.yaml: bigcos installed as the README installs
# it (`pip install .`), with every runtime dependency pinned by constraints.txt (the versions
# the test suite passed with; regenerate: python jobs/templates/pin_constraints.py).
#
#   docker build -t bigcos:latest .
#   docker run --rm bigcos:latest bigcos run --show
#
# Push it to a registry your cluster pulls from and use that name in the template.
FROM python:3.11-slim

# OpenMP for implicit's ALS; one BLAS thread per worker process (Dask workers set it too)
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY bigcos ./bigcos
COPY data ./data
COPY jobs ./jobs
RUN pip install -c constraints.txt . && rm -rf /src/build

# not root: the job pod and the Dask pods write only to their mounted volumes
RUN useradd --create-home --uid 1000 bigcos
USER bigcos
WORKDIR /home/bigcos
CMD ["bigcos", "--help"]
