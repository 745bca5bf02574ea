"""Baselines: the registry, persistence, and optical flow recovering a known motion of a
real MRMS rain field."""

from __future__ import annotations

import numpy as np
import pytest

from metnet.archive import Archive
from metnet.baselines import (
    BASELINE_NAMES,
    BaselineError,
    OpticalFlow,
    Persistence,
    baseline_forecast,
    get_baseline,
)
from metnet.config import GridConfig
from metnet.forecast import Domain
from metnet.grid import Grid
from metnet.products import MEAN, PROBABILITY, QUANTILE
from metnet.sources import get_source
from tests.archive_fixtures import T0, make_archive

MIN = np.timedelta64(1, "m")
DOMAIN = Domain(8, 16, 24, 40)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("baseline_archive"))


def _rates(archive: Archive, times, domain: Domain = DOMAIN) -> np.ndarray:
    """``(T, ny, nx)`` stored rates on ``domain`` read straight from the archive."""
    side = max(domain.ny, domain.nx)
    values = archive.read("precipitation_rate", np.asarray(times), domain.y0, domain.x0, side)
    return values[:, : domain.ny, : domain.nx]


# ----------------------------------------------------------------------------- registry


def test_registry_is_case_insensitive_and_lists_names_on_errors():
    assert BASELINE_NAMES == ("persistence", "optical-flow")
    assert isinstance(get_baseline("Persistence"), Persistence)
    assert isinstance(get_baseline("OPTICAL-FLOW", margin_px=4), OpticalFlow)
    with pytest.raises(ValueError, match="unknown baseline 'hrrr'; valid baselines: persistence, optical-flow"):
        get_baseline("hrrr")
    with pytest.raises(ValueError, match=r"baseline 'persistence': invalid options \['margin_px'\]; accepted options: none"):
        get_baseline("persistence", margin_px=3)
    with pytest.raises(ValueError, match="accepted options: num_frames, margin_px, rain_threshold"):
        get_baseline("optical-flow", frames=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_frames": 1}, "num_frames must be an integer >= 2"),
        ({"margin_px": -1}, "margin_px must be a non-negative integer"),
        ({"rain_threshold": 0.0}, "rain_threshold must be positive"),
    ],
)
def test_optical_flow_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        OpticalFlow(**options)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_every_baseline_gives_the_forecast_format(archive, name):
    t0 = T0 + 10 * MIN
    leads = [2, 4, 12]
    ds = baseline_forecast(get_baseline(name), archive, t0, leads, DOMAIN, thresholds=(0.2, 1.0))
    assert ds[MEAN].shape == (3, 24, 40)
    assert ds[PROBABILITY].dims == ("threshold", "lead_time", "y", "x")
    np.testing.assert_array_equal(ds["x"], archive.grid.x[16:56])
    np.testing.assert_array_equal(ds["y"], archive.grid.y[8:32])
    assert ds["forecast_reference_time"].values == t0
    assert ds.attrs["source"] == f"{name} baseline"
    rate = ds[MEAN].values
    assert np.nanmin(rate) >= 0
    for k, threshold in enumerate((0.2, 1.0)):  # deterministic exceedance: 0 or 1
        expected = np.where(np.isnan(rate), np.nan, rate >= threshold)
        np.testing.assert_array_equal(ds[PROBABILITY].values[k], expected)
    np.testing.assert_array_equal(ds[QUANTILE].values[0], rate)


# ----------------------------------------------------------------------------- persistence


def test_persistence_is_the_last_frame_at_every_lead_time(archive):
    t0 = T0 + 14 * MIN
    rate = Persistence().predict(archive, t0, [2, 6, 10], DOMAIN)
    last = _rates(archive, [t0])[0]
    assert rate.shape == (3, 24, 40) and rate.dtype == np.float32
    for lead in rate:
        np.testing.assert_array_equal(lead, last)
    assert (last > 0).any(), "the test field should rain somewhere"


def test_baselines_name_the_missing_radar_frame(archive):
    with pytest.raises(BaselineError, match=f"persistence needs precipitation_rate at 2019-06-09T23:58, missing from archive {archive.store}"):
        Persistence().predict(archive, T0 - 2 * MIN, [2], DOMAIN)
    # Optical flow at 00:02 needs 23:58, 00:00 and 00:02: the first is missing.
    with pytest.raises(BaselineError, match="optical-flow needs precipitation_rate at 2019-06-09T23:58, missing"):
        OpticalFlow().predict(archive, T0 + 2 * MIN, [2], DOMAIN)


# ----------------------------------------------------------------------------- optical flow


def test_optical_flow_without_rain_is_persistence(tmp_path):
    config = GridConfig(nx=32, ny=32, x_min_m=0.0, y_max_m=1_600_000.0)
    grid = Grid(config)
    archive = Archive.create(str(tmp_path / "dry.zarr"), config)
    times = T0 + np.arange(3) * 2 * MIN
    drizzle = np.full((3, 32, 32), 0.05, np.float32)  # below the 0.1 mm/h rain threshold
    archive.write(grid.dataset({"precipitation_rate": (("time", "y", "x"), drizzle, {"units": "mm/h"})}, time=times))
    flow = OpticalFlow()
    assert not flow.motion_field(drizzle).any()
    np.testing.assert_allclose(flow.predict(archive, times[-1], [2, 4], Domain(0, 0, 32, 32)), 0.05, rtol=1e-6)


@pytest.mark.realdata
def test_optical_flow_recovers_a_known_translation_of_a_real_field(mrms_files, tmp_path):
    """A real MRMS field (Michigan, 2019-06-10 00:00) shifted by (dy, dx) = (2, 3) pixels per
    2-minute step: the frames at -4, -2, 0 min give the motion, and the extrapolation
    must match the shifted field at +2, +4, +6 min away from the inflow edges."""
    n, dy, dx, pad = 128, 2, 3, 32
    big = Grid(GridConfig(x_min_m=800_000.0, y_max_m=2_560_000.0, nx=n + 2 * pad, ny=n + 2 * pad))
    field = get_source("mrms").read(str(mrms_files[0]), big)["precipitation_rate"].values[0]  # (192, 192)
    assert np.isfinite(field).all() and (field >= 0.2).mean() > 0.5

    def shifted(k: int) -> np.ndarray:
        """The field moved k steps: content moves dy rows south and dx columns east per step."""
        return field[pad - k * dy : pad - k * dy + n, pad - k * dx : pad - k * dx + n]

    config = GridConfig(x_min_m=800_000.0 + pad * 1000, y_max_m=2_560_000.0 - pad * 1000, nx=n, ny=n)
    grid = Grid(config)
    archive = Archive.create(str(tmp_path / "moving.zarr"), config)
    t0 = np.datetime64("2019-06-10T00:04", "ns")
    times = t0 + np.arange(-2, 4) * 2 * MIN  # -4 .. +6 min
    frames = np.stack([shifted(k) for k in range(6)])  # (6, n, n)
    archive.write(grid.dataset({"precipitation_rate": (("time", "y", "x"), frames, {"units": "mm/h"})}, time=times))
    stored = _rates(archive, times, Domain(0, 0, n, n))  # (6, n, n) as quantised by the archive

    flow = OpticalFlow()
    velocity = flow.motion_field(stored[:3])  # (2, n, n)
    assert np.median(velocity[0]) == pytest.approx(dx, abs=0.05)  # columns per step
    assert np.median(velocity[1]) == pytest.approx(dy, abs=0.05)  # rows per step

    forecast = flow.predict(archive, t0, [2, 4, 6], Domain(0, 0, n, n))  # (3, n, n)
    persistence = Persistence().predict(archive, t0, [2, 4, 6], Domain(0, 0, n, n))
    inner = (slice(24, -24), slice(24, -24))  # away from the rain advected in from outside
    for i, k in enumerate((3, 4, 5)):
        truth = stored[k][inner]
        error = np.abs(forecast[i][inner] - truth)
        assert np.isfinite(error).all()
        assert error.mean() < 0.01 * truth.mean(), f"lead {2 * (i + 1)} min: mean error {error.mean():.4f} mm/h"
        assert error.mean() < 0.05 * np.abs(persistence[i][inner] - truth).mean()
    # Rain enters from the north-west: those rows and columns have no source pixel.
    assert np.isnan(forecast[2][:dy * 3, :]).all() and np.isnan(forecast[2][:, :dx * 3]).all()
