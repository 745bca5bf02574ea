"""Write GOES-R ABI L2 CMIP / MCMIP netCDF-4 files in NOAA's exact layout, on small extents.

The layout follows the operational ``OR_ABI-L2-CMIPC-M6C13_G16_s..._e..._c....nc`` files
(GOES-R PUG L2+ vol. 5): int16 fixed-grid scan angles ``x``/``y`` in radians with
``scale_factor`` +/-5.6e-05 (2 km at nadir) and ``add_offset``; a scalar
``goes_imager_projection`` with the GRS80 ellipsoid; ``CMI`` as 12-bit counts in an
"unsigned" int16 (``_Unsigned = "true"``, ``_FillValue = -1``) with ``scale_factor =
(max - min) / 4095`` and ``add_offset = min``; a ``DQF`` byte array; the scalar ``t``
(J2000 seconds, mid-scan) with ``time_bounds``; ``band_id``/``band_wavelength``; and the
global attributes ``time_coverage_start``/``_end``, ``dataset_name``, ``platform_ID``...

A small file is a window of the real CONUS fixed grid: raw counts ``0 .. n-1`` with the
``add_offset`` moved to the window's first pixel, so pixel centres coincide with the
operational grid's. Reference lon/lat come from pyproj's ``geos`` projection, independent
of the navigation code under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
import pyproj

SCALE = 5.6e-05
"""Scan-angle step of the 2 km bands, radians (``x`` scale_factor; ``y`` uses -SCALE)."""
CONUS_X_OFFSET = -0.101332
"""``x`` add_offset of the operational GOES-East CONUS files (first column), radians."""
CONUS_Y_OFFSET = 0.128212
"""``y`` add_offset of the operational GOES-East CONUS files (first row), radians."""
H = 35786023.0
"""perspective_point_height, metres."""
A = 6378137.0
"""GRS80 semi-major axis, metres."""
B = 6356752.31414
"""GRS80 semi-minor axis, metres."""

_WAVELENGTH = [0.47, 0.64, 0.86, 1.37, 1.61, 2.24, 3.9, 6.19, 6.93, 7.34, 8.44, 9.61,
               10.33, 11.21, 12.29, 13.28]  # fmt: skip
_J2000 = np.datetime64("2000-01-01T12:00:00", "ns")
_SCAN = np.timedelta64(158_400, "ms")  # duration of a mode-6 CONUS scan


def geos_crs(lon_0: float = -75.0) -> pyproj.CRS:
    """The ABI fixed grid as a pyproj CRS (coordinates = scan angle x ``H``, metres)."""
    return pyproj.CRS.from_proj4(f"+proj=geos +h={H} +a={A} +b={B} +lon_0={lon_0} +sweep=x")


@dataclass(frozen=True)
class Window:
    """A rectangle of the CONUS fixed grid: ``nx`` columns from ``col0``, ``ny`` rows from
    ``row0``."""

    col0: int
    row0: int
    nx: int
    ny: int

    @property
    def x_offset(self) -> np.float32:
        return np.float32(CONUS_X_OFFSET + self.col0 * SCALE)

    @property
    def y_offset(self) -> np.float32:
        return np.float32(CONUS_Y_OFFSET - self.row0 * SCALE)

    def angles(self) -> tuple[np.ndarray, np.ndarray]:
        """Decoded scan angles ``x (nx,)``, ``y (ny,)``: radians, float64 as a reader gets them."""
        x = np.arange(self.nx) * np.float64(np.float32(SCALE)) + np.float64(self.x_offset)
        y = np.arange(self.ny) * np.float64(np.float32(-SCALE)) + np.float64(self.y_offset)
        return x, y

    def lon_lat(self, lon_0: float = -75.0) -> tuple[np.ndarray, np.ndarray]:
        """Reference lon/lat ``(ny, nx)`` of the pixel centres via pyproj; NaN off the Earth."""
        x, y = self.angles()
        xx, yy = np.meshgrid(x * H, y * H)  # (ny, nx) metres in the geos projection
        to_lonlat = pyproj.Transformer.from_crs(geos_crs(lon_0), "EPSG:4326", always_xy=True)
        lon, lat = to_lonlat.transform(xx, yy)
        bad = ~(np.isfinite(lon) & np.isfinite(lat))
        lon[bad] = lat[bad] = np.nan
        return lon, lat


def window_covering(
    west: float, south: float, east: float, north: float, lon_0: float = -75.0
) -> Window:
    """The smallest CONUS fixed-grid window containing the lon/lat box (degrees)."""
    lons = np.linspace(west, east, 50)
    lats = np.linspace(south, north, 50)
    outline_lon = np.concatenate([lons, lons, np.full(50, west), np.full(50, east)])
    outline_lat = np.concatenate([np.full(50, south), np.full(50, north), lats, lats])
    to_geos = pyproj.Transformer.from_crs("EPSG:4326", geos_crs(lon_0), always_xy=True)
    gx, gy = to_geos.transform(outline_lon, outline_lat)
    cols = (np.asarray(gx) / H - CONUS_X_OFFSET) / SCALE
    rows = (CONUS_Y_OFFSET - np.asarray(gy) / H) / SCALE
    col0, row0 = int(np.floor(cols.min())), int(np.floor(rows.min()))
    return Window(
        col0, row0, int(np.ceil(cols.max())) - col0 + 1, int(np.ceil(rows.max())) - row0 + 1
    )


def abi_file_name(
    start: np.datetime64, band: int | None = None, *, scene: str = "C", satellite: int = 16
) -> str:
    """NOAA file name: CMIP of ``band``, or MCMIP when ``band`` is None."""

    def stamp(t: np.datetime64) -> str:
        dt = np.datetime64(t, "ms").astype(object)  # datetime.datetime
        return f"{dt:%Y%j%H%M%S}{dt.microsecond // 100_000}"

    start = np.datetime64(start, "ns")
    end = start + _SCAN
    product = f"CMIP{scene}-M6C{band:02d}" if band is not None else f"MCMIP{scene}-M6"
    return (
        f"OR_ABI-L2-{product}_G{satellite}_s{stamp(start)}_e{stamp(end)}"
        f"_c{stamp(end + np.timedelta64(30, 's'))}.nc"
    )


def _j2000_seconds(t: np.datetime64) -> float:
    return (t - _J2000) / np.timedelta64(1, "s")


def _iso(t: np.datetime64) -> str:
    return np.datetime_as_string(np.datetime64(t, "ms"))[:-2] + "Z"  # 2019-06-10T00:01:17.3Z


def _packing(band: int) -> tuple[np.float32, np.float32, str]:
    """(scale_factor, add_offset, units): 12 bits over the band's expected range."""
    low, high, units = (0.0, 1.3, "1") if band <= 6 else (150.0, 350.0, "K")
    return np.float32((high - low) / 4095), np.float32(low), units


def write_abi(
    path: str | Path,
    fields: dict[int, np.ndarray],
    window: Window,
    start: np.datetime64,
    *,
    multiband: bool = False,
    lon_0: float = -75.0,
    satellite: int = 16,
) -> Path:
    """Write a CMIP (one band in ``fields``) or MCMIP (``multiband``) file at ``path``.

    ``fields`` maps ABI band -> ``(window.ny, window.nx)`` values in physical units
    (reflectance factor for bands 1-6, K for 7-16), NaN = no value (fill, DQF 3).
    """
    if not multiband and len(fields) != 1:
        raise ValueError("a CMIP file holds exactly one band")
    path = Path(path)
    start = np.datetime64(start, "ns")
    end = start + _SCAN
    nc = netCDF4.Dataset(path, "w", format="NETCDF4")
    try:
        nc.createDimension("y", window.ny)
        nc.createDimension("x", window.nx)
        nc.createDimension("number_of_time_bounds", 2)
        nc.createDimension("band", 1)
        nc.createDimension("number_of_image_bounds", 2)

        for name, size, scale, offset in (
            ("y", window.ny, np.float32(-SCALE), window.y_offset),
            ("x", window.nx, np.float32(SCALE), window.x_offset),
        ):
            var = nc.createVariable(name, "i2", (name,))
            var.set_auto_maskandscale(False)
            var.scale_factor = scale
            var.add_offset = offset
            var.units = "rad"
            var.axis = name.upper()
            var.long_name = f"GOES fixed grid projection {name}-coordinate"
            var.standard_name = f"projection_{name}_coordinate"
            var[:] = np.arange(size, dtype=np.int16)

        proj = nc.createVariable("goes_imager_projection", "i4")
        proj.long_name = "GOES-R ABI fixed grid projection"
        proj.grid_mapping_name = "geostationary"
        proj.perspective_point_height = H
        proj.semi_major_axis = A
        proj.semi_minor_axis = B
        proj.inverse_flattening = 298.2572221
        proj.latitude_of_projection_origin = 0.0
        proj.longitude_of_projection_origin = float(lon_0)
        proj.sweep_angle_axis = "x"

        t = nc.createVariable("t", "f8")
        t.long_name = "J2000 epoch mid-point between the start and end image scan in seconds"
        t.standard_name = "time"
        t.units = "seconds since 2000-01-01 12:00:00"
        t.axis = "T"
        t.bounds = "time_bounds"
        t.assignValue(_j2000_seconds(start + _SCAN / 2))
        bounds = nc.createVariable("time_bounds", "f8", ("number_of_time_bounds",))
        bounds.long_name = "Scan start and end times in seconds since epoch (2000-01-01 12:00:00)"
        bounds[:] = [_j2000_seconds(start), _j2000_seconds(end)]

        for name, value in (("y_image", window.y_offset), ("x_image", window.x_offset)):
            var = nc.createVariable(name, "f4")
            var.units = "rad"
            var.assignValue(value)

        for band, values in sorted(fields.items()):
            suffix = f"_C{band:02d}" if multiband else ""
            _write_band(nc, band, np.asarray(values, dtype=np.float64), suffix)

        name = abi_file_name(start, None if multiband else next(iter(fields)), satellite=satellite)
        nc.setncatts(
            {
                "naming_authority": "gov.nesdis.noaa",
                "Conventions": "CF-1.7",
                "Metadata_Conventions": "Unidata Dataset Discovery v1.0",
                "project": "GOES",
                "production_site": "NSOF",
                "spatial_resolution": "2km at nadir",
                "orbital_slot": "GOES-East" if lon_0 == -75.0 else "GOES-West",
                "platform_ID": f"G{satellite}",
                "instrument_type": "GOES R Series Advanced Baseline Imager",
                "scene_id": "CONUS",
                "dataset_name": name,
                "title": "ABI L2 Cloud and Moisture Imagery"
                + (": Multi-band" if multiband else ""),
                "processing_level": "National Aeronautics and Space Administration (NASA) L2",
                "cdm_data_type": "Image",
                "time_coverage_start": _iso(start),
                "time_coverage_end": _iso(end),
                "timeline_id": "ABI Mode 6",
            }
        )
    finally:
        nc.close()
    return path


def _write_band(nc: netCDF4.Dataset, band: int, values: np.ndarray, suffix: str) -> None:
    scale, offset, units = _packing(band)
    missing = ~np.isfinite(values)
    counts = np.clip(np.round((np.nan_to_num(values) - offset) / scale), 0, 4095)
    raw = np.where(missing, 65535, counts).astype(np.uint16).view(np.int16)  # "unsigned" int16

    cmi = nc.createVariable(
        f"CMI{suffix}",
        "i2",
        ("y", "x"),
        fill_value=np.int16(-1),
        zlib=True,
        chunksizes=(min(226, values.shape[0]), min(226, values.shape[1])),
    )
    cmi.set_auto_maskandscale(False)
    kind = "reflectance factor" if band <= 6 else "brightness temperature"
    cmi.long_name = f"ABI L2+ Cloud and Moisture Imagery {kind}"
    cmi.standard_name = (
        "toa_lambertian_equivalent_albedo_multiplied_by_cosine_solar_zenith_angle"
        if band <= 6
        else "toa_brightness_temperature"
    )
    cmi._Unsigned = "true"
    cmi.sensor_band_bit_depth = np.int8(12)
    cmi.valid_range = np.array([0, 4095], dtype=np.int16)
    cmi.scale_factor = scale
    cmi.add_offset = offset
    cmi.units = units
    cmi.coordinates = f"band_id{suffix} band_wavelength{suffix} t y x"
    cmi.grid_mapping = "goes_imager_projection"
    cmi.cell_methods = "t: point area: point"
    cmi.ancillary_variables = f"DQF{suffix}"
    cmi[:] = raw

    dqf = nc.createVariable(f"DQF{suffix}", "i1", ("y", "x"), fill_value=np.int8(-1), zlib=True)
    dqf.set_auto_maskandscale(False)
    dqf.long_name = "ABI L2+ Cloud and Moisture Imagery data quality flags"
    dqf.standard_name = "status_flag"
    dqf._Unsigned = "true"
    dqf.valid_range = np.array([0, 4], dtype=np.int8)
    dqf.units = "1"
    dqf.grid_mapping = "goes_imager_projection"
    dqf.flag_values = np.array([0, 1, 2, 3, 4], dtype=np.int8)
    dqf.flag_meanings = (
        "good_pixel_qf conditionally_usable_pixel_qf out_of_range_pixel_qf "
        "no_value_pixel_qf focal_plane_temperature_threshold_exceeded_qf"
    )
    dqf[:] = np.where(missing, 3, 0).astype(np.int8)

    band_id = nc.createVariable(f"band_id{suffix}", "i1", ("band",))
    band_id.long_name = "ABI band number"
    band_id.standard_name = "sensor_band_identifier"
    band_id.units = "1"
    band_id[:] = np.array([band], dtype=np.int8)
    wavelength = nc.createVariable(f"band_wavelength{suffix}", "f4", ("band",))
    wavelength.long_name = "ABI band central wavelength"
    wavelength.standard_name = "sensor_band_central_radiation_wavelength"
    wavelength.units = "um"
    wavelength[:] = np.array([_WAVELENGTH[band - 1]], dtype=np.float32)
