"""Prefect export flow: a forecast store -> netCDF, COG, PNG and GIF files.

:func:`write_exports` runs :func:`metnet.export.export_forecast` and then writes a
manifest, ``manifest.json``, listing the formats, lead times, products and files
written. The exporters write each file atomically; the manifest (itself written to a
temporary name and renamed) is written last, so its presence with every listed file
means the export is complete: :func:`exports_complete` is how the forecast and
backfill flows decide whether exports still need doing after a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from metnet.export import export_forecast, open_forecast

#: Name of the manifest written into an export folder once every file is there.
MANIFEST = "manifest.json"


def _selection(
    formats: Sequence[str], lead_times: Sequence[int] | None, products: Sequence[str] | None
) -> dict[str, Any]:
    """What an export was asked for, in the manifest's normalised form."""
    return {
        "formats": sorted({f.strip().lower() for f in formats}),
        "lead_times": None if lead_times is None else sorted(int(t) for t in lead_times),
        "products": None if products is None else sorted(products),
    }


def exports_complete(
    out_dir: str | Path,
    formats: Sequence[str],
    lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
    forecast: str | Path | None = None,
) -> bool:
    """Whether ``out_dir`` holds a finished export with this selection: its manifest
    asks for the same formats, lead times and products, every file it lists exists, and
    (when ``forecast`` is given) it was made from a forecast store no newer than itself."""
    manifest = Path(out_dir) / MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if {k: data.get(k) for k in ("formats", "lead_times", "products")} != _selection(
        formats, lead_times, products
    ):
        return False
    if forecast is not None and Path(forecast).stat().st_mtime > manifest.stat().st_mtime:
        return False  # the forecast was rewritten after this export
    return all((Path(out_dir) / name).exists() for names in data["files"].values() for name in names)


def manifest_files(out_dir: str | Path) -> dict[str, list[str]]:
    """The files per format listed by the manifest in ``out_dir`` (``{}`` without one)."""
    try:
        return json.loads((Path(out_dir) / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return {}


def write_exports(
    forecast: str | Path,
    out_dir: str | Path,
    formats: Sequence[str],
    lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Export the forecast store ``forecast`` into ``out_dir`` and write the manifest.

    Returns the file names written per format (relative to ``out_dir``). Raises
    ``metnet.export.ExportError`` (a ValueError) for an unreadable forecast or a bad
    selection, before anything is written.
    """
    out = Path(out_dir)
    written = export_forecast(
        open_forecast(forecast), out, list(formats), lead_times=lead_times, products=products
    )
    files = {fmt: sorted(p.name for p in paths) for fmt, paths in written.items()}
    manifest = {"forecast": str(forecast), **_selection(formats, lead_times, products), "files": files}
    tmp = out / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return files


@task(name="export-forecast", task_run_name="export {forecast}", cache_policy=NO_CACHE)
def export_task(
    forecast: str,
    out_dir: str,
    formats: list[str],
    lead_times: list[int] | None = None,
    products: list[str] | None = None,
) -> dict[str, list[str]]:
    """:func:`write_exports` as a task (the outputs and their manifest are the cache)."""
    return write_exports(forecast, out_dir, formats, lead_times, products)


@flow(name="metnet-export", validate_parameters=True)
def export_flow(
    forecast: str,
    out_dir: str,
    formats: list[str] = ["netcdf", "cog", "png", "gif"],  # noqa: B006 - Prefect parameter default
    lead_times: list[int] | None = None,
    products: list[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the chosen ``formats`` of the forecast store ``forecast`` into ``out_dir``.

    ``lead_times`` (minutes) and ``products`` (e.g. ``prob_gt_1mmh``, ``rate_mean``)
    select what to export, None meaning all. Skipped with ``status: "already done"``
    when a complete export with the same selection exists, unless ``overwrite``.
    """
    logger = get_run_logger()
    if not overwrite and exports_complete(out_dir, formats, lead_times, products, forecast):
        logger.info("export of %s into %s already done", forecast, out_dir)
        return {"status": "already done", "out_dir": out_dir}
    files = export_task(forecast, out_dir, formats, lead_times, products)
    logger.info(
        "exported %s: %s", forecast, ", ".join(f"{len(v)} {k}" for k, v in files.items())
    )
    return {"status": "exported", "out_dir": out_dir, "files": files}
