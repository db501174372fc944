"""The maths layer is pure numpy/scipy: it imports nothing of Dask, distributed or IO.

Each module is imported alone in a fresh interpreter (imports already made by pytest or by
other tests cannot hide one), and the test lists what it pulled in.
"""

import json
import subprocess
import sys

import pytest

MATHS = ["bigcos.closed_form", "bigcos.column_remedies", "bigcos.krylov", "bigcos.dense",
         "bigcos.topn", "bigcos.symmetric_topn", "bigcos.blocked_topn", "bigcos.metrics",
         "bigcos.evaluation", "bigcos.validation", "bigcos.cosine_model", "bigcos.stats",
         "bigcos.options", "bigcos.canonical"]
FORBIDDEN = ("dask", "distributed", "bigcos.io", "pyarrow.dataset", "bigcos.cluster",
             "bigcos.pipeline")


def _forbidden_imports(module: str) -> list[str]:
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"('dask', 'distributed', 'bigcos', 'pyarrow'))))")
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


@pytest.mark.parametrize("module", MATHS)
def test_maths_module_imports_no_dask_and_no_io(module):
    assert not _forbidden_imports(module), module


def test_the_probe_sees_a_driver_module_import_io():
    """The same probe on the Dask driver of neighbour lists reports its IO imports."""
    assert "bigcos.io" in _forbidden_imports("bigcos.neighbor_lists")
