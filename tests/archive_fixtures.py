"""Small synthetic archives for tests of the dataset, training and forecasting.

:func:`make_archive` writes a real zarr archive (:class:`metnet.archive.Archive`) on a
preset's grid: synthetic radar and satellite frames (:mod:`metnet.sources.synthetic`)
and the static fields of :class:`metnet.sources.static.StaticSource`, with elevation
regridded from a small synthetic lat/lon DEM netCDF written next to the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from metnet.archive import DEFAULT_CHUNK_PX, Archive
from metnet.config import preset as get_preset
from metnet.grid import Grid
from metnet.sources.static import StaticSource
from metnet.sources.synthetic import synthetic_dataset

#: First time slot of the default archives.
T0 = np.datetime64("2019-06-10T00:00", "ns")


def default_times(preset: str = "tiny", extra_slots: int = 8) -> np.ndarray:
    """2-minute slots from :data:`T0` covering one full history, the largest lead time and
    ``extra_slots`` more: ``extra_slots + 1`` forecast times have every lead time."""
    task = get_preset(preset).task
    slots = (task.history_minutes + task.max_lead_time_minutes) // 2 + extra_slots + 1
    return T0 + np.arange(slots) * np.timedelta64(2, "m")


def write_dem(path: Path, grid: Grid) -> Path:
    """A netCDF DEM on a 0.05 degree lat/lon grid covering ``grid``: smooth hills,
    ``elevation = 800 + 600 sin(lon / 2) cos(lat / 3)`` metres (degrees in the formula)."""
    lat, lon = grid.lat_lon()
    lats = np.arange(lat.min() - 0.5, lat.max() + 0.5, 0.05)  # (ny_dem,)
    lons = np.arange(lon.min() - 0.5, lon.max() + 0.5, 0.05)  # (nx_dem,)
    hills = np.sin(lons[None, :] / 2.0) * np.cos(lats[:, None] / 3.0)  # (ny_dem, nx_dem)
    elevation = 800.0 + 600.0 * hills
    xr.Dataset(
        {"elevation": (("lat", "lon"), elevation.astype(np.float32), {"units": "m"})},
        coords={"lat": lats, "lon": lons},
    ).to_netcdf(path)
    return path


def make_archive(
    tmp_path: Path,
    preset: str = "tiny",
    times: np.ndarray | None = None,
    seed: int = 0,
    *,
    satellite_times: np.ndarray | None = None,
    name: str = "archive.zarr",
    chunk_px: int = DEFAULT_CHUNK_PX,
) -> Archive:
    """A synthetic archive at ``tmp_path / name`` for the preset's grid and task.

    ``times``: slots holding the radar variables (default :func:`default_times`).
    ``satellite_times``: slots holding the task's ABI bands (default every 10 minutes,
    ``times[::5]``; empty for none). Static fields: latitude, longitude and elevation.
    ``chunk_px``: the archive's spatial chunk side.
    Returns the archive open for writing, so a test can add or overwrite data.
    """
    config = get_preset(preset)
    grid = Grid(config.grid)
    times = default_times(preset) if times is None else np.asarray(times, dtype="datetime64[ns]")
    if satellite_times is None:
        satellite_times = times[::5]
    archive = Archive.create(str(tmp_path / name), config.grid, chunk_px=chunk_px)
    archive.write(synthetic_dataset(grid, times, seed, config.task.radar_variables))
    bands = config.task.input_variables()[len(config.task.radar_variables) :]
    if bands and len(satellite_times):
        archive.write(synthetic_dataset(grid, satellite_times, seed, bands))
    dem = write_dem(tmp_path / f"{name}.dem.nc", grid)
    archive.write(StaticSource(dem=str(dem)).read(None, grid))
    return archive
