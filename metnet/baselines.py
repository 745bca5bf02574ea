"""Baseline nowcasts from the archive's radar: persistence and optical-flow extrapolation.

Every baseline is registered by name (:func:`get_baseline`: ``persistence``,
``optical-flow``) and has one method::

    baseline.predict(archive, t0, lead_times, domain) -> (L, ny, nx) float32 mm/h

on a :class:`metnet.forecast.Domain` of the archive grid, NaN where it has no forecast
(missing radar, or rain advected in from outside what it read).
:func:`baseline_forecast` wraps the result in the forecast dataset of
:mod:`metnet.products` (:func:`~metnet.products.deterministic_forecast_dataset`:
exceedance probabilities are 0 or 1, quantiles and mean are the forecast rate), so
baselines are verified and exported exactly like the model.

- **persistence**: the radar field at ``t0`` for every lead time.
- **optical-flow** (pysteps): a motion field from the last ``num_frames`` radar frames
  (``t0`` and the frames one archive time step apart before it) by Lucas-Kanade
  (``pysteps.motion.get_method("LK")``) on ``10 log10(rate)`` (rates below
  ``rain_threshold`` set to ``-15`` dBR, as pysteps recommends: the tracker follows
  gradients, which are far more even in log space), then semi-Lagrangian backward
  extrapolation (``pysteps.extrapolation.get_method("semilagrangian")``) of the ``t0``
  rate field. The motion is in pixels per archive time step, so a lead time of ``m``
  minutes extrapolates ``m / step`` steps. The frames are read on the domain grown by
  ``margin_px`` on every side, so rain can enter the domain from there; evaluation
  passes ``(context_px - target_px) / 2``, the margin the model's context sees around
  the domain.

Missing radar at a frame a baseline needs raises :class:`BaselineError` naming the
frame's time and the archive.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import xarray as xr
from pysteps import extrapolation, motion

from metnet.archive import Archive
from metnet.forecast import Domain, read_window
from metnet.products import (
    DEFAULT_QUANTILES,
    DEFAULT_THRESHOLDS,
    deterministic_forecast_dataset,
)

#: The radar variable the baselines extrapolate, mm/h.
RADAR_VARIABLE = "precipitation_rate"


class BaselineError(ValueError):
    """A baseline that cannot forecast as asked; names the archive and the missing time."""


class Baseline(Protocol):
    """What every baseline implements (see the module docstring)."""

    name: str

    def predict(
        self, archive: Archive, t0: np.datetime64, lead_times: Sequence[int], domain: Domain
    ) -> np.ndarray:
        """``(L, ny, nx)`` float32 forecast rates (mm/h) at ``t0 + lead_times`` minutes."""
        ...


def _require_radar(archive: Archive, times: np.ndarray, who: str) -> None:
    missing = times[~archive.is_available(RADAR_VARIABLE, times)]
    if missing.size:
        listed = ", ".join(str(np.datetime64(t, "m")) for t in missing)
        raise BaselineError(
            f"{who} needs {RADAR_VARIABLE} at {listed}, missing from archive {archive.store}"
        )


class Persistence:
    """The latest radar field, unchanged, at every lead time."""

    name = "persistence"

    def __repr__(self) -> str:
        return "Persistence()"

    def predict(
        self, archive: Archive, t0: np.datetime64, lead_times: Sequence[int], domain: Domain
    ) -> np.ndarray:
        """``(L, ny, nx)`` float32: the rate at ``t0`` (mm/h) repeated for each lead time."""
        t0 = np.datetime64(t0, "ns")
        _require_radar(archive, np.array([t0]), self.name)
        last = read_window(archive, RADAR_VARIABLE, [t0], domain)  # (1, ny, nx)
        return np.repeat(last, len(lead_times), axis=0)  # (L, ny, nx)


class OpticalFlow:
    """pysteps Lucas-Kanade motion + semi-Lagrangian extrapolation (see the module docstring).

    Args:
        num_frames: radar frames the motion is estimated from (at least 2).
        margin_px: pixels read around the domain on every side.
        rain_threshold: rates below this (mm/h) count as no rain for the motion.
    """

    name = "optical-flow"

    def __init__(self, num_frames: int = 3, margin_px: int = 0, rain_threshold: float = 0.1):
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}")
        if isinstance(margin_px, bool) or not isinstance(margin_px, int) or margin_px < 0:
            raise ValueError(f"margin_px must be a non-negative integer, got {margin_px!r}")
        if not rain_threshold > 0:
            raise ValueError(f"rain_threshold must be positive (mm/h), got {rain_threshold!r}")
        self.num_frames = num_frames
        self.margin_px = margin_px
        self.rain_threshold = float(rain_threshold)
        self._motion = motion.get_method("LK")
        self._extrapolate = extrapolation.get_method("semilagrangian")

    def __repr__(self) -> str:
        return (
            f"OpticalFlow(num_frames={self.num_frames}, margin_px={self.margin_px}, "
            f"rain_threshold={self.rain_threshold:g})"
        )

    def motion_field(self, frames: np.ndarray) -> np.ndarray:
        """Motion ``(2, m, n)`` (x then y component, pixels per frame step, x eastward and
        y southward, i.e. along columns and rows) from ``(T, m, n)`` rates in mm/h, oldest
        first; NaN pixels are masked. Zero where there is nothing to track."""
        with np.errstate(divide="ignore", invalid="ignore"):
            dbr = np.where(frames >= self.rain_threshold, 10.0 * np.log10(frames), -15.0)  # (T, m, n)
        dbr[np.isnan(frames)] = np.nan
        if not np.any(frames >= self.rain_threshold):
            return np.zeros((2,) + frames.shape[1:])  # (2, m, n): no rain to track
        with warnings.catch_warnings():
            # pysteps' outlier test of the tracked vectors warns when too few features
            # lie near a vector to estimate their covariance (small or nearly dry
            # windows); it then keeps the vector, which is what we want, so stay quiet.
            warnings.filterwarnings("ignore", "Singular matrix during outlier detection")
            warnings.filterwarnings("ignore", "Degrees of freedom <= 0", RuntimeWarning)
            warnings.filterwarnings("ignore", "(divide by zero|invalid value) encountered", RuntimeWarning)
            return self._motion(dbr, verbose=False)  # (2, m, n)

    def predict(
        self, archive: Archive, t0: np.datetime64, lead_times: Sequence[int], domain: Domain
    ) -> np.ndarray:
        """``(L, ny, nx)`` float32 extrapolated rates (mm/h); NaN where the rain would come
        from outside the domain grown by ``margin_px`` or from missing pixels."""
        t0 = np.datetime64(t0, "ns")
        step = np.timedelta64(archive.time_step, "ns")
        times = t0 - np.arange(self.num_frames - 1, -1, -1) * step  # (T,) oldest first
        _require_radar(archive, times, self.name)
        outer = domain.expand(self.margin_px)
        frames = read_window(archive, RADAR_VARIABLE, times, outer)  # (T, H, W) mm/h
        velocity = self.motion_field(frames)  # (2, H, W) pixels per step
        steps = [float(lead) / (step / np.timedelta64(1, "m")) for lead in lead_times]
        moved = self._extrapolate(
            frames[-1], velocity, steps, outval=np.nan, allow_nonfinite_values=True
        )  # (L, H, W)
        m = self.margin_px
        inner = moved[:, m : m + domain.ny, m : m + domain.nx]  # (L, ny, nx)
        return np.maximum(inner, 0.0).astype(np.float32)  # NaN stays NaN


#: Baselines by name; :func:`get_baseline` looks names up case-insensitively.
BASELINES: dict[str, type] = {
    "persistence": Persistence,
    "optical-flow": OpticalFlow,
}
BASELINE_NAMES: tuple[str, ...] = tuple(BASELINES)


def get_baseline(name: str, **options: Any) -> Baseline:
    """The baseline registered as ``name`` (case-insensitive), built with ``options``."""
    key = str(name).lower()
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid baselines: {', '.join(BASELINE_NAMES)}")
    cls = BASELINES[key]
    try:
        inspect.signature(cls).bind(**options)
    except TypeError:
        accepted = ", ".join(inspect.signature(cls).parameters) or "none"
        raise ValueError(
            f"baseline {key!r}: invalid options {sorted(options)}; accepted options: {accepted}"
        ) from None
    return cls(**options)


def baseline_forecast(
    baseline: Baseline,
    archive: Archive,
    t0: Any,
    lead_times: Sequence[int],
    domain: Domain,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> xr.Dataset:
    """The forecast dataset (:mod:`metnet.products`) of ``baseline`` on ``domain``."""
    rate = baseline.predict(archive, np.datetime64(t0, "ns"), lead_times, domain)  # (L, ny, nx)
    return deterministic_forecast_dataset(
        rate, domain.grid(archive.grid), t0, list(lead_times), thresholds, quantiles,
        source=f"{baseline.name} baseline",
    )  # fmt: skip
