"""GOES-16/17/18 ABI L2 Cloud and Moisture Imagery on the canonical grid.

Reads the NOAA netCDF-4 products ``ABI-L2-CMIP{F,C,M1,M2}`` (one band per file, variable
``CMI``) and ``ABI-L2-MCMIP*`` (all 16 bands at 2 km, variables ``CMI_C01`` ..
``CMI_C16``) from a local path or any fsspec URL (``s3://noaa-goes16/ABI-L2-CMIPC/...``,
read anonymously). A file name looks like::

    OR_ABI-L2-CMIPC-M6C13_G16_s20191610001173_e20191610003557_c20191610004048.nc

where ``s2019 161 00 01 17 3`` is the scan start (year, day of year, hour, minute,
second, tenth of a second), which :meth:`GOESSource.time_of` and discovery use.

Navigation. Pixel centres are the fixed-grid scan angles ``x`` (east-west) and ``y``
(north-south) in radians, stored as scaled int16, and the ``goes_imager_projection``
attributes. :func:`navigate` implements the published equations (GOES-R Product User
Guide, L1b vol. 3, section 5.1.2.8.1) for ``sweep_angle_axis = "x"``; lines of sight that
miss the Earth navigate to NaN.

Values are ``CMI`` as stored: reflectance factor (``1``) for bands 1-6, brightness
temperature (``K``) for bands 7-16, ``_FillValue`` (off the disk, no data) -> NaN. The
data-quality flags (``DQF``) are deliberately not applied: pixels without a value already
carry the fill value, and the remaining flags (conditionally usable, out of range,
focal-plane temperature) mark real but degraded measurements, which are most frequent at
the coldest convective tops, exactly the signal a precipitation model needs; a degraded
value is a better input than a hole there.

Output: one ``(time, y, x)`` float32 variable per band, ``abi_c01`` .. ``abi_c16``, on the
canonical grid (2-D lon/lat :class:`~metnet.grid.Regridder`, built once per fixed grid and
target grid), ``time`` = scan start (``time_coverage_start``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import netCDF4
import numpy as np
import xarray as xr

from metnet.grid import Grid, Regridder
from metnet.sources import SourceError, _storage_options, discover_files, read_bytes

ABI_BANDS: tuple[int, ...] = tuple(range(1, 17))

#: Central wavelength of each ABI band, micrometres.
WAVELENGTH_UM: dict[int, float] = {
    1: 0.47,
    2: 0.64,
    3: 0.86,
    4: 1.37,
    5: 1.61,
    6: 2.24,
    7: 3.9,
    8: 6.19,
    9: 6.93,
    10: 7.34,
    11: 8.44,
    12: 9.61,
    13: 10.33,
    14: 11.21,
    15: 12.29,
    16: 13.28,
}

#: Bands 1-6 are reflective (reflectance factor), 7-16 emissive (brightness temperature).
_REFLECTIVE = range(1, 7)

_FILE_NAME = re.compile(
    r"OR_ABI-L2-(?P<product>M?CMIP)(?P<scene>F|C|M1|M2)-M(?P<mode>\d)(?:C(?P<band>\d{2}))?"
    r"_G(?P<satellite>\d{2})_s(?P<start>\d{14})_e\d{14}_c\d{14}\.nc(?:\.gz)?"
)


def band_variable(band: int) -> str:
    """Archive name of ABI band ``band``: ``abi_c01`` .. ``abi_c16``."""
    return f"abi_c{band:02d}"


def band_units(band: int) -> str:
    """Units of CMI for ``band``: ``"1"`` (reflectance factor) or ``"K"``."""
    return "1" if band in _REFLECTIVE else "K"


def scan_start(name: str) -> np.datetime64:
    """Scan start (``datetime64[ns]`` UTC) from the ``sYYYYDDDHHMMSSt`` field of a file name."""
    match = _FILE_NAME.search(PurePosixPath(name).name)
    if match is None:
        raise SourceError(f"{name}: not a GOES ABI L2 CMIP/MCMIP file name")
    s = match["start"]  # YYYY DDD HH MM SS t
    day = np.datetime64(f"{s[:4]}-01-01", "ns") + np.timedelta64(int(s[4:7]) - 1, "D")
    seconds = int(s[7:9]) * 3600 + int(s[9:11]) * 60 + int(s[11:13])
    return day + np.timedelta64(seconds, "s") + np.timedelta64(int(s[13]) * 100, "ms")


# ----------------------------------------------------------------------------- navigation


@dataclass(frozen=True)
class GeosProjection:
    """The ABI fixed-grid projection, from the ``goes_imager_projection`` attributes."""

    perspective_point_height: float
    """Satellite height above the equator, metres (35786023 for GOES-R)."""
    semi_major_axis: float
    """Equatorial radius of the ellipsoid, metres (GRS80: 6378137)."""
    semi_minor_axis: float
    """Polar radius of the ellipsoid, metres (GRS80: 6356752.31414)."""
    longitude_of_projection_origin: float
    """Sub-satellite longitude, degrees east (-75 for GOES-East)."""


def navigate(
    x: np.ndarray, y: np.ndarray, projection: GeosProjection
) -> tuple[np.ndarray, np.ndarray]:
    """Geodetic longitude and latitude (degrees) of fixed-grid scan angles.

    ``x`` (east-west) and ``y`` (north-south) are scan angles in radians that broadcast
    together (e.g. ``x[None, :]`` and ``y[:, None]`` give ``(ny, nx)`` results). Lines
    of sight that miss the Earth give NaN. GOES-R PUG L1b vol. 3, section 5.1.2.8.1.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    a, b = projection.semi_major_axis, projection.semi_minor_axis
    big_h = projection.perspective_point_height + a  # satellite distance from Earth centre, m
    ratio = (a * a) / (b * b)
    sin_x, cos_x, sin_y, cos_y = np.sin(x), np.cos(x), np.sin(y), np.cos(y)
    # Distance r_s from the satellite to the Earth along the line of sight: the smaller
    # root of a r^2 + b r + c = 0; no real root where the line of sight misses the Earth.
    qa = sin_x**2 + cos_x**2 * (cos_y**2 + ratio * sin_y**2)
    qb = -2.0 * big_h * cos_x * cos_y
    qc = big_h**2 - a * a
    with np.errstate(invalid="ignore"):
        r_s = (-qb - np.sqrt(qb * qb - 4.0 * qa * qc)) / (2.0 * qa)
    s_x = r_s * cos_x * cos_y  # satellite-centred Cartesian coordinates, m
    s_y = -r_s * sin_x
    s_z = r_s * cos_x * sin_y
    lat = np.degrees(np.arctan(ratio * s_z / np.hypot(big_h - s_x, s_y)))
    lon = projection.longitude_of_projection_origin - np.degrees(np.arctan(s_y / (big_h - s_x)))
    return lon, lat


@dataclass(frozen=True)
class FixedGrid:
    """The pixel centres of one ABI image: projection and scan angles (radians)."""

    projection: GeosProjection
    x: tuple[float, ...]
    """East-west scan angle of each column, radians."""
    y: tuple[float, ...]
    """North-south scan angle of each row, radians."""

    def lon_lat(self) -> tuple[np.ndarray, np.ndarray]:
        """Longitude and latitude of every pixel: two ``(ny, nx)`` float64 arrays, NaN off-Earth."""
        x, y = np.asarray(self.x), np.asarray(self.y)
        return navigate(x[None, :], y[:, None], self.projection)  # (ny, nx) each


@functools.lru_cache(maxsize=8)
def _regridder(fixed: FixedGrid, grid: Grid, cache_dir: str | None) -> Regridder:
    """The fixed grid -> canonical grid regridder, navigated once per pair and process."""
    lon, lat = fixed.lon_lat()  # (ny_src, nx_src) each
    return Regridder.from_lonlat(lon, lat, grid, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- reading


def _unpack(var: netCDF4.Variable) -> np.ndarray:
    """A packed variable's physical values (float64): ``_Unsigned``, ``_FillValue`` -> NaN,
    ``scale_factor``, ``add_offset`` applied here so the scan angles keep float64."""
    raw = np.asarray(var[...])
    attrs = {k: var.getncattr(k) for k in var.ncattrs()}
    fill = attrs.get("_FillValue")
    fill = None if fill is None else np.asarray(fill, dtype=raw.dtype)
    if str(attrs.get("_Unsigned", "false")).lower() == "true" and raw.dtype.kind == "i":
        unsigned = raw.dtype.str.replace("i", "u")  # NOAA packs 12-bit counts as "unsigned" int16
        raw = raw.view(unsigned)
        fill = None if fill is None else fill.view(unsigned)
    values = raw.astype(np.float64)
    if fill is not None:
        values[raw == fill] = np.nan
    return values * float(attrs.get("scale_factor", 1.0)) + float(attrs.get("add_offset", 0.0))


def _fixed_grid(nc: netCDF4.Dataset, path: str) -> FixedGrid:
    """Projection and scan angles of the file's image."""
    if "goes_imager_projection" not in nc.variables:
        raise SourceError(f"{path}: not a GOES ABI file (no goes_imager_projection variable)")
    var = nc.variables["goes_imager_projection"]
    attrs = {k: var.getncattr(k) for k in var.ncattrs()}
    names = ("perspective_point_height", "semi_major_axis", "semi_minor_axis",
             "longitude_of_projection_origin")  # fmt: skip
    missing = [n for n in names if n not in attrs]
    if missing:
        raise SourceError(f"{path}: goes_imager_projection lacks {', '.join(missing)}")
    sweep = str(attrs.get("sweep_angle_axis", "x"))
    if sweep != "x":
        raise SourceError(
            f"{path}: sweep_angle_axis {sweep!r} is not supported (ABI sweeps along 'x')"
        )
    projection = GeosProjection(*(float(attrs[n]) for n in names))
    if "x" not in nc.variables or "y" not in nc.variables:
        raise SourceError(f"{path}: no x/y scan-angle variables")
    x = _unpack(nc.variables["x"])  # (nx,) radians
    y = _unpack(nc.variables["y"])  # (ny,) radians
    return FixedGrid(projection, tuple(x.tolist()), tuple(y.tolist()))


def _band_variables(nc: netCDF4.Dataset, path: str) -> dict[int, str]:
    """ABI band -> netCDF variable in the file (``CMI`` for CMIP, ``CMI_Cnn`` for MCMIP)."""
    if "CMI" in nc.variables:
        if "band_id" in nc.variables:
            band = int(np.asarray(nc.variables["band_id"][...]).ravel()[0])
        else:
            match = _FILE_NAME.search(PurePosixPath(path).name)
            if match is None or match["band"] is None:
                raise SourceError(f"{path}: CMI without band_id, and no band in the file name")
            band = int(match["band"])
        return {band: "CMI"}
    bands = {b: f"CMI_C{b:02d}" for b in ABI_BANDS if f"CMI_C{b:02d}" in nc.variables}
    if not bands:
        raise SourceError(f"{path}: no CMI or CMI_Cnn variable (not an ABI L2 CMIP/MCMIP file)")
    return bands


def _scan_start(nc: netCDF4.Dataset, path: str) -> np.datetime64:
    """``time_coverage_start`` (e.g. ``2019-06-10T00:01:17.3Z``), else the file name."""
    if "time_coverage_start" in nc.ncattrs():
        text = str(nc.getncattr("time_coverage_start")).rstrip("Z")
        try:
            return np.datetime64(text, "ns")
        except ValueError:
            raise SourceError(f"{path}: unreadable time_coverage_start {text!r}") from None
    return scan_start(path)


class GOESSource:
    """GOES-16/17/18 ABI L2 CMIP / MCMIP files (see the module docstring).

    ``bands`` selects ABI bands (1..16; default all): discovery skips CMIP files of other
    bands, and reading an MCMIP file that lacks a selected band is an error.
    ``storage_options`` go to fsspec (``s3://`` URLs default to anonymous access).
    ``regrid_cache_dir`` keeps the regridding tables on disk between processes (building
    them for a full CONUS image onto the 4700 x 3000 default grid takes about a minute).
    """

    name = "goes"

    def __init__(
        self,
        bands: Iterable[int] | None = None,
        storage_options: Mapping | None = None,
        regrid_cache_dir: str | None = None,
    ):
        self.bands = tuple(sorted(set(ABI_BANDS if bands is None else (int(b) for b in bands))))
        invalid = [b for b in self.bands if b not in ABI_BANDS]
        if invalid or not self.bands:
            raise ValueError(f"ABI bands are 1..16, got {list(bands or [])}")
        self.storage_options = None if storage_options is None else dict(storage_options)
        self.regrid_cache_dir = None if regrid_cache_dir is None else str(regrid_cache_dir)

    def __repr__(self) -> str:
        return f"GOESSource(bands={self.bands})"

    def time_of(self, path: str) -> np.datetime64:
        """Scan start from the file name (no data read)."""
        return scan_start(path)

    def variables_of(self, path: str) -> tuple[str, ...]:
        """Variables ``path`` yields, from its name alone (lets ingest skip known files):
        the file's band for CMIP, the selected bands for MCMIP."""
        match = _FILE_NAME.search(PurePosixPath(path).name)
        if match is None:
            raise SourceError(f"{path}: not a GOES ABI L2 CMIP/MCMIP file name")
        bands = self.bands if match["band"] is None else (int(match["band"]),)
        return tuple(band_variable(b) for b in bands)

    def _wanted(self, name: str) -> bool:
        match = _FILE_NAME.fullmatch(name)
        return match is not None and (match["band"] is None or int(match["band"]) in self.bands)

    def discover(
        self, location: str, start: np.datetime64 | None, end: np.datetime64 | None
    ) -> list[str]:
        """CMIP/MCMIP files of the selected bands under ``location`` with scan start in
        ``[start, end]``, sorted by time. Under a NOAA-style ``YYYY/DDD/HH`` layout only the
        hour folders of ``[start, end]`` are listed."""
        folders = self._hour_folders(str(location), start, end)
        found: list[str] = []
        for folder in [str(location)] if folders is None else folders:
            found += discover_files(
                folder,
                scan_start,
                start,
                end,
                match=self._wanted,
                storage_options=self.storage_options,
            )
        return sorted(found, key=lambda p: (scan_start(p), p))

    def _hour_folders(
        self, location: str, start: np.datetime64 | None, end: np.datetime64 | None
    ) -> list[str] | None:
        """The existing ``location/YYYY/DDD/HH`` folders covering ``[start, end]``, or None
        when the range is open or ``location`` is not laid out by year."""
        if start is None or end is None:
            return None
        try:
            fs, root = fsspec.core.url_to_fs(
                location, **_storage_options(location, self.storage_options)
            )
            years = {PurePosixPath(p).name for p in fs.ls(root, detail=False)}
        except Exception:  # noqa: BLE001 - discover_files reports the listing error
            return None
        if not any(re.fullmatch(r"\d{4}", y) for y in years):
            return None
        hours = np.arange(
            np.datetime64(start, "h"), np.datetime64(end, "h") + np.timedelta64(1, "h")
        )
        folders, listed = [], {}
        for hour in hours.astype(object):  # datetime.datetime
            day = f"{root.rstrip('/')}/{hour:%Y/%j}"
            if day not in listed:
                try:
                    listed[day] = {PurePosixPath(p).name for p in fs.ls(day, detail=False)}
                except FileNotFoundError:
                    listed[day] = set()
            if f"{hour:%H}" in listed[day]:
                folders.append(f"{location.rstrip('/')}/{hour:%Y/%j/%H}")
        return folders

    def read(self, path: str, grid: Grid) -> xr.Dataset:
        """The selected bands of one file on ``grid``: ``abi_cNN`` float32 ``(1, ny, nx)``."""
        path = str(path)
        data = read_bytes(path, self.storage_options)
        if not data:
            raise SourceError(f"{path}: empty file")
        try:
            nc = netCDF4.Dataset(PurePosixPath(path).name, mode="r", memory=data)
        except OSError as exc:
            raise SourceError(
                f"{path}: not a readable netCDF file, truncated? ({exc.strerror or exc})"
            ) from None
        try:
            nc.set_auto_maskandscale(False)  # _unpack decodes, in float64
            return self._decode(nc, path, grid)
        except (OSError, RuntimeError) as exc:
            # netCDF-4 reads chunks lazily: a truncated file often fails only here.
            raise SourceError(f"{path}: cannot decode the file, truncated? ({exc})") from None
        finally:
            nc.close()

    def _decode(self, nc: netCDF4.Dataset, path: str, grid: Grid) -> xr.Dataset:
        fixed = _fixed_grid(nc, path)
        in_file = _band_variables(nc, path)
        if "CMI" in nc.variables:  # CMIP: one band per file, the others come in other files
            bands = list(in_file)
            if bands[0] not in self.bands:
                raise SourceError(
                    f"{path}: holds ABI band {bands[0]}, not one of the requested bands "
                    f"{list(self.bands)}"
                )
        else:
            missing = [b for b in self.bands if b not in in_file]
            if missing:
                raise SourceError(
                    f"{path}: requested ABI bands {missing} are absent; the file holds "
                    f"bands {sorted(in_file)}"
                )
            bands = list(self.bands)
        regrid = _regridder(fixed, grid, self.regrid_cache_dir)
        variables = {}
        for band in bands:
            var = nc.variables[in_file[band]]
            values = _unpack(var).astype(np.float32)  # (ny_src, nx_src)
            units = str(var.getncattr("units")) if "units" in var.ncattrs() else band_units(band)
            kind = "reflectance factor" if band in _REFLECTIVE else "brightness temperature"
            attrs = {
                "units": units,
                "long_name": f"GOES ABI band {band} ({WAVELENGTH_UM[band]:g} um) {kind}",
                "source": PurePosixPath(path).name,
            }
            variables[band_variable(band)] = (("time", "y", "x"), regrid(values)[None], attrs)
        return grid.dataset(variables, time=[_scan_start(nc, path)])  # (1, ny, nx) each
