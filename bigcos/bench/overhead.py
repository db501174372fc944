"""``bigcos bench overhead``: what a single command costs beyond the work it records.

Each command runs as a user would run it, in a fresh process (``python -m bigcos ...``), on the
bundled ml-latest-small. Its wall time is measured from outside; the work time is the ``total``
its manifest records (``timings_s``), so the difference is interpreter start, imports, option
parsing, input checks and writing: the overhead a user waits for on top of the work. ``bigcos
similar`` writes no manifest: all of its time counts as overhead. The peer is ``python -c
pass`` (an interpreter that does nothing), run the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from bigcos.bench.common import json_option, report

GOAL_S = 3.0  # issue 12: at most 3 s beyond the recorded work per command


def _run(args: list[str], cwd: Path) -> float:
    """Wall seconds of ``python -m bigcos ARGS`` (or of ``python ARGS`` for the peer)."""
    cmd = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "bigcos", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise click.ClickException(f"{' '.join(args)} failed: {done.stderr.strip()[-300:]}")
    return seconds


def _work(directory: Path) -> float | None:
    manifest = directory / "manifest.json"
    if not manifest.exists():
        manifest = directory / "_manifest.json"
    return json.loads(manifest.read_text())["timings_s"]["total"]


def commands(data: Path) -> list[tuple[str, list[str], str | None]]:
    """(label, arguments, output directory whose manifest records the work) per command."""
    return [
        ("ingest", ["ingest", str(data / "interactions.parquet"), "--out", "matrix",
                    "--threshold", "4", "--min-user", "5", "--min-item", "5", "--split", "users",
                    "--items", str(data / "items.parquet")], "matrix"),
        ("fit --all (λ validated)", ["fit", "matrix", "--out", "models", "--all"], "models"),
        ("fit --model als", ["fit", "matrix", "--out", "als", "--model", "als"], "als"),
        ("neighbors", ["neighbors", "models/obj1-symmetric", "models/obj2", "--out",
                       "neighbors"], "neighbors"),
        ("similar", ["similar", "models/obj1-symmetric", "--item-id", "1", "-N", "10"], None),
        ("report", ["report", "--matrix", "matrix", "--model", "models/obj1-symmetric",
                    "--model", "models/obj2", "--neighbors", "neighbors", "--out", "report"],
         "report"),
    ]


@click.command("overhead")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of the whole sequence (each in a fresh directory); the fastest counts.")
@json_option
def overhead(repeat, json_path):
    """Single commands on the bundled data: wall time, recorded work and overhead.

    \b
    Example:
      bigcos bench overhead --repeat 2 --json bench-overhead.json
    """
    from bigcos.pipeline import bundled_data

    data = bundled_data()
    best: dict[str, dict] = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bigcos-bench-overhead-") as tmp:
            cwd = Path(tmp)
            rows = [("python -c pass (peer)", _run(["-c", "pass"], cwd), 0.0)]
            for label, args, out in commands(data):
                wall = _run(args, cwd)
                rows.append((label, wall, _work(cwd / out) if out else 0.0))
            for label, wall, work in rows:
                row = {"command": label, "wall_s": round(wall, 3), "work_s": round(work, 3),
                       "overhead_s": round(wall - work, 3)}
                if label not in best or row["wall_s"] < best[label]["wall_s"]:
                    best[label] = row
    out_rows = [{**r, "within_goal": r["overhead_s"] <= GOAL_S} for r in best.values()]
    report(f"Overhead beyond recorded work, bundled ml-latest-small (goal <= {GOAL_S:g} s)",
           out_rows, json_path, {"repeat": repeat, "load_average": os.getloadavg(),
                                 "python": sys.version.split()[0]})
