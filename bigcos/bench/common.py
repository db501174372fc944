"""Measuring wall time and peak memory of one call, and printing comparison tables.

Peers run in the same process as bigcos, one after another. Peak memory of a call is measured
as the peak of the process's resident set size (sampled every few milliseconds from
``/proc/self/statm`` by a background thread) minus the RSS when the call started, so it is the
extra memory that call needed.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import click

_PAGE = os.sysconf("SC_PAGE_SIZE")


def json_option(f):
    """``--json PATH``: every benchmark can also write its figures (and context) as JSON."""
    return click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                        help="Also write the figures as JSON.")(f)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


@dataclass
class Measurement:
    name: str
    seconds: float
    peak_extra_rss_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        d["peak_extra_rss_mib"] = round(self.peak_extra_rss_bytes / 2**20, 1)
        return d


def measure(name: str, fn: Callable[[], Any], interval: float = 0.005) -> tuple[Measurement, Any]:
    """Run ``fn()`` once; return its wall time, peak extra RSS and result."""
    gc.collect()
    base = rss_bytes()
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
    peak = max(peak, rss_bytes())
    return Measurement(name, round(seconds, 4), peak - base), result


def report(title: str, rows: list[dict[str, Any]], json_path: str | None = None,
           context: dict[str, Any] | None = None) -> None:
    """Print ``rows`` as an aligned table and optionally write them (with context) as JSON."""
    click.echo(f"\n{title}")
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r if k != "peak_extra_rss_bytes"))
        widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
        click.echo("  ".join(c.ljust(widths[c]) for c in cols))
        for r in rows:
            click.echo("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"title": title, "context": context or {}, "rows": rows}, fh, indent=2)
        click.echo(f"wrote {json_path}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
