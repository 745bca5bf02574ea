"""``metnet ingest`` on real MRMS files: summary, idempotent skips, failures reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from metnet.archive import RATE, Archive
from metnet.cli import app
from metnet.config import GridConfig
from metnet.sources import get_source

#: 64 x 64 km over central Texas, where the sample files hold heavy rain.
TEXAS = {"x_min_m": -264_000.0, "y_max_m": 832_000.0, "nx": 64, "ny": 64}
T0 = np.datetime64("2019-06-10T00:00", "ns")
MIN = np.timedelta64(1, "m")


@pytest.fixture
def grid_file(tmp_path) -> Path:
    path = tmp_path / "texas.yaml"
    path.write_text(yaml.safe_dump({"grid": TEXAS}))
    return path


def ingest(*args: str):
    result = CliRunner().invoke(app, ["ingest", "--source", "mrms", "--no-progress", *args])
    return result, result.stdout + result.stderr


def store_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_ingest_real_files_then_skip_then_overwrite(tmp_path, mrms_files, grid_file):
    store = str(tmp_path / "archive.zarr")
    period = ["--start", "2019-06-10T00:00", "--end", "2019-06-10T00:04"]
    args = ["--input", str(mrms_files[0].parent), "--archive", store, *period]
    result, out = ingest(*args, "--grid-config", str(grid_file))
    assert result.exit_code == 0, out
    for line in (
        "files found:   3",
        "files read:    3",
        "times written: 3 (2019-06-10T00:00 .. 2019-06-10T00:04)",
        "skipped:       0",
        "failed:        0",
        "static fields: latitude, longitude",
    ):
        assert line in out, out

    archive = Archive.open(store)
    assert archive.grid_config == GridConfig(**TEXAS)
    np.testing.assert_array_equal(
        archive.available_times("precipitation_rate"), T0 + np.array([0, 2, 4]) * MIN
    )
    # What landed is what the MRMS reader makes of the file, to the quantisation step.
    expected = get_source("mrms").read(str(mrms_files[1]), archive.grid)["precipitation_rate"][0].values
    got = archive.read("precipitation_rate", [T0 + 2 * MIN], 0, 0, 64)[0]  # (64, 64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.nanmax(np.abs(got - expected)) <= RATE.scale_factor / 2 + 1e-5
    assert np.nanmax(got) > 20.0  # the heavy rain is there
    lat, _ = archive.grid.lat_lon()
    np.testing.assert_array_equal(archive.read_static("latitude", 0, 0, 64), lat.astype(np.float32))

    before = store_bytes(Path(store))
    result, out = ingest(*args)  # again: every slot is there, nothing is decoded
    assert result.exit_code == 0, out
    assert "files read:    0" in out and "skipped:       3" in out and "times written: 0" in out
    result, out = ingest(*args, "--overwrite")
    assert result.exit_code == 0, out
    assert "files read:    3" in out and "skipped:       0" in out
    assert store_bytes(Path(store)) == before  # rewriting is idempotent


def test_corrupt_file_is_reported_and_the_good_ones_still_land(tmp_path, mrms_files, grid_file):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for good in mrms_files[:2]:  # 00:00 and 00:02
        (folder / good.name).symlink_to(good)
    corrupt = folder / "PrecipRate_00.00_20190610-000400.grib2"
    corrupt.write_bytes(mrms_files[2].read_bytes()[:20_000])  # truncated mid-message
    store = str(tmp_path / "archive.zarr")

    result, out = ingest("--input", str(folder), "--archive", store, "--grid-config", str(grid_file))
    assert result.exit_code == 1, out
    assert "files found:   3" in out and "files read:    2" in out and "failed:        1" in out
    assert f"{corrupt}: " in out and "GRIB2" in out  # the reader's reason, naming the file
    archive = Archive.open(store)
    np.testing.assert_array_equal(
        archive.available_times("precipitation_rate"), T0 + np.array([0, 2]) * MIN
    )
    assert np.isnan(archive.read("precipitation_rate", [T0 + 4 * MIN], 0, 0, 64)).all()


def test_user_errors_are_reported_with_exit_code_1(tmp_path, grid_file):
    store = str(tmp_path / "archive.zarr")
    result, out = ingest("--input", str(tmp_path), "--archive", store)
    assert result.exit_code == 1
    assert f"error: {store}: no archive there" in out and "give --grid-config or --preset" in out

    result, out = ingest(
        "--input", str(tmp_path), "--archive", store, "--grid-config", str(grid_file), "--preset", "tiny"
    )
    assert result.exit_code == 1 and "give either --grid-config or --preset, not both" in out

    result = CliRunner().invoke(
        app, ["ingest", "--source", "radar", "--input", ".", "--archive", store, "--preset", "tiny"]
    )
    assert result.exit_code == 1 and "unknown source 'radar'; valid sources: mrms" in result.stderr
    assert not Path(store).exists()  # checked before anything is created

    result, out = ingest("--input", ".", "--archive", store, "--start", "yesterday")
    assert result.exit_code == 2 and "not a time: 'yesterday'" in out

    # An empty archive with the Texas grid; then another grid is refused, naming the keys.
    missing = tmp_path / "no-such-folder"
    result, out = ingest("--input", str(missing), "--archive", store, "--grid-config", str(grid_file))
    assert result.exit_code == 1
    assert "failed:        1" in out and f"{missing}: " in out and "no such file or folder" in out
    result, out = ingest("--input", str(tmp_path), "--archive", store, "--preset", "tiny")
    assert result.exit_code == 1
    assert "different grid" in out and "grid.nx: store 64, requested 128" in out


def test_synthetic_rerun_skips_every_file_without_decoding(tmp_path):
    """Sources that declare a fixed ``variables`` tuple are skipped by name alone."""
    from metnet.ingest import expected_variables, ingest as ingest_files

    source = get_source("synthetic", seed=3, variables=("precipitation_rate",))
    path = "synthetic://seed=3/2019-06-10T00:02:00"
    assert expected_variables(source, path) == ("precipitation_rate",)
    archive = Archive.create(str(tmp_path / "a.zarr"), GridConfig(nx=32, ny=32, x_min_m=0.0))
    period = (T0, T0 + 4 * MIN)
    first = ingest_files(archive, source, ["synthetic://seed=3"], start=period[0], end=period[1])
    assert first.times_written.size == 3 and first.files_read == 3 and first.ok
    again = ingest_files(archive, source, ["synthetic://seed=3"], start=period[0], end=period[1])
    assert len(again.skipped) == 3 and again.files_read == 0
