"""What ``bigcos run`` shows while it works.

On a terminal: one line, redrawn twice a second, with the job's stage count, the running
stage's name, its own progress (Dask tasks done/total: from the scheduler with a
``distributed.Client``, from the local scheduler's callbacks on threads), the elapsed time
and an estimate of the remaining time. Elsewhere (cron, a log file, ``--no-progress``): one
line per stage, ``dataset/stage ran in 12.3 s`` or ``dataset/stage skipped (complete)``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

PLUGIN_NAME = "bigcos-task-counter"


class _LocalCounter:
    """Tasks submitted/finished on Dask's local schedulers (threads) in this process."""

    def __init__(self) -> None:
        from dask.callbacks import Callback

        counter = self
        self.total = self.done = 0

        class _Hook(Callback):
            def _start(self, dsk):
                counter.total += len(dsk)

            def _posttask(self, key, result, dsk, state, worker_id):
                counter.done += 1

        self._hook = _Hook()
        self._hook.register()

    def counts(self) -> tuple[int, int]:
        return self.done, self.total

    def close(self) -> None:
        self._hook.unregister()


def _scheduler_plugin():
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskCounter(SchedulerPlugin):
        """Counts tasks entering the scheduler and finishing (a recomputed task counts again)."""

        name = PLUGIN_NAME

        def __init__(self) -> None:
            self.total = self.done = 0

        def transition(self, key, start, finish, *args, **kwargs):
            if start == "released" and finish != "forgotten":
                self.total += 1
            elif finish in ("memory", "erred"):
                self.done += 1

    return TaskCounter()


class _ClientCounter:
    """Tasks submitted/finished on a ``distributed`` scheduler, read from a scheduler plugin
    (no counts where the plugin cannot be installed, e.g. a scheduler without bigcos)."""

    def __init__(self, client) -> None:
        self.client = client
        try:
            client.register_plugin(_scheduler_plugin())
            self.ok = True
        except Exception:  # noqa: BLE001 - any failure only loses the task counts
            self.ok = False

    def counts(self) -> tuple[int, int] | None:
        if not self.ok:
            return None
        try:
            return tuple(self.client.run_on_scheduler(  # a lambda: pickled by value
                lambda dask_scheduler: (dask_scheduler.plugins[PLUGIN_NAME].done,
                                        dask_scheduler.plugins[PLUGIN_NAME].total)))
        except Exception:  # noqa: BLE001
            return None

    def close(self) -> None:
        if self.ok:
            with contextlib.suppress(Exception):
                self.client.unregister_scheduler_plugin(PLUGIN_NAME)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class JobProgress:
    """Progress of a run of ``n_stages`` stages; ``bar``: the redrawn line, else stage lines.

    Call :meth:`start` before each stage, :meth:`finish` after it, :meth:`close` at the end.
    """

    def __init__(self, n_stages: int, bar: bool, echo: Callable[[str], None] = print,
                 client=None, stream: TextIO | None = None) -> None:
        self.n_stages, self.bar, self.echo = n_stages, bar, echo
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()
        self.finished = 0
        self.label = ""
        self.stage_counts = (0, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counter: Any = None
        if bar:
            self.counter = _LocalCounter() if client is None else _ClientCounter(client)
            self._thread = threading.Thread(target=self._redraw_loop, daemon=True,
                                            name="bigcos progress")
            self._thread.start()

    def _counts(self) -> tuple[int, int] | None:
        return None if self.counter is None else self.counter.counts()

    def start(self, label: str) -> None:
        with self._lock:
            self.label = label
            self.stage_counts = self._counts() or (0, 0)
        if self.bar:
            self._draw()

    def finish(self, label: str, seconds: float | None) -> None:
        """``seconds`` None: the stage was skipped (complete)."""
        with self._lock:
            self.finished += 1
        if not self.bar:
            self.echo(f"{label} skipped (complete)" if seconds is None
                      else f"{label} ran in {seconds:.1f} s")

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        fraction_of_stage, tasks = 0.0, ""
        counts = self._counts()
        if counts is not None:
            done, total = (c - s for c, s in zip(counts, self.stage_counts, strict=True))
            if total > 0:
                fraction_of_stage = min(done / total, 1.0)
                tasks = f" {done}/{total} tasks"
        done_fraction = (self.finished + fraction_of_stage) / max(self.n_stages, 1)
        left = (f"~{_clock(elapsed * (1 - done_fraction) / done_fraction)} left"
                if done_fraction > 0.02 else "")
        width = 20
        filled = int(width * done_fraction)
        return (f"bigcos run [{'#' * filled}{'-' * (width - filled)}] "
                f"{min(self.finished + 1, self.n_stages)}/{self.n_stages} {self.label}{tasks}"
                f"  {_clock(elapsed)} elapsed {left}").rstrip()

    def _redraw_loop(self) -> None:
        while not self._stop.wait(0.5):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()

    def close(self) -> None:
        """Stop redrawing and clear the line (the caller prints the summary)."""
        if not self.bar:
            return
        self._stop.set()
        self._thread.join()
        self.counter.close()
        self.stream.write("\r\x1b[K")
        self.stream.flush()
