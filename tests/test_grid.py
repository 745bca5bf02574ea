"""The canonical grid (coordinates, CRS, CF attributes) and the Regridder's rules."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import xarray as xr

from metnet import grid as grid_module
from metnet.config import GridConfig, preset
from metnet.grid import Grid, Regridder

ALBERS = pyproj.CRS.from_epsg(5070)
TO_LONLAT = pyproj.Transformer.from_crs(ALBERS, "EPSG:4326", always_xy=True)
TO_ALBERS = pyproj.Transformer.from_crs("EPSG:4326", ALBERS, always_xy=True)


@pytest.fixture(scope="module")
def grid() -> Grid:
    """A 40 x 60 km grid of 1 km cells near 35N 96W."""
    return Grid(GridConfig(x_min_m=-20_000.0, y_max_m=1_400_000.0, nx=60, ny=40))


def regular_source(grid: Grid, step: float) -> tuple[np.ndarray, np.ndarray]:
    """A regular lat/lon source grid (latitudes north to south) covering ``grid`` with margin."""
    lat, lon = grid.lat_lon()
    lons = np.arange(lon.min() - 0.3, lon.max() + 0.3, step)
    lats = np.arange(lat.max() + 0.3, lat.min() - 0.3, -step)
    return lons, lats


def test_coordinates_and_transform(grid):
    assert grid.shape == (40, 60)
    assert grid.crs == ALBERS
    np.testing.assert_allclose(np.diff(grid.x), 1000.0)
    np.testing.assert_allclose(np.diff(grid.y), -1000.0)
    assert grid.x[0] == -19_500.0 and grid.y[0] == 1_399_500.0
    assert grid.transform == (-20_000.0, 1000.0, 0.0, 1_400_000.0, 0.0, -1000.0)
    assert grid.bounds == (-20_000.0, 1_360_000.0, 40_000.0, 1_400_000.0)
    assert grid == Grid(grid.config) and hash(grid) == hash(Grid(grid.config))
    assert "40 x 60" in repr(grid)


def test_default_grid_is_conus_albers():
    g = Grid(GridConfig())
    assert g.crs.to_epsg() == 5070
    assert g.shape == (3000, 4700)


def test_lat_lon_golden_value_at_the_projection_origin():
    # EPSG:5070 has its origin at 23N 96W: the cell centred on (0, 0) sits exactly there.
    g = Grid(GridConfig(x_min_m=-500.0, y_max_m=500.0, nx=3, ny=3))
    lat, lon = g.lat_lon()
    assert lat.shape == lon.shape == (3, 3) and lat.dtype == np.float64
    assert lat[0, 0] == pytest.approx(23.0, abs=1e-9)
    assert lon[0, 0] == pytest.approx(-96.0, abs=1e-9)


def test_lat_lon_of_corners_match_pyproj(grid):
    lat, lon = grid.lat_lon()
    for row, col in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        elon, elat = TO_LONLAT.transform(grid.x[col], grid.y[row])
        assert lat[row, col] == pytest.approx(elat, abs=1e-9)
        assert lon[row, col] == pytest.approx(elon, abs=1e-9)
    assert lat[0, 0] > lat[-1, 0], "rows must run north to south"
    assert grid.lat_lon() is grid.lat_lon(), "lat/lon must be computed once and cached"


def test_cell_index(grid):
    row, col = grid.cell_index(
        np.array([-19_999.0, 39_999.0, -20_001.0, np.nan, 500.0]),
        np.array([1_399_999.0, 1_360_001.0, 1_390_000.0, 1_390_000.0, 1_380_000.0]),
    )
    np.testing.assert_array_equal(row, [0, 39, -1, -1, 20])
    np.testing.assert_array_equal(col, [0, 59, -1, -1, 20])


def test_coarsen_keeps_the_edges_and_averages_centres(grid):
    coarse = grid.coarsen(4)
    assert coarse.shape == (10, 15) and coarse.config.resolution_m == 4000.0
    assert coarse.bounds == grid.bounds
    np.testing.assert_allclose(coarse.x, grid.x.reshape(15, 4).mean(axis=1))
    np.testing.assert_allclose(coarse.y, grid.y.reshape(10, 4).mean(axis=1))


def test_coarsen_rejects_a_non_divisor(grid):
    with pytest.raises(ValueError, match=r"cannot coarsen a 40 x 60 grid by 7"):
        grid.coarsen(7)


def test_window(grid):
    w = grid.window(5, 10, 8)
    np.testing.assert_array_equal(w.x, grid.x[10:18])
    np.testing.assert_array_equal(w.y, grid.y[5:13])
    overhang = grid.window(-2, -2, 4)
    assert overhang.x[0] == grid.x[0] - 2000.0
    with pytest.raises(ValueError, match="window size must be positive"):
        grid.window(0, 0, 0)


def test_coords_carry_cf_attributes(grid):
    coords = grid.coords(lat_lon=True)
    assert coords["x"][2]["standard_name"] == "projection_x_coordinate"
    assert coords["y"][2]["standard_name"] == "projection_y_coordinate"
    assert coords["x"][2]["units"] == coords["y"][2]["units"] == "m"
    assert coords["latitude"][0] == ("y", "x") and coords["latitude"][2]["units"] == "degrees_north"
    assert set(grid.coords()) == {"x", "y"}


def test_grid_mapping_is_cf_and_round_trips(grid):
    gm = grid.grid_mapping()
    assert gm.name == "crs" and gm.ndim == 0
    assert gm.attrs["grid_mapping_name"] == "albers_conical_equal_area"
    assert list(gm.attrs["standard_parallel"]) == [29.5, 45.5]
    assert gm.attrs["longitude_of_central_meridian"] == -96.0
    assert gm.attrs["latitude_of_projection_origin"] == 23.0
    assert pyproj.CRS.from_cf(gm.attrs) == ALBERS
    assert pyproj.CRS.from_wkt(gm.attrs["crs_wkt"]) == ALBERS


def test_dataset_written_to_netcdf_is_read_back_with_its_crs(grid, tmp_path):
    values = np.arange(2 * 40 * 60, dtype=np.float32).reshape(2, 40, 60)
    time = np.array(["2019-06-10T00:00", "2019-06-10T00:02"], dtype="datetime64[ns]")
    ds = grid.dataset(
        {"rate": (("time", "y", "x"), values, {"units": "mm/h"})}, time=time, lat_lon=True
    )
    assert ds["rate"].attrs["grid_mapping"] == "crs"
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    path = tmp_path / "grid.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path, decode_coords="all") as back:
        assert back.rio.crs.to_epsg() == 5070
        np.testing.assert_array_equal(back["rate"].values, values)
        assert back.rio.transform().to_gdal() == grid.transform
        np.testing.assert_allclose(back["latitude"].values, grid.lat_lon()[0])


# ----------------------------------------------------------------------------- Regridder


def test_point_source_lands_in_the_cell_containing_its_centre(grid):
    lons, lats = regular_source(grid, 0.004)  # finer than the 1 km grid
    values = np.zeros((lats.size, lons.size), dtype=np.float32)
    i, j = np.searchsorted(-lats, -35.47), np.searchsorted(lons, -95.88)
    values[i, j] = 7.0
    out = Regridder.from_lonlat(lons, lats, grid)(values)
    x, y = TO_ALBERS.transform(lons[j], lats[i])
    row, col = int((1_400_000.0 - y) // 1000), int((x + 20_000.0) // 1000)
    assert np.count_nonzero(out) == 1
    assert np.unravel_index(np.argmax(out), out.shape) == (row, col)
    # The cell is the mean of the pixels whose centres fall in it: 7 / (their number).
    xx, yy = TO_ALBERS.transform(*np.meshgrid(lons, lats))
    in_cell = (np.floor((xx + 20_000.0) / 1000) == col) & (
        np.floor((1_400_000.0 - yy) / 1000) == row
    )
    assert out[row, col] == pytest.approx(7.0 / in_cell.sum(), rel=1e-6)


def test_area_average_conserves_the_sum_over_contributors(grid):
    lons, lats = regular_source(grid, 0.003)
    rng = np.random.default_rng(0)
    values = rng.gamma(0.5, 2.0, size=(lats.size, lons.size)).astype(np.float32)
    regrid = Regridder.from_lonlat(lons, lats, grid)
    out = regrid(values)
    counts = regrid(np.ones_like(values))
    assert not np.isnan(out).any() and np.all(counts == 1.0)
    # Reference: bin every source pixel into its cell with pyproj, then average.
    xx, yy = TO_ALBERS.transform(*np.meshgrid(lons, lats))
    row, col = grid.cell_index(xx, yy)
    inside = row >= 0
    ref_sum = np.zeros(grid.shape)
    ref_n = np.zeros(grid.shape)
    np.add.at(ref_sum, (row[inside], col[inside]), values[inside])
    np.add.at(ref_n, (row[inside], col[inside]), 1)
    np.testing.assert_allclose(out, ref_sum / ref_n, rtol=1e-5)


def test_nan_pixels_are_ignored_and_all_nan_cells_stay_nan(grid):
    lons, lats = regular_source(grid, 0.003)
    values = np.ones((lats.size, lons.size), dtype=np.float32)
    values[:, ::2] = np.nan  # half of every cell's contributors are missing
    xx, yy = TO_ALBERS.transform(*np.meshgrid(lons, lats))
    row, col = grid.cell_index(xx, yy)
    values[(row == 3) & (col == 4)] = np.nan  # one cell entirely missing
    out = Regridder.from_lonlat(lons, lats, grid)(values)
    assert np.isnan(out[3, 4])
    assert np.count_nonzero(np.isnan(out)) == 1
    assert np.all(out[~np.isnan(out)] == 1.0)


def test_nearest_fallback_when_the_source_is_coarser(grid):
    lons, lats = regular_source(grid, 0.1)  # ~10 km pixels over 1 km cells
    ids = np.arange(lats.size * lons.size, dtype=np.float32).reshape(lats.size, lons.size)
    out = Regridder.from_lonlat(lons, lats, grid)(ids)
    assert not np.isnan(out).any()
    # Every cell holds the id of the source pixel containing its centre.
    lat, lon = grid.lat_lon()
    i = np.rint((lats[0] - lat) / 0.1).astype(int)
    j = np.rint((lon - lons[0]) / 0.1).astype(int)
    expected = ids[i, j]
    # Cells that happen to contain a source centre average just that one pixel.
    np.testing.assert_array_equal(out, expected)


def test_scattered_source_matches_the_regular_path_when_finer(grid):
    lons, lats = regular_source(grid, 0.004)
    rng = np.random.default_rng(1)
    values = rng.random((lats.size, lons.size)).astype(np.float32)
    lon2, lat2 = np.meshgrid(lons, lats)
    regular = Regridder.from_lonlat(lons, lats, grid)(values)
    scattered = Regridder.from_lonlat(lon2, lat2, grid)(values)
    np.testing.assert_allclose(scattered, regular, rtol=1e-6)


def test_scattered_nearest_fallback_against_brute_force():
    g = Grid(GridConfig(x_min_m=0.0, y_max_m=1_000_000.0, nx=12, ny=10, resolution_m=1000.0))
    # A 2-D source of 3 km pixels in a rotated frame: centres projected back to lon/lat.
    a = np.deg2rad(20.0)
    u, v = np.meshgrid(np.arange(-4, 9) * 3000.0, np.arange(-4, 8) * 3000.0)
    sx, sy = u * np.cos(a) - v * np.sin(a), 990_000.0 + u * np.sin(a) + v * np.cos(a)
    slon, slat = TO_LONLAT.transform(sx, sy)
    ids = np.arange(sx.size, dtype=np.float32).reshape(sx.shape)
    out = Regridder.from_lonlat(slon, slat, g)(ids)
    assert not np.isnan(out).any()
    gx, gy = np.meshgrid(g.x, g.y)
    d2 = (gx[..., None] - sx.ravel()) ** 2 + (gy[..., None] - sy.ravel()) ** 2  # (ny, nx, n_src)
    nearest = ids.ravel()[np.argmin(d2, axis=-1)]
    # Cells that contain source centres average them instead.
    row, col = g.cell_index(sx, sy)
    inside = row >= 0
    sums, counts = np.zeros(g.shape), np.zeros(g.shape)
    np.add.at(sums, (row[inside], col[inside]), ids[inside])
    np.add.at(counts, (row[inside], col[inside]), 1)
    hit = counts > 0
    assert hit.any() and (~hit).any()
    np.testing.assert_array_equal(out[~hit], nearest[~hit])
    np.testing.assert_allclose(out[hit], sums[hit] / counts[hit], rtol=1e-6)


def test_cells_outside_the_source_stay_nan(grid):
    lons, lats = regular_source(grid, 0.004)
    west = lons < -96.0  # the source ends at 96W, inside the grid
    regrid = Regridder.from_lonlat(lons[west], lats, grid)
    out = regrid(np.ones((lats.size, west.sum()), dtype=np.float32))
    _, lon = grid.lat_lon()
    assert np.all(out[lon < -96.01] == 1.0)
    assert np.all(np.isnan(out[lon > -95.99]))
    np.testing.assert_array_equal(regrid.covered, ~np.isnan(out))


def test_source_entirely_off_the_grid_gives_all_nan(grid):
    lons, lats = np.arange(10.0, 11.0, 0.01), np.arange(50.0, 49.0, -0.01)
    out = Regridder.from_lonlat(lons, lats, grid)(np.ones((lats.size, lons.size)))
    assert out.shape == grid.shape and np.isnan(out).all()


def test_leading_dimensions_and_longitudes_east_of_180(grid):
    lons, lats = regular_source(grid, 0.004)
    rng = np.random.default_rng(2)
    values = rng.random((2, 3, lats.size, lons.size)).astype(np.float32)
    regrid = Regridder.from_lonlat(lons + 360.0, lats, grid)  # MRMS style 230..300 E
    out = regrid(values)
    assert out.shape == (2, 3, *grid.shape) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1, 2], Regridder.from_lonlat(lons, lats, grid)(values[1, 2]))


def test_regridders_are_cached_in_memory_and_on_disk(grid, tmp_path):
    lons, lats = regular_source(grid, 0.004)
    first = Regridder.from_lonlat(lons, lats, grid, cache_dir=tmp_path)
    assert Regridder.from_lonlat(lons.copy(), lats.copy(), grid) is first
    (table,) = tmp_path.glob("regrid-*.npz")
    grid_module._MEMORY_CACHE.clear()
    loaded = Regridder.from_lonlat(lons, lats, grid, cache_dir=tmp_path)
    assert loaded is not first
    values = np.random.default_rng(3).random((lats.size, lons.size))
    np.testing.assert_array_equal(loaded(values), first(values))
    assert Regridder.from_lonlat(lons, lats, grid.coarsen(4)) is not first


def test_regridder_errors_name_the_shapes(grid):
    lons, lats = regular_source(grid, 0.004)
    with pytest.raises(ValueError, match=r"both be 1-D .* got shapes \(\d+,\) and \(2, 2\)"):
        Regridder.from_lonlat(lons, np.zeros((2, 2)), grid)
    regrid = Regridder.from_lonlat(lons, lats, grid)
    with pytest.raises(
        ValueError,
        match=rf"built for a {lats.size} x {lons.size} source, got an array of shape \(3, 4\)",
    ):
        regrid(np.zeros((3, 4)))


def test_small_preset_grid_is_inside_mrms_coverage():
    lat, lon = Grid(preset("small").grid).lat_lon()
    assert lat.min() > 20.0 and lat.max() < 55.0
    assert lon.min() > -130.0 and lon.max() < -60.0
