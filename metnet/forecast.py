"""Inference over a domain: tiling, batched lead times, stitching, and the forecast store.

A MetNet model predicts one ``target_px`` square tile per call (the centre of its
context). :func:`forecast` covers a domain with tiles and writes the forecast dataset of
:mod:`metnet.products` to a zarr store:

- **Domain and tiles.** Tiles lie on one lattice anchored at the grid's north-west
  corner: tile ``(i, j)`` covers rows ``i P .. i P + P - 1`` and columns
  ``j P .. j P + P - 1`` (``P = task.target_px``). The forecast domain
  (:func:`domain_of`) is the union of the lattice tiles that intersect the requested
  bounding box (default: the whole grid), clipped to the grid; tiles that overhang the
  grid's far edges are predicted whole (their context is NaN-padded like any other) and
  cropped. Because the lattice is global, a pixel gets the same forecast whatever box
  asked for it, and a tile forecast alone equals the same tile in a stitched map.
  Tile centres are multiples of 4 whenever ``P / 2`` is, so contexts align with the
  archive's 4 km level as they do in training.
- **Batching.** Inputs of ``batch_tiles`` tiles are built with
  :class:`metnet.dataset.ExampleBuilder`; one model call per batch predicts every
  requested lead time (``lead_chunk`` lead times at a time inside the model, which bounds
  its activations and does not change the result), under ``torch.inference_mode``. A
  softmax over the bins gives the distribution; :func:`metnet.products.forecast_dataset`
  turns each tile into products.
- **Bounded memory.** Each batch's products are written into the store as soon as they
  are computed (zarr region writes of whole chunks: spatial chunks are the tiles), so
  memory depends on ``batch_tiles`` and the lead times, never on the domain's size.
- **Completion.** The store is written under a temporary name next to ``out``
  (``.<name>.tmp-<random>``) and renamed to ``out`` only once every tile is written:
  a store at ``out`` is always a finished forecast, and a failed run leaves nothing at
  ``out`` (the temporary store is removed). ``out`` must be a local path.
- **Missing inputs.** A forecast time whose inputs are incomplete
  (:meth:`metnet.archive.Archive.missing_inputs`) is refused with the list of what is
  missing, unless ``allow_missing``: the degraded mode forecasts anyway, the validity
  masks telling the model where data is missing (as in training), and the store's
  ``missing_inputs`` attribute lists the gaps (it is absent from complete forecasts).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pyproj
import torch
import xarray as xr
import zarr
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from metnet.archive import Archive
from metnet.checkpoint import Checkpoint, load_checkpoint
from metnet.dataset import DatasetError, ExampleBuilder
from metnet.grid import Grid
from metnet.products import DEFAULT_QUANTILES, DEFAULT_THRESHOLDS, forecast_dataset
from metnet.times import to_utc_datetime64
from metnet.train import TrainError, check_archive_matches

log = logging.getLogger(__name__)

#: Tiles per model call by default.
DEFAULT_BATCH_TILES = 4
#: Lead times per sample that go through the network at once by default: bounds the
#: activations inside the model (the logits of all lead times are kept either way).
DEFAULT_LEAD_CHUNK = 32
#: Target size of one (uncompressed) chunk of the store along ``lead_time``, bytes.
CHUNK_BYTES = 8 * 2**20

_LONLAT = pyproj.CRS.from_epsg(4326)


class ForecastError(ValueError):
    """A forecast that cannot be made as asked; names the checkpoint, archive, time or box."""


# ----------------------------------------------------------------------------- domain


@dataclass(frozen=True)
class Domain:
    """A rectangle of grid pixels: rows ``y0 .. y0 + ny - 1``, columns ``x0 .. x0 + nx - 1``."""

    y0: int
    x0: int
    ny: int
    nx: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of the domain in grid pixels."""
        return slice(self.y0, self.y0 + self.ny), slice(self.x0, self.x0 + self.nx)

    def grid(self, grid: Grid) -> Grid:
        """The sub-grid of ``grid`` covering the domain."""
        c = grid.config
        return Grid(
            replace(
                c,
                nx=self.nx,
                ny=self.ny,
                x_min_m=c.x_min_m + self.x0 * grid.resolution,
                y_max_m=c.y_max_m - self.y0 * grid.resolution,
            )
        )

    def locate(self, y0: int, x0: int, size: int) -> tuple[slice, slice]:
        """Where the ``size`` square with top-left grid pixel ``(y0, x0)`` (inside the
        domain) lies in the domain's arrays, cut at the domain's edges: row and column
        slices; the square's own part is ``[:rows, :cols]`` of the slices' lengths."""
        h, w = min(size, self.y0 + self.ny - y0), min(size, self.x0 + self.nx - x0)
        return slice(y0 - self.y0, y0 - self.y0 + h), slice(x0 - self.x0, x0 - self.x0 + w)

    def expand(self, margin: int) -> Domain:
        """The domain grown by ``margin`` pixels on every side (it may overhang the grid)."""
        return Domain(self.y0 - margin, self.x0 - margin, self.ny + 2 * margin, self.nx + 2 * margin)


def lonlat_bbox(grid: Grid, bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """A ``(lon0, lat0, lon1, lat1)`` box (degrees) as the ``(x0, y0, x1, y1)`` box in
    metres of ``grid``'s CRS that contains it (edges densified, so curved edges fit)."""
    lon0, lat0, lon1, lat1 = _four(bbox, "lon/lat bbox", "lon0, lat0, lon1, lat1")
    if lat0 < -90 or lat1 > 90:
        raise ForecastError(f"lon/lat bbox {tuple(bbox)}: latitudes must lie in -90 .. 90")
    to_grid = pyproj.Transformer.from_crs(_LONLAT, grid.crs, always_xy=True)
    x0, y0, x1, y1 = to_grid.transform_bounds(lon0, lat0, lon1, lat1, densify_pts=101)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ForecastError(f"lon/lat bbox {tuple(bbox)} cannot be projected to {grid.config.crs}")
    return x0, y0, x1, y1


def domain_of(grid: Grid, tile_px: int, bbox: Sequence[float] | None = None) -> Domain:
    """The forecast domain: the tiles of the lattice (see the module docstring) that
    intersect ``bbox`` ``(x0, y0, x1, y1)`` (metres in the grid's CRS; None = the whole
    grid), clipped to the grid. A box partly outside the grid is cut to the grid.

    Raises:
        ForecastError: a malformed box, or one that does not overlap the grid.
    """
    ny, nx = grid.shape
    if bbox is None:
        rows, cols = (0, ny), (0, nx)
    else:
        x0, y0, x1, y1 = _four(bbox, "bbox")
        gx0, gy0, gx1, gy1 = grid.bounds
        if x1 <= gx0 or x0 >= gx1 or y1 <= gy0 or y0 >= gy1:
            raise ForecastError(
                f"bbox ({x0:g}, {y0:g}, {x1:g}, {y1:g}) m lies outside the grid, which spans "
                f"x {gx0:g} .. {gx1:g} m and y {gy0:g} .. {gy1:g} m ({grid.config.crs})"
            )
        res, c = grid.resolution, grid.config
        rows = (math.floor((c.y_max_m - y1) / res), math.ceil((c.y_max_m - y0) / res))
        cols = (math.floor((x0 - c.x_min_m) / res), math.ceil((x1 - c.x_min_m) / res))
    # Snap outwards to the tile lattice, then clip to the grid.
    r0, c0 = max(rows[0], 0) // tile_px * tile_px, max(cols[0], 0) // tile_px * tile_px
    r1 = min(-(-min(rows[1], ny) // tile_px) * tile_px, ny)
    c1 = min(-(-min(cols[1], nx) // tile_px) * tile_px, nx)
    return Domain(r0, c0, r1 - r0, c1 - c0)


def _four(bbox: Sequence[float], what: str, names: str = "x0, y0, x1, y1") -> tuple[float, float, float, float]:
    """``bbox`` as four finite floats with the first two below the last two."""
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ForecastError(f"{what} must be four numbers {names}, got {bbox!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ForecastError(f"{what} must be four finite numbers {names}, got {bbox!r}")
    a0, b0, a1, b1 = names.split(", ")
    if values[0] >= values[2] or values[1] >= values[3]:
        raise ForecastError(f"{what} {values}: need {a0} < {a1} and {b0} < {b1}")
    return values  # type: ignore[return-value]


def read_window(archive: Archive, variable: str, times: Any, domain: Domain) -> np.ndarray:
    """``(T, ny, nx)`` float32 values of ``variable`` on ``domain`` (NaN outside the grid or
    where the slot is missing), read as squares of the domain's shorter side."""
    times = np.atleast_1d(np.asarray(times, dtype="datetime64[ns]"))
    out = np.empty((times.size, domain.ny, domain.nx), np.float32)  # (T, ny, nx)
    side = min(domain.ny, domain.nx)
    for dy in range(0, domain.ny, side):
        for dx in range(0, domain.nx, side):
            block = archive.read(variable, times, domain.y0 + dy, domain.x0 + dx, side)  # (T, side, side)
            h, w = min(side, domain.ny - dy), min(side, domain.nx - dx)
            out[:, dy : dy + h, dx : dx + w] = block[:, :h, :w]
    return out


# ----------------------------------------------------------------------------- times


def parse_time(value: Any, what: str = "forecast time") -> np.datetime64:
    """A UTC time (``datetime64``, or an ISO string, ``Z`` suffix allowed) as ``datetime64[ns]``."""
    try:
        return to_utc_datetime64(value)
    except ValueError:
        raise ForecastError(f"{what} {value!r} is not a time (use e.g. 2019-06-10T00:30)") from None


def _iso(t: np.datetime64) -> str:
    return str(np.datetime64(t, "m"))


# ----------------------------------------------------------------------------- the forecaster


class Forecaster:
    """A model from a checkpoint bound to an archive: predicts tiles of a domain.

    Raises :class:`ForecastError` when the checkpoint's grid or inputs do not match the
    archive (every difference is named) or its normalisation lacks an input.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        archive: Archive,
        *,
        device: str | torch.device | None = None,
        batch_tiles: int = DEFAULT_BATCH_TILES,
        lead_chunk: int | None = DEFAULT_LEAD_CHUNK,
        name: str = "the checkpoint",
    ):
        if isinstance(batch_tiles, bool) or not isinstance(batch_tiles, int) or batch_tiles < 1:
            raise ForecastError(f"batch_tiles must be a positive integer, got {batch_tiles!r}")
        if lead_chunk is not None and (not isinstance(lead_chunk, int) or lead_chunk < 1):
            raise ForecastError(f"lead_chunk must be a positive integer or None, got {lead_chunk!r}")
        self.config = checkpoint.config
        self.task = checkpoint.config.task
        self.archive = archive
        self.name = name
        try:
            check_archive_matches(archive, self.config, archive.store)
            self.builder = ExampleBuilder(archive, self.task, checkpoint.normalization)
        except (TrainError, DatasetError) as exc:
            raise ForecastError(f"{name} cannot forecast from archive {archive.store}: {exc}") from exc
        self.device = torch.device(device or "cpu")
        self.model = checkpoint.model.to(self.device).eval()
        self.batch_tiles = batch_tiles
        self.lead_chunk = lead_chunk

    @property
    def tile_px(self) -> int:
        """Side of a target tile, pixels."""
        return self.task.target_px

    def lead_times(self, lead_times: Sequence[int] | None = None) -> np.ndarray:
        """The requested lead times (all the task's for None) as sorted unique int64
        minutes; each must be one the model predicts."""
        valid = np.asarray(self.task.lead_times, dtype=np.int64)
        if lead_times is None:
            return valid
        leads = np.unique(np.asarray(list(lead_times), dtype=np.int64))
        bad = leads[~np.isin(leads, valid)]
        if leads.size == 0 or bad.size:
            raise ForecastError(
                f"lead times {bad.tolist() or '(none given)'} min are not predicted by {self.name}: "
                f"it predicts {valid[0]} to {valid[-1]} min every {self.task.lead_time_step_minutes} min"
            )
        return leads

    def check_time(self, t0: Any, allow_missing: bool = False) -> tuple[np.datetime64, list[str]]:
        """``t0`` checked to be on the archive's time axis, and the list of its missing inputs.

        Raises:
            ForecastError: ``t0`` is off the time axis, or inputs are missing and
                ``allow_missing`` is False (the message lists every missing input).
        """
        t0 = parse_time(t0)
        step_ns = int(np.timedelta64(self.archive.time_step, "ns").astype(np.int64))
        if int(t0.astype(np.int64)) % step_ns:
            raise ForecastError(
                f"forecast time {np.datetime64(t0, 's')} is not on the time axis of archive "
                f"{self.archive.store} (every {self.archive.time_step} from midnight)"
            )
        missing = self.archive.missing_inputs(t0, self.task)
        if missing and not allow_missing:
            raise ForecastError(
                f"cannot forecast from {_iso(t0)}: archive {self.archive.store} lacks "
                f"{len(missing)} input(s):\n  " + "\n  ".join(missing)
                + "\n(use allow_missing / --allow-missing to forecast with the gaps masked)"
            )
        return t0, missing

    def tiles(self, domain: Domain) -> list[tuple[int, int]]:
        """Top-left pixels ``(row, col)`` of the lattice tiles covering ``domain``, row by row."""
        p = self.tile_px
        return [
            (ty, tx)
            for ty in range(domain.y0, domain.y0 + domain.ny, p)
            for tx in range(domain.x0, domain.x0 + domain.nx, p)
        ]

    def predict(
        self, t0: np.datetime64, tiles: Sequence[tuple[int, int]], lead_times: np.ndarray
    ) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """Yield ``(tile, probs)`` per tile, ``probs`` ``(L, num_bins, P, P)`` float32 bin
        probabilities (summing to 1 over bins), in the order of ``tiles``."""
        p = self.tile_px
        for start in range(0, len(tiles), self.batch_tiles):
            batch = tiles[start : start + self.batch_tiles]
            x = np.stack([self.builder.inputs(t0, ty + p // 2, tx + p // 2) for ty, tx in batch])  # (b, T, C, S, S)
            leads = torch.as_tensor(lead_times, dtype=torch.int64).expand(len(batch), -1)  # (b, L)
            with torch.inference_mode():
                logits = self.model(
                    torch.from_numpy(x).to(self.device), leads.to(self.device), lead_chunk=self.lead_chunk
                )  # (b, L, bins, P, P)
                probs = _softmax_(logits.float(), dim=2).cpu().numpy()  # (b, L, bins, P, P)
            yield from zip(batch, probs)


def _softmax_(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` computed in place (the logits of a batch can be large)."""
    logits.sub_(logits.amax(dim=dim, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=dim, keepdim=True))


# ----------------------------------------------------------------------------- the store


def open_inputs(
    archive: Archive | str, checkpoint: Checkpoint | str | Path, device: Any
) -> tuple[Archive, Checkpoint, str]:
    """The archive (opened read-only from a path), the checkpoint (loaded from a file onto
    ``device``) and a name for messages."""
    if not isinstance(archive, Archive):
        archive = Archive.open(str(archive))
    if isinstance(checkpoint, Checkpoint):
        return archive, checkpoint, "the checkpoint"
    return archive, load_checkpoint(checkpoint, map_location=device or "cpu"), f"checkpoint {checkpoint}"


def _template(sample: xr.Dataset, grid: Grid, tile_px: int) -> xr.Dataset:
    """The forecast dataset of ``grid`` with ``sample``'s variables, coordinates and
    attributes, its data as lazy NaN arrays chunked by tile (``y``, ``x``), whole along
    ``threshold``, ``quantile`` and ``bin``, and by about :data:`CHUNK_BYTES` along
    ``lead_time``. Written with ``compute=False`` it creates the store without data."""
    variables = {}
    for name, var in sample.data_vars.items():
        sizes = {**dict(var.sizes), "y": grid.shape[0], "x": grid.shape[1]}
        chunks = {**dict(var.sizes), "y": tile_px, "x": tile_px}
        per_lead = 4 * math.prod(n for d, n in chunks.items() if d != "lead_time")
        chunks["lead_time"] = max(1, min(sizes["lead_time"], CHUNK_BYTES // per_lead))
        values = da.full(tuple(sizes.values()), np.nan, dtype=np.float32, chunks=tuple(chunks.values()))
        variables[name] = (var.dims, values, var.attrs)
    ds = grid.dataset(variables, lat_lon=True)
    ds["crs"].attrs = {**sample["crs"].attrs, **ds["crs"].attrs}  # this grid's GeoTransform
    # Variables, not DataArrays: those would bring the sample's scalar "crs" along.
    ds = ds.assign_coords(
        {n: c.variable for n, c in sample.coords.items() if not {"y", "x"} & set(c.dims) and n != "crs"}
    )
    ds.attrs = dict(sample.attrs)
    return ds


def forecast(
    archive: Archive | str,
    checkpoint: Checkpoint | str | Path,
    t0: Any,
    out: str | Path,
    *,
    bbox: Sequence[float] | None = None,
    lead_times: Sequence[int] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    keep_distribution: bool = False,
    batch_tiles: int = DEFAULT_BATCH_TILES,
    lead_chunk: int | None = DEFAULT_LEAD_CHUNK,
    allow_missing: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = False,
) -> Path:
    """Forecast from ``t0`` over a domain and write the forecast dataset to zarr at ``out``.

    Args:
        archive: the observation archive (or its path / URL).
        checkpoint: a loaded checkpoint or its file.
        t0: forecast time (UTC), on the archive's time axis.
        out: local path of the zarr store to write.
        bbox: ``(x0, y0, x1, y1)`` metres in the grid's CRS (:func:`lonlat_bbox` converts
            degrees); None forecasts the whole grid. See :func:`domain_of`.
        lead_times: minutes (default: every lead time of the model).
        thresholds, quantiles: of the products (:func:`metnet.products.forecast_dataset`).
        keep_distribution: also store ``precipitation_rate_bin_probability``
            ``(lead_time, bin, y, x)``.
        batch_tiles: tiles per model call. lead_chunk: lead times per pass inside the model.
        allow_missing: forecast even when inputs are missing (see the module docstring).
        overwrite: replace an existing store at ``out`` (only once the new one is complete).
        device: torch device (default CPU). progress: show a progress bar over tiles.

    Returns:
        ``out`` as a :class:`~pathlib.Path`, a complete forecast store.

    Raises:
        ForecastError: a checkpoint that does not fit the archive, missing inputs, a box
            outside the grid, lead times the model does not predict, an existing ``out``.
    """
    if "://" in str(out):
        raise ForecastError(f"out {out}: the forecast store must be a local path")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ForecastError(f"{out} already exists (pass overwrite / --overwrite to replace it)")
    archive, ckpt, name = open_inputs(archive, checkpoint, device)
    forecaster = Forecaster(
        ckpt, archive, device=device, batch_tiles=batch_tiles, lead_chunk=lead_chunk, name=name
    )
    t0, missing = forecaster.check_time(t0, allow_missing)
    leads = forecaster.lead_times(lead_times)
    grid, task, p = archive.grid, forecaster.task, forecaster.tile_px
    domain = domain_of(grid, p, bbox)
    tiles = forecaster.tiles(domain)

    def tile_dataset(tile: tuple[int, int], probs: np.ndarray) -> xr.Dataset:
        return forecast_dataset(
            probs, grid.window(tile[0], tile[1], probs.shape[-1]), t0, leads.tolist(),
            thresholds, quantiles, task.bin_width_mm_h, keep_distribution,
            source=f"MetNet ({name})",
        )  # fmt: skip

    # A one-pixel uniform forecast checks every product argument before any model time
    # is spent, and gives the store's schema.
    uniform = np.full((leads.size, task.num_bins, 1, 1), 1.0 / task.num_bins, np.float32)  # (L, bins, 1, 1)
    try:
        sample = tile_dataset((0, 0), uniform)
    except ValueError as exc:
        raise ForecastError(f"cannot make the forecast products: {exc}") from exc
    template = _template(sample, domain.grid(grid), p)
    template.attrs["checkpoint"] = name
    template.attrs["tile_px"] = p
    if missing:
        template.attrs["missing_inputs"] = "; ".join(missing)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        template.to_zarr(tmp, mode="w-", compute=False, consolidated=False)
        root = zarr.open_group(str(tmp), mode="r+")
        names = list(template.data_vars)
        log.info("forecast %s from %s: %d tiles, %d lead times", out, _iso(t0), len(tiles), leads.size)
        with progress_bar(progress, len(tiles), "forecast tiles") as advance:
            for tile, probs in forecaster.predict(t0, tiles, leads):
                ds = tile_dataset(tile, probs)
                ys, xs = domain.locate(*tile, p)  # tiles may overhang the grid
                h, w = ys.stop - ys.start, xs.stop - xs.start
                for n in names:
                    root[n][..., ys, xs] = ds[n].values[..., :h, :w]
                advance()
        if out.exists():  # overwrite: move the old store aside only now
            trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar of ``total`` steps (a no-op when not ``enabled``); the context
    value advances it by one."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not enabled) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
