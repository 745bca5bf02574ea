"""Synthetic weather: determinism, statistics, spectrum, motion, satellite-rain coupling."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pysteps import motion
from pysteps.noise.fftgenerators import initialize_param_2d_fft_filter
from pysteps.utils.spectral import rapsd

from metnet.config import GridConfig
from metnet.grid import Grid
from metnet.sources import Source, SourceError, get_source
from metnet.sources.synthetic import (
    RAIN_FRACTION_RANGE,
    SPECTRAL_EXPONENT,
    VARIABLES,
    SyntheticSource,
    displacement,
    latent_field,
    rain_fraction,
    synthetic_dataset,
    wind,
)

T0 = np.datetime64("2019-06-10T00:00", "ns")
GRID = Grid(GridConfig(nx=256, ny=256, x_min_m=0.0, y_max_m=1_600_000.0))
MINUTE = np.timedelta64(1, "m")


def rain(times, seed: int = 0, grid: Grid = GRID) -> np.ndarray:
    ds = synthetic_dataset(grid, times, seed=seed, variables=["precipitation_rate"])
    return ds["precipitation_rate"].values  # (T, ny, nx)


def test_dataset_layout_and_units():
    ds = synthetic_dataset(GRID, [T0, T0 + 2 * MINUTE], seed=0)
    assert list(ds.data_vars) == list(VARIABLES)
    for name in VARIABLES:
        da = ds[name]
        assert da.dims == ("time", "y", "x") and da.shape == (2, 256, 256)
        assert da.dtype == np.float32 and np.isfinite(da.values).all()
        assert da.attrs["grid_mapping"] == "crs"
    assert ds["precipitation_rate"].attrs["units"] == "mm/h"
    assert ds["abi_c02"].attrs["units"] == "1" and ds["abi_c13"].attrs["units"] == "K"
    np.testing.assert_array_equal(ds["time"].values, [T0, T0 + 2 * MINUTE])
    np.testing.assert_array_equal(ds["x"].values, GRID.x)
    assert "crs" in ds.coords


def test_deterministic_and_seed_dependent():
    a = synthetic_dataset(GRID, [T0], seed=5)
    b = synthetic_dataset(GRID, [T0], seed=5)
    for name in VARIABLES:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    other = rain([T0], seed=6)[0]
    assert np.corrcoef(a["precipitation_rate"].values[0].ravel(), other.ravel())[0, 1] < 0.2


def test_a_frame_does_not_depend_on_the_requested_range():
    times = T0 + np.array([0, 2, 4, 60 * 24 * 3]) * MINUTE
    together = rain(times)
    for i, t in enumerate(times):
        np.testing.assert_array_equal(rain([t])[0], together[i])
    np.testing.assert_array_equal(rain(times[::-1])[::-1], together)


def test_rain_fraction_and_rates_are_realistic():
    times = T0 + np.arange(0, 48 * 60, 180) * MINUTE  # two days, every 3 h
    expected = np.array([rain_fraction(t) for t in times])
    low, high = RAIN_FRACTION_RANGE
    assert low <= expected.min() < expected.max() <= high
    assert expected.max() - expected.min() > 0.15  # the cover really drifts
    # Over the whole 512 km periodic domain the cover is the intended one ...
    whole = rain(times, grid=Grid(GridConfig(nx=512, ny=512, x_min_m=0.0, y_max_m=1.6e6)))
    np.testing.assert_allclose((whole > 0).mean(axis=(1, 2)), expected, atol=0.03)
    # ... and a 256 km corner sees weather systems come and go around it.
    r = rain(times)
    fraction = (r > 0).mean(axis=(1, 2))  # (T,)
    assert 0.02 < fraction.min() and fraction.max() < 0.5
    assert 0.1 < fraction.mean() < 0.3
    assert (r >= 0).all()
    wet = r[r > 0]
    assert 0.8 < np.median(wet) < 1.8  # mm/h
    assert 8.0 < np.percentile(wet, 99) < 30.0
    assert 50.0 < wet.max() < 300.0


def test_spectrum_follows_the_power_law():
    z = latent_field(Grid(GridConfig(nx=512, ny=512, x_min_m=0.0, y_max_m=1.6e6)), T0)
    power, freq = rapsd(z, fft_method=np.fft, return_freq=True)  # pysteps' radial spectrum
    scales = (freq > 1 / 64) & (freq < 1 / 4)  # wavelengths 4-64 km
    slope = np.polyfit(np.log(freq[scales]), np.log(power[scales]), 1)[0]
    assert slope == pytest.approx(SPECTRAL_EXPONENT, abs=0.2)  # measured -2.96
    # pysteps' own two-slope fit (used by its noise generators) agrees at small scales.
    with np.errstate(divide="ignore"):  # pysteps takes log(0) at the zero wavenumber
        fit = initialize_param_2d_fft_filter(z)["pars"]  # (scale break, intercept, beta1, beta2)
    assert fit[3] == pytest.approx(SPECTRAL_EXPONENT, abs=0.2)  # measured -2.98
    # The rain field itself keeps a steep, radar-like spectrum.
    r = rain([T0], grid=Grid(GridConfig(nx=512, ny=512, x_min_m=0.0, y_max_m=1.6e6)))[0]
    power, freq = rapsd(np.log1p(r), fft_method=np.fft, return_freq=True)
    slope = np.polyfit(np.log(freq[scales]), np.log(power[scales]), 1)[0]
    assert -3.3 < slope < -2.0


def test_frames_are_correlated_and_decorrelate_with_lag():
    lags = np.array([0, 2, 10, 30, 60, 240])
    log_rain = np.log1p(rain(T0 + lags * MINUTE)).reshape(len(lags), -1)
    corr = np.array([np.corrcoef(log_rain[0], frame)[0, 1] for frame in log_rain])
    assert corr[1] > 0.8  # measured 0.87 at 2 min (fixed points, no motion compensation)
    assert np.all(np.diff(corr[:5]) < 0)
    assert abs(corr[-1]) < 0.1


def test_motion_is_the_wind_and_recoverable_by_optical_flow():
    times = T0 + np.arange(0, 6, 2) * MINUTE
    r = rain(times)
    dbr = np.where(r > 0.1, 10 * np.log10(np.maximum(r, 0.1)), -15.0)  # (3, ny, nx) dBR
    flow = motion.get_method("LK")(dbr, fd_kwargs={"buffer_mask": 5})  # (2, ny, nx) px / 2 min
    u, v = wind(times[-1])  # m/s east, north
    expected = np.array([u, -v]) * 120.0 / GRID.resolution  # columns, rows (rows run south)
    measured = np.median(flow.reshape(2, -1), axis=1)
    np.testing.assert_allclose(measured, expected, atol=0.15)
    # The displacement is the wind's time integral.
    step = (displacement(T0 + MINUTE) - displacement(T0 - MINUTE)) / 120.0
    np.testing.assert_allclose(step, wind(T0), rtol=1e-4)


def test_cold_cloud_tops_where_it_rains():
    ds = synthetic_dataset(
        GRID,
        T0 + np.arange(0, 600, 120) * MINUTE,
        variables=["precipitation_rate", "abi_c13", "abi_c08", "abi_c02"],
    )
    r, bt = ds["precipitation_rate"].values, ds["abi_c13"].values
    wet = r > 0
    assert np.corrcoef(wet.ravel(), bt.ravel())[0, 1] < -0.7  # measured -0.78
    assert np.corrcoef(np.log1p(r).ravel(), bt.ravel())[0, 1] < -0.6
    assert 200.0 <= bt[wet].min() and bt[wet].max() < 235.0
    assert np.median(bt[~wet]) > 270.0 and bt.max() <= 293.0 + 1e-3
    assert np.percentile(bt[r > 20], 90) < 210.0  # heavy rain under the coldest tops
    assert ds["abi_c08"].values[~wet].mean() < bt[~wet].mean()  # water-vapour band is cooler
    vis = ds["abi_c02"].values
    assert vis[wet].mean() > 0.6
    assert vis[bt > 290].mean() < 0.1


def test_fast_enough():
    grid = Grid(GridConfig(nx=512, ny=512, x_min_m=0.0, y_max_m=1.6e6))
    rain([T0], grid=grid)  # warm the per-grid tables
    best = min(_timed(lambda i=i: rain([T0 + (2 * i + 2) * MINUTE], grid=grid)) for i in range(3))
    assert best < 0.1  # measured about 0.022 s; all 17 variables about 0.055 s


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_pseudo_paths_round_trip():
    source = get_source("Synthetic", variables=["precipitation_rate", "abi_c13"])
    assert isinstance(source, SyntheticSource) and isinstance(source, Source)
    paths = source.discover(
        "synthetic://seed=3", np.datetime64("2019-06-10T00:01"), np.datetime64("2019-06-10T00:06")
    )
    assert paths == [
        "synthetic://seed=3/2019-06-10T00:02:00",
        "synthetic://seed=3/2019-06-10T00:04:00",
        "synthetic://seed=3/2019-06-10T00:06:00",
    ]
    assert source.time_of(paths[1]) == np.datetime64("2019-06-10T00:04", "ns")
    ds = source.read(paths[1], GRID)
    assert list(ds.data_vars) == ["precipitation_rate", "abi_c13"]
    assert ds["time"].values[0] == np.datetime64("2019-06-10T00:04", "ns")
    np.testing.assert_array_equal(
        ds["precipitation_rate"].values, rain([np.datetime64("2019-06-10T00:04")], seed=3)
    )
    # A location without a seed uses the source's seed option.
    assert SyntheticSource(seed=7).discover("synthetic://", T0, T0) == [
        "synthetic://seed=7/2019-06-10T00:00:00"
    ]


def test_bad_locations_paths_and_options():
    source = SyntheticSource()
    with pytest.raises(
        SourceError,
        match=r"synthetic://sed=0: not a synthetic location; "
        r"expected 'synthetic://seed=N'",
    ):
        source.discover("synthetic://sed=0", T0, T0)
    with pytest.raises(
        SourceError, match="synthetic://seed=0: synthetic data is endless; give both start and end"
    ):
        source.discover("synthetic://seed=0", T0, None)
    with pytest.raises(
        SourceError, match=r"synthetic://seed=0/yesterday: not a synthetic pseudo-path"
    ):
        source.read("synthetic://seed=0/yesterday", GRID)
    with pytest.raises(SourceError, match=r"2019-13-40T00:00:00: invalid time"):
        source.time_of("synthetic://seed=0/2019-13-40T00:00:00")
    with pytest.raises(
        ValueError,
        match=r"unknown synthetic variables \['rain'\]; valid "
        r"variables: precipitation_rate, abi_c01",
    ):
        SyntheticSource(variables=["rain"])
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        synthetic_dataset(GRID, [T0], seed=-1)
    with pytest.raises(ValueError, match="step_minutes must be positive, got 0"):
        SyntheticSource(step_minutes=0)
