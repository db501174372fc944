"""``bigcos bench``: benchmarks with the peers a user would pick instead, in one process."""

from __future__ import annotations

import importlib

import click

# (module in bigcos.bench, attribute): one entry per benchmark command.
BENCHMARKS = [
    ("ingest", "ingest"),
    ("svd", "svd"),
    ("simulate", "simulate"),
    ("fit", "fit"),
    ("neighbors", "neighbors"),
    ("metrics", "metrics_bench"),
    ("overhead", "overhead"),
    ("audit", "audit_bench"),
    ("scale", "scale"),
]


@click.group()
def bench() -> None:
    """Benchmarks of bigcos beside its peers, run side by side in this process.

    Each prints a table and can write its figures as JSON (--json). Peers that are not
    installed (pip install 'bigcos[bench]') are reported as absent.
    """


for _module, _attr in BENCHMARKS:
    bench.add_command(getattr(importlib.import_module(f"bigcos.bench.{_module}"), _attr))
