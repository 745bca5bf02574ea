"""Forecasts over a domain: store format, stitching, tile batches, degraded mode, errors.

One ``tiny`` synthetic archive (128 x 128 km, 8 km target tiles) and an untrained
``tiny`` model serve every test; its random weights still give distinct distributions
per pixel and lead time, which is all that stitching and batching tests need.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from metnet import bins
from metnet.archive import Archive
from metnet.checkpoint import save_checkpoint
from metnet.cli import app
from metnet.config import GridConfig, config_from_dict, preset
from metnet.dataset import compute_normalization
from metnet.export import open_forecast
from metnet.forecast import (
    Domain,
    ForecastError,
    domain_of,
    forecast,
    lonlat_bbox,
)
from metnet.grid import Grid
from metnet.nn import MetNet
from metnet.products import BIN_PROBABILITY, MEAN, PROBABILITY, QUANTILE
from metnet.sources.static import StaticSource
from metnet.sources.synthetic import synthetic_dataset
from tests.archive_fixtures import T0, make_archive

MIN = np.timedelta64(1, "m")
CONFIG = preset("tiny")
GRID = Grid(CONFIG.grid)
T_FORECAST = T0 + 10 * MIN  # the first time with a full history (10 min)
LEADS = [2, 6, 12]
#: Four tiles: rows 8..23, columns 16..31 (tile lattice of 8 px).
BBOX = (16_000.0, 1_600_000.0 - 24_000.0, 32_000.0, 1_600_000.0 - 8_000.0)


def make_checkpoint(path, archive, config):
    """An untrained model of ``config`` with the archive's normalisation, saved at ``path``."""
    save_checkpoint(path, MetNet(config), config, compute_normalization(archive, config.task, max_times=4))
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("forecast_archive"))


@pytest.fixture(scope="module")
def checkpoint(archive, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", archive, CONFIG)


@pytest.fixture(scope="module")
def stitched(archive, checkpoint, tmp_path_factory):
    """The 2 x 2 tile forecast, all tiles in one batch, every lead in one pass."""
    out = tmp_path_factory.mktemp("stitched") / "forecast.zarr"
    forecast(archive, checkpoint, T_FORECAST, out, bbox=BBOX, lead_times=LEADS, keep_distribution=True,
             batch_tiles=4, lead_chunk=None)  # fmt: skip
    return xr.open_zarr(out, consolidated=False).load()


# ----------------------------------------------------------------------------- domain


def test_domain_snaps_to_the_tile_lattice_and_clips_to_the_grid():
    assert domain_of(GRID, 8) == Domain(0, 0, 128, 128)
    assert domain_of(GRID, 8, BBOX) == Domain(8, 16, 16, 16)
    # One metre into a tile takes the whole tile; a box hanging over the west edge is cut.
    inside = (16_001.0, 1_599_999.0 - 16_000, 16_002.0, 1_599_999.0 - 15_999)
    assert domain_of(GRID, 8, inside) == Domain(16, 16, 8, 8)
    assert domain_of(GRID, 8, (-50_000.0, 1_500_000.0, 3_000.0, 1_700_000.0)) == Domain(0, 0, 104, 8)
    # A grid that is not a whole number of tiles: the last tiles overhang and are cut.
    odd = Grid(dataclasses.replace(CONFIG.grid, nx=20, ny=12))
    domain = domain_of(odd, 8)
    assert domain == Domain(0, 0, 12, 20)
    assert domain.locate(8, 16, 8) == (slice(8, 12), slice(16, 20))


def test_domain_grid_and_lonlat_bbox_agree_with_the_grid():
    domain = domain_of(GRID, 8, BBOX)
    sub = domain.grid(GRID)
    np.testing.assert_array_equal(sub.x, GRID.x[16:32])
    np.testing.assert_array_equal(sub.y, GRID.y[8:24])
    lat, lon = GRID.lat_lon()
    box = lonlat_bbox(GRID, (lon.min(), lat.min(), lon.max(), lat.max()))
    # The lon/lat box of every cell centre contains all centres (projected back).
    assert box[0] <= GRID.x[0] and box[2] >= GRID.x[-1] and box[1] <= GRID.y[-1] and box[3] >= GRID.y[0]
    assert domain_of(GRID, 8, box) == Domain(0, 0, 128, 128)


def test_bad_boxes_are_refused_with_the_grid_extent():
    with pytest.raises(ForecastError, match=r"lies outside the grid, which spans x 0 \.\. 128000 m"):
        domain_of(GRID, 8, (200_000.0, 0.0, 300_000.0, 100.0))
    with pytest.raises(ForecastError, match="need x0 < x1 and y0 < y1"):
        domain_of(GRID, 8, (10.0, 0.0, 5.0, 100.0))
    with pytest.raises(ForecastError, match="four"):
        domain_of(GRID, 8, (1.0, 2.0, 3.0))
    with pytest.raises(ForecastError, match="need lon0 < lon1 and lat0 < lat1"):
        lonlat_bbox(GRID, (-100.0, 40.0, -99.0, 30.0))
    with pytest.raises(ForecastError, match="latitudes must lie in -90 .. 90"):
        lonlat_bbox(GRID, (-100.0, 40.0, -99.0, 95.0))


# ----------------------------------------------------------------------------- the store


def test_forecast_store_has_the_contract_format(stitched):
    ds = stitched
    assert ds.sizes == {"threshold": 6, "lead_time": 3, "y": 16, "x": 16, "quantile": 2, "bin": 512}
    assert ds[PROBABILITY].dims == ("threshold", "lead_time", "y", "x")
    assert ds[QUANTILE].dims == ("quantile", "lead_time", "y", "x")
    assert ds[MEAN].dims == ("lead_time", "y", "x")
    assert ds[BIN_PROBABILITY].dims == ("lead_time", "bin", "y", "x")
    np.testing.assert_array_equal(ds["x"], GRID.x[16:32])
    np.testing.assert_array_equal(ds["y"], GRID.y[8:24])
    lat, lon = GRID.lat_lon()
    np.testing.assert_allclose(ds["latitude"], lat[8:24, 16:32])
    np.testing.assert_allclose(ds["longitude"], lon[8:24, 16:32])
    assert ds["crs"].attrs["grid_mapping_name"] == "albers_conical_equal_area"
    assert ds["crs"].attrs["GeoTransform"].split()[:4] == ["16000", "1000", "0", "1592000"]
    for name in (PROBABILITY, QUANTILE, MEAN, BIN_PROBABILITY):
        assert ds[name].attrs["grid_mapping"] == "crs"
    assert ds[MEAN].attrs["units"] == "mm h-1"
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
    assert ds["lead_time"].attrs["standard_name"] == "forecast_period"
    assert ds["forecast_reference_time"].values == T_FORECAST
    np.testing.assert_array_equal(ds["time"], T_FORECAST + np.array(LEADS) * MIN)
    assert ds.attrs["Conventions"] == "CF-1.10" and ds.attrs["tile_px"] == 8
    assert "missing_inputs" not in ds.attrs


def test_forecast_products_are_consistent_distributions(stitched):
    ds = stitched
    probs = ds[BIN_PROBABILITY].values  # (L, bins, y, x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    prob = ds[PROBABILITY].values  # (K, L, y, x)
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    assert np.all(np.diff(prob, axis=0) <= 1e-7), "exceedance must not grow with the threshold"
    assert np.all(np.diff(ds[QUANTILE].values, axis=0) >= 0), "quantiles must grow with the level"
    np.testing.assert_allclose(ds[MEAN].values, bins.expected_rate(probs, 0.2, axis=1), rtol=1e-5)
    np.testing.assert_allclose(prob, bins.exceedance_probability(probs, ds["threshold"].values, 0.2, axis=1), atol=1e-6)
    # Random weights still give different forecasts per pixel and per lead time.
    assert np.ptp(ds[MEAN].values, axis=(1, 2)).min() > 0
    assert np.abs(np.diff(ds[MEAN].values, axis=0)).max() > 0


def test_one_tile_alone_equals_its_part_of_the_stitched_map(archive, checkpoint, stitched, tmp_path):
    # The south-east tile of the four, in a batch of its own, one lead time per pass.
    tile_box = (24_500.0, 1_600_000.0 - 23_500.0, 25_000.0, 1_600_000.0 - 23_000.0)
    out = forecast(archive, checkpoint, T_FORECAST, tmp_path / "one.zarr", bbox=tile_box,
                   lead_times=LEADS, keep_distribution=True, batch_tiles=1, lead_chunk=1)  # fmt: skip
    one = xr.open_zarr(out, consolidated=False).load()
    assert one.sizes["y"] == one.sizes["x"] == 8
    part = stitched.isel(y=slice(8, 16), x=slice(8, 16))
    np.testing.assert_array_equal(one["x"], part["x"])
    for name in (PROBABILITY, QUANTILE, MEAN, BIN_PROBABILITY):
        np.testing.assert_allclose(one[name], part[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_tile_batches_smaller_than_the_domain_give_the_same_forecast(archive, checkpoint, stitched, tmp_path):
    out = forecast(archive, checkpoint, T_FORECAST, tmp_path / "batched.zarr", bbox=BBOX,
                   lead_times=LEADS, batch_tiles=3, lead_chunk=2)  # batches of 3 + 1 tiles  # fmt: skip
    batched = open_forecast(out).load()
    assert BIN_PROBABILITY not in batched
    for name in (PROBABILITY, QUANTILE, MEAN):
        np.testing.assert_allclose(batched[name], stitched[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert [p.name for p in tmp_path.iterdir()] == ["batched.zarr"], "no temporary store may remain"


def test_tiles_overhanging_the_grid_edge_are_cropped(tmp_path):
    # A 12 x 20 km grid: the 8 km tiles of the last row and column stick out.
    config = config_from_dict({"preset": "tiny", "grid": {"nx": 20, "ny": 12}})
    grid = Grid(config.grid)
    archive = Archive.create(str(tmp_path / "odd.zarr"), config.grid)
    times = T0 + np.arange(0, 12, 2) * MIN
    archive.write(synthetic_dataset(grid, times, 0, ("precipitation_rate",)))
    archive.write(synthetic_dataset(grid, times[::5], 0, ("abi_c13",)))
    archive.write(StaticSource().read(None, grid))  # latitude and longitude
    ckpt = make_checkpoint(tmp_path / "odd.pt", archive, config)
    ds = open_forecast(forecast(archive, ckpt, T_FORECAST, tmp_path / "odd_forecast.zarr", lead_times=[2]))
    assert (ds.sizes["y"], ds.sizes["x"]) == (12, 20)
    np.testing.assert_array_equal(ds["x"], grid.x)
    assert np.isfinite(ds[MEAN].values).all()


# ----------------------------------------------------------------------------- missing inputs


def test_missing_inputs_are_listed_and_nothing_is_written(archive, checkpoint, tmp_path):
    out = tmp_path / "early.zarr"
    with pytest.raises(ForecastError) as info:
        forecast(archive, checkpoint, T0, out, bbox=BBOX, lead_times=[2])
    message = str(info.value)
    assert "cannot forecast from 2019-06-10T00:00" in message
    assert "precipitation_rate at 2019-06-09T23:50" in message
    assert "abi_c13 within 15 min before 2019-06-09T23:50" in message
    assert "--allow-missing" in message
    assert list(tmp_path.iterdir()) == []


def test_allow_missing_forecasts_with_gaps_and_says_so(archive, checkpoint, tmp_path):
    out = forecast(archive, checkpoint, T0, tmp_path / "degraded.zarr", bbox=BBOX, lead_times=[2], allow_missing=True)
    ds = open_forecast(out)
    assert ds.attrs["missing_inputs"] == (
        "precipitation_rate at 2019-06-09T23:50; abi_c13 within 15 min before 2019-06-09T23:50"
    )
    assert np.isfinite(ds[PROBABILITY].values).all()


# ----------------------------------------------------------------------------- errors


def test_checkpoint_for_another_grid_or_inputs_is_refused_naming_the_differences(archive, tmp_path):
    other_grid = dataclasses.replace(CONFIG, grid=GridConfig(nx=64, ny=64, x_min_m=0.0, y_max_m=1_600_000.0))
    ckpt = tmp_path / "grid.pt"
    save_checkpoint(ckpt, MetNet(other_grid), other_grid, {})
    with pytest.raises(ForecastError, match=r"grid\.nx: archive 128, config 64") as info:
        forecast(archive, ckpt, T_FORECAST, tmp_path / "a.zarr")
    assert f"checkpoint {ckpt} cannot forecast from archive {archive.store}" in str(info.value)
    assert "grid.ny: archive 128, config 64" in str(info.value)

    other_band = config_from_dict({"preset": "tiny", "task": {"satellite_bands": [7]}})
    ckpt = tmp_path / "band.pt"
    save_checkpoint(ckpt, MetNet(other_band), other_band, {})
    with pytest.raises(ForecastError, match="has no variable 'abi_c07'"):
        forecast(archive, ckpt, T_FORECAST, tmp_path / "b.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["band.pt", "grid.pt"]


def test_checkpoint_without_normalisation_for_an_input_is_refused(archive, tmp_path):
    ckpt = tmp_path / "nonorm.pt"
    save_checkpoint(ckpt, MetNet(CONFIG), CONFIG, {"precipitation_rate": {"mean": 0.0, "std": 1.0}})
    with pytest.raises(ForecastError, match="no statistics for 'abi_c13'"):
        forecast(archive, ckpt, T_FORECAST, tmp_path / "c.zarr")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bbox": (500_000.0, 0.0, 600_000.0, 10.0)}, "lies outside the grid"),
        ({"lead_times": [2, 3, 14]}, r"lead times \[3, 14\] min are not predicted .* 2 to 12 min every 2 min"),
        ({"thresholds": [2.0, 1.0]}, "thresholds .* must be strictly increasing"),
        ({"batch_tiles": 0}, "batch_tiles must be a positive integer"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(archive, checkpoint, tmp_path, kwargs, message):
    with pytest.raises(ForecastError, match=message):
        forecast(archive, checkpoint, T_FORECAST, tmp_path / "f.zarr", **{"bbox": BBOX, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_times_off_the_axis_or_unparsable_are_refused(archive, checkpoint, tmp_path):
    with pytest.raises(ForecastError, match=r"2019-06-10T00:11:00 is not on the time axis of .* \(every 2 minutes from midnight\)"):
        forecast(archive, checkpoint, "2019-06-10T00:11", tmp_path / "f.zarr", bbox=BBOX)
    with pytest.raises(ForecastError, match="'yesterday' is not a time"):
        forecast(archive, checkpoint, "yesterday", tmp_path / "f.zarr", bbox=BBOX)


def test_an_existing_store_is_kept_unless_overwrite(archive, checkpoint, tmp_path):
    out = tmp_path / "f.zarr"
    forecast(archive, checkpoint, T_FORECAST, out, bbox=BBOX, lead_times=[2])
    with pytest.raises(ForecastError, match="already exists"):
        forecast(archive, checkpoint, T_FORECAST, out, bbox=BBOX, lead_times=[2])
    forecast(archive, checkpoint, T_FORECAST + 2 * MIN, out, bbox=BBOX, lead_times=[4], overwrite=True)
    ds = open_forecast(out)
    assert ds["forecast_reference_time"].values == T_FORECAST + 2 * MIN
    assert ds["lead_time"].values.tolist() == [4]
    assert [p.name for p in tmp_path.iterdir()] == ["f.zarr"]


# ----------------------------------------------------------------------------- CLI


def test_cli_forecast_writes_a_store_and_reports_errors(archive, checkpoint, tmp_path):
    out = tmp_path / "cli.zarr"
    args = ["forecast", "--archive", archive.store, "--checkpoint", str(checkpoint), "--time",
            "2019-06-10T00:10Z", "--bbox", ",".join(str(v) for v in BBOX), "--lead-times", "2,4",
            "--thresholds", "0.5,1", "--quantiles", "0.5", "--no-progress", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"forecast written to {out}" in result.output
    ds = open_forecast(out)
    assert ds["threshold"].values.tolist() == [0.5, 1.0] and ds["quantile"].values.tolist() == [0.5]
    assert ds["lead_time"].values.tolist() == [2, 4]

    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "x.zarr"), "--bbox-lonlat", "0,0,1,1"])
    assert result.exit_code == 1
    assert "give either --bbox or --bbox-lonlat, not both" in result.output
    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "y.zarr"), "--lead-times", "2,x"])
    assert result.exit_code == 2 and "expected comma-separated ints" in result.output
