"""Fields from an existing zarr store or netCDF file (local or fsspec URL) on the canonical grid.

The dataset holds ``(time, y, x)`` variables with CF coordinates and is geo-referenced
either by a CF grid-mapping variable (the data variable's ``grid_mapping`` attribute,
read with ``pyproj.CRS.from_cf``: ``crs_wkt`` or the CF projection parameters) with
projected ``x``/``y`` coordinates in metres (or km), or by 1-D latitude/longitude
coordinates (a regular lat/lon grid). A dataset exactly on the canonical grid (same CRS
and cell centres, rows in either order) is passed through without resampling; any
other grid goes through :class:`~metnet.grid.Regridder` (area average where finer,
nearest where coarser).

Variables are renamed to archive names with ``variables={"rr": "precipitation_rate"}``
and converted to the archive's units (``precipitation_rate`` in mm/h from, e.g.,
``kg m-2 s-1``, ``mm s-1``, ``m s-1`` or accumulations such as ``mm/5min``; ABI brightness
temperatures in K from ``degC``). A variable without a ``units`` attribute needs
``units={"rr": "mm/h"}``.

Pseudo-paths are ``<url>#<ISO time>``, one per time step of the dataset.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

import netCDF4
import numpy as np
import pyproj
import xarray as xr

from metnet.grid import Grid, Regridder
from metnet.sources import SourceError, _storage_options, is_url, read_bytes
from metnet.sources.goes import ABI_BANDS, band_units, band_variable

#: Units the archive stores each known variable in; other variables keep the source's units.
ARCHIVE_UNITS: dict[str, str] = {
    "precipitation_rate": "mm/h",
    **{band_variable(b): band_units(b) for b in ABI_BANDS},
}

#: Accepted source units per archive unit: normalised spelling -> (scale, offset).
_CONVERSIONS: dict[str, dict[str, tuple[float, float]]] = {
    "mm/h": {
        **dict.fromkeys(
            ("mm/h", "mm h-1", "mm/hr", "mm hr-1", "mm/hour", "kg m-2 h-1"), (1.0, 0.0)
        ),
        # 1 kg of water per m2 is a 1 mm layer.
        **dict.fromkeys(("kg m-2 s-1", "kg/m2/s", "mm/s", "mm s-1"), (3600.0, 0.0)),
        **dict.fromkeys(("m/s", "m s-1"), (3.6e6, 0.0)),
    },
    "K": {
        **dict.fromkeys(("k", "kelvin"), (1.0, 0.0)),
        **dict.fromkeys(("degc", "celsius", "degree_celsius"), (1.0, 273.15)),
    },
    "1": dict.fromkeys(("1", "", "dimensionless"), (1.0, 0.0)),
}
#: An accumulation over N minutes ("mm/5min", "mm per 5 min", "mm (5 min)-1") -> mm/h.
_ACCUMULATION = re.compile(r"(?:mm|kg m-2)\s*(?:/|per|\()\s*(\d+)\s*min\)?(?:-1)?")

_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5")
_X_NAMES = {"x", "lon", "longitude", "projection_x_coordinate", "grid_longitude"}
_Y_NAMES = {"y", "lat", "latitude", "projection_y_coordinate", "grid_latitude"}
_LATLON_NAMES = {"lat", "latitude", "lon", "longitude"}


def _normalise_units(units: str) -> str:
    """Lower case, single spaces, no exponent markers: ``kg m**-2 s**-1`` -> ``kg m-2 s-1``."""
    return re.sub(r"\s+", " ", str(units).strip().lower()).replace("**", "").replace("^", "")


def convert_units(values: np.ndarray, units: str, target: str, where: str) -> np.ndarray:
    """``values`` in ``units`` expressed in ``target`` units (``mm/h``, ``K`` or ``1``).

    ``where`` names the variable and file for the error raised on unknown units.
    """
    accepted = _CONVERSIONS[target]
    key = _normalise_units(units)
    if key in accepted:
        scale, offset = accepted[key]
    elif target == "mm/h" and (match := _ACCUMULATION.fullmatch(key)):
        scale, offset = 60.0 / int(match[1]), 0.0  # N-minute accumulation -> hourly rate
    else:
        known = sorted({k for k in accepted if k} | ({"mm/<N>min"} if target == "mm/h" else set()))
        raise SourceError(
            f"{where}: cannot convert units {units!r} to {target!r}; known units: "
            f"{', '.join(known)}"
        )
    if scale == 1.0 and offset == 0.0:
        return values
    return values * np.float32(scale) + np.float32(offset)


def _time_text(t: np.datetime64) -> str:
    seconds = np.datetime64(t, "s")
    return np.datetime_as_string(seconds if seconds == t else np.datetime64(t, "ns"))


class ZarrSource:
    """Gridded fields from a zarr store or netCDF file (see the module docstring).

    ``variables`` maps source names to archive names (a list keeps the names; default:
    every variable with a time and two spatial dimensions). ``units`` declares or
    overrides a source variable's units. ``storage_options`` go to fsspec (``s3://``
    defaults to anonymous access). ``regrid_cache_dir`` keeps the regridding tables on
    disk between processes.
    """

    name = "zarr"

    def __init__(
        self,
        variables: Mapping[str, str] | Iterable[str] | None = None,
        units: Mapping[str, str] | None = None,
        storage_options: Mapping | None = None,
        regrid_cache_dir: str | None = None,
    ):
        if variables is not None and not isinstance(variables, Mapping):
            variables = {v: v for v in variables}
        self.variables = None if variables is None else dict(variables)
        self.units = dict(units or {})
        self.storage_options = None if storage_options is None else dict(storage_options)
        self.regrid_cache_dir = None if regrid_cache_dir is None else str(regrid_cache_dir)
        self._datasets: dict[str, xr.Dataset] = {}
        self._resamplers: dict[tuple, object] = {}

    def __repr__(self) -> str:
        return f"ZarrSource(variables={self.variables})"

    # ------------------------------------------------------------------ opening

    def _open(self, url: str) -> xr.Dataset:
        if url not in self._datasets:
            self._datasets[url] = self._open_uncached(url)
        return self._datasets[url]

    def _open_uncached(self, url: str) -> xr.Dataset:
        netcdf = PurePosixPath(url.split("?")[0]).suffix.lower() in _NETCDF_SUFFIXES
        try:
            if netcdf:
                # netCDF4 reads a remote file from memory; a local one lazily from disk.
                nc = (
                    netCDF4.Dataset(
                        PurePosixPath(url).name, memory=read_bytes(url, self.storage_options)
                    )
                    if is_url(url)
                    else netCDF4.Dataset(url)
                )
                ds = xr.open_dataset(xr.backends.NetCDF4DataStore(nc))
            else:
                options = _storage_options(url, self.storage_options) if is_url(url) else None
                with warnings.catch_warnings():
                    # Consolidated metadata is used when present (fewer requests on remote
                    # stores); zarr v3 stores usually have none, and the fallback is fine.
                    warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
                    ds = xr.open_zarr(url, storage_options=options or None, chunks=None)
        except SourceError:
            raise
        except FileNotFoundError:
            raise SourceError(f"{url}: no such zarr store or netCDF file") from None
        except Exception as exc:  # zarr, netCDF4 and fsspec raise their own types
            kind = "netCDF file" if netcdf else "zarr store"
            raise SourceError(
                f"{url}: cannot open as a {kind} ({type(exc).__name__}: {exc})"
            ) from exc
        if "time" not in ds.dims:
            raise SourceError(
                f"{url}: no 'time' dimension; dimensions are {sorted(map(str, ds.dims))}"
            )
        return ds

    def _mapping(self, ds: xr.Dataset, url: str) -> dict[str, str]:
        """Source name -> archive name, checked against the dataset."""
        gridded = [
            str(name) for name, da in ds.data_vars.items() if "time" in da.dims and da.ndim == 3
        ]
        if self.variables is None:
            if not gridded:
                raise SourceError(f"{url}: no (time, y, x) variables")
            return {name: name for name in gridded}
        missing = [name for name in self.variables if name not in ds.data_vars]
        if missing:
            raise SourceError(
                f"{url}: no variable {', '.join(map(repr, missing))}; available variables: "
                f"{', '.join(sorted(map(str, ds.data_vars)))}"
            )
        return self.variables

    # ------------------------------------------------------------------ the Source protocol

    def discover(
        self, location: str, start: np.datetime64 | None, end: np.datetime64 | None
    ) -> list[str]:
        """``<location>#<ISO time>`` for every time of the dataset in ``[start, end]``."""
        location = str(location)
        ds = self._open(location)
        self._mapping(ds, location)  # fail early on a wrong variable name
        times = np.asarray(ds["time"].values, dtype="datetime64[ns]")
        keep = np.ones(times.shape, dtype=bool)
        if start is not None:
            keep &= times >= np.datetime64(start, "ns")
        if end is not None:
            keep &= times <= np.datetime64(end, "ns")
        return [f"{location}#{_time_text(t)}" for t in np.sort(times[keep])]

    def time_of(self, path: str) -> np.datetime64:
        """The time after ``#`` in a pseudo-path."""
        return self._split(path)[1]

    @staticmethod
    def _split(path: str) -> tuple[str, np.datetime64]:
        url, sep, text = str(path).rpartition("#")
        if not sep or not url:
            raise SourceError(f"{path}: not a zarr pseudo-path; expected '<url>#<ISO time>'")
        try:
            return url, np.datetime64(text, "ns")
        except ValueError:
            raise SourceError(f"{path}: invalid time {text!r}") from None

    def read(self, path: str, grid: Grid) -> xr.Dataset:
        """The mapped variables at the pseudo-path's time on ``grid``: float32 ``(1, ny, nx)``."""
        url, time = self._split(path)
        ds = self._open(url)
        index = ds.indexes["time"]
        if time not in index:
            raise SourceError(
                f"{url}: no time {_time_text(time)}; it holds {index.size} times from "
                f"{_time_text(index.min())} to {_time_text(index.max())}"
            )
        variables = {}
        for source_name, name in self._mapping(ds, url).items():
            where = f"{url}: variable {source_name!r}"
            da = ds[source_name].sel(time=time)
            y_dim, x_dim = self._spatial_dims(da, where)
            da = da.transpose(y_dim, x_dim)  # (ny_src, nx_src)
            values = np.asarray(da.values, dtype=np.float32)
            units = self.units.get(source_name, da.attrs.get("units"))
            target = ARCHIVE_UNITS.get(name)
            if target is not None:
                if units is None:
                    raise SourceError(
                        f"{where} has no units attribute; declare them with "
                        f"units={{{source_name!r}: {target!r}}}"
                    )
                values = convert_units(values, units, target, where)
            resample = self._resampler(ds, da, y_dim, x_dim, grid, url, where)
            attrs = {"units": target or units or "", "source": f"{url}:{source_name}"}
            variables[name] = (("time", "y", "x"), resample(values)[None], attrs)  # (1, ny, nx)
        return grid.dataset(variables, time=[time])

    # ------------------------------------------------------------------ geo-referencing

    @staticmethod
    def _spatial_dims(da: xr.DataArray, where: str) -> tuple[str, str]:
        dims = [str(d) for d in da.dims]
        if len(dims) != 2:
            raise SourceError(f"{where}: expected dimensions (time, y, x), got {('time', *dims)}")

        def role(dim: str) -> str | None:
            attrs = da[dim].attrs if dim in da.coords else {}
            names = {dim.lower(), str(attrs.get("standard_name", "")).lower()}
            axis = str(attrs.get("axis", "")).upper()
            if names & _X_NAMES or axis == "X":
                return "x"
            if names & _Y_NAMES or axis == "Y":
                return "y"
            return None

        roles = {role(d): d for d in dims}
        if set(roles) != {"x", "y"}:
            raise SourceError(
                f"{where}: cannot tell the x and y dimensions among {dims} (use names x/y or "
                "lon/lat, or CF standard_name / axis attributes)"
            )
        return roles["y"], roles["x"]

    def _resampler(self, ds, da, y_dim, x_dim, grid: Grid, url: str, where: str):
        """A function ``(ny_src, nx_src) -> (ny, nx)`` float32 for this variable's grid."""
        mapping_name = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
        key = (url, y_dim, x_dim, mapping_name, grid)
        if key not in self._resamplers:
            self._resamplers[key] = self._build_resampler(
                ds, da, y_dim, x_dim, mapping_name, grid, where
            )
        return self._resamplers[key]

    def _build_resampler(self, ds, da, y_dim, x_dim, mapping_name, grid: Grid, where: str):
        if y_dim not in da.coords or x_dim not in da.coords:
            raise SourceError(f"{where}: no coordinate values for dimensions {y_dim}, {x_dim}")
        x = np.asarray(da[x_dim].values, dtype=np.float64)  # (nx_src,)
        y = np.asarray(da[y_dim].values, dtype=np.float64)  # (ny_src,)
        if mapping_name:
            if mapping_name not in ds.variables:
                raise SourceError(f"{where}: grid_mapping variable {mapping_name!r} is missing")
            try:
                crs = pyproj.CRS.from_cf(dict(ds[mapping_name].attrs))
            except pyproj.exceptions.CRSError as exc:
                raise SourceError(
                    f"{where}: unreadable grid mapping {mapping_name!r} ({exc})"
                ) from None
        elif {x_dim.lower(), y_dim.lower()} <= _LATLON_NAMES or {
            str(da[x_dim].attrs.get("standard_name")),
            str(da[y_dim].attrs.get("standard_name")),
        } == {"longitude", "latitude"}:
            crs = pyproj.CRS.from_epsg(4326)
        else:
            raise SourceError(
                f"{where}: no CRS; add a CF grid_mapping variable (e.g. with crs_wkt) or "
                f"use latitude/longitude coordinates"
            )
        if crs.is_geographic:
            return Regridder.from_lonlat(x, y, grid, cache_dir=self.regrid_cache_dir)
        scale = {"km": 1000.0}.get(str(da[x_dim].attrs.get("units", "m")).lower(), 1.0)
        x, y = x * scale, y * scale
        if crs == grid.crs and x.shape == grid.x.shape and y.shape == grid.y.shape:
            tolerance = 1e-6 * grid.resolution
            if np.allclose(x, grid.x, rtol=0, atol=tolerance):
                if np.allclose(y, grid.y, rtol=0, atol=tolerance):
                    return lambda values: values  # already on the grid: no resampling
                if np.allclose(y[::-1], grid.y, rtol=0, atol=tolerance):
                    return lambda values: values[::-1]  # rows south -> north
        xx, yy = np.meshgrid(x, y)  # (ny_src, nx_src) each
        to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lon, lat = to_lonlat.transform(xx, yy)
        return Regridder.from_lonlat(lon, lat, grid, cache_dir=self.regrid_cache_dir)
