"""Shared fixtures: the bundled dataset, the team's shared datasets (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "ml-latest-small"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def bundled_log() -> Path:
    return BUNDLED / "interactions.parquet"


@pytest.fixture(scope="session")
def bundled_items() -> Path:
    return BUNDLED / "items.parquet"


def shared_dataset(name: str) -> Path:
    """Path of ../shared/data/NAME, or skip the test where that folder is absent."""
    path = SHARED_DATA / name
    if not (path / "interactions.parquet").exists():
        pytest.skip(f"{path} not present (datasets that may not be redistributed live there)")
    return path
