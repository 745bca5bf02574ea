"""Static (time-invariant) fields on the grid: latitude, longitude and elevation.

Latitude and longitude come from the grid itself. Elevation comes from a digital
elevation model file, a GeoTIFF (read with rioxarray) or a netCDF file (read with
xarray), on any grid: geographic (1-D lat/lon, e.g. GTOPO30, SRTM, ETOPO) or projected
(a CRS that rioxarray can read), area-averaged onto the grid by
:class:`~metnet.grid.Regridder`. Without a DEM, elevation is omitted, never faked as
zeros: :attr:`StaticSource.variables` lists only latitude and longitude, and reading logs
a warning saying so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyproj
import xarray as xr

from metnet.grid import Grid, Regridder
from metnet.sources import SourceError, discover_files

log = logging.getLogger(__name__)

#: File suffixes read as DEMs.
DEM_SUFFIXES = (".tif", ".tiff", ".nc", ".nc4")
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
_ELEVATION_NAMES = (
    "elevation",
    "elev",
    "height",
    "altitude",
    "orography",
    "orog",
    "z",
    "band_data",
)


class StaticSource:
    """Latitude, longitude and (with a DEM) elevation on the grid, as ``(y, x)`` float32.

    ``dem`` is the DEM file used when :meth:`read` is given none; ``dem_variable`` names
    the elevation variable in a netCDF DEM (default: found by name, or the only 2-D one).
    """

    name = "static"

    def __init__(
        self,
        dem: str | None = None,
        dem_variable: str | None = None,
        regrid_cache_dir: str | None = None,
    ):
        self.dem = None if dem is None else str(dem)
        self.dem_variable = dem_variable
        self.regrid_cache_dir = regrid_cache_dir

    @property
    def variables(self) -> tuple[str, ...]:
        """The fields :meth:`read` returns without an explicit DEM path."""
        base = ("latitude", "longitude")
        return base + ("elevation",) if self.dem else base

    def __repr__(self) -> str:
        elevation = (
            f"elevation from {self.dem}" if self.dem else "elevation omitted: no DEM configured"
        )
        return f"StaticSource(latitude, longitude; {elevation})"

    def discover(
        self, location: str, start: np.datetime64 | None = None, end: np.datetime64 | None = None
    ) -> list[str]:
        """DEM files (GeoTIFF or netCDF) at or under ``location``; static fields have no
        time, so ``start`` and ``end`` are ignored."""

        def match(name: str) -> bool:
            return name.lower().endswith(DEM_SUFFIXES)

        return discover_files(location, self.time_of, None, None, match=match)

    def time_of(self, path: str) -> np.datetime64:
        """Static fields are time-invariant: always ``NaT``."""
        return np.datetime64("NaT", "ns")

    def read(self, path: str | None, grid: Grid) -> xr.Dataset:
        """Static fields on ``grid``: ``latitude``/``longitude`` (degrees) and, from the DEM
        ``path`` (or the configured ``dem``), ``elevation`` (m), each float32 ``(y, x)``."""
        lat, lon = grid.lat_lon()
        fields = {
            "latitude": (
                ("y", "x"),
                lat.astype(np.float32),
                {"units": "degrees_north", "standard_name": "latitude"},
            ),
            "longitude": (
                ("y", "x"),
                lon.astype(np.float32),
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
        }
        dem = path or self.dem
        if dem is None:
            log.warning("no DEM configured: the static fields omit elevation")
        else:
            fields["elevation"] = (
                ("y", "x"),
                self._elevation(str(dem), grid),
                {"units": "m", "standard_name": "surface_altitude", "source": str(dem)},
            )
        return grid.dataset(fields)

    def _elevation(self, path: str, grid: Grid) -> np.ndarray:
        """``(ny, nx)`` float32 elevation in metres from the DEM at ``path``."""
        values, lon, lat = _dem_lonlat(path, _open_dem(path, self.dem_variable))
        regrid = Regridder.from_lonlat(lon, lat, grid, cache_dir=self.regrid_cache_dir)
        elevation = regrid(values)  # (ny, nx)
        if np.isnan(elevation).all():
            raise SourceError(f"{path}: the DEM does not cover the grid ({grid})")
        return elevation


def _open_dem(path: str, variable: str | None) -> xr.DataArray:
    """The DEM as a 2-D DataArray (NaN = no data)."""
    if not Path(path).exists():
        raise SourceError(f"{path}: DEM file not found")
    suffix = Path(path).suffix.lower()
    if suffix not in DEM_SUFFIXES:
        raise SourceError(
            f"{path}: unsupported DEM format; expected one of {', '.join(DEM_SUFFIXES)}"
        )
    try:
        if suffix in (".tif", ".tiff"):
            import rioxarray

            da = rioxarray.open_rasterio(path, masked=True)
            if "band" in da.dims:
                da = da.isel(band=0, drop=True)  # (y, x)
            return da.load()
        ds = xr.open_dataset(path, decode_coords="all")
    except Exception as exc:  # noqa: BLE001 - GDAL/netCDF raise their own types
        raise SourceError(f"{path}: cannot read the DEM ({type(exc).__name__}: {exc})") from exc
    if variable is None:
        named = [n for n in _ELEVATION_NAMES if n in ds.data_vars]
        two_d = [n for n, v in ds.data_vars.items() if v.ndim == 2]
        if named:
            variable = named[0]
        elif len(two_d) == 1:
            variable = two_d[0]
        else:
            raise SourceError(
                f"{path}: cannot tell which variable is the elevation among "
                f"{', '.join(ds.data_vars) or 'no variables'}; pass dem_variable"
            )
    if variable not in ds.data_vars:
        raise SourceError(f"{path}: no variable {variable!r}; variables: {', '.join(ds.data_vars)}")
    da = ds[variable].squeeze(drop=True)
    if da.ndim != 2:
        raise SourceError(f"{path}: elevation variable {variable!r} is not 2-D (dims {da.dims})")
    return da.load()


def _dem_lonlat(path: str, da: xr.DataArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DEM values ``(ny_dem, nx_dem)`` float32 and their pixel-centre longitude and
    latitude: 1-D ``(nx_dem,)``, ``(ny_dem,)`` if geographic, else 2-D like the values."""
    lat_name = next((n for n in _LAT_NAMES if n in da.coords), None)
    lon_name = next((n for n in _LON_NAMES if n in da.coords), None)
    if lat_name and lon_name:
        lat, lon = da[lat_name], da[lon_name]
        if lat.ndim == 1 and lon.ndim == 1:
            da = da.transpose(lat.dims[0], lon.dims[0])  # (ny_dem, nx_dem)
            return np.asarray(da.values, dtype=np.float32), lon.values, lat.values
        lon, lat = lon.transpose(*da.dims).values, lat.transpose(*da.dims).values
        return np.asarray(da.values, dtype=np.float32), lon, lat
    crs = da.rio.crs
    if crs is None:
        raise SourceError(f"{path}: the DEM has neither lat/lon coordinates nor a CRS")
    da = da.transpose(da.rio.y_dim, da.rio.x_dim)  # (ny_dem, nx_dem)
    values = np.asarray(da.values, dtype=np.float32)
    y, x = da[da.rio.y_dim].values, da[da.rio.x_dim].values
    crs = pyproj.CRS.from_user_input(crs.to_wkt())
    if crs.is_geographic:
        return values, x, y
    xx, yy = np.meshgrid(x, y)  # (ny_dem, nx_dem) each
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(xx, yy)
    return values, lon, lat
