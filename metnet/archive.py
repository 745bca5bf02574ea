"""The observation archive: one zarr v3 store on the canonical grid, two resolutions.

Layout of a store (a local folder or any fsspec URL)::

    zarr.json            root attributes "metnet_archive": format, full GridConfig,
                         time step, chunk size, time axis (start, length), variables
    level1/              the grid (1 km): coords time, y, x; grid mapping "crs";
                         every dynamic variable (time, y, x); static fields (y, x)
    level4/              the grid coarsened by 4 (4 km), same variables, each value the
                         NaN-mean of its 4 x 4 block of 1 km values, computed at write time
    availability/        coord time; one uint8 flag array (time,) per dynamic variable

Each level is a plain CF dataset: ``xr.open_zarr(store, group="level1")`` decodes it
(consolidated metadata is kept up to date, see below). :class:`Archive` itself reads and
writes the zarr arrays directly, which skips xarray's per-call overhead on the small
windows training reads.

**Time axis.** Regular, ``time_step_minutes`` apart (default 2), on slots aligned to
multiples of the step since 1970-01-01 UTC. A time goes to the nearest slot (halves go
to the later slot), so ``00:01:17`` is stored at ``00:02``. The axis always spans whole
UTC days and grows on demand: writing a time after the last slot appends days, writing
one before the first slot prepends days, which renumbers the slots by renaming the
existing chunks (cheap on a local disk, refused on remote stores, see below). Growing
whole days at a time means ingest in any order within a day never moves a chunk.

**Encoding.** Values are float32 on read; on disk they are quantised to uint16 with a
CF ``scale_factor`` and a fill value for NaN (:func:`encoding_for`):
precipitation rates (units ``mm/h``) in steps of 0.05 mm/h (at most 0.025 mm/h off,
finer than the 0.1 mm/h of MRMS itself, range 0 to 3276.7 mm/h), ABI reflectance
factors (bands 1-6) in steps of 1e-4 (range 0 to 6.55), ABI brightness temperatures
(bands 7-16) in steps of 0.01 K (range 0 to 655.34 K; ABI's own L2 packing is coarser).
Values outside a range are clipped to it (a rate cannot be negative; 3276.7 mm/h is far
above the open-ended last bin). Any other variable and the static fields are stored as
float32 without loss. Chunks are compressed with Blosc zstd level 3 with byte shuffle,
which on MRMS rate fields beat plain zstd in ratio (9-33x) at the same decode speed.

**Chunks.** Time chunk 1: every time slot of every variable is its own set of chunks, so
writes to different slots never touch the same object, and rewriting a slot rewrites
exactly its chunks. Spatial chunks are ``chunk_px`` square (default 256) on both levels:
a ``paper`` example reads a 256 px window on each level (the central 256 km at 1 km, the
whole 1024 km context at 4 km), which touches at most 2 x 2 chunks per level, variable
and frame; smaller chunks multiply requests, larger ones multiply the bytes read and
decoded per example. All-NaN chunks are not stored at all.

**Availability index.** Flag ``availability/<variable>[slot] = 1`` when the slot holds a
complete field. Its chunk size is one slot, so each flag is its own object: setting one
never races with another process setting another, and :meth:`Archive.available_times`
lists the flag objects instead of reading any data. A write clears the slot's flags,
writes the data, then sets the flags; if anything fails in between (a source that fails
to compute, a full disk, a killed process) the flags stay cleared, so the slot reads as
missing (NaN), never half-written, and every other slot is untouched.

**Concurrency.** Data writes to different slots are safe from any number of processes.
Metadata changes (creating a variable, growing the time axis, writing static fields,
re-consolidating) take an exclusive ``fcntl`` lock on the sibling file ``<store>.lock``
for local stores; data writes and reads take it shared, so a prepend (which moves
chunks) never runs under a reader or writer. Other processes notice a metadata change
from the root ``zarr.json`` and reload. A prepend is journaled in the root attributes
and completed by the next writer if the process dies midway.
Remote stores (``s3://``, ``gs://``, ...) have no such lock. The rule there: metadata
changes come from one process at a time (one ingest flow per store, e.g. a Prefect
concurrency limit of 1, or :meth:`Archive.reserve` the period and write the static
fields before fanning out writers), and the axis only grows forward: reserve a backfill
period before writing into it, since a prepend would copy every chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec

from metnet.config import GridConfig, TaskConfig
from metnet.grid import Grid

#: Version of the store layout written by this module.
ARCHIVE_FORMAT = 1
#: Coarsening factors stored: 1 = the grid, 4 = the grid pooled 4 x 4.
LEVELS: tuple[int, ...] = (1, 4)
#: Default side of the square spatial chunks, pixels (on every level).
DEFAULT_CHUNK_PX = 256
#: A satellite frame may be at most this much older than the input time it stands for
#: (ABI scans CONUS every 5 minutes and the full disk every 10 to 15).
SATELLITE_MAX_AGE = np.timedelta64(15, "m")

_ATTR = "metnet_archive"
_TIME_CHUNK = 4096  # slots per chunk of the 1-D time coordinate arrays
_MINUTES_PER_DAY = 1440
_NS_PER_MINUTE = 60 * 10**9
_COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
_TIME_ATTRS = {
    "standard_name": "time",
    "units": "minutes since 1970-01-01 00:00:00",
    "calendar": "proleptic_gregorian",
}


class ArchiveError(ValueError):
    """A store that cannot be created, opened, read or written as asked; names the store."""


# ----------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Encoding:
    """How one variable is stored: ``value = stored * scale_factor`` (``fill`` = NaN)."""

    dtype: str
    """On-disk dtype, ``uint16`` (quantised) or ``float32`` (lossless)."""
    scale_factor: float | None
    """Quantisation step in the variable's units; None = stored as is."""
    fill: int | float
    """Stored value meaning NaN."""

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Float values -> on-disk values (NaN -> ``fill``; clipped to the range)."""
        values = np.asarray(values, dtype=np.float32)
        if self.scale_factor is None:
            return values.astype(self.dtype, copy=False)
        steps = np.rint(values / np.float32(self.scale_factor))
        top = float(self.fill) - 1.0  # the largest value that is not the fill
        steps = np.clip(np.nan_to_num(steps, nan=self.fill), 0.0, top)
        steps[np.isnan(values)] = self.fill
        return steps.astype(self.dtype)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """On-disk values -> float32 values (``fill`` -> NaN)."""
        if self.scale_factor is None:
            return np.asarray(stored, dtype=np.float32)
        values = stored.astype(np.float32) * np.float32(self.scale_factor)
        values[stored == self.fill] = np.nan
        return values

    def cf_attrs(self) -> dict[str, Any]:
        """CF attributes that let xarray decode the stored values by itself."""
        if self.scale_factor is None:
            return {}
        return {"scale_factor": self.scale_factor, "add_offset": 0.0, "_FillValue": self.fill}


RATE = Encoding("uint16", 0.05, 65535)
REFLECTANCE = Encoding("uint16", 1e-4, 65535)
BRIGHTNESS_TEMPERATURE = Encoding("uint16", 0.01, 65535)
LOSSLESS = Encoding("float32", None, float("nan"))
_RATE_UNITS = ("mm/h", "mm h-1", "mm hr-1")


def encoding_for(name: str, units: str) -> Encoding:
    """The on-disk encoding of dynamic variable ``name`` with ``units`` (see module doc)."""
    if name.startswith("abi_c") and name[5:].isdigit():
        return REFLECTANCE if int(name[5:]) <= 6 else BRIGHTNESS_TEMPERATURE
    if units in _RATE_UNITS:
        return RATE
    return LOSSLESS


def nanmean_pool(values: np.ndarray, factor: int) -> np.ndarray:
    """NaN-aware mean over ``factor`` x ``factor`` blocks of the last two axes.

    ``(..., ny, nx)`` -> ``(..., ny // factor, nx // factor)`` float32; a block with no
    finite value is NaN. ``ny`` and ``nx`` must be multiples of ``factor``.
    """
    *lead, ny, nx = values.shape
    if ny % factor or nx % factor:
        raise ValueError(f"cannot pool a {ny} x {nx} field by {factor}: not a multiple")
    blocks = values.reshape(*lead, ny // factor, factor, nx // factor, factor)  # (..., ny/f, f, nx/f, f)
    valid = ~np.isnan(blocks)
    sums = np.where(valid, blocks, 0.0).sum(axis=(-3, -1), dtype=np.float64)  # (..., ny/f, nx/f)
    counts = valid.sum(axis=(-3, -1))  # (..., ny/f, nx/f)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype(np.float32)  # 0 / 0 -> NaN


# ----------------------------------------------------------------------------- locking


class _StoreLock:
    """Reader/writer lock on ``path`` with ``fcntl.flock`` (local stores).

    Each acquisition opens its own file description, so threads of one process exclude
    each other like processes do. Without a path (remote stores) only threads of this
    process are excluded, and only for exclusive sections.
    """

    def __init__(self, path: str | None):
        self.path = path
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def _flock(self, operation: int) -> Iterator[None]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # a read-only copy of a store: nobody can be writing it
            fd = os.open(self.path, os.O_RDONLY) if os.path.exists(self.path) else None
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        if self.path is None:
            yield
        else:
            with self._flock(fcntl.LOCK_SH):
                yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        if self.path is None:
            with self._thread_lock:
                yield
        else:
            with self._flock(fcntl.LOCK_EX):
                yield


# ----------------------------------------------------------------------------- helpers


def _as_times(times: Any) -> np.ndarray:
    """1-D ``datetime64[ns]`` array from anything numpy understands as times."""
    return np.atleast_1d(np.asarray(times, dtype="datetime64[ns]"))


def _fmt(t: np.datetime64) -> str:
    return np.datetime_as_string(np.datetime64(t, "s"), unit="m")


def _empty_meta(grid_config: GridConfig, time_step_minutes: int, chunk_px: int) -> dict:
    return {
        "format": ARCHIVE_FORMAT,
        "grid": dataclasses.asdict(grid_config),
        "time_step_minutes": time_step_minutes,
        "chunk_px": chunk_px,
        "levels": list(LEVELS),
        "time_start_slot": None,
        "time_length": 0,
        "variables": {},
        "static_variables": [],
    }


@dataclass(frozen=True)
class _Requirement:
    """An input of one forecast: ``variable`` available in some slot of ``[lo, hi]``."""

    variable: str
    lo: int
    hi: int
    label: str


# ----------------------------------------------------------------------------- the archive


class Archive:
    """A zarr observation archive (see the module docstring for the layout and rules).

    Build with :meth:`create`, :meth:`open` or :meth:`open_or_create`. Attributes:
    ``store`` (the URL or path), ``storage_options``, ``grid`` and ``grid_config``,
    ``time_step`` (``timedelta64``), ``variables`` (dynamic) and ``static_variables``.
    """

    def __init__(self, store: str, *, mode: str, storage_options: dict | None):
        # Private: use create / open / open_or_create.
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' (read) or 'r+' (read and write), got {mode!r}")
        self.store = str(store)
        self.mode = mode
        self.storage_options = dict(storage_options or {})
        fs, root = fsspec.core.url_to_fs(self.store, **self.storage_options)
        self._fs, self._root = fs, root.rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        read_only = mode == "r"
        if self._local:
            self._zstore = zarr.storage.LocalStore(self._root, read_only=read_only)
        else:
            self._zstore = zarr.storage.FsspecStore.from_url(
                self.store, storage_options=self.storage_options or None, read_only=read_only
            )
        self._lock = _StoreLock(self._root + ".lock" if self._local else None)
        self._arrays: dict[str, zarr.Array] = {}
        self._meta: dict = {}
        self._stamp: tuple | None = None

    def __repr__(self) -> str:
        return (
            f"Archive({self.store!r}, {self.grid!r}, step {self.time_step}, "
            f"{self.time_length} slots, variables {list(self.variables)}, "
            f"static {list(self.static_variables)})"
        )

    def __getstate__(self) -> dict:
        # Pickles as its address: a process that unpickles it reopens the store.
        return {"store": self.store, "mode": self.mode, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store"], mode=state["mode"], storage_options=state["storage_options"])
        self._reload()

    # ------------------------------------------------------------------ create and open

    @classmethod
    def create(
        cls,
        store: str,
        grid_config: GridConfig,
        *,
        time_step_minutes: int = 2,
        chunk_px: int = DEFAULT_CHUNK_PX,
        storage_options: dict | None = None,
    ) -> Archive:
        """A new, empty archive at ``store`` for ``grid_config``; error if one exists.

        ``time_step_minutes`` must divide a day; ``nx`` and ``ny`` must be multiples of
        every level's factor (4).
        """
        if not isinstance(time_step_minutes, int) or time_step_minutes <= 0 or (
            _MINUTES_PER_DAY % time_step_minutes
        ):
            raise ArchiveError(
                f"{store}: time_step_minutes must be a positive divisor of 1440 (a day), "
                f"got {time_step_minutes!r}"
            )
        if not isinstance(chunk_px, int) or chunk_px <= 0:
            raise ArchiveError(f"{store}: chunk_px must be a positive integer, got {chunk_px!r}")
        factor = max(LEVELS)
        if grid_config.nx % factor or grid_config.ny % factor:
            raise ArchiveError(
                f"{store}: the grid ({grid_config.ny} x {grid_config.nx}) must have nx and ny "
                f"divisible by {factor} for the {factor}x coarser level"
            )
        archive = cls(store, mode="r+", storage_options=storage_options)
        if archive._local:
            os.makedirs(os.path.dirname(archive._root) or ".", exist_ok=True)  # for the lock
        with archive._lock.exclusive():
            if archive._fs.exists(f"{archive._root}/zarr.json"):
                raise ArchiveError(
                    f"{store}: a zarr store already exists there; use Archive.open or "
                    "Archive.open_or_create"
                )
            group = zarr.open_group(archive._zstore, mode="w-")
            grid = Grid(grid_config)
            for level in LEVELS:
                level_grid = grid.coarsen(level)
                sub = group.create_group(
                    f"level{level}",
                    attributes={
                        "level": level,
                        "resolution_m": level_grid.resolution,
                        "description": f"the archive grid coarsened {level}x (NaN-mean)"
                        if level > 1
                        else "the archive grid",
                    },
                )
                for name, (dim, values, attrs) in level_grid.coords().items():
                    arr = sub.create_array(
                        name, shape=values.shape, dtype="float64", chunks=values.shape,
                        dimension_names=(dim,), attributes=attrs,
                    )  # fmt: skip
                    arr[:] = values
                mapping = level_grid.grid_mapping()
                sub.create_array(
                    "crs", shape=(), dtype="int32", fill_value=0, attributes=dict(mapping.attrs)
                )
                _create_time_coord(sub)
            _create_time_coord(group.create_group("availability"))
            group.attrs[_ATTR] = _empty_meta(grid_config, time_step_minutes, chunk_px)
            archive._consolidate()
        archive._reload()
        return archive

    @classmethod
    def open(
        cls, store: str, *, mode: str = "r", storage_options: dict | None = None
    ) -> Archive:
        """The existing archive at ``store``; ``mode`` ``"r"`` (read) or ``"r+"`` (write)."""
        archive = cls(store, mode=mode, storage_options=storage_options)
        if not archive._fs.exists(f"{archive._root}/zarr.json"):
            raise ArchiveError(f"{store}: no archive there (no zarr.json)")
        archive._reload()
        if archive._meta.get("pending_shift") and mode == "r+":
            with archive._lock.exclusive():
                archive._reload()
                archive._finish_shift()
        return archive

    @classmethod
    def open_or_create(
        cls, store: str, grid_config: GridConfig, **kwargs: Any
    ) -> Archive:
        """Open ``store`` for writing, or create it (``kwargs`` as :meth:`create`).

        Raises :class:`ArchiveError` naming the store and every differing key if the
        existing archive has another grid or time step.
        """
        storage_options = kwargs.get("storage_options")
        fs, root = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
        if not fs.exists(f"{root.rstrip('/')}/zarr.json"):
            try:
                return cls.create(store, grid_config, **kwargs)
            except ArchiveError:
                if not fs.exists(f"{root.rstrip('/')}/zarr.json"):
                    raise  # otherwise another process created it first: open it below
        archive = cls.open(store, mode="r+", storage_options=storage_options)
        differences = [
            f"grid.{key}: store {getattr(archive.grid_config, key)!r}, "
            f"requested {getattr(grid_config, key)!r}"
            for key in (f.name for f in dataclasses.fields(GridConfig))
            if getattr(archive.grid_config, key) != getattr(grid_config, key)
        ]
        step = kwargs.get("time_step_minutes")
        if step is not None and step != archive._meta["time_step_minutes"]:
            differences.append(
                f"time_step_minutes: store {archive._meta['time_step_minutes']}, requested {step}"
            )
        if differences:
            raise ArchiveError(
                f"{store}: the existing archive has a different grid or time step than "
                "requested:\n  "
                + "\n  ".join(differences)
            )
        return archive

    # ------------------------------------------------------------------ properties

    @property
    def grid_config(self) -> GridConfig:
        """The full grid configuration stored in the archive."""
        return GridConfig(**self._meta["grid"])

    @cached_property
    def grid(self) -> Grid:
        """The 1 km (level 1) grid."""
        return Grid(self.grid_config)

    @cached_property
    def _level_grids(self) -> dict[int, Grid]:
        return {level: self.grid.coarsen(level) for level in LEVELS}

    def level_grid(self, level: int) -> Grid:
        """The grid of ``level`` (1 or 4)."""
        self._check_level(level)
        return self._level_grids[level]

    @property
    def time_step(self) -> np.timedelta64:
        """Spacing of the time slots."""
        return np.timedelta64(self._meta["time_step_minutes"], "m")

    @property
    def chunk_px(self) -> int:
        """Side of the square spatial chunks, pixels."""
        return self._meta["chunk_px"]

    @property
    def variables(self) -> tuple[str, ...]:
        """Dynamic ``(time, y, x)`` variables in the archive."""
        return tuple(self._meta["variables"])

    @property
    def static_variables(self) -> tuple[str, ...]:
        """Completely written static ``(y, x)`` fields."""
        return tuple(self._meta["static_variables"])

    @property
    def time_length(self) -> int:
        """Number of slots on the time axis."""
        return self._meta["time_length"]

    @property
    def times(self) -> np.ndarray:
        """Every slot of the time axis, ``datetime64[ns]`` (whole UTC days)."""
        start = self._meta["time_start_slot"]
        if start is None:
            return np.empty(0, dtype="datetime64[ns]")
        return self._slot_times(np.arange(start, start + self.time_length))

    def units(self, variable: str) -> str:
        """Units of a dynamic variable, e.g. ``mm/h``."""
        self._check_variable(variable)
        return self._meta["variables"][variable]["units"]

    # ------------------------------------------------------------------ time slots

    @property
    def _step_ns(self) -> int:
        return self._meta["time_step_minutes"] * _NS_PER_MINUTE

    def slot_of(self, times: Any) -> np.ndarray:
        """Absolute slot numbers (int64, slots since 1970-01-01) nearest to ``times``."""
        ns = _as_times(times)
        if np.isnat(ns).any():
            raise ArchiveError(f"{self.store}: a time is NaT (not a time)")
        ns = ns.astype(np.int64)
        return (ns + self._step_ns // 2) // self._step_ns  # halves go to the later slot

    def _slot_times(self, slots: np.ndarray) -> np.ndarray:
        return (np.asarray(slots, dtype=np.int64) * self._step_ns).astype("datetime64[ns]")

    def slot_time(self, time: Any) -> np.datetime64:
        """The slot time a ``time`` is stored at (nearest slot)."""
        return self._slot_times(self.slot_of(time))[0]

    def _index(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Axis indices of absolute ``slots`` and whether each lies on the axis."""
        start = self._meta["time_start_slot"]
        if start is None:
            return np.zeros(len(slots), dtype=np.int64), np.zeros(len(slots), dtype=bool)
        index = np.asarray(slots, dtype=np.int64) - start
        return index, (index >= 0) & (index < self.time_length)

    # ------------------------------------------------------------------ metadata

    def _root_json(self) -> str:
        return f"{self._root}/zarr.json"

    def _reload(self) -> None:
        """Re-read the root attributes (and drop cached arrays whose shape may change)."""
        if self._local:
            st = os.stat(self._root_json())
            self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        group = zarr.open_group(self._zstore, mode="r", use_consolidated=False)
        meta = group.attrs.asdict().get(_ATTR)
        if meta is None:
            raise ArchiveError(f"{self.store}: a zarr store but not a metnet archive")
        if meta.get("format") != ARCHIVE_FORMAT:
            raise ArchiveError(
                f"{self.store}: archive format {meta.get('format')!r}; this code reads "
                f"format {ARCHIVE_FORMAT}"
            )
        self._meta = meta
        self._arrays.clear()

    def _sync(self) -> None:
        """Reload if another process changed the metadata (local stores: by the root
        ``zarr.json``, which every metadata change rewrites; remote: see :meth:`refresh`)."""
        if self._local:
            st = os.stat(self._root_json())
            if (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp:
                self._reload()
        if self._meta.get("pending_shift"):
            raise ArchiveError(
                f"{self.store}: an extension of the time axis was interrupted; open the "
                "archive with mode='r+' to complete it"
            )

    def refresh(self) -> None:
        """See changes other processes made to the metadata (new variables, a longer
        axis). Local stores do this by themselves before every operation."""
        with self._lock.shared():
            self._reload()

    def _save_meta(self) -> None:
        """Write the root attributes and re-consolidate (caller holds the exclusive lock)."""
        group = zarr.open_group(self._zstore, mode="r+", use_consolidated=False)
        group.attrs[_ATTR] = self._meta
        self._consolidate()
        self._reload()

    def _consolidate(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(self._zstore)

    def _array(self, path: str) -> zarr.Array:
        array = self._arrays.get(path)  # one lookup: another thread may clear the cache
        if array is None:
            array = self._arrays[path] = zarr.open_array(self._zstore, path=path, mode=self.mode)
        return array

    def _writable(self) -> None:
        if self.mode != "r+":
            raise ArchiveError(f"{self.store}: opened read-only; open with mode='r+' to write")

    def _check_level(self, level: int) -> None:
        if level not in LEVELS:
            raise ArchiveError(
                f"{self.store}: no level {level!r}; levels: {', '.join(map(str, LEVELS))}"
            )

    def _check_variable(self, variable: str) -> None:
        if variable not in self._meta["variables"]:
            raise ArchiveError(
                f"{self.store}: no variable {variable!r}; variables: "
                f"{', '.join(self.variables) or 'none'}"
            )

    def _encoding(self, variable: str) -> Encoding:
        info = self._meta["variables"][variable]
        fill = float("nan") if info["dtype"] == "float32" else info["fill"]
        return Encoding(info["dtype"], info["scale_factor"], fill)

    def _time_array_paths(self) -> list[str]:
        paths = [f"level{level}/{v}" for v in self.variables for level in LEVELS]
        return paths + [f"availability/{v}" for v in self.variables]

    # ------------------------------------------------------------------ growing

    def reserve(self, start: Any, end: Any) -> None:
        """Grow the time axis to cover ``[start, end]`` (whole UTC days) in one step.

        Ingest calls this with the period it is about to write, so writers running in
        parallel never grow the axis themselves.
        """
        self._writable()
        slots = self.slot_of([start, end])
        self._grow(int(slots.min()), int(slots.max()))

    def _grow(self, first: int, last: int) -> None:
        """Make the axis cover absolute slots ``[first, last]``."""
        with self._lock.shared():
            self._sync()
            _, inside = self._index(np.array([first, last]))
            if inside.all():
                return
        per_day = _MINUTES_PER_DAY // self._meta["time_step_minutes"]
        with self._lock.exclusive():
            self._reload()
            self._finish_shift()
            start, length = self._meta["time_start_slot"], self.time_length
            new_start = (first // per_day) * per_day
            new_end = (last // per_day + 1) * per_day
            if start is not None:
                new_start, new_end = min(new_start, start), max(new_end, start + length)
            if start == new_start and start + length == new_end:
                return
            shift = 0 if start is None else start - new_start
            if shift and not self._local:
                raise ArchiveError(
                    f"{self.store}: writing {_fmt(self._slot_times([first])[0])} would extend "
                    f"the time axis before its start {_fmt(self._slot_times([start])[0])}; "
                    "on a remote store that rewrites every chunk, so it is refused: reserve() "
                    "the whole period before writing into it"
                )
            self._meta["pending_shift"] = {
                "shift": shift, "start_slot": new_start, "length": new_end - new_start,
            }  # fmt: skip
            if shift:
                self._clear_shift_leftovers()
                self._save_meta()  # the journal: a crash from here on is completed later
            self._finish_shift()

    def _finish_shift(self) -> None:
        """Apply the journaled axis change (resize, move chunks, time coords); idempotent,
        so an interrupted prepend is completed by the next writer."""
        pending = self._meta.get("pending_shift")
        if not pending:
            return
        shift, start, length = pending["shift"], pending["start_slot"], pending["length"]
        for path in self._time_array_paths():
            arr = self._array(path)
            arr.resize((length, *arr.shape[1:]))
        if shift:
            for path in self._time_array_paths():
                self._move_chunks(path, shift)
        values = np.arange(start, start + length, dtype=np.int64) * self._meta["time_step_minutes"]
        # An append keeps the written part of the time coordinates, a prepend rewrites it.
        old = self.time_length if not shift and self._meta["time_start_slot"] is not None else 0
        for path in [f"level{level}/time" for level in LEVELS] + ["availability/time"]:
            arr = self._array(path)
            arr.resize((length,))
            arr[old:] = values[old:]  # (length - old,) minutes since 1970
        self._meta.pop("pending_shift")
        self._meta["time_start_slot"], self._meta["time_length"] = start, length
        self._save_meta()
        if shift:
            self._clear_shift_leftovers()

    def _move_chunks(self, path: str, shift: int) -> None:
        """Renumber the time chunks of array ``path`` by ``shift`` (local stores).

        The chunk folder ``c`` is first renamed to ``c.old`` and chunks are moved back
        one time slot at a time, so after a crash ``c`` holds only moved chunks and
        ``c.old`` only unmoved ones, and the move can simply be resumed.
        """
        chunks, old = f"{self._root}/{path}/c", f"{self._root}/{path}/c.old"
        if not os.path.exists(old):
            if os.path.exists(chunks):
                os.rename(chunks, old)
            else:
                os.makedirs(old)
        os.makedirs(chunks, exist_ok=True)
        for name in os.listdir(old):
            os.rename(f"{old}/{name}", f"{chunks}/{int(name) + shift}")

    def _clear_shift_leftovers(self) -> None:
        """Remove the empty ``c.old`` folders a finished prepend leaves."""
        if not self._local:
            return
        for path in self._time_array_paths():
            old = f"{self._root}/{path}/c.old"
            if os.path.exists(old):
                os.rmdir(old)  # fails loudly if it is not empty: the store needs repair

    # ------------------------------------------------------------------ writing

    def write(self, ds: xr.Dataset) -> list[np.datetime64]:
        """Write an on-grid Dataset; returns the slot times written.

        ``(time, y, x)`` variables are dynamic, ``(y, x)`` ones static; each needs a
        ``units`` attribute. Each time slot is written atomically (all of the dataset's
        variables at that time, or none: see the module docstring), and rewriting the
        same data leaves the store byte for byte identical. Variables are computed one at
        a time, so a dask-backed dataset is never held in memory whole.
        """
        self._writable()
        dynamic, static = self._check_dataset(ds)
        if static:
            self._write_static(ds, static)
        if not dynamic:
            return []
        slots = self.slot_of(ds["time"].values)
        if len(np.unique(slots)) != len(slots):
            raise ArchiveError(
                f"{self.store}: the dataset has several times in one {self.time_step} slot: "
                + ", ".join(_fmt(t) for t in ds["time"].values)
            )
        self._add_variables(ds, dynamic)
        self._grow(int(slots.min()), int(slots.max()))
        written = []
        for i, slot in enumerate(slots):
            self._write_slot(ds, dynamic, i, int(slot))
            written.append(self._slot_times([slot])[0])
        return written

    def _check_dataset(self, ds: xr.Dataset) -> tuple[list[str], list[str]]:
        """Split ``ds`` into dynamic and static variable names; errors name the problem."""
        if not isinstance(ds, xr.Dataset):
            raise ArchiveError(f"{self.store}: write needs an xarray.Dataset, got {type(ds).__name__}")
        for axis, expected in (("y", self.grid.y), ("x", self.grid.x)):
            if axis in ds.sizes and ds.sizes[axis] != expected.size:
                raise ArchiveError(
                    f"{self.store}: the dataset has {ds.sizes[axis]} {axis} cells, the archive "
                    f"grid has {expected.size}: the dataset is on another grid"
                )
            if axis in ds.coords and not np.allclose(
                ds[axis].values, expected, rtol=0.0, atol=1e-3 * self.grid.resolution
            ):
                raise ArchiveError(
                    f"{self.store}: the dataset's {axis} coordinates ({ds[axis].values[0]:g} .. "
                    f"{ds[axis].values[-1]:g} m) differ from the archive grid's "
                    f"({expected[0]:g} .. {expected[-1]:g} m): the dataset is on another grid"
                )
        dynamic, static = [], []
        for name, da in ds.data_vars.items():
            name = str(name)
            if da.dims == ("time", "y", "x") and name not in self._meta["static_variables"]:
                dynamic.append(name)
            elif da.dims == ("y", "x") and name not in self._meta["variables"]:
                static.append(name)
            else:
                kind = "static (y, x)" if name in self._meta["static_variables"] else (
                    "dynamic (time, y, x)" if name in self._meta["variables"] else
                    "(time, y, x) or (y, x)"
                )  # fmt: skip
                raise ArchiveError(
                    f"{self.store}: variable {name!r} has dims {da.dims}; the archive "
                    f"stores it as {kind}"
                )
            if "units" not in da.attrs:
                raise ArchiveError(f"{self.store}: variable {name!r} has no 'units' attribute")
        if dynamic and (
            "time" not in ds.coords or not np.issubdtype(ds["time"].dtype, np.datetime64)
        ):
            raise ArchiveError(f"{self.store}: the dataset needs a datetime64 'time' coordinate")
        for name in dynamic:
            known = self._meta["variables"].get(name)
            if known is not None and known["units"] != ds[name].attrs["units"]:
                raise ArchiveError(
                    f"{self.store}: variable {name!r} is stored in {known['units']!r}, "
                    f"the dataset has {ds[name].attrs['units']!r}"
                )
        return dynamic, static

    def _add_variables(self, ds: xr.Dataset, names: Sequence[str]) -> None:
        """Create the arrays of dynamic variables not in the archive yet."""
        with self._lock.shared():
            self._sync()
            if all(name in self._meta["variables"] for name in names):
                return
        with self._lock.exclusive():
            self._reload()
            self._finish_shift()
            for name in names:
                if name in self._meta["variables"]:
                    continue
                attrs = {k: v for k, v in ds[name].attrs.items() if _json_ok(v)}
                encoding = encoding_for(name, attrs["units"])
                self._create_variable(name, attrs, encoding)
                self._meta["variables"][name] = {
                    "units": attrs["units"],
                    "dtype": encoding.dtype,
                    "scale_factor": encoding.scale_factor,
                    "fill": None if encoding.dtype == "float32" else encoding.fill,
                }
            self._save_meta()

    def _create_variable(self, name: str, attrs: dict, encoding: Encoding) -> None:
        length = self.time_length
        fill = encoding.fill
        for level in LEVELS:
            ny, nx = self.level_grid(level).shape
            c = self.chunk_px
            zarr.open_group(self._zstore, path=f"level{level}", mode="r+").create_array(
                name,
                shape=(length, ny, nx),
                chunks=(1, min(c, ny), min(c, nx)),
                dtype=encoding.dtype,
                fill_value=fill,
                dimension_names=("time", "y", "x"),
                attributes={**attrs, **encoding.cf_attrs(), "grid_mapping": "crs"},
                compressors=[_COMPRESSOR],
                config={"write_empty_chunks": False},
                overwrite=True,  # leftovers of a creation that died before it was recorded
            )
        zarr.open_group(self._zstore, path="availability", mode="r+").create_array(
            name,
            shape=(length,),
            chunks=(1,),
            dtype="uint8",
            fill_value=0,
            dimension_names=("time",),
            attributes={"long_name": f"1 where the {name} of the slot is completely written"},
            compressors=None,
            config={"write_empty_chunks": False},  # a cleared flag is a deleted object
            overwrite=True,
        )

    def _write_slot(self, ds: xr.Dataset, names: Sequence[str], i: int, slot: int) -> None:
        """Write time ``i`` of ``ds`` into absolute ``slot``: flags off, data, flags on."""
        with self._lock.shared():
            self._sync()
            (index,), (inside,) = self._index(np.array([slot]))
            if not inside:  # a remote store grown by another process: see it now
                self._reload()
                (index,), (inside,) = self._index(np.array([slot]))
            if not inside:
                raise ArchiveError(
                    f"{self.store}: {_fmt(self._slot_times([slot])[0])} is off the time axis "
                    "(another writer changed it?); reserve() the period first"
                )
            flags = [self._array(f"availability/{name}") for name in names]
            for flag in flags:
                flag[index] = 0
            try:
                for name in names:
                    values = np.asarray(ds[name].isel(time=i).values, dtype=np.float32)  # (ny, nx)
                    encoding = self._encoding(name)
                    for level in LEVELS:
                        field = values if level == 1 else nanmean_pool(values, level)  # (ny/l, nx/l)
                        self._array(f"level{level}/{name}")[index] = encoding.encode(field)
                for flag in flags:
                    flag[index] = 1
            except BaseException as exc:
                for flag in flags:
                    with contextlib.suppress(Exception):
                        flag[index] = 0
                exc.add_note(
                    f"while writing {', '.join(names)} at {_fmt(self._slot_times([slot])[0])} "
                    f"to {self.store}: the slot is marked missing for these variables"
                )
                raise

    def _write_static(self, ds: xr.Dataset, names: Sequence[str]) -> None:
        """Write static fields: unlisted first, data, then listed (all under the lock)."""
        with self._lock.exclusive():
            self._reload()
            self._finish_shift()
            self._meta["static_variables"] = [
                s for s in self._meta["static_variables"] if s not in names
            ]
            self._save_meta()
            for name in names:
                values = np.asarray(ds[name].values, dtype=np.float32)  # (ny, nx)
                attrs = {k: v for k, v in ds[name].attrs.items() if _json_ok(v)}
                for level in LEVELS:
                    field = values if level == 1 else nanmean_pool(values, level)  # (ny/l, nx/l)
                    c = self.chunk_px
                    arr = zarr.open_group(self._zstore, path=f"level{level}", mode="r+").create_array(
                        name,
                        shape=field.shape,
                        chunks=(min(c, field.shape[0]), min(c, field.shape[1])),
                        dtype="float32",
                        fill_value=float("nan"),
                        dimension_names=("y", "x"),
                        attributes={**attrs, "grid_mapping": "crs"},
                        compressors=[_COMPRESSOR],
                        overwrite=True,
                    )
                    arr[:] = field
            self._meta["static_variables"] = sorted(set(self._meta["static_variables"]) | set(names))
            self._save_meta()

    # ------------------------------------------------------------------ availability

    def _flag_indices(self, variable: str) -> np.ndarray:
        """Sorted axis indices whose flag is set, from a listing of the flag objects."""
        try:
            names = self._fs.ls(  # refresh: remote file systems cache listings
                f"{self._root}/availability/{variable}/c", detail=False, refresh=True
            )
        except FileNotFoundError:
            names = []
        index = np.array(
            sorted(int(n.rstrip("/").rsplit("/", 1)[-1]) for n in names), dtype=np.int64
        )
        return index[index < self.time_length]

    def _flags(self, variable: str, slots: np.ndarray) -> np.ndarray:
        """Whether ``variable`` is available at each absolute slot (False off the axis)."""
        result = np.zeros(len(slots), dtype=bool)
        if variable not in self._meta["variables"]:
            return result
        index, inside = self._index(slots)
        if not inside.any():
            return result
        if self._local:
            # A set flag is an existing chunk file: a stat each beats zarr's reads 100x.
            folder = f"{self._root}/availability/{variable}/c"
            result[inside] = [os.path.exists(f"{folder}/{i}") for i in index[inside]]
        else:
            wanted, inverse = np.unique(index[inside], return_inverse=True)
            got = self._array(f"availability/{variable}").get_orthogonal_selection((wanted,))
            result[inside] = got[inverse] == 1
        return result

    def available_times(self, variable: str) -> np.ndarray:
        """Slot times at which ``variable`` is completely written, sorted ``datetime64[ns]``.

        Read from the availability index (a listing), no data is read.
        """
        with self._lock.shared():
            self._sync()
            self._check_variable(variable)
            index = self._flag_indices(variable)
            return self._slot_times(index + self._meta["time_start_slot"])

    def is_available(self, variable: str, times: Any) -> np.ndarray:
        """bool per time: whether ``variable`` is available at the slot of that time
        (False for variables the archive does not have)."""
        with self._lock.shared():
            self._sync()
            return self._flags(variable, self.slot_of(times))

    def latest_available(
        self, variable: str, time: Any, max_age: np.timedelta64 = SATELLITE_MAX_AGE
    ) -> np.datetime64 | None:
        """The latest slot time in ``[time - max_age, time]`` at which ``variable`` is
        available, or None."""
        lo, hi = self._window(np.datetime64(_as_times(time)[0]), max_age)
        slots = np.arange(lo, hi + 1)
        with self._lock.shared():
            self._sync()
            ok = self._flags(variable, slots)
        return self._slot_times(slots[ok][-1:])[0] if ok.any() else None

    def _window(self, time: np.datetime64, max_age: np.timedelta64) -> tuple[int, int]:
        """Absolute slots whose times lie in ``[time - max_age, time]``."""
        t = int(time.astype("datetime64[ns]").astype(np.int64))
        age = int(np.timedelta64(max_age, "ns").astype(np.int64))
        return -((age - t) // self._step_ns), t // self._step_ns  # ceil, floor

    def _requirements(self, task: TaskConfig, t0_slot: int) -> list[_Requirement]:
        """Every observed input of a forecast at ``t0_slot``: radar at the slot nearest
        each frame time, satellite at or up to :data:`SATELLITE_MAX_AGE` before it."""
        t0 = self._slot_times([t0_slot])[0]
        requirements = []
        for k in range(task.num_frames):
            frame = t0 - np.timedelta64(
                task.history_minutes - k * task.history_interval_minutes, "m"
            )
            (slot,) = self.slot_of(frame)
            for v in task.radar_variables:
                label = f"{v} at {_fmt(self._slot_times([slot])[0])}"
                requirements.append(_Requirement(v, int(slot), int(slot), label))
            lo, hi = self._window(frame, SATELLITE_MAX_AGE)
            max_age = int(SATELLITE_MAX_AGE / np.timedelta64(1, "m"))
            for v in task.input_variables()[len(task.radar_variables) :]:
                label = f"{v} within {max_age} min before {_fmt(frame)}"
                requirements.append(_Requirement(v, lo, hi, label))
        return requirements

    def missing_inputs(self, t0: Any, task: TaskConfig) -> list[str]:
        """What a forecast at ``t0`` (its nearest slot) lacks; ``[]`` means complete.

        Items read like ``"precipitation_rate at 2019-06-10T00:10"``,
        ``"abi_c13 within 15 min before 2019-06-10T00:10"`` or
        ``"static field elevation"``. Reads only the availability index.
        """
        (t0_slot,) = self.slot_of(t0)
        missing = []
        with self._lock.shared():
            self._sync()
            for req in self._requirements(task, int(t0_slot)):
                if not self._flags(req.variable, np.arange(req.lo, req.hi + 1)).any():
                    missing.append(req.label)
            missing += [
                f"static field {s}"
                for s in task.static_features
                if s not in self._meta["static_variables"]
            ]
        return missing

    def complete_times(self, task: TaskConfig) -> np.ndarray:
        """Every slot time ``t0`` for which :meth:`missing_inputs` is empty, sorted.

        The same rule evaluated for the whole axis at once from the flag listings.
        """
        with self._lock.shared():
            self._sync()
            length, start = self.time_length, self._meta["time_start_slot"]
            if length == 0 or any(
                s not in self._meta["static_variables"] for s in task.static_features
            ):
                return np.empty(0, dtype="datetime64[ns]")
            flags = {}
            for v in task.input_variables():
                flags[v] = np.zeros(length, dtype=bool)
                if v in self._meta["variables"]:
                    flags[v][self._flag_indices(v)] = True
        complete = np.ones(length, dtype=bool)
        index = np.arange(length)
        # The requirements of slot s are those of slot 0 shifted by s.
        for req in self._requirements(task, 0):
            counts = np.concatenate([[0], np.cumsum(flags[req.variable])])  # (length + 1,)
            lo = np.clip(index + req.lo, 0, length)
            hi = np.clip(index + req.hi + 1, 0, length)
            complete &= counts[hi] - counts[lo] > 0
        return self._slot_times(index[complete] + start)

    # ------------------------------------------------------------------ reading

    def read(
        self, variable: str, times: Any, y0: int, x0: int, size: int, level: int = 1
    ) -> np.ndarray:
        """A ``(T, size, size)`` float32 window of ``variable`` at ``times``.

        ``(y0, x0)`` is the window's top-left pixel in the level's pixel indices (row 0
        north); the window may overhang the grid. Pixels outside the grid, times off the
        axis and times whose slot is not available are NaN. Reads only the chunks the
        window touches.
        """
        self._check_level(level)
        times = _as_times(times)
        out = np.full((len(times), size, size), np.nan, dtype=np.float32)  # (T, size, size)
        with self._lock.shared():
            self._sync()
            self._check_variable(variable)
            slots = self.slot_of(times)
            ok = self._flags(variable, slots)
            rows, cols, dst = self._clip_window(y0, x0, size, level)
            if ok.any() and dst is not None:
                index, _ = self._index(slots)
                wanted, inverse = np.unique(index[ok], return_inverse=True)
                stored = self._array(f"level{level}/{variable}").get_orthogonal_selection(
                    (wanted, rows, cols)
                )  # (T_ok, h, w)
                values = self._encoding(variable).decode(stored)[inverse]  # (T_ok, h, w)
                out[ok, dst[0], dst[1]] = values
        return out

    def read_static(self, name: str, y0: int, x0: int, size: int, level: int = 1) -> np.ndarray:
        """A ``(size, size)`` float32 window of static field ``name``, NaN outside the grid."""
        self._check_level(level)
        out = np.full((size, size), np.nan, dtype=np.float32)  # (size, size)
        with self._lock.shared():
            self._sync()
            if name not in self._meta["static_variables"]:
                raise ArchiveError(
                    f"{self.store}: no static field {name!r}; static fields: "
                    f"{', '.join(self.static_variables) or 'none'}"
                )
            rows, cols, dst = self._clip_window(y0, x0, size, level)
            if dst is not None:
                out[dst] = self._array(f"level{level}/{name}")[rows, cols]  # (h, w)
        return out

    def _clip_window(
        self, y0: int, x0: int, size: int, level: int
    ) -> tuple[slice, slice, tuple[slice, slice] | None]:
        """The part of a window inside the level's grid: source rows, cols, and where it
        goes in the window (None if the window misses the grid)."""
        if size <= 0:
            raise ArchiveError(f"{self.store}: window size must be positive, got {size}")
        ny, nx = self.level_grid(level).shape
        ya, yb = max(y0, 0), min(y0 + size, ny)
        xa, xb = max(x0, 0), min(x0 + size, nx)
        if ya >= yb or xa >= xb:
            return slice(0, 0), slice(0, 0), None
        return slice(ya, yb), slice(xa, xb), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))

    def to_xarray(self, level: int = 1) -> xr.Dataset:
        """The level as a lazy, CF-decoded xarray Dataset (values as stored, so slots that
        are not available may hold NaN or stale data; mask with the availability flags)."""
        self._check_level(level)
        return xr.open_zarr(
            self.store, group=f"level{level}", storage_options=self.storage_options or None
        )


def _create_time_coord(group: zarr.Group) -> None:
    group.create_array(
        "time", shape=(0,), chunks=(_TIME_CHUNK,), dtype="int64", fill_value=0,
        dimension_names=("time",), attributes=dict(_TIME_ATTRS),
    )  # fmt: skip


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
