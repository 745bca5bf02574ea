"""GOES ABI L2 reader: navigation against the PUG and pyproj, NOAA-layout files, fsspec."""

from __future__ import annotations

import fsspec
import netCDF4
import numpy as np
import pytest

from metnet.config import GridConfig
from metnet.grid import Grid
from metnet.sources import Source, SourceError, get_source
from metnet.sources.goes import GeosProjection, GOESSource, navigate, scan_start
from tests.goes_files import A, B, H, Window, abi_file_name, window_covering, write_abi

GOES_EAST = GeosProjection(H, A, B, -75.0)
START = np.datetime64("2019-06-10T00:01:17.300", "ns")
# 50 x 50 cells of 4 km in CONUS Albers over Oklahoma (about 98 W, 35 N).
GRID = Grid(GridConfig(x_min_m=-250_000.0, y_max_m=1_450_000.0, nx=50, ny=50, resolution_m=4000.0))


def pug_forward(lon: np.ndarray, lat: np.ndarray, lon_0: float) -> tuple[np.ndarray, np.ndarray]:
    """Scan angles of geodetic points: PUG L1b vol. 3, 5.1.2.8.2, written independently;
    NaN for points hidden behind the limb."""
    phi, lam = np.radians(lat), np.radians(lon)
    phi_c = np.arctan((B * B) / (A * A) * np.tan(phi))  # geocentric latitude
    e2 = (A * A - B * B) / (A * A)
    r_c = B / np.sqrt(1.0 - e2 * np.cos(phi_c) ** 2)  # geocentric distance to the point
    big_h = H + A
    s_x = big_h - r_c * np.cos(phi_c) * np.cos(lam - np.radians(lon_0))
    s_y = -r_c * np.cos(phi_c) * np.sin(lam - np.radians(lon_0))
    s_z = r_c * np.sin(phi_c)
    x = np.arcsin(-s_y / np.sqrt(s_x**2 + s_y**2 + s_z**2))
    y = np.arctan(s_z / s_x)
    # Visible where the surface normal faces the satellite: X (H - X) > Y^2 + (a/b)^2 Z^2
    # with the point's Earth-centred coordinates X = H - s_x, Y = -s_y, Z = s_z.
    earth_x = big_h - s_x
    visible = earth_x * (big_h - earth_x) > s_y**2 + (A * A) / (B * B) * s_z**2
    return np.where(visible, x, np.nan), np.where(visible, y, np.nan)


def field_k(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """A smooth brightness temperature (K) that is a known function of position."""
    return 250.0 + 3.0 * (lat - 35.0) + 2.0 * (lon + 98.0) + 4.0 * np.sin(np.radians(lon) * 40.0)


@pytest.fixture(scope="module")
def window() -> Window:
    west, south, east, north = -101.0, 33.0, -95.0, 37.5  # covers GRID with margin
    return window_covering(west, south, east, north)


def test_sub_satellite_point_navigates_to_the_equator_at_the_orbital_longitude():
    lon, lat = navigate(0.0, 0.0, GOES_EAST)
    assert lon == pytest.approx(-75.0, abs=1e-12)
    assert lat == pytest.approx(0.0, abs=1e-12)
    lon, lat = navigate(0.0, 0.0, GeosProjection(H, A, B, -137.2))
    assert (lon, lat) == pytest.approx((-137.2, 0.0), abs=1e-12)


def test_pug_worked_example():
    lon, lat = navigate(-0.024052, 0.095340, GOES_EAST)
    assert lat == pytest.approx(33.846162, abs=1e-6)
    assert lon == pytest.approx(-84.690932, abs=1e-6)


def test_navigation_inverts_the_forward_equations():
    rng = np.random.default_rng(1)
    lat = rng.uniform(-70.0, 70.0, 2000)
    lon = -75.0 + rng.uniform(-70.0, 70.0, 2000)
    x, y = pug_forward(lon, lat, -75.0)
    visible = np.isfinite(x)
    assert 1800 < visible.sum() < 2000  # the sample reaches past the limb
    lon, lat, x, y = lon[visible], lat[visible], x[visible], y[visible]
    lon_back, lat_back = navigate(x, y, GOES_EAST)
    np.testing.assert_allclose(lat_back, lat, atol=1e-6, rtol=0)
    np.testing.assert_allclose(lon_back, lon, atol=1e-6, rtol=0)


def test_navigation_matches_pyproj_geos_and_is_nan_off_the_disk(window):
    x, y = window.angles()
    lon, lat = navigate(x[None, :], y[:, None], GOES_EAST)  # (ny, nx)
    ref_lon, ref_lat = window.lon_lat()
    assert lon.shape == (window.ny, window.nx)
    np.testing.assert_allclose(lon, ref_lon, atol=1e-6, rtol=0)
    np.testing.assert_allclose(lat, ref_lat, atol=1e-6, rtol=0)
    # The disk's radius seen from GEO is about 0.1517 rad (8.7 degrees).
    lon, lat = navigate(np.array([0.15, 0.16, 0.0]), np.array([0.0, 0.0, -0.153]), GOES_EAST)
    assert np.isfinite(lon[0]) and np.isnan(lon[1]) and np.isnan(lat[1]) and np.isnan(lat[2])


def test_scan_start_from_the_file_name():
    name = "OR_ABI-L2-CMIPC-M6C13_G16_s20191610001173_e20191610003557_c20191610004048.nc"
    assert scan_start(name) == np.datetime64("2019-06-10T00:01:17.300")
    url = f"s3://noaa-goes16/ABI-L2-CMIPC/2019/161/00/{name}"
    assert GOESSource().time_of(url) == np.datetime64("2019-06-10T00:01:17.300")
    written = abi_file_name(START, 13)
    assert written.startswith("OR_ABI-L2-CMIPC-M6C13_G16_s20191610001173_e")
    assert scan_start(written) == START
    assert scan_start(abi_file_name(START)).dtype == np.dtype("datetime64[ns]")
    with pytest.raises(SourceError, match="radar.nc: not a GOES ABI L2 CMIP/MCMIP file name"):
        scan_start("/data/radar.nc")


def test_variables_of_names_the_bands_without_reading_the_file():
    source = GOESSource(bands=(8, 13))
    assert source.variables_of(abi_file_name(START, 13)) == ("abi_c13",)
    assert source.variables_of(abi_file_name(START)) == ("abi_c08", "abi_c13")
    with pytest.raises(SourceError, match="radar.nc: not a GOES ABI"):
        source.variables_of("/data/radar.nc")


def test_registry_and_band_validation():
    source = get_source("GOES", bands=(13,))
    assert isinstance(source, GOESSource) and isinstance(source, Source)
    assert source.bands == (13,)
    with pytest.raises(ValueError, match=r"ABI bands are 1..16, got \[0, 13\]"):
        get_source("goes", bands=(0, 13))


def test_read_cmip_regrids_a_function_of_position(tmp_path, window):
    lon, lat = window.lon_lat()
    path = write_abi(tmp_path / abi_file_name(START, 13), {13: field_k(lon, lat)}, window, START)
    ds = get_source("goes").read(str(path), GRID)

    assert list(ds.data_vars) == ["abi_c13"]
    da = ds["abi_c13"]
    assert da.dims == ("time", "y", "x") and da.shape == (1, 50, 50) and da.dtype == np.float32
    assert da.attrs["units"] == "K"
    assert ds["time"].values[0] == START
    grid_lat, grid_lon = GRID.lat_lon()
    error = da.values[0] - field_k(grid_lon, grid_lat)
    assert np.isfinite(error).all()
    # Gradients are about 0.05 K/km and source pixels about 2.5 x 3.5 km: the centroid of
    # the pixel centres averaged into a 4 km cell sits within a km or two of its centre.
    assert np.abs(error).mean() < 0.04  # measured 0.020 K
    assert np.abs(error).max() < 0.15  # measured 0.086 K


def test_a_cold_spot_lands_where_it_was_put(tmp_path, window):
    lon, lat = window.lon_lat()
    spot_lon, spot_lat = -98.2, 35.1
    km = 111.2 * np.hypot((lon - spot_lon) * np.cos(np.radians(spot_lat)), lat - spot_lat)
    values = np.where(km < 20.0, 200.0, 290.0)
    path = write_abi(tmp_path / abi_file_name(START, 13), {13: values}, window, START)
    out = get_source("goes").read(str(path), GRID)["abi_c13"].values[0]

    grid_lat, grid_lon = GRID.lat_lon()
    grid_km = 111.2 * np.hypot(
        (grid_lon - spot_lon) * np.cos(np.radians(spot_lat)), grid_lat - spot_lat
    )
    assert np.allclose(out[grid_km < 14.0], 200.0, atol=0.05)
    assert np.allclose(out[grid_km > 26.0], 290.0, atol=0.05)
    assert (grid_km < 14.0).sum() >= 30


def test_missing_pixels_become_nan(tmp_path, window):
    lon, lat = window.lon_lat()
    values = field_k(lon, lat)
    values[lat > 35.0] = np.nan  # no value north of 35 N
    path = write_abi(tmp_path / abi_file_name(START, 13), {13: values}, window, START)
    out = get_source("goes").read(str(path), GRID)["abi_c13"].values[0]
    grid_lat, _ = GRID.lat_lon()
    assert np.isnan(out[grid_lat > 35.05]).all()
    assert np.isfinite(out[grid_lat < 34.95]).all()


def test_mcmip_band_selection_and_units(tmp_path, window):
    shape = (window.ny, window.nx)
    fields = {b: np.full(shape, 0.05 * b if b <= 6 else 200.0 + b) for b in range(1, 17)}
    path = write_abi(tmp_path / abi_file_name(START), fields, window, START, multiband=True)

    everything = get_source("goes").read(str(path), GRID)
    assert list(everything.data_vars) == [f"abi_c{b:02d}" for b in range(1, 17)]
    assert everything["abi_c02"].attrs["units"] == "1"
    assert everything["abi_c16"].attrs["units"] == "K"

    ds = get_source("goes", bands=(13, 2)).read(str(path), GRID)
    assert list(ds.data_vars) == ["abi_c02", "abi_c13"]
    np.testing.assert_allclose(ds["abi_c02"].values, 0.10, atol=2e-4)  # 12-bit packing
    np.testing.assert_allclose(ds["abi_c13"].values, 213.0, atol=0.03)


def test_mcmip_missing_band_is_an_error(tmp_path, window):
    fields = {b: np.full((window.ny, window.nx), 0.3) for b in range(1, 7)}
    path = write_abi(tmp_path / abi_file_name(START), fields, window, START, multiband=True)
    with pytest.raises(
        SourceError,
        match=r"MCMIPC.*requested ABI bands \[13\] are absent; "
        r"the file holds bands \[1, 2, 3, 4, 5, 6\]",
    ):
        get_source("goes", bands=(2, 13)).read(str(path), GRID)


def test_cmip_of_an_unselected_band_is_an_error(tmp_path, window):
    path = write_abi(
        tmp_path / abi_file_name(START, 7),
        {7: np.full((window.ny, window.nx), 280.0)},
        window,
        START,
    )
    with pytest.raises(
        SourceError,
        match=r"M6C07_G16.*holds ABI band 7, not one of the "
        r"requested bands \[13\]",
    ):
        get_source("goes", bands=(13,)).read(str(path), GRID)


def _noaa_tree(root, window) -> list[str]:
    """CMIP files of bands 7 and 13 every 5 minutes from 00:51 to 01:16, in YYYY/DDD/HH."""
    names = []
    for minute in range(51, 80, 5):
        t = np.datetime64("2019-06-10T00:00:17.3", "ns") + np.timedelta64(minute, "m")
        hour = np.datetime64(t, "h").astype(object)
        folder = root / f"{hour:%Y/%j/%H}"
        folder.mkdir(parents=True, exist_ok=True)
        for band in (7, 13):
            value = np.full((window.ny, window.nx), 250.0)
            write_abi(folder / abi_file_name(t, band), {band: value}, window, t)
            names.append(abi_file_name(t, band))
    return names


def test_discover_by_time_and_band_in_the_noaa_layout(tmp_path):
    window = Window(1200, 600, 4, 3)
    root = tmp_path / "ABI-L2-CMIPC"
    _noaa_tree(root, window)
    (root / "2019" / "161" / "00" / "notes.txt").write_text("not a GOES file")
    source = get_source("goes", bands=[13])

    files = source.discover(
        str(root), np.datetime64("2019-06-10T00:55"), np.datetime64("2019-06-10T01:10")
    )
    times = [source.time_of(f) for f in files]
    assert [str(t)[11:19] for t in times] == ["00:56:17", "01:01:17", "01:06:17"]
    assert all("M6C13_" in f and f.startswith(str(root)) for f in files)

    both = get_source("goes").discover(str(root), None, None)  # open range: full listing
    assert len(both) == 12 and [source.time_of(f) for f in both] == sorted(
        source.time_of(f) for f in both
    )


def test_read_and_discover_through_fsspec_urls(tmp_path, window):
    lon, lat = window.lon_lat()
    path = write_abi(tmp_path / abi_file_name(START, 13), {13: field_k(lon, lat)}, window, START)
    local = get_source("goes").read(str(path), GRID)

    via_file_url = get_source("goes").read(f"file://{path}", GRID)
    np.testing.assert_array_equal(via_file_url["abi_c13"].values, local["abi_c13"].values)

    memory = fsspec.filesystem("memory")
    memory.pipe(f"/goes16/ABI-L2-CMIPC/2019/161/00/{path.name}", path.read_bytes())
    try:
        source = get_source("goes", bands=(13,))
        found = source.discover("memory://goes16/ABI-L2-CMIPC", START, START)
        assert len(found) == 1 and found[0].startswith("memory://")
        assert found[0].endswith(f"/goes16/ABI-L2-CMIPC/2019/161/00/{path.name}")
        via_memory = source.read(found[0], GRID)
        np.testing.assert_array_equal(via_memory["abi_c13"].values, local["abi_c13"].values)
    finally:
        memory.rm("/goes16", recursive=True)


def test_not_an_abi_file(tmp_path):
    path = tmp_path / abi_file_name(START, 13)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 2)
        nc.createVariable("CMI", "f4", ("x",))[:] = [1.0, 2.0]
    with pytest.raises(
        SourceError, match=f"{path}: not a GOES ABI file \\(no goes_imager_projection"
    ):
        get_source("goes").read(str(path), GRID)


def test_empty_truncated_and_missing_files(tmp_path, window):
    good = write_abi(
        tmp_path / abi_file_name(START, 13),
        {13: np.full((window.ny, window.nx), 250.0)},
        window,
        START,
    )
    data = good.read_bytes()

    empty = tmp_path / "empty" / good.name
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=f"{empty}: empty file"):
        get_source("goes").read(str(empty), GRID)

    for fraction in (0.1, 0.5, 0.9):
        truncated = tmp_path / f"cut{fraction}" / good.name
        truncated.parent.mkdir()
        truncated.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(SourceError, match=f"{truncated}: .*truncated"):
            get_source("goes").read(str(truncated), GRID)

    with pytest.raises(SourceError, match="nowhere.nc: file not found"):
        get_source("goes").read(str(tmp_path / "nowhere.nc"), GRID)


def _drop_semi_minor_axis(nc):
    nc["goes_imager_projection"].delncattr("semi_minor_axis")


def _sweep_y(nc):
    nc["goes_imager_projection"].setncattr("sweep_angle_axis", "y")


def _rename(old: str, new: str):
    return lambda nc: nc.renameVariable(old, new)


def _bad_start(nc):
    nc.setncattr("time_coverage_start", "yesterday")


@pytest.mark.parametrize(
    ("mutate", "name", "message"),
    [
        (_drop_semi_minor_axis, None, "goes_imager_projection lacks semi_minor_axis"),
        (_sweep_y, None, "sweep_angle_axis 'y' is not supported"),
        (_rename("y", "row_angle"), None, "no x/y scan-angle variables"),
        (_rename("CMI", "Rad"), None, r"no CMI or CMI_Cnn variable \(not an ABI L2"),
        (_rename("band_id", "band"), "image.nc", "CMI without band_id, and no band in the file"),
        (_bad_start, None, "unreadable time_coverage_start 'yesterday'"),
    ],
)
def test_malformed_abi_files(tmp_path, window, mutate, name, message):
    path = write_abi(
        tmp_path / (name or abi_file_name(START, 13)),
        {13: np.full((window.ny, window.nx), 250.0)},
        window,
        START,
    )
    with netCDF4.Dataset(path, "a") as nc:
        mutate(nc)
    with pytest.raises(SourceError, match=f"{path}: {message}"):
        get_source("goes").read(str(path), GRID)


def test_regridding_tables_can_live_on_disk(tmp_path, window):
    lon, lat = window.lon_lat()
    path = write_abi(tmp_path / abi_file_name(START, 13), {13: field_k(lon, lat)}, window, START)
    grid = GRID.coarsen(2)  # a grid no other test uses, so no table is in memory yet
    tables = tmp_path / "tables"
    cached = get_source("goes", regrid_cache_dir=str(tables)).read(str(path), grid)
    assert len(list(tables.glob("regrid-*.npz"))) == 1
    plain = get_source("goes").read(str(path), grid)
    np.testing.assert_array_equal(cached["abi_c13"].values, plain["abi_c13"].values)
