"""Forecast products: a predicted distribution over rate bins -> the forecast dataset.

The forecast dataset is the hand-over format between ``forecast`` (and the baselines)
and ``export`` / ``verify``. It is an ``xarray.Dataset`` on the grid, with CF metadata
and IMPROVER-style probability naming:

=====================================================  ==================================
``probability_of_precipitation_rate_above_threshold``  ``(threshold, lead_time, y, x)``
                                                       float32 in [0, 1]
``precipitation_rate_quantile``                        ``(quantile, lead_time, y, x)``
                                                       float32 mm/h
``precipitation_rate_mean``                            ``(lead_time, y, x)`` float32 mm/h
``precipitation_rate_bin_probability`` (optional)      ``(lead_time, bin, y, x)`` float32
=====================================================  ==================================

Coordinates: ``x``/``y`` (projection coordinates, metres), 2-D ``latitude``/``longitude``
(degrees), the grid-mapping variable ``crs``, ``threshold`` (mm/h, standard name
``lwe_precipitation_rate``), ``quantile`` (level in (0, 1)), ``lead_time`` (int32 minutes,
standard name ``forecast_period``: the CF forecast period), ``time`` (``lead_time``; the
valid times, UTC) and the scalar ``forecast_reference_time`` (UTC). NaN marks pixels
without a forecast.

Probabilities, quantiles and the mean of a binned distribution follow
:mod:`metnet.bins` (uniform within each bin). A deterministic forecast (a rate field,
e.g. persistence or optical flow) becomes the same format through
:func:`deterministic_forecast_dataset`: exceedance is 0 or 1, every quantile and the
mean are the forecast rate itself, so verification and export treat both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyproj
import xarray as xr

from metnet import __version__, bins
from metnet.config import GridConfig
from metnet.grid import Grid

#: Exceedance thresholds of the products, mm/h (the paper's 0.2, 1, 2 among them).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.2, 1.0, 2.0, 5.0, 10.0, 25.0)
#: Quantile levels of the products (median and 90th percentile).
DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9)

PROBABILITY = "probability_of_precipitation_rate_above_threshold"
QUANTILE = "precipitation_rate_quantile"
MEAN = "precipitation_rate_mean"
BIN_PROBABILITY = "precipitation_rate_bin_probability"

#: CF conventions version the forecast dataset follows (checked with the IOOS checker).
CONVENTIONS = "CF-1.10"
_RATE_UNITS = "mm h-1"
#: Relative tolerance of the deterministic threshold test: float32 stores decimal rates
#: such as 1.4 mm/h a few 1e-8 below the decimal value.
_RELATIVE_TOLERANCE = 1e-6


def forecast_dataset(
    probs: Any,
    grid_or_coords: Grid | xr.Dataset | xr.DataArray,
    forecast_reference_time: Any,
    lead_times: Sequence[int],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    bin_width: float = 0.2,
    keep_distribution: bool = False,
    source: str = f"MetNet (metnet-nowcast {__version__})",
) -> xr.Dataset:
    """The forecast dataset of a predicted distribution over precipitation-rate bins.

    Args:
        probs: ``(lead_time, bin, y, x)`` probabilities over the rate bins, summing to 1
            along ``bin`` (NaN for pixels without a forecast); numpy array or anything
            ``np.asarray`` accepts.
        grid_or_coords: the :class:`~metnet.grid.Grid` of the ``y, x`` axes (e.g. a
            ``Grid.window``), or an xarray object with ``x``/``y`` coordinates and a
            ``crs`` grid-mapping coordinate (see :func:`grid_of`).
        forecast_reference_time: the forecast time t0, UTC (``datetime64`` or ISO string).
        lead_times: ``(lead_time,)`` lead times in minutes.
        thresholds: exceedance thresholds in mm/h, strictly increasing.
        quantiles: quantile levels in (0, 1), strictly increasing.
        bin_width: width of the rate bins, mm/h (``TaskConfig.bin_width_mm_h``).
        keep_distribution: also store ``probs`` as ``precipitation_rate_bin_probability``.
        source: the global ``source`` attribute (which model made the forecast).

    Returns:
        The forecast dataset described in the module docstring.

    Raises:
        ValueError: shapes that do not match the grid or the lead times, bad thresholds
            or quantile levels, probabilities that are negative or do not sum to 1.
    """
    grid = _as_grid(grid_or_coords)
    probs = np.asarray(probs)
    _check_field(probs, 4, "probs (lead_time, bin, y, x)", grid, lead_times)
    thresholds = _increasing(thresholds, "thresholds (mm/h)", low=0.0)
    quantiles = _increasing(quantiles, "quantile levels", low=0.0, high=1.0)

    prob = bins.exceedance_probability(probs, thresholds, bin_width, axis=1)  # (K, L, y, x)
    quant = bins.quantile(probs, quantiles, bin_width, axis=1)  # (Q, L, y, x)
    mean = bins.expected_rate(probs, bin_width, axis=1)  # (L, y, x)
    ds = _assemble(
        grid, forecast_reference_time, lead_times, thresholds, quantiles, prob, quant, mean,
        relative_to="greater_than", source=source,
    )  # fmt: skip
    ds.attrs["bin_width_mm_h"] = float(bin_width)
    if keep_distribution:
        num_bins = probs.shape[1]
        lower = bins.bin_edges(bin_width, num_bins)[:-1]  # (bin,)
        ds = ds.assign_coords(
            bin=("bin", np.arange(num_bins, dtype=np.int32), {"long_name": "rate bin index"}),
            bin_lower_bound=(
                "bin",
                lower,
                {
                    "long_name": "lower bound of the precipitation rate bin "
                    "(the last bin is open-ended)",
                    "units": _RATE_UNITS,
                },
            ),
        )
        ds[BIN_PROBABILITY] = xr.DataArray(
            probs.astype(np.float32, copy=False),
            dims=("lead_time", "bin", "y", "x"),
            attrs={
                "long_name": "probability of precipitation rate in bin",
                "units": "1",
                "grid_mapping": "crs",
            },
        )
    return ds


def deterministic_forecast_dataset(
    rate: Any,
    grid_or_coords: Grid | xr.Dataset | xr.DataArray,
    forecast_reference_time: Any,
    lead_times: Sequence[int],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    source: str = "deterministic baseline",
) -> xr.Dataset:
    """The forecast dataset of a deterministic forecast (a single rate per pixel).

    Exceedance is 1 where the rate is at least the threshold, else 0 (NaN where the rate
    is NaN); "at least" matches :mod:`metnet.bins`, where the probability at a bin edge
    is that of the bins from the edge up, so an observed 1.0 mm/h counts as above 1 mm/h
    for the model's targets and for this forecast alike (``spp__relative_to_threshold``
    says ``greater_than_or_equal_to``). Every quantile and the mean equal the rate.

    Args:
        rate: ``(lead_time, y, x)`` forecast rates in mm/h (>= 0, NaN = no forecast).
        grid_or_coords, forecast_reference_time, lead_times, thresholds, quantiles,
            source: as in :func:`forecast_dataset`.

    Raises:
        ValueError: shapes that do not match, negative rates, bad thresholds or levels.
    """
    grid = _as_grid(grid_or_coords)
    rate = np.asarray(rate, dtype=np.float32)
    _check_field(rate, 3, "rate (lead_time, y, x)", grid, lead_times)
    if np.any(rate < 0):
        raise ValueError(
            f"forecast rates must be >= 0 mm/h (NaN for no forecast); "
            f"got a minimum of {np.nanmin(rate):g} mm/h"
        )
    thresholds = _increasing(thresholds, "thresholds (mm/h)", low=0.0)
    quantiles = _increasing(quantiles, "quantile levels", low=0.0, high=1.0)

    limit = (thresholds * (1.0 - _RELATIVE_TOLERANCE)).astype(np.float32)  # (K,)
    at_least = rate >= limit[:, None, None, None]  # (K, L, y, x)
    prob = np.where(np.isnan(rate), np.float32(np.nan), at_least)  # (K, L, y, x) float32
    quant = np.repeat(rate[None], len(quantiles), axis=0)  # (Q, L, y, x)
    return _assemble(
        grid, forecast_reference_time, lead_times, thresholds, quantiles, prob, quant, rate,
        relative_to="greater_than_or_equal_to", source=source,
    )  # fmt: skip


def grid_of(obj: xr.Dataset | xr.DataArray) -> Grid:
    """The :class:`~metnet.grid.Grid` of an xarray object on a grid (or a window of it).

    ``obj`` needs 1-D ``x`` (increasing) and ``y`` (decreasing) cell-centre coordinates in
    metres, evenly spaced with square cells, and a ``crs`` grid-mapping coordinate or
    variable carrying ``crs_wkt`` (as made by :meth:`Grid.dataset`).

    Raises:
        ValueError: naming what is missing or irregular.
    """
    for name in ("x", "y", "crs"):
        if name not in obj.coords and name not in getattr(obj, "variables", {}):
            raise ValueError(
                f"cannot tell the grid: no {name!r} "
                f"{'grid-mapping variable' if name == 'crs' else 'coordinate'} "
                f"(expected a dataset written by metnet on its grid)"
            )
    wkt = obj["crs"].attrs.get("crs_wkt")
    if not wkt:
        raise ValueError("cannot tell the grid: the 'crs' variable has no 'crs_wkt' attribute")
    x = np.asarray(obj["x"], dtype=np.float64)
    y = np.asarray(obj["y"], dtype=np.float64)
    res = float(x[1] - x[0]) if x.size > 1 else float(y[0] - y[1]) if y.size > 1 else None
    if res is None or res <= 0:
        raise ValueError("cannot tell the grid resolution: need 2+ increasing x or decreasing y")
    for name, steps in (("x", np.diff(x)), ("y", -np.diff(y))):
        if not np.allclose(steps, res, rtol=0, atol=1e-6 * res):
            raise ValueError(
                f"cannot tell the grid: {name} is not evenly spaced by {res:g} m "
                f"({'increasing' if name == 'x' else 'decreasing'} square cells expected)"
            )
    crs = pyproj.CRS.from_wkt(wkt)
    authority = crs.to_authority(min_confidence=100)  # "EPSG:5070" rather than the WKT
    config = GridConfig(
        crs=":".join(authority) if authority else wkt,
        x_min_m=float(x[0] - res / 2),
        y_max_m=float(y[0] + res / 2),
        nx=x.size,
        ny=y.size,
        resolution_m=res,
    )
    return Grid(config)


# ----------------------------------------------------------------------------- helpers


def _as_grid(grid_or_coords: Grid | xr.Dataset | xr.DataArray) -> Grid:
    if isinstance(grid_or_coords, Grid):
        return grid_or_coords
    if isinstance(grid_or_coords, (xr.Dataset, xr.DataArray)):
        return grid_of(grid_or_coords)
    raise TypeError(
        f"grid_or_coords must be a metnet.grid.Grid or an xarray object on the grid, "
        f"got {type(grid_or_coords).__name__}"
    )


def _check_field(
    values: np.ndarray, ndim: int, what: str, grid: Grid, lead_times: Sequence[int]
) -> None:
    if values.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {values.shape}")
    if values.shape[-2:] != grid.shape:
        raise ValueError(
            f"{what} has shape {values.shape}, whose last two axes do not match the grid "
            f"{grid.shape[0]} x {grid.shape[1]}"
        )
    if values.shape[0] != len(lead_times):
        raise ValueError(
            f"{what} has {values.shape[0]} lead times on its first axis but "
            f"{len(lead_times)} lead times were given"
        )


def _increasing(
    values: Sequence[float], what: str, low: float, high: float | None = None
) -> np.ndarray:
    """``values`` as float64 ``(n,)``, checked non-empty, strictly increasing, in range."""
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty list of numbers, got {values!r}")
    if (
        not np.all(np.isfinite(arr))
        or np.any(arr <= low)
        or (high is not None and np.any(arr >= high))
    ):
        bound = f"({low:g}, {high:g})" if high is not None else f"above {low:g}"
        raise ValueError(
            f"{what} must lie {'in ' if high is not None else ''}{bound}, got {values!r}"
        )
    if np.any(np.diff(arr) <= 0):
        raise ValueError(f"{what} must be strictly increasing, got {values!r}")
    return arr


def _utc(value: Any) -> np.datetime64:
    """A time as UTC ``datetime64[ns]`` (ISO strings may end in ``Z``)."""
    if isinstance(value, str) and value.endswith("Z"):
        value = value[:-1]
    try:
        return np.datetime64(value, "ns")
    except ValueError as exc:
        raise ValueError(f"forecast_reference_time {value!r} is not a time: {exc}") from None


def _assemble(
    grid: Grid,
    forecast_reference_time: Any,
    lead_times: Sequence[int],
    thresholds: np.ndarray,
    quantiles: np.ndarray,
    prob: np.ndarray,
    quant: np.ndarray,
    mean: np.ndarray,
    relative_to: str,
    source: str,
) -> xr.Dataset:
    """The forecast dataset from ``prob`` (K, L, y, x), ``quant`` (Q, L, y, x), ``mean``
    (L, y, x); ``relative_to`` is the ``spp__relative_to_threshold`` of the thresholds."""
    t0 = _utc(forecast_reference_time)
    leads = np.asarray(lead_times, dtype=np.int64)
    if leads.ndim != 1 or np.any(leads <= 0) or np.any(np.diff(leads) <= 0):
        raise ValueError(
            f"lead_times must be positive minutes in increasing order, got {list(lead_times)!r}"
        )
    rate_attrs = {"standard_name": "lwe_precipitation_rate", "units": _RATE_UNITS}
    ds = grid.dataset(
        {
            PROBABILITY: (
                ("threshold", "lead_time", "y", "x"),
                prob.astype(np.float32, copy=False),
                {"long_name": "probability of precipitation rate above threshold", "units": "1"},
            ),
            QUANTILE: (
                ("quantile", "lead_time", "y", "x"),
                quant.astype(np.float32, copy=False),
                {**rate_attrs, "long_name": "quantile of the predicted precipitation rate"},
            ),
            MEAN: (
                ("lead_time", "y", "x"),
                mean.astype(np.float32, copy=False),
                {**rate_attrs, "long_name": "expected (mean) precipitation rate"},
            ),
        },
        lat_lon=True,
    )
    ds["crs"].attrs["long_name"] = "coordinate reference system"  # CF recommends a name
    valid = t0 + leads.astype("timedelta64[m]")  # (lead_time,)
    ds = ds.assign_coords(
        threshold=(
            "threshold",
            thresholds,
            {
                "standard_name": "lwe_precipitation_rate",
                "long_name": "precipitation rate threshold",
                "units": _RATE_UNITS,
                "spp__relative_to_threshold": relative_to,
            },
        ),
        quantile=("quantile", quantiles, {"long_name": "quantile level", "units": "1"}),
        lead_time=(
            "lead_time",
            leads.astype(np.int32),
            {"standard_name": "forecast_period", "long_name": "lead time", "units": "minutes"},
        ),
        time=(
            "lead_time",
            valid.astype("datetime64[ns]"),
            {"standard_name": "time", "long_name": "valid time"},
        ),
        forecast_reference_time=(
            (),
            t0,
            {"standard_name": "forecast_reference_time", "long_name": "forecast time (t0)"},
        ),
    )
    ds.attrs.update(
        Conventions=CONVENTIONS,
        title="Precipitation rate nowcast",
        institution="metnet-nowcast",
        source=source,
        references="Sonderby et al. 2020, MetNet: A Neural Weather Model for Precipitation "
        "Forecasting, arXiv:2003.12140",
    )
    return ds
