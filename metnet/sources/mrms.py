"""MRMS (NOAA Multi-Radar Multi-Sensor) GRIB2 reader.

One file holds one GRIB2 message: a 2-D product on the MRMS CONUS grid, 3500 x 7000
points of 0.01 degree from 54.995N 230.005E (row 0 north, column 0 west). Files are
``{Product}_{level}_{YYYYMMDD}-{HHMMSS}.grib2`` (as in pysteps' example data) or
``MRMS_{Product}_{level}_{YYYYMMDD}-{HHMMSS}.grib2.gz`` (as in the public bucket
``s3://noaa-mrms-pds/CONUS/{Product}_{level}/{YYYYMMDD}/``), local or at any fsspec URL.

Decoding is real GRIB2 decoding by ecCodes through pygrib: ``pygrib.open`` for local
uncompressed files, ``pygrib.fromstring`` on the bytes of ``.gz`` files and URLs. The
message's discipline/category/parameter numbers (NSSL local table, discipline 209) must
match the product named in the file name. Values below the product's valid range
(MRMS codes -3 "no coverage", -99 "missing", -999) become NaN; for rates and
accumulations that is anything negative, for reflectivity anything below -90 dBZ.
:func:`decode` gives the native field, equal cell for cell to pysteps'
``import_mrms_grib(path, window_size=1)``, which also keeps row 0 north and turns the
file's -3 into NaN (the sample files hold no other negative value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pygrib
import xarray as xr

from metnet.grid import Grid, Regridder
from metnet.sources import SourceError, discover_files, is_url, read_bytes


@dataclass(frozen=True)
class Product:
    """An MRMS product: its variable name here, units and GRIB2 identification."""

    variable: str
    """snake_case variable name in the archive."""
    units: str
    """Units of the values (as stored, no conversion)."""
    parameter: tuple[int, int, int]
    """GRIB2 (discipline, parameterCategory, parameterNumber)."""
    missing_below: float
    """Values below this are MRMS missing/no-coverage codes and become NaN."""
    long_name: str


#: MRMS 2-D products by file-name product (NSSL GRIB2 local table, discipline 209).
PRODUCTS: dict[str, Product] = {
    "PrecipRate": Product(
        "precipitation_rate", "mm/h", (209, 6, 1), 0.0, "radar precipitation rate"
    ),
    "PrecipFlag": Product(
        "precipitation_flag", "1", (209, 6, 0), 0.0, "surface precipitation type"
    ),
    "RadarOnly_QPE_15M": Product(
        "radar_only_qpe_15m", "mm", (209, 6, 45), 0.0, "radar precipitation accumulation 15-minute"
    ),
    "RadarOnly_QPE_01H": Product(
        "radar_only_qpe_01h", "mm", (209, 6, 2), 0.0, "radar precipitation accumulation 1-hour"
    ),
    "MultiSensor_QPE_01H_Pass1": Product(
        "multi_sensor_qpe_01h_pass1",
        "mm",
        (209, 6, 30),
        0.0,
        "multi-sensor precipitation accumulation 1-hour (1-hour latency)",
    ),
    "MultiSensor_QPE_01H_Pass2": Product(
        "multi_sensor_qpe_01h_pass2",
        "mm",
        (209, 6, 37),
        0.0,
        "multi-sensor precipitation accumulation 1-hour (2-hour latency)",
    ),
    "ReflectivityAtLowestAltitude": Product(
        "reflectivity_at_lowest_altitude",
        "dBZ",
        (209, 3, 57),
        -90.0,
        "reflectivity at lowest altitude",
    ),
    "MergedReflectivityQCComposite": Product(
        "merged_reflectivity_qc_composite",
        "dBZ",
        (209, 10, 0),
        -90.0,
        "composite reflectivity mosaic",
    ),
    "RadarQualityIndex": Product(
        "radar_quality_index", "1", (209, 8, 0), 0.0, "radar quality index"
    ),
}

#: The MRMS CONUS grid every file must be on.
CONUS_GRID = {
    "gridType": "regular_ll",
    "Nj": 3500,
    "Ni": 7000,
    "latitudeOfFirstGridPointInDegrees": 54.995,
    "longitudeOfFirstGridPointInDegrees": 230.005,
    "jDirectionIncrementInDegrees": 0.01,
    "iDirectionIncrementInDegrees": 0.01,
}

_NAME = re.compile(
    r"^(?:MRMS_)?(?P<product>[A-Za-z0-9_]+?)_(?P<level>\d{2}\.\d{2})_"
    r"(?P<date>\d{8})-(?P<time>\d{6})\.grib2(?:\.gz)?$"
)


@dataclass(frozen=True)
class Field:
    """One decoded MRMS message on its native grid."""

    values: np.ndarray
    """``(3500, 7000)`` float64 values in the product's units, row 0 north; NaN = missing."""
    lat: np.ndarray
    """``(3500,)`` pixel-centre latitudes, degrees north, decreasing."""
    lon: np.ndarray
    """``(7000,)`` pixel-centre longitudes, degrees east (230..300), increasing."""
    time: np.datetime64
    """Observation time, UTC ``datetime64[ns]``."""
    product: str
    """Product as in the file name, e.g. ``PrecipRate``."""


def parse_name(path: str) -> tuple[str, str, np.datetime64]:
    """``(product, level, time)`` from an MRMS file name, e.g. ``("PrecipRate", "00.00", t)``."""
    m = _NAME.match(PurePosixPath(str(path)).name)
    if m is None:
        raise SourceError(
            f"{path}: not an MRMS file name "
            "(expected [MRMS_]Product_LL.LL_YYYYMMDD-HHMMSS.grib2[.gz])"
        )
    d, t = m["date"], m["time"]
    try:
        time = np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}", "ns")
    except ValueError:
        raise SourceError(f"{path}: invalid date or time {d}-{t} in the file name") from None
    return m["product"], m["level"], time


def decode(path: str, storage_options: dict | None = None) -> Field:
    """Decode one MRMS GRIB2 file (``.grib2`` or ``.grib2.gz``, local or fsspec URL).

    Raises :class:`SourceError` naming the file if it is empty, truncated or not GRIB2,
    if its GRIB2 parameter is not the product in its name, if it is not on the MRMS
    CONUS grid, or if its time differs from the time in its name.
    """
    path = str(path)
    product_name, _, name_time = parse_name(path)
    if product_name not in PRODUCTS:
        raise SourceError(
            f"{path}: unknown MRMS product {product_name!r}; known products: {', '.join(PRODUCTS)}"
        )
    product = PRODUCTS[product_name]
    message = _read_message(path, storage_options)
    # Header checks first: a wrong file fails fast, before the ~1 s data decoding.
    try:
        _check_parameter(path, message, product_name, product)
        _check_grid(path, message)
        time = np.datetime64(
            "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}".format(
                *(int(message[k]) for k in ("year", "month", "day", "hour", "minute", "second"))
            ),
            "ns",
        )
        if time != name_time:
            raise SourceError(
                f"{path}: the message is valid at {time} but the file name says {name_time}"
            )
        values = message.values  # (Nj, Ni) float64, decoded by ecCodes
    except SourceError:
        raise
    except (RuntimeError, KeyError, ValueError) as exc:  # ecCodes reports damage this way
        raise SourceError(f"{path}: cannot decode the GRIB2 message ({exc})") from exc
    lat = np.linspace(
        message["latitudeOfFirstGridPointInDegrees"],
        message["latitudeOfLastGridPointInDegrees"],
        message["Nj"],
    )  # (Nj,) north to south
    lon = np.linspace(
        message["longitudeOfFirstGridPointInDegrees"],
        message["longitudeOfLastGridPointInDegrees"],
        message["Ni"],
    )  # (Ni,) west to east
    values = np.ma.filled(values, np.nan) if np.ma.isMaskedArray(values) else values
    values[values < product.missing_below] = np.nan  # in place: the array is ours
    return Field(values=values, lat=lat, lon=lon, time=time, product=product_name)


def _read_message(path: str, storage_options: dict | None) -> pygrib.gribmessage:
    """The file's (first) GRIB2 message; SourceError if there is none, complete."""
    if not is_url(path) and not path.endswith(".gz"):
        try:
            size = Path(path).stat().st_size
        except OSError as exc:
            raise SourceError(f"{path}: cannot read the file ({exc.strerror})") from None
        if size == 0:
            raise SourceError(f"{path}: the file is empty")
        try:
            with pygrib.open(path) as grbs:
                messages = grbs.read(1)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read the file ({exc})") from exc
        except RuntimeError as exc:  # ecCodes stops inside a cut message
            raise SourceError(
                f"{path}: no complete GRIB2 message (truncated or not GRIB2: {exc})"
            ) from exc
        if not messages:
            raise SourceError(f"{path}: no complete GRIB2 message (truncated or not GRIB2)")
        return messages[0]
    data = read_bytes(path, storage_options)
    if not data:
        raise SourceError(f"{path}: the file is empty")
    if not (data.startswith(b"GRIB") and data.rstrip(b"\0").endswith(b"7777")):
        raise SourceError(f"{path}: no complete GRIB2 message (truncated or not GRIB2)")
    try:
        return pygrib.fromstring(data)
    except (RuntimeError, OSError) as exc:
        raise SourceError(f"{path}: cannot decode the GRIB2 message ({exc})") from exc


def _check_parameter(path: str, message, product_name: str, product: Product) -> None:
    got = tuple(int(message[k]) for k in ("discipline", "parameterCategory", "parameterNumber"))
    if got != product.parameter:
        actual = next((n for n, p in PRODUCTS.items() if p.parameter == got), "an unknown product")
        raise SourceError(
            f"{path}: the file name says {product_name} (GRIB2 discipline/category/parameter "
            f"{'/'.join(map(str, product.parameter))}) but the message holds "
            f"{'/'.join(map(str, got))} ({actual})"
        )


def _check_grid(path: str, message) -> None:
    wrong = []
    for key, expected in CONUS_GRID.items():
        got = message[key]
        same = got == expected if isinstance(expected, str) else abs(got - expected) < 1e-5
        if not same:
            wrong.append(f"{key} = {got} (expected {expected})")
    if wrong:
        raise SourceError(
            f"{path}: not on the MRMS CONUS grid (3500 x 7000 at 0.01 deg from 54.995N "
            f"230.005E): {'; '.join(wrong)}"
        )


class MRMSSource:
    """MRMS files of one product (default ``PrecipRate_00.00``) read onto a grid.

    ``storage_options`` go to fsspec for URLs (``s3://`` defaults to anonymous);
    ``regrid_cache_dir`` keeps the regridding tables on disk between processes.
    """

    name = "mrms"

    def __init__(
        self,
        product: str = "PrecipRate_00.00",
        storage_options: dict | None = None,
        regrid_cache_dir: str | None = None,
    ):
        m = re.fullmatch(r"(?P<product>[A-Za-z0-9_]+?)_(?P<level>\d{2}\.\d{2})", product)
        if m is None or m["product"] not in PRODUCTS:
            raise ValueError(
                f"unknown MRMS product {product!r}; expected Product_LL.LL with Product one of "
                f"{', '.join(PRODUCTS)} (e.g. PrecipRate_00.00)"
            )
        self.product = product
        self.variable = PRODUCTS[m["product"]].variable
        self.storage_options = storage_options
        self.regrid_cache_dir = regrid_cache_dir

    def __repr__(self) -> str:
        return f"MRMSSource({self.product!r} -> {self.variable})"

    def discover(
        self, location: str, start: np.datetime64 | None = None, end: np.datetime64 | None = None
    ) -> list[str]:
        """This product's files under ``location`` observed in ``[start, end]``, sorted.

        ``location`` is a local folder (searched recursively) or a URL such as
        ``s3://noaa-mrms-pds/CONUS/PrecipRate_00.00`` (listed by ``YYYYMMDD`` prefixes).
        """

        def match(name: str) -> bool:
            m = _NAME.match(name)
            return m is not None and f"{m['product']}_{m['level']}" == self.product

        return discover_files(
            location, self.time_of, start, end, match=match, storage_options=self.storage_options
        )

    def time_of(self, path: str) -> np.datetime64:
        """Observation time from the file name (either naming style), UTC ``datetime64[ns]``."""
        return parse_name(path)[2]

    def read(self, path: str, grid: Grid) -> xr.Dataset:
        """One file on ``grid``: ``{variable}`` float32 ``(time=1, y, x)``, NaN = missing."""
        product_name, level, _ = parse_name(path)
        if f"{product_name}_{level}" != self.product:
            raise SourceError(f"{path}: expected an MRMS {self.product} file")
        field = decode(path, self.storage_options)
        product = PRODUCTS[field.product]
        regrid = Regridder.from_lonlat(field.lon, field.lat, grid, cache_dir=self.regrid_cache_dir)
        values = regrid(field.values)[None]  # (1, ny, nx) float32
        attrs = {
            "units": product.units,
            "long_name": f"MRMS {product.long_name}",
            "source": f"NOAA MRMS {self.product}",
        }
        return grid.dataset(
            {product.variable: (("time", "y", "x"), values, attrs)}, time=field.time
        )
