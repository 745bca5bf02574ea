"""MRMS GRIB2 reader on the real sample files: decoding vs pysteps, regridding, discovery
and every error a user can cause. Decoding costs ~1 s per file: fixtures are module-scoped."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pygrib
import pyproj
import pytest

from metnet.config import GridConfig
from metnet.grid import Grid, Regridder
from metnet.sources import SourceError, get_source
from metnet.sources.mrms import MRMSSource, decode, parse_name

pytestmark = pytest.mark.realdata

#: 512 x 512 km around central Texas, where it rains in the sample files.
RAINY = GridConfig(x_min_m=-500_000.0, y_max_m=1_100_000.0, nx=512, ny=512)


@pytest.fixture(scope="module")
def pair(mrms_files):
    """Two real files (00:00 and 00:24 UTC), decoded by us and by pysteps."""
    from pysteps.io.importers import import_mrms_grib

    out = []
    for path in (mrms_files[0], mrms_files[12]):
        reference, _, metadata = import_mrms_grib(str(path), window_size=1)
        out.append((path, decode(str(path)), reference, metadata))
    return out


@pytest.fixture
def template(mrms_files):
    """The first real file's GRIB2 message (header only, not decoded), to alter and write."""
    with pygrib.open(str(mrms_files[0])) as grbs:
        return grbs.read(1)[0]


def write_message(message, path: Path, **keys) -> Path:
    """Re-encode ``message`` with header ``keys`` changed (values untouched) into ``path``."""
    for key, value in keys.items():
        message[key] = value
    path.write_bytes(message.tostring())
    return path


# ----------------------------------------------------------------------------- decoding


def test_decode_equals_pysteps_cell_for_cell(pair):
    for path, field, reference, _ in pair:
        assert field.values.shape == reference.shape == (3500, 7000), path
        ours = field.values.astype(np.float32)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference))
        np.testing.assert_array_equal(ours, reference)  # NaNs compare equal here
        assert 0.2 < np.isnan(ours).mean() < 0.5, "the -3 no-coverage area must be NaN"
        assert np.nanmin(ours) == 0.0 and np.nanmax(ours) > 50.0


def test_decode_orientation_and_metadata(pair):
    (path, field, _, metadata), _ = pair
    assert metadata["yorigin"] == "upper"  # pysteps: row 0 north, like ours
    assert field.lat[0] == pytest.approx(54.995) and field.lat[-1] == pytest.approx(20.005)
    assert field.lon[0] == pytest.approx(230.005) and field.lon[-1] == pytest.approx(299.995)
    np.testing.assert_allclose(np.diff(field.lat), -0.01, atol=1e-9)
    assert field.time == np.datetime64("2019-06-10T00:00", "ns")
    assert field.product == "PrecipRate"


def test_read_onto_the_grid(pair, mrms_files):
    grid = Grid(RAINY)
    path, field, _, _ = pair[1]
    ds = get_source("mrms").read(str(path), grid)
    rate = ds["precipitation_rate"]
    assert rate.dims == ("time", "y", "x") and rate.shape == (1, 512, 512)
    assert rate.dtype == np.float32 and rate.attrs["units"] == "mm/h"
    assert rate.attrs["grid_mapping"] == "crs" and "crs_wkt" in ds["crs"].attrs
    assert ds["time"].values[0] == np.datetime64("2019-06-10T00:24", "ns")
    expected = Regridder.from_lonlat(field.lon, field.lat, grid)(field.values)
    np.testing.assert_array_equal(rate.values[0], expected)
    assert np.nanmax(rate.values) > 20.0 and np.isnan(rate.values).mean() < 0.05


def test_regridded_areal_mean_matches_the_source_pixels(pair):
    """Mean over the (equal-area) grid cells vs the area-weighted mean of the source pixels
    whose centres fall inside the grid: equal within 1 %."""
    grid = Grid(RAINY)
    _, field, _, _ = pair[0]
    out = Regridder.from_lonlat(field.lon, field.lat, grid)(field.values)
    rows = (field.lat > 24.0) & (field.lat < 37.0)
    cols = (field.lon > 255.0) & (field.lon < 268.0)
    lon, lat = np.meshgrid(field.lon[cols] - 360.0, field.lat[rows])
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:5070", always_xy=True).transform(lon, lat)
    x_min, y_min, x_max, y_max = grid.bounds
    inside = (x >= x_min) & (x < x_max) & (y > y_min) & (y <= y_max)
    assert inside[0].sum() == 0 and inside[-1].sum() == 0, "the crop must enclose the grid"
    values = field.values[np.ix_(rows, cols)]
    valid = inside & np.isfinite(values)
    weights = np.cos(np.deg2rad(lat))[valid]
    source_mean = np.sum(values[valid] * weights) / np.sum(weights)
    assert source_mean > 0.5  # a rainy area, so the comparison means something
    assert np.nanmean(out) == pytest.approx(source_mean, rel=0.01)


def test_gzipped_file_from_a_file_url(pair, tmp_path):
    path, field, _, _ = pair[0]
    gz = tmp_path / f"MRMS_{path.name}.gz"
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    unzipped = decode(f"file://{gz}")
    np.testing.assert_array_equal(unzipped.values, field.values)
    assert unzipped.time == field.time


def test_other_products_by_name(template, pair, tmp_path):
    """A reflectivity file (the real message relabelled 209/3/57): its own variable name and
    units, and its missing rule (only codes below -90 dBZ are missing; -3 dBZ is valid)."""
    name = "MRMS_ReflectivityAtLowestAltitude_00.50_20190610-000000.grib2"
    path = write_message(template, tmp_path / name, parameterCategory=3, parameterNumber=57)
    field = decode(str(path))
    rate = pair[0][1].values  # the same message read as PrecipRate
    assert not np.isnan(field.values).any()
    np.testing.assert_array_equal(field.values[np.isnan(rate)], -3.0)
    source = get_source("mrms", product="ReflectivityAtLowestAltitude_00.50")
    ds = source.read(str(path), Grid(RAINY))
    assert list(ds.data_vars) == ["reflectivity_at_lowest_altitude"]
    assert ds["reflectivity_at_lowest_altitude"].attrs["units"] == "dBZ"


# ----------------------------------------------------------------------------- names and discovery


def test_time_of_both_naming_styles():
    source = MRMSSource()
    t = np.datetime64("2019-06-10T00:48", "ns")
    assert source.time_of("/x/PrecipRate_00.00_20190610-004800.grib2") == t
    bucket = "s3://noaa-mrms-pds/CONUS/PrecipRate_00.00/20190610/MRMS_PrecipRate_00.00_20190610-004800.grib2.gz"
    assert source.time_of(bucket) == t
    assert parse_name("MRMS_MultiSensor_QPE_01H_Pass2_00.00_20240101-120000.grib2.gz")[:2] == (
        "MultiSensor_QPE_01H_Pass2",
        "00.00",
    )
    assert parse_name("ReflectivityAtLowestAltitude_00.50_20240101-120238.grib2")[:2] == (
        "ReflectivityAtLowestAltitude",
        "00.50",
    )


def test_time_of_rejects_other_names():
    with pytest.raises(SourceError, match=r"notes\.txt: not an MRMS file name"):
        MRMSSource().time_of("/data/notes.txt")
    with pytest.raises(
        SourceError, match=r"PrecipRate_00\.00_20191310-000000\.grib2: invalid date"
    ):
        MRMSSource().time_of("PrecipRate_00.00_20191310-000000.grib2")


def test_discover_the_real_folder_by_time(mrms_files):
    folder = str(mrms_files[0].parents[3])  # .../mrms, files under 2019/06/10
    source = MRMSSource()
    found = source.discover(
        folder, np.datetime64("2019-06-10T00:10"), np.datetime64("2019-06-10T00:20")
    )
    assert [Path(p).name for p in found] == [f.name for f in mrms_files[5:11]]
    assert len(source.discover(folder, None, None)) == 25
    assert source.discover(folder, np.datetime64("2019-06-11"), None) == []
    assert MRMSSource("PrecipFlag_00.00").discover(folder, None, None) == []


def test_discover_a_bucket_layout_by_date_prefix(tmp_path):
    """``.../PrecipRate_00.00/YYYYMMDD/MRMS_...grib2.gz`` through a file:// URL; folders of
    other days are not entered (the misplaced 00:10 file in 20190611 is never seen)."""
    root = tmp_path / "CONUS" / "PrecipRate_00.00"
    for day, times in {
        "20190609": ["235800"],
        "20190610": ["000000", "000200", "000400"],
        "20190611": [],
    }.items():
        (root / day).mkdir(parents=True)
        for t in times:
            (root / day / f"MRMS_PrecipRate_00.00_{day}-{t}.grib2.gz").touch()
    (root / "20190611" / "MRMS_PrecipRate_00.00_20190610-001000.grib2.gz").touch()
    (root / "20190610" / "MRMS_PrecipFlag_00.00_20190610-000000.grib2.gz").touch()
    (root / "20190610" / "index.html").touch()
    found = MRMSSource().discover(
        f"file://{root}", np.datetime64("2019-06-10T00:00"), np.datetime64("2019-06-10T23:59")
    )
    assert found == [
        f"file://{root}/20190610/MRMS_PrecipRate_00.00_20190610-{t}.grib2.gz"
        for t in ("000000", "000200", "000400")
    ]


def test_discover_a_missing_location():
    with pytest.raises(SourceError, match=r"/no/such/folder: no such file or folder"):
        MRMSSource().discover("/no/such/folder", None, None)


def test_unknown_product_option():
    with pytest.raises(ValueError, match=r"unknown MRMS product 'Rain'.*PrecipRate, PrecipFlag"):
        MRMSSource(product="Rain")


# ----------------------------------------------------------------------------- bad files


def test_empty_file(tmp_path):
    path = tmp_path / "PrecipRate_00.00_20190610-000000.grib2"
    path.touch()
    with pytest.raises(SourceError, match=rf"{path}: the file is empty"):
        decode(str(path))


@pytest.mark.parametrize("gzipped", [False, True])
def test_truncated_file(mrms_files, tmp_path, gzipped):
    data = mrms_files[0].read_bytes()[:400_000]
    name = "PrecipRate_00.00_20190610-000000.grib2"
    path = tmp_path / (name + ".gz" if gzipped else name)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    with pytest.raises(SourceError, match=rf"{path}: no complete GRIB2 message \(truncated"):
        decode(str(path))


def test_not_gzip(tmp_path):
    path = tmp_path / "MRMS_PrecipRate_00.00_20190610-000000.grib2.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match=rf"{path}: cannot read the file"):
        decode(str(path))


def test_wrong_product_in_the_message(template, tmp_path):
    path = write_message(
        template, tmp_path / "PrecipRate_00.00_20190610-000000.grib2", parameterNumber=37
    )
    with pytest.raises(
        SourceError,
        match=rf"{path}: the file name says PrecipRate \(GRIB2 discipline/category/parameter "
        r"209/6/1\) but the message holds 209/6/37 \(MultiSensor_QPE_01H_Pass2\)",
    ):
        decode(str(path))


def test_file_renamed_to_another_product(mrms_files, tmp_path):
    path = tmp_path / "MultiSensor_QPE_01H_Pass2_00.00_20190610-000000.grib2"
    path.symlink_to(mrms_files[0])
    with pytest.raises(
        SourceError, match=r"says MultiSensor_QPE_01H_Pass2 .* holds 209/6/1 \(PrecipRate\)"
    ):
        decode(str(path))
    with pytest.raises(SourceError, match=r"expected an MRMS PrecipRate_00.00 file"):
        MRMSSource().read(str(tmp_path / "PrecipFlag_00.00_20190610-000000.grib2"), Grid(RAINY))


def test_file_renamed_to_another_time(mrms_files, tmp_path):
    path = tmp_path / "PrecipRate_00.00_20190610-001000.grib2"
    path.symlink_to(mrms_files[0])
    with pytest.raises(
        SourceError,
        match=rf"{path}: the message is valid at 2019-06-10T00:00:00.000000000 but the file "
        r"name says 2019-06-10T00:10:00",
    ):
        decode(str(path))


def test_cropped_message_is_on_an_unexpected_grid(template, tmp_path):
    message = template
    message["Nj"], message["Ni"] = 100, 200
    message["latitudeOfLastGridPointInDegrees"] = 54.995 - 0.99
    message["longitudeOfLastGridPointInDegrees"] = 230.005 + 1.99
    message["values"] = np.linspace(0.0, 5.0, 100 * 200).reshape(100, 200)
    path = tmp_path / "PrecipRate_00.00_20190610-000000.grib2"
    path.write_bytes(message.tostring())
    with pytest.raises(
        SourceError,
        match=rf"{path}: not on the MRMS CONUS grid .*Nj = 100 \(expected 3500\); Ni = 200",
    ):
        decode(str(path))


def test_unknown_product_in_the_file_name(tmp_path):
    with pytest.raises(
        SourceError, match=r"Rain_00\.00_20190610-000000\.grib2: unknown MRMS product 'Rain'"
    ):
        decode(str(tmp_path / "Rain_00.00_20190610-000000.grib2"))


def test_missing_file_and_unreadable_url(tmp_path):
    missing = tmp_path / "PrecipRate_00.00_20190610-000000.grib2"
    with pytest.raises(SourceError, match=rf"{missing}: cannot read the file"):
        decode(str(missing))
    url = "http://127.0.0.1:9/CONUS/MRMS_PrecipRate_00.00_20190610-000000.grib2.gz"
    with pytest.raises(SourceError, match=rf"{url}: cannot read"):
        MRMSSource().read(url, Grid(RAINY))
