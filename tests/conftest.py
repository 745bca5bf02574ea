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


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """A temporary Prefect API (SQLite in a temp folder) for the tests that run flows;
    returns its URL. Starting it migrates a fresh database (~30 s), once per session.

    PREFECT_HOME goes to a temp folder unless the environment sets it; telemetry is off.
    """
    import os

    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    home = os.environ.get("PREFECT_HOME") or str(tmp_path_factory.mktemp("prefect-home"))
    updates = {
        prefect.settings.PREFECT_HOME: home,
        prefect.settings.PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    with prefect.settings.temporary_settings(updates=updates), prefect_test_harness(
        server_startup_timeout=300
    ):
        yield prefect.settings.PREFECT_API_URL.value()
