"""Training examples from the archive: packed input stacks, binned targets, normalisation.

One example is a forecast time ``t0``, a lead time and a target tile centre
``(center_y, center_x)`` in 1 km grid pixels:

- **inputs** ``(T, C, S, S)`` float32, ``T = task.num_frames`` frames at
  ``t0 - history_minutes, ..., t0`` every ``history_interval_minutes`` (oldest first),
  ``C = len(task.input_channel_names())`` channels in exactly that order,
  ``S = task.packed_size``. Two views per frame:

  - ``@context``: the whole ``context_px`` x ``context_px`` window centred on the
    target, NaN-mean pooled by ``task.context_pool``. With a pool of 4 and a window
    aligned with the 4 km cells it is read from the archive's 4 km level (which stores
    exactly that NaN-mean); otherwise the 1 km window is read and pooled here.
  - ``@center``: the central ``packed_size`` pixels at 1 km.

  Radar variables are read at the frame times. A frame's satellite data is the latest
  scan, with every task band available, at or before the frame time and at most
  :data:`metnet.archive.SATELLITE_MAX_AGE` (15 min) older; otherwise it is missing.
  Each family (radar, satellite) has one validity mask per view: 1 where every variable
  of the family is observed, 0 elsewhere (missing frame, no coverage, context
  overhanging the grid). Values are normalised (:func:`normalize`) and NaN becomes 0,
  so NaN never reaches the model; the masks carry the missingness. Static fields are
  normalised the same way (0 outside the grid). Calendar features are the sine and
  cosine of ``2 pi`` times each frame time's phase (:data:`CALENDAR_FEATURES`), constant
  over the frame.
- **target** ``(target_px, target_px)`` int64 bin indices
  (:func:`metnet.bins.rate_to_bin`) of ``precipitation_rate`` at ``t0 + lead_time`` on
  the central tile, -1 where the rate is missing, and a bool validity mask.

Window geometry: a window of even side ``n`` centred on ``(cy, cx)`` covers rows
``cy - n/2 .. cy + n/2 - 1`` (columns alike); context, centre view and target are
concentric. Windows may overhang the grid; the archive pads them with NaN.

Which ``t0`` are valid, which lead times each has and which satellite scan feeds each
frame are decided from the archive's availability index alone, no data read
(:class:`ExampleBuilder`). Unlike :meth:`metnet.archive.Archive.complete_times`, a valid
``t0`` needs radar at every frame but no satellite scan: a frame without one is masked.
:class:`ArchiveSampler` draws training examples deterministically from
``(seed, index)``; :func:`build_inputs` and :class:`ExampleBuilder` serve forecasting.
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

from metnet.archive import LEVELS, SATELLITE_MAX_AGE, Archive, nanmean_pool
from metnet.bins import rate_to_bin
from metnet.config import TaskConfig

#: Pooling factor of the archive's coarse level (4: the 4 km level of the 1 km grid).
COARSE_LEVEL = max(LEVELS)
#: The variable whose bins are the target.
TARGET_VARIABLE = "precipitation_rate"
#: Variables normalised as ``log1p(max(x, 0))`` before standardisation: rain rates span
#: four orders of magnitude and are mostly zero. Everything else (ABI reflectance
#: factors and brightness temperatures, static fields) is standardised as stored.
LOG1P_VARIABLES = frozenset({"precipitation_rate"})
#: Side (1 km pixels) of the random window :func:`compute_normalization` reads per time.
NORMALIZATION_WINDOW = 256
#: A standard deviation below this (a constant field) is replaced by 1, so the field
#: normalises to 0 instead of being divided by almost 0.
MIN_STD = 1e-6

#: An inclusive ``(start, end)`` time range.
Period = tuple[np.datetime64, np.datetime64]

_NS_PER_MINUTE = 60_000_000_000
_NAT = np.iinfo(np.int64).min  # NaT as int64


class DatasetError(ValueError):
    """An archive, task, period or normalisation that cannot produce examples."""


# ----------------------------------------------------------------------------- times


def _ns(times: Any) -> np.ndarray:
    """``times`` as a 1-D int64 array of nanoseconds since the epoch."""
    return np.atleast_1d(np.asarray(times, dtype="datetime64[ns]")).astype(np.int64)


def _minutes_ns(minutes: Any) -> np.ndarray:
    return np.asarray(minutes, dtype=np.int64) * _NS_PER_MINUTE


def _fmt(time: Any) -> str:
    """A time as ``YYYY-MM-DDTHH:MM`` (an int is nanoseconds since the epoch)."""
    if isinstance(time, (int, np.integer)):
        time = np.datetime64(int(time), "ns")
    return str(np.datetime64(time, "m"))


def _member(sorted_ns: np.ndarray, query_ns: np.ndarray) -> np.ndarray:
    """Whether each of ``query_ns`` (any shape) occurs in the sorted 1-D ``sorted_ns``."""
    if sorted_ns.size == 0:
        return np.zeros(query_ns.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ns, query_ns), sorted_ns.size - 1)
    return sorted_ns[pos] == query_ns


def _check_period(period: Period | None) -> tuple[int, int] | None:
    """``period`` as inclusive ``(start, end)`` nanoseconds, checked."""
    if period is None:
        return None
    try:
        start, end = (int(_ns(t)[0]) for t in period)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"period must be a (start, end) pair of times, got {period!r}") from exc
    if _NAT in (start, end):
        raise DatasetError(f"period must be a (start, end) pair of times, got {period!r}")
    if start > end:
        raise DatasetError(f"period starts after it ends: {_fmt(start)} > {_fmt(end)}")
    return start, end


def _period_text(period: Period | None) -> str:
    return "" if period is None else f" in {_fmt(period[0])} .. {_fmt(period[1])}"


def _available(
    archive: Archive, variables: tuple[str, ...], bounds: tuple[int, int] | None
) -> np.ndarray:
    """Sorted int64 ns times at which every one of ``variables`` is available, within
    ``bounds`` when given (from the availability index, no data read)."""
    common: np.ndarray | None = None
    for v in variables:
        times = np.unique(_ns(archive.available_times(v)))
        common = times if common is None else np.intersect1d(common, times, assume_unique=True)
    if common is None:
        return np.empty(0, np.int64)
    if bounds is not None:
        common = common[(common >= bounds[0]) & (common <= bounds[1])]
    return common


def _satellite_variables(task: TaskConfig) -> tuple[str, ...]:
    return task.input_variables()[len(task.radar_variables) :]


def split_periods(
    archive: Archive,
    task: TaskConfig,
    validation_fraction: float = 0.2,
    *,
    gap_minutes: int | None = None,
) -> dict[str, Period]:
    """Train and validation periods: the archive's time range (that of
    :data:`TARGET_VARIABLE`) split into a leading ``"train"`` and a trailing
    ``"validation"`` part, each an inclusive ``(start, end)``.

    The periods lie ``gap_minutes`` apart (default: the largest lead time). A sampler
    given a period keeps every input and target of its examples inside it, so no time
    is used by both sets, and no training example comes closer than the gap to a
    validation target.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    gap = int(_minutes_ns(task.max_lead_time_minutes if gap_minutes is None else gap_minutes))
    times = _available(archive, (TARGET_VARIABLE,), None)
    if times.size == 0:
        raise DatasetError(f"archive {archive.store}: no {TARGET_VARIABLE} data to split")
    first, last = int(times[0]), int(times[-1])
    step = int(np.timedelta64(archive.time_step, "ns").astype(np.int64))
    # Validation starts on a time slot, so both periods hold whole slots.
    split = first + round((1.0 - validation_fraction) * (last - first) / step) * step
    if split - gap < first or split > last:
        raise DatasetError(
            f"archive {archive.store}: {_fmt(first)} .. {_fmt(last)} is too short to split into "
            f"train and validation periods {gap // _NS_PER_MINUTE} minutes apart"
        )
    return {
        "train": (np.datetime64(first, "ns"), np.datetime64(split - gap, "ns")),
        "validation": (np.datetime64(split, "ns"), np.datetime64(last, "ns")),
    }


# ----------------------------------------------------------------------------- calendar


def _day_fraction(t: np.ndarray) -> np.ndarray:
    """Fraction of the UTC day elapsed, in [0, 1)."""
    return (t - t.astype("datetime64[D]")) / np.timedelta64(1, "D")


def _day_of_year(t: np.ndarray) -> np.ndarray:
    """Fraction of the year elapsed (leap years have 366 days), in [0, 1)."""
    year = t.astype("datetime64[Y]")
    first = year.astype("datetime64[D]")
    days_in_year = ((year + 1).astype("datetime64[D]") - first).astype(np.float64)
    day_index = (t.astype("datetime64[D]") - first).astype(np.float64)  # 0 on 1 January
    return (day_index + _day_fraction(t)) / days_in_year


def _month(t: np.ndarray) -> np.ndarray:
    """``(month - 1) / 12``: January 0, December 11/12."""
    return (t.astype("datetime64[M]").astype(np.int64) % 12) / 12.0


#: Calendar feature name -> phase in [0, 1) of UTC times (each feature becomes a sine and
#: a cosine channel of ``2 pi phase``).
CALENDAR_FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hour_of_day": _day_fraction,
    "day_of_year": _day_of_year,
    "month": _month,
}


def calendar_features(times: Any, names: tuple[str, ...]) -> np.ndarray:
    """``(T, 2 * len(names))`` float32: for each named feature (case-insensitive, from
    :data:`CALENDAR_FEATURES`), ``sin`` then ``cos`` of ``2 pi phase`` at ``times`` (UTC)."""
    t = np.atleast_1d(np.asarray(times, dtype="datetime64[ns]"))
    out = np.zeros((t.size, 2 * len(names)), np.float32)  # (T, 2 * len(names))
    for k, name in enumerate(names):
        phase_of = CALENDAR_FEATURES.get(name.lower())
        if phase_of is None:
            raise ValueError(
                f"unknown time feature {name!r}; valid names: {', '.join(CALENDAR_FEATURES)}"
            )
        angle = 2.0 * math.pi * phase_of(t)  # (T,)
        out[:, 2 * k], out[:, 2 * k + 1] = np.sin(angle), np.cos(angle)
    return out


# ----------------------------------------------------------------------------- normalisation


def transform(name: str, values: np.ndarray) -> np.ndarray:
    """The fixed transform before standardisation: ``log1p(max(x, 0))`` for
    :data:`LOG1P_VARIABLES`, identity otherwise. NaN stays NaN."""
    if name in LOG1P_VARIABLES:
        return np.log1p(np.maximum(values, 0.0))
    return values


def normalize(
    name: str, values: np.ndarray, normalization: dict[str, dict[str, float]]
) -> np.ndarray:
    """``(transform(values) - mean) / std`` with the statistics of ``name``, float32;
    NaN stays NaN."""
    stats = normalization[name]
    return ((transform(name, values) - stats["mean"]) / stats["std"]).astype(np.float32)


def check_normalization(
    normalization: Any, names: tuple[str, ...] = (), source: str = "normalization"
) -> dict[str, dict[str, float]]:
    """``normalization`` checked to be ``{name: {"mean": finite, "std": positive}}`` and
    to hold every one of ``names``; returned as a new dict of Python floats. Errors start
    with ``source`` (a file name, or ``normalization``)."""
    if not isinstance(normalization, dict):
        raise DatasetError(
            f"{source}: must map names to {{'mean', 'std'}}, got {type(normalization).__name__}"
        )
    checked: dict[str, dict[str, float]] = {}
    for name, stats in normalization.items():
        if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
            raise DatasetError(
                f"{source}: {name!r} must have exactly the keys 'mean' and 'std', got {stats!r}"
            )
        try:
            mean, std = float(stats["mean"]), float(stats["std"])
        except (TypeError, ValueError):
            raise DatasetError(
                f"{source}: {name!r} mean and std must be numbers, got {stats!r}"
            ) from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DatasetError(
                f"{source}: {name!r} needs a finite mean and a positive std, got {stats!r}"
            )
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
        raise DatasetError(
            f"{path}: cannot read normalisation statistics ({exc.strerror})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    return check_normalization(data, source=str(path))


class _Moments:
    """Count, mean and standard deviation of the finite values added (float64 sums of
    deviations from the first batch's mean, so the sum of squares does not cancel)."""

    def __init__(self) -> None:
        self.count, self.shift, self.total, self.total_sq = 0, 0.0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        if self.count == 0:
            self.shift = float(v.mean())
        d = v - self.shift
        self.count += v.size
        self.total += float(d.sum())
        self.total_sq += float((d * d).sum())

    def stats(self, what: str) -> dict[str, float]:
        if self.count == 0:
            raise DatasetError(
                f"{what} has no finite values to compute normalisation statistics from"
            )
        mean = self.total / self.count
        std = math.sqrt(max(self.total_sq / self.count - mean * mean, 0.0))
        return {"mean": self.shift + mean, "std": std if std >= MIN_STD else 1.0}


def compute_normalization(
    archive: Archive,
    task: TaskConfig,
    *,
    max_times: int = 64,
    seed: int = 0,
    period: Period | None = None,
) -> dict[str, dict[str, float]]:
    """Mean and standard deviation, after :func:`transform`, of every input variable
    and static field of ``task``: ``{name: {"mean": float, "std": float}}``.

    Dynamic variables: up to ``max_times`` of the variable's available times (within
    ``period``, inclusive, when given) drawn at random without replacement, and at each
    a random :data:`NORMALIZATION_WINDOW`-pixel square inside the grid read at 1 km.
    Static fields: the whole field at the 4 km level. NaN is ignored; a constant field
    gets std 1. The result is plain JSON-serialisable data (it travels in checkpoints).
    """
    check_archive(archive, task)
    if max_times < 1:
        raise DatasetError(f"max_times must be positive, got {max_times}")
    bounds = _check_period(period)
    rng = np.random.default_rng(seed)
    ny, nx = archive.grid.shape
    size = min(ny, nx, NORMALIZATION_WINDOW)
    result: dict[str, dict[str, float]] = {}
    for name in task.input_variables():
        times = _available(archive, (name,), bounds)
        if times.size == 0:
            raise DatasetError(
                f"archive {archive.store}: no {name} data{_period_text(period)} "
                "to compute normalisation statistics from"
            )
        chosen = np.sort(rng.choice(times, size=min(max_times, times.size), replace=False))
        moments = _Moments()
        for t in chosen.astype("datetime64[ns]"):
            y0, x0 = int(rng.integers(ny - size + 1)), int(rng.integers(nx - size + 1))
            window = archive.read(name, [t], y0, x0, size)  # (1, size, size)
            moments.add(transform(name, window.astype(np.float64)))
        result[name] = moments.stats(f"archive {archive.store}: {name}{_period_text(period)}")
    ny4, nx4 = ny // COARSE_LEVEL, nx // COARSE_LEVEL
    for name in task.static_features:
        moments = _Moments()
        field = archive.read_static(name, 0, 0, max(ny4, nx4), level=COARSE_LEVEL)  # NaN-padded
        moments.add(field)
        result[name] = moments.stats(f"archive {archive.store}: static field {name}")
    return result


# ----------------------------------------------------------------------------- examples


def check_archive(archive: Archive, task: TaskConfig) -> None:
    """Raise :class:`DatasetError` unless ``archive`` has the task's resolution and
    every variable and static field the task reads."""
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
    """Where a packed view comes from: the ``size`` square with top-left ``(y0, x0)`` of
    archive ``level`` (in that level's pixels), NaN-mean pooled by ``pool``."""

    level: int
    y0: int
    x0: int
    size: int
    pool: int

    def read(self, archive: Archive, variable: str, times: np.ndarray) -> np.ndarray:
        """``(len(times), S, S)`` float32 at ``times`` (datetime64; NaN where missing)."""
        if times.size == 0:
            side = self.size // self.pool
            return np.empty((0, side, side), np.float32)
        raw = archive.read(variable, times, self.y0, self.x0, self.size, level=self.level)  # (T, size, size)
        return raw if self.pool == 1 else nanmean_pool(raw, self.pool)  # (T, S, S)

    def crop(self, field: np.ndarray) -> np.ndarray:
        """This view of a whole static ``field`` ``(ny, nx)`` of the view's level:
        ``(S, S)`` float32, NaN outside the grid."""
        out = np.full((self.size, self.size), np.nan, np.float32)  # (size, size)
        ny, nx = field.shape
        ya, yb = max(self.y0, 0), min(self.y0 + self.size, ny)
        xa, xb = max(self.x0, 0), min(self.x0 + self.size, nx)
        if ya < yb and xa < xb:
            out[ya - self.y0 : yb - self.y0, xa - self.x0 : xb - self.x0] = field[ya:yb, xa:xb]
        return out if self.pool == 1 else nanmean_pool(out, self.pool)  # (S, S)


class ExampleBuilder:
    """Builds the inputs and targets of one task from one archive.

    The availability index is read once, here, restricted to ``period`` (inclusive
    ``(start, end)``) when given: then every input frame, satellite scan and target of
    every example lies inside the period. Static fields are read whole on first use
    and kept, once per process and level (4 bytes per pixel and field: about 180 MB for
    the three fields of the ``paper`` grid at both levels), instead of being read for
    every example and view.

    Picklable: an :class:`~metnet.archive.Archive` pickles as its address and is
    reopened by the process that unpickles it (each DataLoader worker), and the static
    cache is left behind, so no zarr handle or large array crosses processes.
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
        self.archive = archive
        self.task = task
        self.normalization = check_normalization(
            normalization, (*task.input_variables(), *task.static_features)
        )
        calendar_features(np.zeros(1, "datetime64[ns]"), task.time_features)  # bad names fail now
        self.period = period
        bounds = _check_period(period)
        self._channel = {name: i for i, name in enumerate(task.input_channel_names())}
        self._radar_ns = _available(archive, task.radar_variables, bounds)  # (N_radar,)
        satellite = _satellite_variables(task)
        self._scan_ns = (
            _available(archive, satellite, bounds) if satellite else np.empty(0, np.int64)
        )  # (N_scan,)
        self._target_ns = _available(archive, (TARGET_VARIABLE,), bounds)  # (N_target,)
        offsets = np.arange(-task.history_minutes, 1, task.history_interval_minutes)
        self._offsets_ns = _minutes_ns(offsets)  # (T,) frame times relative to t0, oldest first
        self._leads = np.asarray(task.lead_times, dtype=np.int64)  # (L,) minutes
        self._static: dict[tuple[str, int], np.ndarray] = {}  # (name, level) -> (ny, nx)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_static"] = {}  # each process fills its own cache
        return state

    # ----------------------------------------------------------------- times

    def valid_times(self) -> np.ndarray:
        """Forecast times (sorted datetime64[ns]) with every radar frame of the history
        and the target of at least one lead time available (within the period)."""
        t0 = self._radar_ns  # (N,) t0 is itself the newest frame
        frames = t0[:, None] + self._offsets_ns[None, :]  # (N, T)
        history_ok = _member(self._radar_ns, frames).all(axis=1)  # (N,)
        target_ok = np.zeros(t0.shape, dtype=bool)  # (N,)
        for lead_ns in _minutes_ns(self._leads):  # a loop keeps memory O(N), not O(N L)
            target_ok |= _member(self._target_ns, t0 + lead_ns)
        return t0[history_ok & target_ok].astype("datetime64[ns]")

    def lead_times(self, t0: np.datetime64) -> np.ndarray:
        """``(L',)`` int64 lead times (minutes) whose target is available for ``t0``."""
        ok = _member(self._target_ns, _ns(t0)[0] + _minutes_ns(self._leads))  # (L,)
        return self._leads[ok]

    def frame_times(self, t0: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
        """The ``(T,)`` input frame times of forecast time ``t0`` and the ``(T,)``
        satellite scan time of each frame (NaT where none is recent enough), datetime64[ns]."""
        frames = _ns(t0)[0] + self._offsets_ns  # (T,)
        scans = np.full(frames.shape, _NAT, dtype=np.int64)  # (T,)
        if self._scan_ns.size:
            pos = np.searchsorted(self._scan_ns, frames, side="right") - 1  # latest scan <= frame
            latest = self._scan_ns[np.maximum(pos, 0)]  # (T,)
            max_age = int(np.timedelta64(SATELLITE_MAX_AGE, "ns").astype(np.int64))
            recent = (pos >= 0) & (frames - latest <= max_age)
            scans[recent] = latest[recent]
        return frames.astype("datetime64[ns]"), scans.astype("datetime64[ns]")

    # ----------------------------------------------------------------- data

    def _views(self, center_y: int, center_x: int) -> dict[str, _View]:
        task = self.task
        size, ctx, pool = task.packed_size, task.context_px, task.context_pool
        y0, x0 = center_y - ctx // 2, center_x - ctx // 2
        if pool == COARSE_LEVEL and y0 % COARSE_LEVEL == 0 and x0 % COARSE_LEVEL == 0:
            context = _View(COARSE_LEVEL, y0 // COARSE_LEVEL, x0 // COARSE_LEVEL, size, 1)
        else:
            context = _View(1, y0, x0, ctx, pool)
        center = _View(1, center_y - size // 2, center_x - size // 2, size, 1)
        return {"context": context, "center": center}

    def _static_field(self, name: str, level: int) -> np.ndarray:
        """The whole static field ``name`` of ``level``: ``(ny, nx)`` float32, cached."""
        if (name, level) not in self._static:
            ny, nx = self.archive.level_grid(level).shape
            square = self.archive.read_static(name, 0, 0, max(ny, nx), level=level)  # NaN-padded
            self._static[name, level] = square[:ny, :nx]  # (ny, nx)
        return self._static[name, level]

    def inputs(self, t0: np.datetime64, center_y: int, center_x: int) -> np.ndarray:
        """The packed input stack ``(T, C, S, S)`` float32 of forecast time ``t0`` for the
        target centred on 1 km pixel ``(center_y, center_x)``; NaN-free."""
        task, archive, channel = self.task, self.archive, self._channel
        frames, scans = self.frame_times(t0)
        size = task.packed_size
        out = np.zeros((frames.size, len(channel), size, size), np.float32)  # (T, C, S, S)
        has_scan = ~np.isnat(scans)  # (T,)
        unique_scans, scan_of_frame = np.unique(scans[has_scan], return_inverse=True)  # each scan read once
        for view_name, view in self._views(center_y, center_x).items():
            radar = {v: view.read(archive, v, frames) for v in task.radar_variables}  # (T, S, S) each
            self._put_family(out, radar, view_name, "radar_valid")
            satellite = {}
            for v in _satellite_variables(task):
                values = np.full((frames.size, size, size), np.nan, np.float32)  # (T, S, S)
                values[has_scan] = view.read(archive, v, unique_scans)[scan_of_frame]
                satellite[v] = values
            if satellite:
                self._put_family(out, satellite, view_name, "satellite_valid")
            for name in task.static_features:
                field = view.crop(self._static_field(name, view.level))  # (S, S)
                normalized = normalize(name, field, self.normalization)
                out[:, channel[f"{name}@{view_name}"]] = np.nan_to_num(normalized, nan=0.0)  # every frame
        features = calendar_features(frames, task.time_features)  # (T, 2F)
        for k, name in enumerate(task.time_features):
            out[:, channel[f"{name}_sin"]] = features[:, 2 * k, None, None]
            out[:, channel[f"{name}_cos"]] = features[:, 2 * k + 1, None, None]
        return out

    def _put_family(
        self, out: np.ndarray, values: dict[str, np.ndarray], view: str, mask: str
    ) -> None:
        """Write a family's normalised variables ``(T, S, S)`` (NaN -> 0) and its mask (1
        where every variable of the family is finite) into ``out`` ``(T, C, S, S)``."""
        valid = np.ones(out.shape[:1] + out.shape[2:], dtype=bool)  # (T, S, S)
        for name, raw in values.items():
            finite = np.isfinite(raw)
            valid &= finite
            normalized = normalize(name, raw, self.normalization)
            out[:, self._channel[f"{name}@{view}"]] = np.where(finite, normalized, 0.0)
        out[:, self._channel[f"{mask}@{view}"]] = valid

    def target(
        self, t0: np.datetime64, lead_time: int, center_y: int, center_x: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bin indices ``(H, W)`` int64 (-1 where missing) and validity ``(H, W)`` bool of
        :data:`TARGET_VARIABLE` at ``t0 + lead_time`` (minutes) on the target tile."""
        half = self.task.target_px // 2
        when = np.datetime64(t0, "ns") + np.timedelta64(int(lead_time), "m")
        rate = self.archive.read(
            TARGET_VARIABLE, [when], center_y - half, center_x - half, 2 * half
        )[0]  # (H, W) mm/h
        bins = rate_to_bin(rate, self.task.bin_width_mm_h, self.task.num_bins)  # (H, W), -1 where NaN
        return bins, bins >= 0

    # ----------------------------------------------------------------- locations

    def centre_lattice(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidate target centres: rows ``(Ny,)`` and columns ``(Nx,)`` int64, the
        multiples of :data:`COARSE_LEVEL` (so the context aligns with the 4 km level)
        whose target tile lies inside the grid."""
        half = self.task.target_px // 2
        first = -(-half // COARSE_LEVEL) * COARSE_LEVEL  # smallest multiple >= half
        ny, nx = self.archive.grid.shape
        rows = np.arange(first, ny - half + 1, COARSE_LEVEL, dtype=np.int64)  # (Ny,)
        cols = np.arange(first, nx - half + 1, COARSE_LEVEL, dtype=np.int64)  # (Nx,)
        if rows.size == 0 or cols.size == 0:
            raise DatasetError(
                f"archive {self.archive.store}: the {ny} x {nx} grid has no place for a "
                f"{self.task.target_px}-pixel target tile"
            )
        return rows, cols

    def rain_fraction(self, t0: np.datetime64, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(len(rows), len(cols))``: for each candidate centre, the fraction of its target
        tile raining at ``t0``, from one read of the whole 4 km frame. A 4 km cell rains
        when its mean rate is at least one bin width (outside bin 0); a tile whose edge
        cuts 4 km cells (``target_px / 2`` not a multiple of 4) is approximated by the
        cells from the one containing its top-left pixel."""
        ny4, nx4 = self.archive.level_grid(COARSE_LEVEL).shape
        when = [np.datetime64(t0, "ns")]
        coarse = self.archive.read(TARGET_VARIABLE, when, 0, 0, max(ny4, nx4), level=COARSE_LEVEL)
        rain = coarse[0, :ny4, :nx4] >= self.task.bin_width_mm_h  # (ny4, nx4), NaN -> dry
        table = np.zeros((ny4 + 1, nx4 + 1))  # summed-area table
        table[1:, 1:] = rain.cumsum(axis=0).cumsum(axis=1)
        cells = self.task.target_px // COARSE_LEVEL  # tile side in 4 km cells
        top = ((rows - self.task.target_px // 2) // COARSE_LEVEL)[:, None]  # (Ny, 1)
        left = ((cols - self.task.target_px // 2) // COARSE_LEVEL)[None, :]  # (1, Nx)
        bottom, right = top + cells, left + cells
        raining = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
        return raining / cells**2  # (Ny, Nx)


def build_inputs(
    archive: Archive,
    task: TaskConfig,
    t0: np.datetime64,
    center_y: int,
    center_x: int,
    normalization: dict[str, dict[str, float]],
) -> np.ndarray:
    """The input stack ``(T, C, S, S)`` float32 of forecast time ``t0`` for the target
    centred on 1 km pixel ``(center_y, center_x)`` (see the module docstring).

    Builds an :class:`ExampleBuilder` per call (reading the availability index and the
    static fields); to build many tiles, make one builder and call its
    :meth:`~ExampleBuilder.inputs`.
    """
    return ExampleBuilder(archive, task, normalization).inputs(t0, center_y, center_x)


# ----------------------------------------------------------------------------- sampler


class ArchiveSampler(torch.utils.data.Dataset):
    """Training examples drawn from an archive; item ``i`` depends only on ``(seed, i)``.

    Item ``i`` draws from ``numpy.random.default_rng([seed, i])``: a forecast time
    uniformly among :meth:`ExampleBuilder.valid_times`; a lead time uniformly among
    those whose target is available for it; a target centre on
    :meth:`ExampleBuilder.centre_lattice`, uniformly, or with ``oversample_rain`` with
    probability proportional to ``rain_epsilon + f``, ``f`` the tile's raining fraction
    at ``t0`` (:meth:`ExampleBuilder.rain_fraction`). A dry tile is then drawn
    ``rain_epsilon / (rain_epsilon + 1)`` times as often as a fully raining one, which
    biases the training climatology toward rain: calibrate on validation data drawn
    without it.

    ``num_examples`` (default: the number of valid times) is the length; resuming
    training exactly means continuing the index sequence where it stopped. Give each of
    the train and validation samplers its own ``period`` (:func:`split_periods`) for a
    split without leakage.

    Items are dicts of tensors: ``inputs`` ``(T, C, S, S)`` float32, ``lead_time``
    int64 minutes, ``target`` ``(H, W)`` int64 bin index (-1 where missing),
    ``target_valid`` ``(H, W)`` bool, ``time`` int64 ns since the epoch (``t0``) and
    ``center`` ``(2,)`` int64 (row, column). Works with ``DataLoader(num_workers > 0)``:
    each worker reopens the archive.
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
                f"archive {archive.store}: no valid forecast times{_period_text(period)}: "
                f"each needs {', '.join(task.radar_variables)} at every input frame "
                f"(t0 - {task.history_minutes} min .. t0 every {task.history_interval_minutes} "
                f"min) and {TARGET_VARIABLE} at t0 + a lead time "
                f"({task.lead_time_step_minutes} .. {task.max_lead_time_minutes} min)"
            )
        if num_examples is not None and num_examples < 1:
            raise DatasetError(f"num_examples must be positive, got {num_examples}")
        if oversample_rain and not rain_epsilon > 0:
            raise DatasetError(
                f"rain_epsilon must be positive (dry tiles need a chance), got {rain_epsilon}"
            )
        self.num_examples = self.valid_times.size if num_examples is None else int(num_examples)
        self.seed = int(seed)
        self.oversample_rain = oversample_rain
        self.rain_epsilon = float(rain_epsilon)
        self._rows, self._cols = self.builder.centre_lattice()  # (Ny,), (Nx,)

    def __len__(self) -> int:
        return self.num_examples

    def draw(self, index: int) -> tuple[np.datetime64, int, int, int]:
        """``(t0, lead_time, center_y, center_x)`` of item ``index``, no data read (but
        the 4 km rain frame at ``t0`` with ``oversample_rain``)."""
        rng = np.random.default_rng([self.seed, index])
        t0 = self.valid_times[rng.integers(self.valid_times.size)]
        lead = int(rng.choice(self.builder.lead_times(t0)))
        if self.oversample_rain:
            fraction = self.builder.rain_fraction(t0, self._rows, self._cols)  # (Ny, Nx)
            weight = (self.rain_epsilon + fraction).ravel()  # (Ny * Nx,)
            i, j = divmod(int(rng.choice(weight.size, p=weight / weight.sum())), self._cols.size)
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
            "time": torch.tensor(int(t0.astype(np.int64)), dtype=torch.int64),  # valid_times are ns
            "center": torch.tensor([cy, cx], dtype=torch.int64),
        }
