"""Forecast products: bin distribution / deterministic rate -> the CF forecast dataset."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from metnet import bins
from metnet.config import GridConfig
from metnet.grid import Grid
from metnet.products import (
    BIN_PROBABILITY,
    MEAN,
    PROBABILITY,
    QUANTILE,
    deterministic_forecast_dataset,
    forecast_dataset,
    grid_of,
)

T0 = np.datetime64("2019-06-10T00:00", "ns")
LEADS = [30, 60, 90]


@pytest.fixture(scope="module")
def grid() -> Grid:
    return Grid(GridConfig(nx=12, ny=10, x_min_m=100_000.0, y_max_m=1_500_000.0))


@pytest.fixture(scope="module")
def probs(grid: Grid) -> np.ndarray:
    """A random distribution over 40 bins, ``(lead_time, bin, y, x)``, with a NaN pixel."""
    rng = np.random.default_rng(0)
    p = rng.gamma(0.3, size=(len(LEADS), 40, *grid.shape))  # (L, N, y, x)
    p /= p.sum(axis=1, keepdims=True)
    p[:, :, 0, 0] = np.nan  # a pixel without a forecast
    return p


def test_probabilities_are_bounded_and_monotone_in_threshold(grid, probs):
    ds = forecast_dataset(probs, grid, T0, LEADS, bin_width=0.2)
    prob = ds[PROBABILITY].values  # (threshold, lead_time, y, x)
    assert prob.shape == (6, 3, *grid.shape)
    valid = prob[:, :, 1:, :]  # every pixel but the NaN row's first
    assert np.all((valid >= 0) & (valid <= 1))
    assert np.all(np.diff(prob[:, :, 1:], axis=0) <= 1e-6)  # non-increasing in threshold
    quant = ds[QUANTILE].values  # (quantile, lead_time, y, x)
    assert np.all(np.diff(quant[:, :, 1:], axis=0) >= 0)  # non-decreasing in level
    assert np.all(ds[MEAN].values[:, 1:] >= 0)
    # The pixel without a forecast stays NaN in every product.
    for name in (PROBABILITY, QUANTILE, MEAN):
        assert np.all(np.isnan(ds[name].values[..., 0, 0])), name
    assert np.isfinite(ds[MEAN].values[:, 0, 1]).all()


def test_products_match_the_bins_module(grid, probs):
    ds = forecast_dataset(probs, grid, T0, LEADS, thresholds=(0.2, 1.0), quantiles=(0.9,))
    np.testing.assert_allclose(
        ds[PROBABILITY].values, bins.exceedance_probability(probs, [0.2, 1.0], 0.2, axis=1),
        rtol=1e-6,
    )  # fmt: skip
    np.testing.assert_allclose(
        ds[QUANTILE].values, bins.quantile(probs, [0.9], 0.2, axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(ds[MEAN].values, bins.expected_rate(probs, 0.2, axis=1), rtol=1e-6)
    assert ds[PROBABILITY].dtype == np.float32


def test_golden_values_for_a_known_distribution():
    # Half the mass in [0, 0.2), a quarter in [1.0, 1.2), a quarter in the open last bin
    # (treated as [1.8, 2.0)); bins of 0.2 mm/h.
    grid = Grid(GridConfig(nx=1, ny=1, x_min_m=0.0, y_max_m=1_600_000.0))
    p = np.zeros((1, 10, 1, 1))  # (lead_time, bin, y, x)
    p[0, [0, 5, 9], 0, 0] = [0.5, 0.25, 0.25]
    ds = forecast_dataset(
        p, grid, T0, [60], thresholds=(0.1, 0.2, 1.0, 1.1, 2.0), quantiles=(0.25, 0.5, 0.9)
    )
    prob = ds[PROBABILITY].values[:, 0, 0, 0]
    # P(>0.1): half of bin 0 is above 0.1; P(>1.1): half of bin 5 plus the last bin.
    np.testing.assert_allclose(prob, [0.75, 0.5, 0.5, 0.375, 0.0], atol=1e-6)
    quant = ds[QUANTILE].values[:, 0, 0, 0]
    # q=0.25: half way through bin 0; q=0.5: the top of bin 0; q=0.9: 1.8 + 0.6 * 0.2.
    np.testing.assert_allclose(quant, [0.1, 0.2, 1.92], atol=1e-6)
    # Mean: 0.5 * 0.1 + 0.25 * 1.1 + 0.25 * 1.9 = 0.8 mm/h.
    np.testing.assert_allclose(ds[MEAN].values[0, 0, 0], 0.8, atol=1e-6)


def test_cf_metadata_and_coordinates(grid, probs):
    ds = forecast_dataset(probs, grid, "2019-06-10T00:00Z", LEADS)
    threshold = ds["threshold"]
    assert threshold.attrs["standard_name"] == "lwe_precipitation_rate"
    assert threshold.attrs["units"] == "mm h-1"
    assert threshold.attrs["spp__relative_to_threshold"] == "greater_than"
    np.testing.assert_array_equal(threshold.values, [0.2, 1, 2, 5, 10, 25])
    np.testing.assert_array_equal(ds["quantile"].values, [0.5, 0.9])
    assert ds["lead_time"].attrs == {
        "standard_name": "forecast_period", "long_name": "lead time", "units": "minutes",
    }  # fmt: skip
    np.testing.assert_array_equal(ds["lead_time"].values, LEADS)
    assert ds["forecast_reference_time"].values == T0
    assert ds["forecast_reference_time"].attrs["standard_name"] == "forecast_reference_time"
    np.testing.assert_array_equal(ds["time"].values, T0 + np.array(LEADS, dtype="timedelta64[m]"))
    assert ds["time"].dims == ("lead_time",)
    lat, lon = grid.lat_lon()
    np.testing.assert_array_equal(ds["latitude"].values, lat)
    np.testing.assert_array_equal(ds["longitude"].values, lon)
    assert ds["latitude"].attrs["standard_name"] == "latitude"
    np.testing.assert_array_equal(ds["x"].values, grid.x)
    np.testing.assert_array_equal(ds["y"].values, grid.y)
    for name in (PROBABILITY, QUANTILE, MEAN):
        assert ds[name].attrs["grid_mapping"] == "crs"
    assert ds[PROBABILITY].attrs["units"] == "1"
    assert ds[MEAN].attrs["units"] == "mm h-1"
    assert ds[MEAN].attrs["standard_name"] == "lwe_precipitation_rate"
    assert ds["crs"].attrs["grid_mapping_name"] == "albers_conical_equal_area"
    assert ds.attrs["Conventions"].startswith("CF-1.")


def test_keep_distribution(grid, probs):
    ds = forecast_dataset(probs, grid, T0, LEADS, bin_width=0.5, keep_distribution=True)
    assert ds[BIN_PROBABILITY].dims == ("lead_time", "bin", "y", "x")
    np.testing.assert_allclose(ds[BIN_PROBABILITY].values, probs.astype(np.float32))
    np.testing.assert_allclose(ds["bin_lower_bound"].values, np.arange(40) * 0.5)
    assert BIN_PROBABILITY not in forecast_dataset(probs, grid, T0, LEADS)


def test_grid_or_coords_accepts_an_xarray_object_on_a_window():
    grid = Grid(GridConfig()).window(1500, 2000, 8)  # a window of the default CONUS grid
    p = np.full((1, 4, 8, 8), 0.25)
    ds = forecast_dataset(p, grid.dataset({}), T0, [2])
    assert grid_of(ds) == grid
    np.testing.assert_array_equal(ds["x"].values, grid.x)
    np.testing.assert_allclose(ds[PROBABILITY].sel(threshold=0.2).values, 0.75)


def test_zarr_round_trip(grid, probs, tmp_path):
    ds = forecast_dataset(probs, grid, T0, LEADS)
    ds.to_zarr(tmp_path / "forecast.zarr", consolidated=False)
    back = xr.open_zarr(tmp_path / "forecast.zarr", consolidated=False)
    xr.testing.assert_identical(back.load(), ds)
    assert grid_of(back) == grid


def test_deterministic_forecast(grid):
    rate = np.zeros((2, *grid.shape), dtype=np.float32)  # (lead_time, y, x)
    rate[0, 2, 3] = 1.4  # float32 stores 1.39999998: still "at least 1.4 mm/h"
    rate[0, 2, 4] = 1.0
    rate[1, 5, 5] = 30.0
    rate[1, 0, 0] = np.nan
    ds = deterministic_forecast_dataset(rate, grid, T0, [2, 4], thresholds=(0.2, 1.0, 1.4, 25))
    prob = ds[PROBABILITY]
    assert prob.sel(threshold=1.4, lead_time=2).values[2, 3] == 1
    assert prob.sel(threshold=1.0, lead_time=2).values[2, 4] == 1
    assert prob.sel(threshold=1.4, lead_time=2).values[2, 4] == 0
    assert prob.sel(threshold=25, lead_time=4).values[5, 5] == 1
    assert np.nansum(prob.sel(threshold=0.2, lead_time=4).values) == 1  # only the 30 mm/h pixel
    assert np.isnan(prob.values[:, 1, 0, 0]).all()
    assert ds["threshold"].attrs["spp__relative_to_threshold"] == "greater_than_or_equal_to"
    for q in ds["quantile"].values:
        np.testing.assert_array_equal(ds[QUANTILE].sel(quantile=q).values, rate)
    np.testing.assert_array_equal(ds[MEAN].values, rate)


def test_deterministic_agrees_with_a_one_hot_distribution(grid):
    """A rate inside a bin and the one-hot distribution on that bin give the same
    exceedance at thresholds on bin edges (the convention of metnet.bins)."""
    rng = np.random.default_rng(1)
    index = rng.integers(0, 30, size=(2, *grid.shape))  # (L, y, x)
    rate = (index + 0.5) * 0.2  # bin centres, mm/h
    one_hot = (np.arange(30)[None, :, None, None] == index[:, None]).astype(float)  # (L, N, y, x)
    thresholds = (0.2, 1.0, 2.0, 5.0)
    det = deterministic_forecast_dataset(rate, grid, T0, [2, 4], thresholds=thresholds)
    prob = forecast_dataset(one_hot, grid, T0, [2, 4], thresholds=thresholds)
    np.testing.assert_allclose(det[PROBABILITY].values, prob[PROBABILITY].values, atol=1e-6)
    np.testing.assert_allclose(det[MEAN].values, prob[MEAN].values, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (3, 40, 10, 11)}, "do not match the grid 10 x 12"),
        ({"shape": (3, 40, 10)}, "must have 4 dimensions"),
        ({"leads": [30, 60]}, "3 lead times on its first axis but 2 lead times"),
        ({"leads": [30, 90, 60]}, "increasing order"),
        ({"thresholds": (1.0, 0.2)}, "thresholds (mm/h) must be strictly increasing"),
        ({"thresholds": (0.0, 1.0)}, "thresholds (mm/h) must lie above 0"),
        ({"quantiles": (0.5, 1.0)}, "quantile levels must lie in (0, 1)"),
        ({"time": "not a time"}, "forecast_reference_time 'not a time' is not a time"),
        ({"scale": 2.0}, "must sum to 1"),
    ],
)
def test_errors(grid, kwargs, message):
    p = np.full(kwargs.get("shape", (3, 40, 10, 12)), 1 / 40) * kwargs.get("scale", 1.0)
    with pytest.raises(ValueError) as info:
        forecast_dataset(
            p,
            grid,
            kwargs.get("time", T0),
            kwargs.get("leads", LEADS),
            thresholds=kwargs.get("thresholds", (0.2, 1.0)),
            quantiles=kwargs.get("quantiles", (0.5,)),
        )
    assert message in str(info.value)


def test_deterministic_errors(grid):
    rate = np.zeros((1, *grid.shape))
    rate[0, 0, 0] = -3.0  # MRMS's missing flag, not decoded
    with pytest.raises(ValueError, match="forecast rates must be >= 0 mm/h"):
        deterministic_forecast_dataset(rate, grid, T0, [2])
    with pytest.raises(ValueError, match="must have 3 dimensions"):
        deterministic_forecast_dataset(rate[0], grid, T0, [2])


def test_grid_errors(grid, probs):
    with pytest.raises(TypeError, match="must be a metnet.grid.Grid or an xarray object"):
        forecast_dataset(probs, (10, 12), T0, LEADS)
    no_crs = xr.Dataset(coords=grid.coords())
    with pytest.raises(ValueError, match="no 'crs' grid-mapping variable"):
        grid_of(no_crs)
    uneven = grid.dataset({}).assign_coords(x=grid.x + np.arange(12) ** 2)
    with pytest.raises(ValueError, match="x is not evenly spaced"):
        grid_of(uneven)
