"""Shared fixtures: the bundled dataset, the team's shared datasets (skipped where absent).

Tests that read the shared datasets carry the ``realdata`` marker, so ``pytest -m "not
realdata"`` runs exactly the tests that need nothing outside the repository. A test that
takes the ``shared_data`` fixture is marked automatically; one that calls
:func:`shared_dataset` directly needs ``@pytest.mark.realdata`` itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "ml-latest-small"
# the team's datasets: ../shared/data beside the repository (override: $BIGCOS_SHARED_DATA,
# e.g. from a git worktree elsewhere)
SHARED_DATA = Path(os.environ.get("BIGCOS_SHARED_DATA") or ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def bundled_log() -> Path:
    return BUNDLED / "interactions.parquet"


@pytest.fixture(scope="session")
def bundled_items() -> Path:
    return BUNDLED / "items.parquet"


def shared_data_dir() -> Path:
    """The shared datasets directory, or skip the calling test (with where it looked)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"realdata: {SHARED_DATA} not present (the team's datasets, which may "
                    "not be redistributed; set BIGCOS_SHARED_DATA to point elsewhere)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` relative to the repository; the test is skipped where it is absent
    and carries the ``realdata`` marker (see :func:`pytest_collection_modifyitems`)."""
    return shared_data_dir()


def shared_dataset(name: str) -> Path:
    """Path of ../shared/data/NAME, or skip the test where that dataset is absent."""
    path = shared_data_dir() / name
    if not (path / "interactions.parquet").exists():
        pytest.skip(f"realdata: {path / 'interactions.parquet'} not present")
    return path


def pytest_collection_modifyitems(config, items):
    """Mark every test that takes the ``shared_data`` fixture ``realdata``."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


def stop_processes(procs) -> None:
    """Terminate the processes a test started (``dask scheduler`` / ``dask worker``), last
    first, and kill those still alive after 10 s."""
    import subprocess

    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
