"""Prefect forecast flow: one forecast time -> forecast store -> exported maps.

Outputs of a forecast from ``t0`` live under one ``outputs`` folder
(:class:`OutputLayout`)::

    outputs/forecasts/20190610T0010Z.zarr     the forecast dataset (metnet.forecast)
    outputs/maps/20190610T0010Z/              exports, with manifest.json when complete

**Completeness comes from the outputs, not from Prefect's state**: a store at the
forecast path is always a finished forecast (:func:`metnet.forecast.forecast` writes a
temporary store and renames it), and it is *complete* unless it was made with inputs
missing (its ``missing_inputs`` attribute, see :func:`gaps_of`): such a degraded forecast
is redone once the archive has every input. An export folder is finished when its
manifest lists the requested selection (:func:`pipelines.export.exports_complete`). So
:func:`run_forecast` is idempotent: it skips what exists ("already done"), redoes only
what a crash left unfinished, and is safe to run again from a schedule, a backfill or
by hand. Prefect's result cache is deliberately not used: it would claim "done" for
outputs that someone deleted.

The default forecast time is the latest slot whose inputs are all in the archive
(:meth:`metnet.archive.Archive.complete_times`, read from the availability index). A
time whose inputs are incomplete fails with :class:`MissingInputsError` listing them
(``allow_missing`` forecasts anyway, the gaps masked, see :mod:`metnet.forecast`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from metnet.archive import Archive
from metnet.checkpoint import Checkpoint, load_checkpoint
from metnet.forecast import DEFAULT_BATCH_TILES, forecast
from metnet.train import latest_checkpoint
from pipelines.common import iso, parse_time, stamp
from pipelines.export import exports_complete, manifest_files, write_exports
from pipelines.train import LATEST

#: Tag of every forecast task run: ``prefect concurrency-limit create metnet-forecast N``
#: bounds the forecasts running at once across all flow runs (model memory, CPU cores).
FORECAST_TAG = "metnet-forecast"
#: Export formats written by default after a forecast.
DEFAULT_FORMATS: tuple[str, ...] = ("netcdf", "cog", "png")


class MissingInputsError(ValueError):
    """A forecast time whose inputs are not all in the archive; lists what is missing."""

    def __init__(self, t0: np.datetime64, archive: str, missing: list[str]):
        self.missing = list(missing)
        super().__init__(
            f"cannot forecast from {iso(t0)}: archive {archive} lacks {len(missing)} "
            "input(s):\n  " + "\n  ".join(missing)
        )


@dataclass(frozen=True)
class OutputLayout:
    """Where the outputs of each forecast time go under ``root`` (see the module docstring)."""

    root: Path

    def forecast(self, t0: np.datetime64) -> Path:
        """The forecast store of ``t0``."""
        return self.root / "forecasts" / f"{stamp(t0)}.zarr"

    def maps(self, t0: np.datetime64) -> Path:
        """The export folder of ``t0``."""
        return self.root / "maps" / stamp(t0)


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint file as given; for a folder, the model the train flow published in it
    (``latest.pt``) or else the latest ``checkpoints/step_*.pt`` of a ``metnet train`` run."""
    path = Path(checkpoint)
    if path.is_dir():
        latest = path / LATEST if (path / LATEST).exists() else latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"{path}: a folder without {LATEST} or checkpoints/step_*.pt")
        return latest
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


@functools.lru_cache(maxsize=4)
def _cached_checkpoint(path: str, mtime_ns: int, device: str) -> Checkpoint:
    # One load per process and file version: a backfill's threads share the model
    # (inference only reads it); a retrained checkpoint has a new mtime.
    return load_checkpoint(path, map_location=device)


def load(checkpoint: str | Path, device: str | None = None) -> Checkpoint:
    """The checkpoint (file or training folder), loaded once per process and version."""
    path = resolve_checkpoint(checkpoint)
    return _cached_checkpoint(str(path), os.stat(path).st_mtime_ns, device or "cpu")


def gaps_of(store: Path) -> list[str]:
    """The inputs a finished forecast store was made without (its ``missing_inputs``
    attribute, ``"; "``-separated); ``[]`` for a complete forecast."""
    text = zarr.open_group(str(store), mode="r").attrs.get("missing_inputs", "")
    return [item for item in str(text).split("; ") if item]


def forecast_complete(store: Path) -> bool:
    """Whether ``store`` is a finished forecast made with every input."""
    return store.exists() and not gaps_of(store)


def latest_complete_time(archive: Archive, ckpt: Checkpoint) -> np.datetime64:
    """The latest forecast time whose inputs are all in ``archive``; ValueError if none."""
    times = archive.complete_times(ckpt.config.task)
    if times.size == 0:
        raise ValueError(
            f"archive {archive.store} has no time with complete inputs for this model "
            f"({', '.join(ckpt.config.task.input_variables())} over "
            f"{ckpt.config.task.history_minutes} min, static "
            f"{', '.join(ckpt.config.task.static_features)})"
        )
    return times[-1]


def run_forecast(
    archive: str,
    checkpoint: str,
    outputs: str,
    t0: Any,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    lead_times: Sequence[int] | None = None,
    export_lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
    batch_tiles: int = DEFAULT_BATCH_TILES,
    device: str | None = None,
) -> dict[str, Any]:
    """Make (or complete) the outputs of the forecast from ``t0``; the unit of work of
    the forecast and backfill flows.

    Returns ``{"time", "forecast", "maps", "status", "files"}`` with ``status`` one of
    ``"already done"`` (nothing to do), ``"exported"`` (only the exports were missing)
    or ``"forecast"`` (forecast made, and exported when ``formats``). A degraded
    forecast (made with ``allow_missing``) counts as done only while its inputs are
    still missing and ``allow_missing`` is set; once they are all in the archive it is
    redone. Raises :class:`MissingInputsError` when inputs are missing (and not
    ``allow_missing``), ``metnet.forecast.ForecastError`` / ``ExportError`` for other
    user errors.
    """
    t0 = parse_time(t0, "time")
    layout = OutputLayout(Path(outputs))
    path, maps = layout.forecast(t0), layout.maps(t0)
    status = "already done"
    if overwrite or not forecast_complete(path):
        store, ckpt = Archive.open(archive), load(checkpoint, device)
        missing = store.missing_inputs(t0, ckpt.config.task)
        if missing and not allow_missing:
            raise MissingInputsError(t0, archive, missing)
        # A degraded forecast whose inputs are still missing is as good as it gets.
        if overwrite or not (missing and path.exists()):
            forecast(
                store, ckpt, t0, path, bbox=bbox, lead_times=lead_times,
                allow_missing=allow_missing, overwrite=path.exists(), batch_tiles=batch_tiles,
                device=device,
            )  # fmt: skip
            status = "forecast"
    files = manifest_files(maps) if formats else {}
    if formats and (
        status == "forecast"
        or overwrite
        or not exports_complete(maps, formats, export_lead_times, products, path)
    ):
        files = write_exports(path, maps, formats, export_lead_times, products)
        status = "forecast" if status == "forecast" else "exported"
    return {"time": iso(t0), "forecast": str(path), "maps": str(maps), "status": status, "files": files}


@task(name="forecast", task_run_name="forecast {t0}", tags=[FORECAST_TAG], cache_policy=NO_CACHE)
def forecast_task(
    archive: str,
    checkpoint: str,
    outputs: str,
    t0: str,
    formats: list[str],
    lead_times: list[int] | None = None,
    export_lead_times: list[int] | None = None,
    products: list[str] | None = None,
    bbox: list[float] | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
    batch_tiles: int = DEFAULT_BATCH_TILES,
    device: str | None = None,
) -> dict[str, Any]:
    """:func:`run_forecast` as a task (its outputs are the cache, see the module docstring)."""
    result = run_forecast(
        archive, checkpoint, outputs, t0, formats=formats, lead_times=lead_times,
        export_lead_times=export_lead_times, products=products, bbox=bbox,
        allow_missing=allow_missing, overwrite=overwrite, batch_tiles=batch_tiles, device=device,
    )  # fmt: skip
    get_run_logger().info("forecast %s: %s (%s)", result["time"], result["status"], result["forecast"])
    return result


@flow(name="metnet-forecast", validate_parameters=True)
def forecast_flow(
    archive: str,
    checkpoint: str,
    outputs: str,
    time: str | None = None,
    formats: list[str] = list(DEFAULT_FORMATS),  # noqa: B006 - Prefect parameter default
    lead_times: list[int] | None = None,
    export_lead_times: list[int] | None = None,
    products: list[str] | None = None,
    bbox: list[float] | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
    batch_tiles: int = DEFAULT_BATCH_TILES,
    device: str | None = None,
) -> dict[str, Any]:
    """Forecast from ``time`` (default: the latest time with complete inputs), write the
    forecast store under ``outputs`` and export ``formats`` (see :class:`OutputLayout`).

    ``checkpoint`` is a file or a training folder (its latest checkpoint). ``lead_times``
    are forecast (default all the model predicts), ``export_lead_times`` exported
    (default all forecast), ``products`` the exported products (e.g. ``prob_gt_1mmh``,
    ``rate_mean``; default all). ``bbox`` ``[x0, y0, x1, y1]`` metres limits the domain.
    Returns the result of :func:`run_forecast`; ``status`` ``"already done"`` when the
    complete outputs exist (``overwrite`` redoes them).
    """
    logger = get_run_logger()
    if time is None:
        ckpt = load(checkpoint, device)
        t0 = latest_complete_time(Archive.open(archive), ckpt)
        logger.info("latest time with complete inputs: %s", iso(t0))
    else:
        t0 = parse_time(time, "time")
    result = forecast_task(
        archive, checkpoint, outputs, iso(t0), list(formats), lead_times, export_lead_times,
        products, bbox, allow_missing, overwrite, batch_tiles, device,
    )  # fmt: skip
    if result["status"] == "already done":
        logger.info("forecast from %s already done: %s", result["time"], result["forecast"])
    return result
