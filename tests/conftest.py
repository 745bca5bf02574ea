"""Shared fixtures: the real MRMS sample files and the presets."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MRMS_DAY = SHARED_DATA / "mrms" / "2019" / "06" / "10"


@pytest.fixture(scope="session")
def mrms_files() -> list[Path]:
    """The 25 real MRMS PrecipRate GRIB2 files, sorted by time; skips when absent."""
    files = sorted(MRMS_DAY.glob("PrecipRate_00.00_*.grib2"))
    if not files:
        pytest.skip(f"real MRMS sample data not found under {MRMS_DAY.resolve()}")
    return files
