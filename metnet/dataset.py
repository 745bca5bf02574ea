"""Training examples from the archive: packed input stacks, binned targets, normalisation.

One example is a forecast time ``t0``, a lead time and a target tile centre
``(center_y, center_x)`` in 1 km grid pixels:

- **inputs** ``(T, C, S, S)`` float32, ``T = task.num_frames`` frames at
  ``t0 - history_minutes, ..., t0`` every ``history_interval_minutes`` (oldest first),
  ``C = len(task.input_channel_names())`` channels in exactly that order,
  ``S = task.packed_size``. Two views per frame:

  - ``@context``: the whole ``context_px`` x ``context_px`` window centred on the target,
    NaN-mean pooled by ``task.context_pool``. With a pool of 4 and a window aligned with
    the 4 km cells it is read from the archive's 4 km level (which holds exactly that
    NaN-mean), otherwise the 1 km window is read and pooled here.
  - ``@center``: the central ``packed_size`` pixels at 1 km.

  Radar variables are read at the frame times themselves. A satellite frame is the
  latest scan with every task band available at or before the frame time and at most
  :data:`metnet.archive.SATELLITE_MAX_AGE` (15 min) older, else missing. Each family (radar, satellite) has one
  validity mask per view: 1 where every variable of the family is observed, 0 elsewhere
  (missing frame, no coverage, context overhanging the grid). Values are normalised
  (:func:`normalize`) and NaN becomes 0, so NaN never reaches the model; the masks carry
  the missingness. Static fields are normalised the same way (0 outside the grid).
  Calendar features are ``sin(2 pi phase)``, ``cos(2 pi phase)`` of each frame time,
  constant over the frame (:data:`CALENDAR_FEATURES`).
- **target** ``(target_px, target_px)`` int64 bin indices
  (:func:`metnet.bins.rate_to_bin`) of ``precipitation_rate`` at ``t0 + lead_time`` on
  the central tile, -1 where the rate is missing, with a bool validity mask.

Window geometry: a window of even side ``n`` "centred" on ``(cy, cx)`` covers rows
``cy - n/2 .. cy + n/2 - 1`` (same for columns); context, centre view and target are
concentric. Windows may overhang the grid; the archive pads them with NaN.

Which ``t0`` are valid, which lead times each has, and which satellite scan feeds each
frame are decided from the archive's availability index alone, no data read
(:class:`ExampleBuilder`). :class:`ArchiveSampler` draws examples deterministically from
``(seed, index)`` for training; :func:`build_inputs` is the entry point for forecasting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metnet.archive import SATELLITE_MAX_AGE, Archive, nanmean_pool
from metnet.bins import rate_to_bin
from metnet.config import TaskConfig

#: Pooling factor of the archive's coarse level (4 km on the 1 km grid).
COARSE_LEVEL = 4
#: The variable whose bins are the target.
TARGET_VARIABLE = "precipitation_rate"
#: Variables normalised as ``log1p(max(x, 0))`` before standardisation: rain rates span
#: four orders of magnitude and are mostly zero. Everything else (ABI reflectance
#: factors and brightness temperatures, static fields) is standardised as stored.
LOG1P_VARIABLES = frozenset({"precipitation_rate"})
#: Side (1 km pixels) of the random windows :func:`compute_normalization` reads per time.
NORMALIZATION_WINDOW = 256
#: Standard deviations below this (a constant field) are replaced by 1 so the field
#: normalises to 0 instead of dividing by ~0.
MIN_STD = 1e-6

Period = tuple[np.datetime64, np.datetime64]


class DatasetError(ValueError):
    """An archive, task, period or normalisation that cannot produce examples."""


# ----------------------------------------------------------------------------- times


def _ns(times: Any) -> np.ndarray:
    """``times`` as a 1-D int64 array of nanoseconds since the epoch."""
    return np.atleast_1d(np.asarray(times, dtype="datetime64[ns]")).astype(np.int64)


def _minutes_ns(minutes: Any) -> np.ndarray:
    return np.asarray(minutes, dtype=np.int64) * 60_000_000_000


def _member(sorted_ns: np.ndarray, query_ns: np.ndarray) -> np.ndarray:
    """Whether each of ``query_ns`` (any shape) occurs in the sorted 1-D ``sorted_ns``."""
    if sorted_ns.size == 0:
        return np.zeros(query_ns.shape, dtype=bool)
    pos = np.clip(np.searchsorted(sorted_ns, query_ns), 0, sorted_ns.size - 1)
    return sorted_ns[pos] == query_ns


def _fmt(t: Any) -> str:
    return str(np.datetime64(t, "m"))


def _check_period(period: Period | None) -> tuple[int, int] | None:
    """``period`` ``(start, end)`` (inclusive) as nanoseconds, checked."""
    if period is None:
        return None
    try:
        start, end = (int(_ns(t)[0]) for t in period)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"period must be a (start, end) pair of times, got {period!r}") from exc
    if start > end:
        raise DatasetError(f"period starts after it ends: {_fmt(period[0])} > {_fmt(period[1])}")
    return start, end


def _available(archive: Archive, variables: tuple[str, ...], period: tuple[int, int] | None) -> np.ndarray:
    """Sorted ns times at which every one of ``variables`` is available (within ``period``)."""
    common: np.ndarray | None = None
    for v in variables:
        t = np.unique(_ns(archive.available_times(v)))
        common = t if common is None else np.intersect1d(common, t, assume_unique=True)
    common = np.empty(0, np.int64) if common is None else common
    if period is not None:
        common = common[(common >= period[0]) & (common <= period[1])]
    return common


def split_periods(
    archive: Archive,
    task: TaskConfig,
    validation_fraction: float = 0.2,
    *,
    gap_minutes: int | None = None,
) -> dict[str, Period]:
    """Train and validation periods: the archive's time range (that of
    :data:`TARGET_VARIABLE`) split into a leading ``"train"`` and a trailing
    ``"validation"`` part, both inclusive ``(start, end)``.

    The periods are ``gap_minutes`` apart (default: the largest lead time), so a
    training example, whose inputs and targets all lie inside the training period when
    the sampler is given it, is never closer than that to a validation target.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    gap = _minutes_ns(task.max_lead_time_minutes if gap_minutes is None else gap_minutes)
    times = _available(archive, (TARGET_VARIABLE,), None)
    if times.size == 0:
        raise DatasetError(f"archive {archive.store}: no {TARGET_VARIABLE} data to split")
    first, last = int(times[0]), int(times[-1])
    step = int(np.timedelta64(archive.time_step, "ns").astype(np.int64))
    # Validation starts on a time slot so both periods keep whole slots.
    split = first + round((1.0 - validation_fraction) * (last - first) / step) * step
    train_end = split - int(gap)
    if train_end < first or split > last:
        raise DatasetError(
            f"archive {archive.store}: {_fmt(times[0].astype('datetime64[ns]'))} to "
            f"{_fmt(times[-1].astype('datetime64[ns]'))} is too short to split into train and "
            f"validation periods {int(gap) // 60_000_000_000} minutes apart"
        )
    as_time = lambda ns: np.datetime64(ns, "ns")  # noqa: E731
    return {
        "train": (as_time(first), as_time(train_end)),
        "validation": (as_time(split), as_time(last)),
    }


# ----------------------------------------------------------------------------- calendar


def _day_fraction(t: np.ndarray) -> np.ndarray:
    """Fraction of the UTC day elapsed, in [0, 1)."""
    day = t.astype("datetime64[D]")
    return (t - day) / np.timedelta64(1, "D")


def _hour_of_day(t: np.ndarray) -> np.ndarray:
    return _day_fraction(t)


def _day_of_year(t: np.ndarray) -> np.ndarray:
    year = t.astype("datetime64[Y]")
    first = year.astype("datetime64[D]")
    days_in_year = ((year + 1).astype("datetime64[D]") - first).astype(np.float64)
    day_index = (t.astype("datetime64[D]") - first).astype(np.float64)  # 0 on 1 January
    return (day_index + _day_fraction(t)) / days_in_year


def _month(t: np.ndarray) -> np.ndarray:
    return (t.astype("datetime64[M]").astype(np.int64) % 12) / 12.0


#: Calendar feature name -> phase in [0, 1) of UTC times; encoded as sin and cos of 2 pi phase.
CALENDAR_FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hour_of_day": _hour_of_day,
    "day_of_year": _day_of_year,
    "month": _month,
}


def calendar_features(times: Any, names: tuple[str, ...]) -> np.ndarray:
    """``(T, 2 * len(names))`` float32: ``sin``, ``cos`` of each named feature's phase
    (case-insensitive names from :data:`CALENDAR_FEATURES`) at each of ``times`` (UTC)."""
    t = np.atleast_1d(np.asarray(times, dtype="datetime64[ns]"))
    columns = []
    for name in names:
        phase_of = CALENDAR_FEATURES.get(name.lower())
        if phase_of is None:
            raise ValueError(
                f"unknown time feature {name!r}; valid names: {', '.join(CALENDAR_FEATURES)}"
            )
        angle = 2.0 * math.pi * phase_of(t)  # (T,)
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1).astype(np.float32) if columns else np.zeros((t.size, 0), np.float32)


# ----------------------------------------------------------------------------- normalisation


def transform(name: str, values: np.ndarray) -> np.ndarray:
    """The fixed transform applied before standardisation (see :data:`LOG1P_VARIABLES`)."""
    if name in LOG1P_VARIABLES:
        return np.log1p(np.maximum(values, 0.0))  # NaN stays NaN
    return values


def normalize(name: str, values: np.ndarray, normalization: dict[str, dict[str, float]]) -> np.ndarray:
    """``(transform(values) - mean) / std`` as float32, statistics of ``name``; NaN stays NaN."""
    stats = normalization[name]
    return ((transform(name, values) - stats["mean"]) / stats["std"]).astype(np.float32)


def check_normalization(
    normalization: Any, names: tuple[str, ...] = (), source: str = "normalization"
) -> dict[str, dict[str, float]]:
    """``normalization`` checked to be ``{name: {"mean": finite, "std": positive}}`` and to
    contain every one of ``names``; returned as a plain dict of floats."""
    if not isinstance(normalization, dict):
        raise DatasetError(f"{source}: must map names to {{'mean', 'std'}}, got {type(normalization).__name__}")
    checked: dict[str, dict[str, float]] = {}
    for name, stats in normalization.items():
        if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
            raise DatasetError(f"{source}: {name!r} must have exactly the keys 'mean' and 'std', got {stats!r}")
        try:
            mean, std = float(stats["mean"]), float(stats["std"])
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: {name!r} mean and std must be numbers, got {stats!r}") from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DatasetError(f"{source}: {name!r} needs a finite mean and a positive std, got {stats!r}")
        checked[str(name)] = {"mean": mean, "std": std}
    missing = [n for n in names if n not in checked]
    if missing:
        raise DatasetError(
            f"{source}: no statistics for {', '.join(map(repr, missing))}; "
            f"it has: {', '.join(checked) or 'none'}"
        )
    return checked


def save_normalization(normalization: dict[str, dict[str, float]], path: str | Path) -> None:
    """Write normalisation statistics as JSON."""
    checked = check_normalization(normalization)
    Path(path).write_text(json.dumps(checked, indent=2, sort_keys=True) + "\n")


def load_normalization(path: str | Path) -> dict[str, dict[str, float]]:
    """Read statistics written by :func:`save_normalization`; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read normalisation statistics ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    return check_normalization(data, source=str(path))


class _Moments:
    """Running count, mean and variance (float64) of the finite values added."""

    def __init__(self) -> None:
        self.count, self.shift, self.total, self.total_sq = 0, 0.0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        # Shift by the first batch's mean so the sums of squares do not cancel.
        if self.count == 0 and v.size:
            self.shift = float(v.mean())
        if v.size:
            d = v - self.shift
            self.count += v.size
            self.total += float(d.sum())
            self.total_sq += float((d * d).sum())

    def stats(self) -> dict[str, float]:
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        std = math.sqrt(var)
        return {"mean": self.shift + mean, "std": std if std >= MIN_STD else 1.0}


def compute_normalization(
    archive: Archive,
    task: TaskConfig,
    *,
    max_times: int = 64,
    seed: int = 0,
    period: Period | None = None,
) -> dict[str, dict[str, float]]:
    """Mean and std, after :func:`transform`, of every input variable and static field.

    Dynamic variables: up to ``max_times`` of the variable's available times (within
    ``period``, inclusive) drawn at random without replacement, one random
    :data:`NORMALIZATION_WINDOW`-pixel square inside the grid read at 1 km per time.
    Static fields: the whole field at the 4 km level. NaN is ignored; a constant field
    gets std 1. Returns ``{name: {"mean": float, "std": float}}`` (JSON-serialisable).
    """
    check_archive(archive, task)
    bounds = _check_period(period)
    rng = np.random.default_rng(seed)
    ny, nx = archive.grid.shape
    size = min(ny, nx, NORMALIZATION_WINDOW)
    result: dict[str, dict[str, float]] = {}
    for name in task.input_variables():
        times = _available(archive, (name,), bounds)
        if times.size == 0:
            raise DatasetError(f"archive {archive.store}: no {name} data{_period_text(period)} to compute normalisation statistics from")
        chosen = np.sort(rng.choice(times, size=min(max_times, times.size), replace=False))
        moments = _Moments()
        for t in chosen:
            y0, x0 = int(rng.integers(0, ny - size + 1)), int(rng.integers(0, nx - size + 1))
            window = archive.read(name, np.array([t], dtype="datetime64[ns]"), y0, x0, size)  # (1, size, size)
            moments.add(transform(name, window.astype(np.float64)))
        result[name] = _stats_or_error(moments, archive, name)
    ny4, nx4 = ny // COARSE_LEVEL, nx // COARSE_LEVEL
    for name in task.static_features:
        moments = _Moments()
        moments.add(archive.read_static(name, 0, 0, max(ny4, nx4), level=COARSE_LEVEL))  # NaN-padded square
        result[name] = _stats_or_error(moments, archive, name)
    return result


def _stats_or_error(moments: _Moments, archive: Archive, name: str) -> dict[str, float]:
    if moments.count == 0:
        raise DatasetError(f"archive {archive.store}: {name} has no finite values in the sampled data")
    return moments.stats()


def _period_text(period: Period | None) -> str:
    return "" if period is None else f" in {_fmt(period[0])} .. {_fmt(period[1])}"


# ----------------------------------------------------------------------------- reading


def check_archive(archive: Archive, task: TaskConfig) -> None:
    """Raise :class:`DatasetError` unless ``archive`` holds everything ``task`` reads, on
    a grid of the task's resolution."""
    res_m = archive.grid_config.resolution_m
    if abs(task.resolution_km * 1000.0 - res_m) > 1e-6:
        raise DatasetError(
            f"task resolution {task.resolution_km:g} km differs from the grid resolution "
            f"{res_m / 1000:g} km of archive {archive.store}"
        )
    needed = dict.fromkeys((*task.input_variables(), TARGET_VARIABLE))
    missing = [v for v in needed if v not in archive.variables]
    if missing:
        raise DatasetError(
            f"archive {archive.store} has no variable {', '.join(map(repr, missing))}; "
            f"it has: {', '.join(archive.variables) or 'none'}"
        )
    missing = [s for s in task.static_features if s not in archive.static_variables]
    if missing:
        raise DatasetError(
            f"archive {archive.store} has no static field {', '.join(map(repr, missing))}; "
            f"it has: {', '.join(archive.static_variables) or 'none'}"
        )


@dataclass(frozen=True)
class _View:
    """Where one packed view comes from: a ``size`` square at archive ``level`` with
    top-left ``(y0, x0)`` in that level's pixels, then NaN-mean pooled by ``pool``."""

    level: int
    y0: int
    x0: int
    size: int
    pool: int

    def read(self, archive: Archive, variable: str, times_ns: np.ndarray) -> np.ndarray:
        """``(len(times), S, S)`` float32 values at ``times_ns`` (NaN at missing times)."""
        if times_ns.size == 0:
            s = self.size // self.pool
            return np.empty((0, s, s), np.float32)
        times = times_ns.astype("datetime64[ns]")
        raw = archive.read(variable, times, self.y0, self.x0, self.size, level=self.level)  # (T, size, size)
        return raw if self.pool == 1 else nanmean_pool(raw, self.pool)  # (T, S, S)

    def crop(self, field: np.ndarray) -> np.ndarray:
        """The view of a whole static ``field`` ``(ny, nx)`` of the view's level: ``(S, S)``
        float32, NaN outside the grid."""
        out = np.full((self.size, self.size), np.nan, np.float32)  # (size, size)
        ny, nx = field.shape
        ya, yb, xa, xb = max(self.y0, 0), min(self.y0 + self.size, ny), max(self.x0, 0), min(self.x0 + self.size, nx)
        if ya < yb and xa < xb:
            out[ya - self.y0 : yb - self.y0, xa - self.x0 : xb - self.x0] = field[ya:yb, xa:xb]
        return out if self.pool == 1 else nanmean_pool(out, self.pool)  # (S, S)


class ExampleBuilder:
    """Builds inputs and targets of one task from one archive.

    The archive's availability index is read once here (restricted to ``period``, an
    inclusive ``(start, end)``, when given: then every input frame, satellite scan and
    target of every example lies inside the period). Picklable: an :class:`Archive`
    pickles as its address and is reopened by the process that unpickles it (each
    DataLoader worker), so no zarr handle crosses processes.

    Static fields are read whole, once per process and level, and kept in memory: one
    read instead of one per example and view (4 bytes per pixel and field, e.g. 180 MB
    for the three fields of the ``paper`` grid at both levels).
    """

    def __init__(
        self,
        archive: Archive,
        task: TaskConfig,
        normalization: dict[str, dict[str, float]],
        *,
        period: Period | None = None,
    ):
        check_archive(archive, task)
        self.task = task
        self.normalization = check_normalization(
            normalization, (*task.input_variables(), *task.static_features)
        )
        for name in task.time_features:  # fail now, not in the first example
            calendar_features(np.zeros(1, "datetime64[ns]"), (name,))
        self.period = period
        bounds = _check_period(period)
        self.archive = archive
        self._channel = {name: i for i, name in enumerate(task.input_channel_names())}
        self._radar_ns = _available(archive, task.radar_variables, bounds)
        self._satellite_ns = _available(archive, task.input_variables()[len(task.radar_variables):], bounds) if task.satellite_bands else np.empty(0, np.int64)
        self._target_ns = _available(archive, (TARGET_VARIABLE,), bounds)
        # Frame offsets from t0, oldest first.
        self._offsets_ns = _minutes_ns(np.arange(-task.history_minutes, 1, task.history_interval_minutes))  # (T,)
        self._leads = np.asarray(task.lead_times, dtype=np.int64)  # (L,) minutes
        self._grid_shape = archive.grid.shape
        self._static: dict[tuple[str, int], np.ndarray] = {}  # (name, level) -> (ny, nx)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_static"] = {}  # each process fills its own cache
        return state

    def _static_field(self, name: str, level: int) -> np.ndarray:
        """The whole static field ``name`` at ``level``: ``(ny, nx)`` float32, cached."""
        if (name, level) not in self._static:
            ny, nx = (n // level for n in self._grid_shape)
            square = self.archive.read_static(name, 0, 0, max(ny, nx), level=level)  # NaN-padded
            self._static[name, level] = square[:ny, :nx]
        return self._static[name, level]

    # ----------------------------------------------------------------- times

    def valid_times(self) -> np.ndarray:
        """Forecast times (datetime64[ns], sorted) with every radar frame of the history
        and at least one lead time's target available (within the period)."""
        t0 = self._radar_ns  # (N,) t0 is itself the newest frame
        history_ok = _member(self._radar_ns, t0[:, None] + self._offsets_ns[None, :]).all(axis=1)  # (N,)
        lead_ok = np.zeros(t0.shape, dtype=bool)  # (N,)
        for lead_ns in _minutes_ns(self._leads):  # one pass per lead keeps memory at O(N)
            lead_ok |= _member(self._target_ns, t0 + lead_ns)
        return t0[history_ok & lead_ok].astype("datetime64[ns]")

    def lead_times(self, t0: np.datetime64) -> np.ndarray:
        """Lead times (int64 minutes) whose target is available for forecast time ``t0``."""
        ok = _member(self._target_ns, _ns(t0)[0] + _minutes_ns(self._leads))  # (L,)
        return self._leads[ok]

    def frame_times(self, t0: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
        """The ``(T,)`` input frame times and the ``(T,)`` satellite scan time used for each
        frame (NaT where none is recent enough), both datetime64[ns]."""
        frames = _ns(t0)[0] + self._offsets_ns  # (T,)
        scans = np.full(frames.shape, np.iinfo(np.int64).min, dtype=np.int64)  # NaT
        if self._satellite_ns.size:
            pos = np.searchsorted(self._satellite_ns, frames, side="right") - 1  # latest scan <= frame
            latest = self._satellite_ns[np.maximum(pos, 0)]
            max_age = int(SATELLITE_MAX_AGE.astype("timedelta64[ns]").astype(np.int64))
            recent = (pos >= 0) & (frames - latest <= max_age)
            scans[recent] = latest[recent]
        return frames.astype("datetime64[ns]"), scans.astype("datetime64[ns]")

    # ----------------------------------------------------------------- data

    def _views(self, center_y: int, center_x: int) -> dict[str, _View]:
        task = self.task
        s, ctx, pool = task.packed_size, task.context_px, task.context_pool
        cy0, cx0 = center_y - ctx // 2, center_x - ctx // 2
        if pool == COARSE_LEVEL and cy0 % COARSE_LEVEL == 0 and cx0 % COARSE_LEVEL == 0:
            context = _View(COARSE_LEVEL, cy0 // COARSE_LEVEL, cx0 // COARSE_LEVEL, s, 1)
        else:
            context = _View(1, cy0, cx0, ctx, pool)
        center = _View(1, center_y - s // 2, center_x - s // 2, s, 1)
        return {"context": context, "center": center}

    def inputs(self, t0: np.datetime64, center_y: int, center_x: int) -> np.ndarray:
        """The packed input stack ``(T, C, S, S)`` float32 for forecast time ``t0`` and the
        target centred on pixel ``(center_y, center_x)``; NaN-free."""
        task, archive, ch = self.task, self.archive, self._channel
        frames, scans = self.frame_times(t0)
        out = np.zeros((task.num_frames, len(ch), task.packed_size, task.packed_size), np.float32)  # (T, C, S, S)
        has_scan = ~np.isnat(scans)
        scan_ns, scan_index = np.unique(scans[has_scan].astype(np.int64), return_inverse=True)
        satellite = task.input_variables()[len(task.radar_variables):]
        for view_name, view in self._views(center_y, center_x).items():
            radar = {v: view.read(archive, v, frames.astype(np.int64)) for v in task.radar_variables}  # (T, S, S) each
            self._put_family(out, radar, view_name, "radar_valid")
            if satellite:
                sat = {}
                for v in satellite:
                    full = np.full(out[:, 0].shape, np.nan, np.float32)  # (T, S, S)
                    full[has_scan] = view.read(archive, v, scan_ns)[scan_index]  # each scan read once
                    sat[v] = full
                self._put_family(out, sat, view_name, "satellite_valid")
            for name in task.static_features:
                field = normalize(name, view.crop(self._static_field(name, view.level)), self.normalization)  # (S, S)
                out[:, ch[f"{name}@{view_name}"]] = np.nan_to_num(field, nan=0.0)  # broadcast over T
        features = calendar_features(frames, task.time_features)  # (T, 2F)
        for k, name in enumerate(task.time_features):
            out[:, ch[f"{name}_sin"]] = features[:, 2 * k, None, None]
            out[:, ch[f"{name}_cos"]] = features[:, 2 * k + 1, None, None]
        return out

    def _put_family(self, out: np.ndarray, values: dict[str, np.ndarray], view: str, mask_name: str) -> None:
        """Write a family's normalised variables (NaN -> 0) and its validity mask (1 where
        every variable of the family is finite) into ``out`` ``(T, C, S, S)``."""
        valid = np.ones(out[:, 0].shape, dtype=bool)  # (T, S, S)
        for name, raw in values.items():
            finite = np.isfinite(raw)
            valid &= finite
            out[:, self._channel[f"{name}@{view}"]] = np.where(finite, normalize(name, raw, self.normalization), 0.0)
        out[:, self._channel[f"{mask_name}@{view}"]] = valid

    def target(self, t0: np.datetime64, lead_time: int, center_y: int, center_x: int) -> tuple[np.ndarray, np.ndarray]:
        """Bin indices ``(H, W)`` int64 (-1 where missing) and validity ``(H, W)`` bool of
        :data:`TARGET_VARIABLE` at ``t0 + lead_time`` (minutes) on the target tile."""
        tp = self.task.target_px
        when = np.datetime64(t0, "ns") + np.timedelta64(int(lead_time), "m")
        rate = self.archive.read(TARGET_VARIABLE, np.array([when]), center_y - tp // 2, center_x - tp // 2, tp)[0]  # (H, W) mm/h
        bins = rate_to_bin(rate, self.task.bin_width_mm_h, self.task.num_bins)  # -1 where NaN
        return bins, bins >= 0

    # ----------------------------------------------------------------- locations

    def centre_lattice(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidate target centres: rows ``(Ny,)`` and columns ``(Nx,)`` (int64), multiples
        of :data:`COARSE_LEVEL` (so the context aligns with the 4 km level) whose target
        tile lies inside the grid."""
        half = self.task.target_px // 2
        rows, cols = (
            np.arange(-(-half // COARSE_LEVEL) * COARSE_LEVEL, n - half + 1, COARSE_LEVEL, dtype=np.int64)
            for n in self._grid_shape
        )
        if rows.size == 0 or cols.size == 0:
            raise DatasetError(
                f"archive {self.archive.store}: the {self._grid_shape[0]} x {self._grid_shape[1]} grid "
                f"is smaller than the {self.task.target_px}-pixel target tile"
            )
        return rows, cols

    def rain_fraction(self, t0: np.datetime64, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(len(rows), len(cols))`` fraction of the target tile raining at ``t0`` for each
        candidate centre, from the 4 km level: a 4 km cell rains when its mean rate is at
        least one bin width (i.e. not in bin 0). One read of the whole 4 km frame."""
        ny4, nx4 = (n // COARSE_LEVEL for n in self._grid_shape)
        t = np.array([np.datetime64(t0, "ns")])
        coarse = self.archive.read(TARGET_VARIABLE, t, 0, 0, max(ny4, nx4), level=COARSE_LEVEL)[0, :ny4, :nx4]  # (ny4, nx4)
        rain = (coarse >= self.task.bin_width_mm_h).astype(np.float64)  # NaN -> dry
        integral = np.zeros((ny4 + 1, nx4 + 1))
        integral[1:, 1:] = rain.cumsum(0).cumsum(1)  # (ny4 + 1, nx4 + 1) summed-area table
        w = max(self.task.target_px // COARSE_LEVEL, 1)
        top = np.clip((rows - self.task.target_px // 2) // COARSE_LEVEL, 0, ny4 - w)[:, None]  # (Ny, 1)
        left = np.clip((cols - self.task.target_px // 2) // COARSE_LEVEL, 0, nx4 - w)[None, :]  # (1, Nx)
        total = integral[top + w, left + w] - integral[top, left + w] - integral[top + w, left] + integral[top, left]
        return total / (w * w)  # (Ny, Nx)


def build_inputs(
    archive: Archive,
    task: TaskConfig,
    t0: np.datetime64,
    center_y: int,
    center_x: int,
    normalization: dict[str, dict[str, float]],
) -> np.ndarray:
    """The input stack ``(T, C, S, S)`` float32 for forecast time ``t0`` and the target
    centred on 1 km pixel ``(center_y, center_x)`` (see the module docstring).

    Builds an :class:`ExampleBuilder` per call; to build many tiles of one archive, make
    one builder and call its :meth:`~ExampleBuilder.inputs`.
    """
    return ExampleBuilder(archive, task, normalization).inputs(t0, center_y, center_x)


# ----------------------------------------------------------------------------- sampler


class ArchiveSampler(torch.utils.data.Dataset):
    """Training examples drawn from an archive; item ``i`` depends only on ``(seed, i)``.

    Each item draws, from ``numpy.random.default_rng([seed, i])``: a forecast time
    uniformly among :meth:`ExampleBuilder.valid_times`; a lead time uniformly among the
    task's lead times whose target is available for it; a target centre on
    :meth:`ExampleBuilder.centre_lattice`, uniformly, or with ``oversample_rain``
    proportionally to ``rain_epsilon + f`` where ``f`` is the tile's raining fraction at
    ``t0`` (:meth:`ExampleBuilder.rain_fraction`): a dry tile is then drawn
    ``rain_epsilon / (rain_epsilon + 1)`` times as often as a fully raining one. This
    biases the training climatology toward rain; calibrate on validation data drawn
    without it.

    Resuming training exactly is starting the index sequence where it stopped. Use one
    sampler per period (:func:`split_periods`) for a leak-free train/validation split.
    Items are dicts of tensors: ``inputs`` ``(T, C, S, S)`` float32, ``lead_time`` int64
    minutes, ``target`` ``(H, W)`` int64 bin index (-1 where missing), ``target_valid`` ``(H, W)`` bool,
    ``time`` int64 ns since the epoch (t0), ``center`` ``(2,)`` int64 (row, column).
    Works with ``DataLoader(num_workers > 0)``: each worker reopens the archive.
    """

    def __init__(
        self,
        archive: Archive,
        task: TaskConfig,
        normalization: dict[str, dict[str, float]],
        *,
        period: Period | None = None,
        num_examples: int | None = None,
        seed: int = 0,
        oversample_rain: bool = False,
        rain_epsilon: float = 0.1,
    ):
        self.builder = ExampleBuilder(archive, task, normalization, period=period)
        self.valid_times = self.builder.valid_times()  # (N,) datetime64[ns]
        if self.valid_times.size == 0:
            raise DatasetError(
                f"archive {archive.store}: no valid forecast times{_period_text(period)}: each needs "
                f"{', '.join(task.radar_variables)} at every input frame "
                f"(t0 - {task.history_minutes} min .. t0 every {task.history_interval_minutes} min) "
                f"and {TARGET_VARIABLE} at t0 + a lead time ({task.lead_time_step_minutes} .. "
                f"{task.max_lead_time_minutes} min)"
            )
        if num_examples is not None and num_examples < 1:
            raise DatasetError(f"num_examples must be positive, got {num_examples}")
        if oversample_rain and not rain_epsilon > 0:
            raise DatasetError(f"rain_epsilon must be positive (dry tiles need a chance), got {rain_epsilon}")
        self.num_examples = self.valid_times.size if num_examples is None else int(num_examples)
        self.seed = int(seed)
        self.oversample_rain = oversample_rain
        self.rain_epsilon = float(rain_epsilon)
        self._rows, self._cols = self.builder.centre_lattice()

    def __len__(self) -> int:
        return self.num_examples

    def draw(self, index: int) -> tuple[np.datetime64, int, int, int]:
        """The ``(t0, lead_time, center_y, center_x)`` of item ``index``."""
        rng = np.random.default_rng([self.seed, index])
        t0 = self.valid_times[rng.integers(self.valid_times.size)]
        lead = int(rng.choice(self.builder.lead_times(t0)))
        if self.oversample_rain:
            weight = self.rain_epsilon + self.builder.rain_fraction(t0, self._rows, self._cols)  # (Ny, Nx)
            k = rng.choice(weight.size, p=(weight / weight.sum()).ravel())
            i, j = divmod(int(k), self._cols.size)
        else:
            i, j = int(rng.integers(self._rows.size)), int(rng.integers(self._cols.size))
        return t0, lead, int(self._rows[i]), int(self._cols[j])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        t0, lead, cy, cx = self.draw(index)
        target, valid = self.builder.target(t0, lead, cy, cx)
        return {
            "inputs": torch.from_numpy(self.builder.inputs(t0, cy, cx)),
            "lead_time": torch.tensor(lead, dtype=torch.int64),
            "target": torch.from_numpy(target),
            "target_valid": torch.from_numpy(valid),
            "time": torch.tensor(int(np.datetime64(t0, "ns").astype(np.int64)), dtype=torch.int64),
            "center": torch.tensor([cy, cx], dtype=torch.int64),
        }
