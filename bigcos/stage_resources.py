"""What one stage of ``bigcos run`` cost: wall time, peak memory of each process, bytes written.

Recorded by :mod:`bigcos.pipeline` per stage in the run manifest (``<out>/manifest.json``,
section ``resources``)::

    "resources": {"<dataset>/<stage>": {
        "seconds": 12.3,                    # wall time of the stage
        "bytes_written": 123456,            # size of the stage's output directory when done
        "peak_rss_bytes": {"client": 456789012,          # the process that ran the stage
                           "workers": {"tcp://..": 1234, ...}}}}   # each Dask worker

Peak RSS is the kernel's high-water mark of the process (``VmHWM`` of ``/proc/<pid>/status``),
reset at the start of the stage by writing 5 to ``/proc/<pid>/clear_refs``; where that reset
is not allowed (or outside Linux), the peak since the process started
(``peak_rss_since: "process start"`` instead of ``"stage start"``). On threads, "client" is the
process that ran the stage (the ``bigcos run`` process, or with stages side by side the
stage's own worker process) and there are no workers; on a Dask cluster, "client" is the
``bigcos run`` process and "workers" every worker of the cluster, each sampled once when the
stage ends (a worker restarted during the stage reports the peak of its new process; when the
workers cannot be asked, they are left out and ``workers_not_measured`` names the error).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bigcos import storage


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window for this process; False where the kernel does not allow it
    (the peak then counts from the process start)."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes since :func:`reset_peak_rss` (or its
    start); the current RSS where ``/proc`` has no high-water mark."""
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


def directory_bytes(directory: Path | storage.StorePath) -> int:
    """Total size in bytes of the files below ``directory`` (local or in a store); 0 when it
    does not exist."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem_and_path(directory)
    fs = fs or pafs.LocalFileSystem()
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


class StageMeter:
    """Measure one stage run here (``client`` None: threads in this process; else also every
    worker of ``client``'s cluster). Use as a context manager around the stage, then
    :meth:`record` with its output directory."""

    def __init__(self, client: Any = None) -> None:
        self.client = client
        self.seconds = 0.0
        self.windowed = True
        self.client_peak = 0
        self.worker_peaks: dict[str, int] = {}

    def __enter__(self) -> StageMeter:
        self.windowed = reset_peak_rss()
        self.worker_error: str | None = None
        if self.client is not None:
            self.windowed &= all(self._on_workers(reset_peak_rss).values())
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.client_peak = peak_rss_bytes()
        if self.client is not None and exc[0] is None:
            self.worker_peaks = self._on_workers(peak_rss_bytes)

    def _on_workers(self, fn) -> dict:
        """``client.run(fn)``; measuring never fails a run: a worker that cannot answer (lost,
        or stopping on Ctrl-C) leaves the workers' peaks out and the error named."""
        try:
            return dict(self.client.run(fn))
        except Exception as exc:  # noqa: BLE001 - any failure only loses the figures
            self.worker_error = type(exc).__name__
            return {}

    def record(self, directory: Path | storage.StorePath) -> dict:
        """The stage's entry of the run manifest's ``resources`` (see the module docstring)."""
        record = stage_record(self.seconds, directory, self.client_peak, self.worker_peaks,
                              self.windowed)
        if self.worker_error is not None:
            record["workers_not_measured"] = self.worker_error
        return record


def stage_record(seconds: float, directory: Path | storage.StorePath, client_peak: int,
                 worker_peaks: dict[str, int], windowed: bool) -> dict:
    """One stage's resources entry: its wall time, bytes below ``directory`` and peaks."""
    return {"seconds": round(seconds, 3), "bytes_written": directory_bytes(directory),
            "peak_rss_bytes": {"client": int(client_peak),
                               "workers": {str(k): int(v) for k, v in worker_peaks.items()}},
            "peak_rss_since": "stage start" if windowed else "process start"}
