"""Static fields: latitude/longitude from the grid, elevation from real GeoTIFF and netCDF
DEM files written here (geographic and projected), and the errors a user can cause."""

from __future__ import annotations

import logging

import numpy as np
import pyproj
import pytest
import rioxarray  # noqa: F401 - registers the .rio accessor used to write GeoTIFFs
import xarray as xr

from metnet.config import GridConfig
from metnet.grid import Grid
from metnet.sources import SourceError, get_source
from metnet.sources.static import StaticSource

GRID = Grid(GridConfig(x_min_m=-20_000.0, y_max_m=1_400_000.0, nx=60, ny=40))


def terrain(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """A smooth synthetic elevation (m): linear in lon/lat, so cell means equal centre values
    up to the offset between a cell's centre and its contributors' mean position."""
    return 400.0 + 100.0 * (lon + 96.0) + 50.0 * (lat - 35.5)


def geographic_dem(step: float = 0.005) -> xr.DataArray:
    lat, lon = GRID.lat_lon()
    lons = np.arange(lon.min() - 0.1, lon.max() + 0.1, step)
    lats = np.arange(lat.max() + 0.1, lat.min() - 0.1, -step)
    values = terrain(*np.meshgrid(lons, lats)).astype(np.float32)
    return xr.DataArray(values, dims=("y", "x"), coords={"y": lats, "x": lons})


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("dem") / "dem.tif"
    dem = geographic_dem()
    dem.values[:, -40:] = -9999.0  # no data along the east edge
    dem.rio.write_crs("EPSG:4326").rio.write_nodata(-9999.0).rio.to_raster(path)
    return path


def test_no_dem_omits_elevation_and_says_so(caplog):
    source = get_source("static")
    assert source.variables == ("latitude", "longitude")
    assert "elevation omitted: no DEM configured" in repr(source)
    with caplog.at_level(logging.WARNING, logger="metnet.sources.static"):
        ds = source.read(None, GRID)
    assert "no DEM configured: the static fields omit elevation" in caplog.text
    assert set(ds.data_vars) == {"latitude", "longitude"}
    lat, lon = GRID.lat_lon()
    for name, expected in (("latitude", lat), ("longitude", lon)):
        assert ds[name].dims == ("y", "x") and ds[name].dtype == np.float32
        np.testing.assert_array_equal(ds[name].values, expected.astype(np.float32))
        assert ds[name].attrs["grid_mapping"] == "crs"
    elon, elat = pyproj.Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True).transform(
        GRID.x[-1], GRID.y[-1]
    )
    assert ds["latitude"].values[-1, -1] == pytest.approx(elat, abs=1e-5)
    assert ds["longitude"].values[-1, -1] == pytest.approx(elon, abs=1e-5)


def test_geographic_geotiff_dem(geotiff):
    source = get_source("static", dem=str(geotiff))
    assert source.variables == ("latitude", "longitude", "elevation")
    ds = source.read(None, GRID)
    elevation = ds["elevation"]
    assert elevation.dims == ("y", "x") and elevation.dtype == np.float32
    assert elevation.attrs["units"] == "m"
    lat, lon = GRID.lat_lon()
    expected = terrain(lon, lat)
    covered = lon < lon.max() - 0.25  # well west of the no-data strip
    np.testing.assert_allclose(elevation.values[covered], expected[covered], atol=1.0)
    # No data stays missing: NaN, never zero.
    assert np.isnan(elevation.values[:, -1]).all()
    assert not (elevation.values == 0).any()


def test_projected_geotiff_dem(tmp_path):
    """A DEM in UTM zone 14N at 500 m goes through the 2-D (scattered) regridding path."""
    utm = pyproj.CRS.from_epsg(32614)
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", utm, always_xy=True)
    x0, y0 = to_utm.transform(-96.4, 35.8)
    xs = x0 + 250.0 + 500.0 * np.arange(200)
    ys = y0 - 250.0 - 500.0 * np.arange(150)
    lon, lat = pyproj.Transformer.from_crs(utm, "EPSG:4326", always_xy=True).transform(
        *np.meshgrid(xs, ys)
    )
    dem = xr.DataArray(
        terrain(lon, lat).astype(np.float32), dims=("y", "x"), coords={"y": ys, "x": xs}
    )
    path = tmp_path / "utm.tiff"
    dem.rio.write_crs(utm).rio.to_raster(path)
    elevation = StaticSource().read(str(path), GRID)["elevation"].values
    glat, glon = GRID.lat_lon()
    assert not np.isnan(elevation).any()
    np.testing.assert_allclose(elevation, terrain(glon, glat), atol=1.0)


def test_netcdf_dem_with_lat_lon_coordinates(tmp_path):
    dem = geographic_dem(0.01).rename(y="lat", x="lon")
    ds = xr.Dataset(
        {
            "z": dem.transpose("lon", "lat"),  # stored lon-major: the reader must transpose
            "slope": xr.zeros_like(dem),
        }
    )
    path = tmp_path / "dem.nc"
    ds.to_netcdf(path)
    elevation = StaticSource(dem=str(path)).read(None, GRID)["elevation"].values
    glat, glon = GRID.lat_lon()
    np.testing.assert_allclose(elevation, terrain(glon, glat), atol=1.0)
    chosen = StaticSource(dem=str(path), dem_variable="slope").read(None, GRID)["elevation"].values
    assert np.all(chosen == 0.0)


def test_discover_lists_dem_files(tmp_path, geotiff):
    for name in ("b.nc", "a.TIF", "readme.txt"):
        (tmp_path / name).touch()
    source = StaticSource()
    assert source.discover(str(tmp_path), None, None) == [
        str(tmp_path / "a.TIF"),
        str(tmp_path / "b.nc"),
    ]
    assert np.isnat(source.time_of(str(geotiff)))


def test_dem_errors(tmp_path, geotiff):
    source = StaticSource()
    missing = tmp_path / "nowhere.tif"
    with pytest.raises(SourceError, match=rf"{missing}: DEM file not found"):
        source.read(str(missing), GRID)
    text = tmp_path / "dem.txt"
    text.write_text("1 2 3")
    with pytest.raises(
        SourceError, match=rf"{text}: unsupported DEM format; expected one of \.tif"
    ):
        source.read(str(text), GRID)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match=rf"{broken}: cannot read the DEM"):
        source.read(str(broken), GRID)
    far = Grid(GridConfig(x_min_m=1_500_000.0, y_max_m=1_000_000.0, nx=20, ny=20))
    with pytest.raises(
        SourceError, match=rf"{geotiff}: the DEM does not cover the grid \(Grid\(EPSG:5070"
    ):
        source.read(str(geotiff), far)


def test_netcdf_dem_errors(tmp_path):
    values = np.ones((4, 5), dtype=np.float32)
    ambiguous = tmp_path / "ambiguous.nc"
    xr.Dataset({"a": (("y", "x"), values), "b": (("y", "x"), values)}).to_netcdf(ambiguous)
    with pytest.raises(
        SourceError,
        match=rf"{ambiguous}: cannot tell which variable is the elevation among a, b; pass dem_",
    ):
        StaticSource().read(str(ambiguous), GRID)
    with pytest.raises(SourceError, match=rf"{ambiguous}: no variable 'height'; variables: a, b"):
        StaticSource(dem_variable="height").read(str(ambiguous), GRID)
    with pytest.raises(
        SourceError, match=rf"{ambiguous}: the DEM has neither lat/lon coordinates nor a CRS"
    ):
        StaticSource(dem_variable="a").read(str(ambiguous), GRID)
    cube = tmp_path / "cube.nc"
    xr.Dataset({"elevation": (("t", "y", "x"), np.ones((2, 4, 5)))}).to_netcdf(cube)
    with pytest.raises(SourceError, match=rf"{cube}: elevation variable 'elevation' is not 2-D"):
        StaticSource().read(str(cube), GRID)
