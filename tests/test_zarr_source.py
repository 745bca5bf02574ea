"""Zarr / netCDF source: identity on the canonical grid, regridding, renaming, units, errors."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import xarray as xr

from metnet.config import GridConfig
from metnet.grid import Grid
from metnet.sources import Source, SourceError, get_source
from metnet.sources.zarr_source import ZarrSource, convert_units

# 40 x 30 cells of 2 km in CONUS Albers over Oklahoma (97.3-98.2 W, 35.1-35.6 N).
GRID = Grid(GridConfig(x_min_m=-200_000.0, y_max_m=1_400_000.0, nx=40, ny=30, resolution_m=2000.0))
TIMES = np.array(
    ["2019-06-10T00:00", "2019-06-10T00:05", "2019-06-10T00:10"], dtype="datetime64[ns]"
)


def rate_mm_h(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """A smooth positive rain rate (mm/h), a known function of position."""
    return 5.0 + 2.0 * (lat - 35.4) + 1.5 * (lon + 97.8) + np.sin(np.radians(lat) * 60.0)


def canonical_dataset(rng: np.random.Generator) -> xr.Dataset:
    values = rng.gamma(0.5, 2.0, (len(TIMES), *GRID.shape)).astype(np.float32)  # (T, ny, nx)
    values[:, :3, :5] = np.nan
    return GRID.dataset({"rr": (("time", "y", "x"), values, {"units": "mm/h"})}, time=TIMES)


def utm_dataset() -> xr.Dataset:
    """The rate on a 1.5 km UTM zone 14N grid (y ascending), as kg m-2 s-1."""
    utm = pyproj.CRS.from_epsg(32614)
    x = np.arange(540_000.0, 690_000.0, 1500.0)  # (nx_src,)
    y = np.arange(3_850_000.0, 3_980_000.0, 1500.0)  # (ny_src,)
    lon, lat = pyproj.Transformer.from_crs(utm, "EPSG:4326", always_xy=True).transform(
        *np.meshgrid(x, y)
    )
    frames = np.stack([rate_mm_h(lon, lat) * k for k in (1.0, 2.0, 3.0)]) / 3600.0  # (T, ny, nx)
    ds = xr.Dataset(
        {
            "precip": (
                ("time", "y", "x"),
                frames.astype(np.float32),
                {"units": "kg m-2 s-1", "grid_mapping": "utm"},
            )
        },
        coords={"time": TIMES, "x": ("x", x, {"units": "m"}), "y": ("y", y, {"units": "m"})},
    )
    ds["utm"] = xr.DataArray(np.int32(0), attrs=utm.to_cf())
    return ds


def latlon_dataset() -> xr.Dataset:
    """The rate as 5-minute accumulations on a 0.01 degree grid, plus a temperature in degC."""
    lat = np.arange(35.9, 34.8, -0.01)  # (ny_src,) north -> south like MRMS
    lon = np.arange(-98.5, -97.0, 0.01)  # (nx_src,)
    lon2, lat2 = np.meshgrid(lon, lat)
    accumulation = rate_mm_h(lon2, lat2) / 12.0
    return xr.Dataset(
        {
            "acc": (
                ("time", "lat", "lon"),
                np.stack([accumulation] * 3).astype(np.float32),
                {"units": "mm/5min"},
            ),
            "tb": (
                ("time", "lat", "lon"),
                np.full((3, lat.size, lon.size), -50.0, np.float32),
                {"units": "degC"},
            ),
        },
        coords={"time": TIMES, "lat": lat, "lon": lon},
    )


def test_registry():
    source = get_source("ZARR", variables={"rr": "precipitation_rate"})
    assert isinstance(source, ZarrSource) and isinstance(source, Source)


def test_identity_on_the_canonical_grid_is_exact(tmp_path):
    ds = canonical_dataset(np.random.default_rng(0))
    store = str(tmp_path / "canonical.zarr")
    ds.to_zarr(store, consolidated=False)
    source = ZarrSource(variables={"rr": "precipitation_rate"})
    paths = source.discover(store, None, None)
    assert paths == [
        f"{store}#2019-06-10T00:00:00",
        f"{store}#2019-06-10T00:05:00",
        f"{store}#2019-06-10T00:10:00",
    ]
    out = source.read(paths[1], GRID)
    assert list(out.data_vars) == ["precipitation_rate"]
    da = out["precipitation_rate"]
    assert da.dims == ("time", "y", "x") and da.dtype == np.float32 and da.attrs["units"] == "mm/h"
    assert out["time"].values[0] == TIMES[1]
    np.testing.assert_array_equal(da.values[0], ds["rr"].values[1])  # bit for bit, NaN included

    # Rows stored south -> north are the same grid: still no resampling.
    flipped = str(tmp_path / "flipped.zarr")
    ds.sortby("y").to_zarr(flipped, consolidated=False)
    again = source.read(f"{flipped}#2019-06-10T00:05:00", GRID)
    np.testing.assert_array_equal(again["precipitation_rate"].values[0], ds["rr"].values[1])


def test_projected_grid_is_regridded_and_converted(tmp_path):
    store = str(tmp_path / "utm.zarr")
    utm_dataset().to_zarr(store, consolidated=False)
    source = get_source("zarr", variables={"precip": "precipitation_rate"})
    (path,) = source.discover(store, TIMES[1], TIMES[1])
    out = source.read(path, GRID)["precipitation_rate"].values[0]  # (ny, nx) mm/h
    lat, lon = GRID.lat_lon()
    expected = 2.0 * rate_mm_h(lon, lat)  # the second frame, converted from kg m-2 s-1
    assert np.isfinite(out).all()
    # 1.5 km source pixels averaged into 2 km cells: centroids within a km of the centre.
    np.testing.assert_allclose(out, expected, atol=0.08)  # measured 0.040 mm/h
    assert np.abs(out - expected).mean() < 0.02  # measured 0.012 mm/h


def test_latlon_grid_accumulation_and_celsius(tmp_path):
    path = tmp_path / "latlon.nc"
    latlon_dataset().to_netcdf(path)
    source = ZarrSource(variables={"acc": "precipitation_rate", "tb": "abi_c13"})
    out = source.read(f"{path}#2019-06-10T00:10", GRID)
    lat, lon = GRID.lat_lon()
    rate = out["precipitation_rate"].values[0]
    np.testing.assert_allclose(rate, rate_mm_h(lon, lat), atol=0.04)  # measured 0.016 mm/h
    np.testing.assert_allclose(out["abi_c13"].values, 223.15, atol=1e-4)
    assert out["abi_c13"].attrs["units"] == "K"


def test_fsspec_urls(tmp_path):
    memory_store = "memory://zarr-source-test/canonical.zarr"
    ds = canonical_dataset(np.random.default_rng(1))
    ds.to_zarr(memory_store, consolidated=False)
    nc_path = tmp_path / "latlon.nc"
    latlon_dataset().to_netcdf(nc_path)
    try:
        source = ZarrSource(variables=["rr"])  # a list keeps the names
        (path,) = source.discover(memory_store, TIMES[2], None)
        out = source.read(path, GRID)
        np.testing.assert_array_equal(out["rr"].values[0], ds["rr"].values[2])

        remote_nc = ZarrSource(variables={"acc": "precipitation_rate"})
        paths = remote_nc.discover(f"file://{nc_path}", None, TIMES[0])
        assert paths == [f"file://{nc_path}#2019-06-10T00:00:00"]
        assert remote_nc.read(paths[0], GRID)["precipitation_rate"].shape == (1, 30, 40)
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/zarr-source-test", recursive=True)


def test_missing_variable_lists_the_available_ones(tmp_path):
    store = str(tmp_path / "utm.zarr")
    utm_dataset().to_zarr(store, consolidated=False)
    source = ZarrSource(variables={"rain": "precipitation_rate"})
    with pytest.raises(
        SourceError, match=f"{store}: no variable 'rain'; available variables: precip, utm"
    ):
        source.discover(store, None, None)


def test_missing_crs_is_an_error(tmp_path):
    ds = utm_dataset()
    del ds["precip"].attrs["grid_mapping"]
    store = str(tmp_path / "no_crs.zarr")
    ds.drop_vars("utm").to_zarr(store, consolidated=False)
    with pytest.raises(
        SourceError, match=f"{store}: variable 'precip': no CRS; add a CF grid_mapping variable"
    ):
        ZarrSource().read(f"{store}#2019-06-10T00:00", GRID)


def test_units_errors(tmp_path):
    ds = utm_dataset()
    ds["precip"].attrs["units"] = "inch/h"
    store = str(tmp_path / "inches.zarr")
    ds.to_zarr(store, consolidated=False)
    source = ZarrSource(variables={"precip": "precipitation_rate"})
    with pytest.raises(
        SourceError,
        match=r"variable 'precip': cannot convert units 'inch/h' "
        r"to 'mm/h'; known units: .*kg m-2 s-1.*mm/<N>min",
    ):
        source.read(f"{store}#2019-06-10T00:00", GRID)

    del ds["precip"].attrs["units"]
    bare = str(tmp_path / "bare.zarr")
    ds.to_zarr(bare, consolidated=False)
    with pytest.raises(
        SourceError,
        match=r"variable 'precip' has no units attribute; declare "
        r"them with units=\{'precip': 'mm/h'\}",
    ):
        source.read(f"{bare}#2019-06-10T00:00", GRID)
    declared = ZarrSource(variables={"precip": "precipitation_rate"}, units={"precip": "mm s-1"})
    out = declared.read(f"{bare}#2019-06-10T00:00", GRID)["precipitation_rate"].values
    lat, lon = GRID.lat_lon()
    np.testing.assert_allclose(out[0], rate_mm_h(lon, lat), atol=0.1)


def test_unit_conversions():
    one = np.ones(2, dtype=np.float32)
    for units, factor in [
        ("mm/h", 1),
        ("mm h**-1", 1),
        ("kg m^-2 s^-1", 3600),
        ("mm/5min", 12),
        ("mm per 15 min", 4),
        ("m s-1", 3.6e6),
    ]:
        np.testing.assert_allclose(convert_units(one, units, "mm/h", "x"), factor, rtol=1e-6)
    np.testing.assert_allclose(convert_units(one, "Kelvin", "K", "x"), 1.0)
    np.testing.assert_allclose(convert_units(one, "degC", "K", "x"), 274.15)


def test_times_paths_and_stores_that_do_not_exist(tmp_path):
    store = str(tmp_path / "canonical.zarr")
    canonical_dataset(np.random.default_rng(2)).to_zarr(store, consolidated=False)
    source = ZarrSource()
    assert source.time_of(f"{store}#2019-06-10T00:05:00") == TIMES[1]
    with pytest.raises(
        SourceError,
        match=f"{store}: no time 2019-06-10T00:07:00; it holds 3 "
        "times from 2019-06-10T00:00:00 to 2019-06-10T00:10:00",
    ):
        source.read(f"{store}#2019-06-10T00:07", GRID)
    with pytest.raises(SourceError, match="not a zarr pseudo-path; expected '<url>#<ISO time>'"):
        source.time_of(store)
    with pytest.raises(SourceError, match="#noon: invalid time 'noon'"):
        source.time_of(f"{store}#noon")
    missing = str(tmp_path / "absent.zarr")
    with pytest.raises(SourceError, match=f"{missing}: "):
        source.discover(missing, None, None)
    ds = canonical_dataset(np.random.default_rng(3)).isel(time=0, drop=True)
    no_time = str(tmp_path / "no_time.zarr")
    ds.to_zarr(no_time, consolidated=False)
    with pytest.raises(SourceError, match=f"{no_time}: no 'time' dimension"):
        source.discover(no_time, None, None)


def _bad_datasets() -> dict[str, tuple[xr.Dataset, dict, str]]:
    """name -> (dataset, ZarrSource options, expected error) for malformed inputs."""
    utm = utm_dataset()
    frames = utm["precip"].values
    cube = utm.assign(precip4=(("time", "level", "y", "x"), frames[:, None], {"units": "mm/h"}))
    no_coords = utm.drop_vars(["x", "y"])
    odd_dims = xr.Dataset(
        {"v": (("time", "a", "b"), np.zeros((3, 2, 2), np.float32), {"units": "mm/h"})},
        coords={"time": TIMES},
    )
    wrong_mapping = utm.copy()
    wrong_mapping["precip"].attrs["grid_mapping"] = "nowhere"
    bad_mapping = utm.copy()
    bad_mapping["utm"].attrs = {"grid_mapping_name": "nonsense"}
    return {
        "only 1-D": (
            xr.Dataset({"count": ("time", np.arange(3))}, coords={"time": TIMES}),
            {},
            "no \\(time, y, x\\) variables",
        ),
        "4-D": (
            cube,
            {"variables": ["precip4"]},
            (
                r"variable 'precip4': expected dimensions \(time, y, x\), "
                r"got \('time', 'level', 'y', 'x'\)"
            ),
        ),
        "unknown dims": (
            odd_dims,
            {},
            r"variable 'v': cannot tell the x and y dimensions among \['a', 'b'\]",
        ),
        "no coordinates": (
            no_coords,
            {"variables": ["precip"]},
            "variable 'precip': no coordinate values for dimensions y, x",
        ),
        "missing mapping": (
            wrong_mapping,
            {"variables": ["precip"]},
            "variable 'precip': grid_mapping variable 'nowhere' is missing",
        ),
        "bad mapping": (
            bad_mapping,
            {"variables": ["precip"]},
            "variable 'precip': unreadable grid mapping 'utm' \\(Unsupported grid mapping name",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_datasets()))
def test_malformed_datasets(tmp_path, case):
    ds, options, message = _bad_datasets()[case]
    store = str(tmp_path / "bad.zarr")
    ds.to_zarr(store, consolidated=False)
    source = ZarrSource(**options)
    with pytest.raises(SourceError, match=f"{store}: {message}"):
        source.read(source.discover(store, None, None)[0], GRID)
