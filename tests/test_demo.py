"""``metnet demo`` end to end (synthetic data, a few training steps) through the Prefect
flows, against the session's temporary Prefect API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from metnet.archive import Archive
from metnet.checkpoint import load_checkpoint
from metnet.cli import app
from pipelines.demo import DEMO_PRODUCTS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def test_demo_runs_end_to_end_and_reruns_reuse_the_outputs(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--root", str(tmp_path), "--steps", "3"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "metnet demo finished in" in out
    assert f"61 synthetic times in {tmp_path / 'archive' / 'demo.zarr'}" in out
    assert "tiny MetNet, 3 training steps" in out

    archive = Archive.open(str(tmp_path / "archive" / "demo.zarr"))
    assert set(archive.variables) == {"precipitation_rate", "abi_c13"}
    assert archive.available_times("precipitation_rate").size == 61
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "demo" / "latest.pt")
    assert ckpt.extra["step"] == 3 and ckpt.config.grid == archive.grid_config

    store = tmp_path / "outputs" / "demo" / "forecasts" / "20190610T0200Z.zarr"
    assert f"forecast:    from 2019-06-10T02:00 UTC -> {store}" in out
    with xr.open_zarr(store, consolidated=False) as ds:
        prob = ds["probability_of_precipitation_rate_above_threshold"].values
        assert ds.sizes["y"] == ds.sizes["x"] == 128  # the whole tiny grid
        assert np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()
    maps = tmp_path / "outputs" / "demo" / "maps" / "20190610T0200Z"
    files = json.loads((maps / "manifest.json").read_text())["files"]
    leads = len(ckpt.config.task.lead_times)  # 6
    assert {k: len(v) for k, v in files.items()} == {
        "netcdf": 1, "cog": leads * len(DEMO_PRODUCTS), "png": leads * len(DEMO_PRODUCTS),
        "gif": len(DEMO_PRODUCTS),
    }  # fmt: skip
    assert all((maps / name).stat().st_size > 0 for names in files.values() for name in names)
    for line in ("netcdf 1 file(s)", "cog    12 file(s)", "png    12 file(s)", "gif    2 file(s)"):
        assert line in out

    # Again: ingest finds everything, training is complete, the forecast is done.
    mtime = (maps / "manifest.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["demo", "--root", str(tmp_path), "--steps", "3"])
    assert again.exit_code == 0, again.output
    assert "61 synthetic times" in again.output
    assert (maps / "manifest.json").stat().st_mtime_ns == mtime
