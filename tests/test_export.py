"""Exports: CF netCDF (IOOS checker), COG (rio-cogeo validator), PNG maps, GIF, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from compliance_checker.runner import CheckSuite, ComplianceChecker
from matplotlib.colors import to_rgb
from PIL import Image
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from metnet.cli import app
from metnet.config import GridConfig
from metnet.export import (
    EXPORTER_NAMES,
    ExportError,
    _atomic,
    export_cog,
    export_gif,
    export_netcdf,
    export_png,
    get_exporter,
    list_products,
    open_forecast,
    rate_color_scale,
    select_products,
)
from metnet.grid import Grid
from metnet.products import MEAN, PROBABILITY, QUANTILE, forecast_dataset

# Third-party deprecation noise: the IOOS checker's SOS plug-in and rioxarray's affine use.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The ioos_sos checker is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
]

T0 = np.datetime64("2019-06-10T00:00", "ns")
LEADS = [30, 60, 90]
STAMP = "20190610T0000Z"


@pytest.fixture(scope="module")
def grid() -> Grid:
    return Grid(
        GridConfig(nx=32, ny=24, x_min_m=200_000.0, y_max_m=1_700_000.0, resolution_m=2000.0)
    )


@pytest.fixture(scope="module")
def forecast(grid: Grid) -> xr.Dataset:
    """A rain cell moving east: exponential rate distributions whose mean peaks near
    8 mm/h at the cell centre; the north-west corner has no forecast (NaN)."""
    yy, xx = np.mgrid[0 : grid.shape[0], 0 : grid.shape[1]]  # (y, x) pixel indices
    lower = np.arange(64)[:, None, None] * 0.2  # (bin, 1, 1) lower edges, mm/h
    probs = []
    for i in range(len(LEADS)):
        scale = 8.0 * np.exp(-((yy - 12) ** 2 + (xx - 8 - 6 * i) ** 2) / 40.0) + 0.02  # (y, x)
        weight = np.exp(-lower / scale)  # (bin, y, x)
        probs.append(weight / weight.sum(axis=0))
    p = np.stack(probs)  # (lead_time, bin, y, x)
    p[:, :, :3, :4] = np.nan
    return forecast_dataset(p, grid, T0, LEADS, thresholds=(0.2, 1.0, 5.0), keep_distribution=True)


# ----------------------------------------------------------------------------- registry


def test_registry_is_case_insensitive():
    assert EXPORTER_NAMES == ("netcdf", "cog", "png", "gif")
    assert get_exporter("NetCDF") is export_netcdf
    assert get_exporter(" COG ") is export_cog
    assert get_exporter("png") is export_png
    assert get_exporter("Gif") is export_gif


def test_registry_error_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown export format 'tiff'; valid formats: netcdf, cog, png, gif"
    ):
        get_exporter("tiff")


def test_product_names(forecast):
    assert list(list_products(forecast)) == [
        "prob_gt_0p2mmh", "prob_gt_1mmh", "prob_gt_5mmh", "rate_q50", "rate_q90", "rate_mean",
    ]  # fmt: skip
    (product,) = select_products(forecast, ["Prob_GT_1mmh"])
    assert product.selector == {"threshold": 1.0}
    np.testing.assert_array_equal(
        product.select(forecast).values, forecast[PROBABILITY].sel(threshold=1.0).values
    )


# ----------------------------------------------------------------------------- netCDF


def _cf_report(path: Path, checker: str, tmp_path: Path) -> dict:
    CheckSuite.load_all_available_checkers()
    report = tmp_path / f"{checker.replace(':', '_')}.json"
    ComplianceChecker.run_checker(
        str(path), [checker], verbose=0, criteria="normal",
        output_filename=str(report), output_format="json",
    )  # fmt: skip
    return json.loads(report.read_text())[checker]


@pytest.mark.parametrize("checker", ["cf:1.8", "cf:1.10"])
def test_netcdf_passes_the_cf_checker(forecast, tmp_path, checker):
    (path,) = export_netcdf(forecast, tmp_path)
    assert path == tmp_path / f"{STAMP}_forecast.nc"
    report = _cf_report(path, checker, tmp_path)
    failures = {item["name"]: item["msgs"] for item in report["high_priorities"] if item["msgs"]}
    assert failures == {}, failures
    assert report["scored_points"] >= report["possible_points"] - 1  # at most a recommendation


def test_netcdf_round_trip(forecast, tmp_path):
    (path,) = export_netcdf(forecast, tmp_path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_allclose(back[PROBABILITY], forecast[PROBABILITY])
        xr.testing.assert_allclose(
            back["precipitation_rate_bin_probability"],
            forecast["precipitation_rate_bin_probability"],
        )
        assert back["threshold"].attrs["spp__relative_to_threshold"] == "greater_than"
        assert back["lead_time"].attrs["standard_name"] == "forecast_period"
        assert back["forecast_reference_time"].values == T0
        assert back[MEAN].attrs["grid_mapping"] == "crs"
        assert "crs_wkt" in back["crs"].attrs
        assert back.attrs["Conventions"] == "CF-1.10"
        assert "export netcdf" in back.attrs["history"]
        assert back[PROBABILITY].encoding["zlib"]


def test_netcdf_selection(forecast, tmp_path):
    (path,) = export_netcdf(
        forecast, tmp_path, lead_times=[60], products=["prob_gt_1mmh", "rate_q90"]
    )
    with xr.open_dataset(path) as back:
        assert set(back.data_vars) == {PROBABILITY, QUANTILE}
        np.testing.assert_array_equal(back["threshold"].values, [1.0])
        np.testing.assert_array_equal(back["quantile"].values, [0.9])
        np.testing.assert_array_equal(back["lead_time"].values, [60])
        np.testing.assert_array_equal(back["time"].values, [T0 + np.timedelta64(60, "m")])


# ----------------------------------------------------------------------------- COG


def test_cog_is_valid_and_georeferenced(forecast, grid, tmp_path):
    paths = export_cog(
        forecast, tmp_path, lead_times=[30, 90], products=["prob_gt_1mmh", "rate_mean"]
    )
    assert [p.name for p in paths] == [
        f"{STAMP}_lead030min_prob_gt_1mmh.tif",
        f"{STAMP}_lead090min_prob_gt_1mmh.tif",
        f"{STAMP}_lead030min_rate_mean.tif",
        f"{STAMP}_lead090min_rate_mean.tif",
    ]
    for path in paths:
        valid, errors, _ = cog_validate(path)
        assert valid, errors
    with rasterio.open(paths[3]) as raster:
        assert raster.crs.to_epsg() == 5070
        assert raster.transform == Affine.from_gdal(*grid.transform)
        assert (raster.height, raster.width) == grid.shape
        assert raster.dtypes == ("float32",)
        assert np.isnan(raster.nodata)
        values = raster.read(1)
        tags = raster.tags()
    expected = forecast[MEAN].sel(lead_time=90).values
    np.testing.assert_array_equal(values, expected)  # NaN corner included
    assert tags["lead_time_minutes"] == "90"
    assert tags["forecast_reference_time"] == "2019-06-10T00:00:00Z"
    assert tags["valid_time"] == "2019-06-10T01:30:00Z"
    assert tags["units"] == "mm h-1"
    assert not list(tmp_path.glob(".*")) and not list(tmp_path.glob("*.aux.xml"))


# ----------------------------------------------------------------------------- maps


def _colors(path: Path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64).reshape(-1, 3)  # (pixels, 3)
    packed = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])  # (colours,)
    return {(int(c >> 16), int(c >> 8 & 255), int(c & 255)) for c in packed}


def test_png_maps(forecast, tmp_path):
    paths = export_png(forecast, tmp_path, lead_times=[60], products=["rate_mean", "prob_gt_1mmh"])
    assert [p.name for p in paths] == [
        f"{STAMP}_lead060min_rate_mean.png",
        f"{STAMP}_lead060min_prob_gt_1mmh.png",
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (800, 650)
        assert len(_colors(path)) > 20  # a map, a colour bar and text: not a blank image
    # The rate map shows the NWS colours of the classes the field falls in.
    levels, colours = rate_color_scale()
    rate = forecast[MEAN].sel(lead_time=60).values
    drawn = _colors(paths[0])
    for value in (np.nanmax(rate), 1.5):
        k = int(np.searchsorted(levels, value, side="right")) - 1  # class of the value
        rgb = tuple(round(255 * c) for c in to_rgb(colours[k]))
        assert rgb in drawn, (value, colours[k])
    assert tuple(round(255 * c) for c in to_rgb("#c8c8c8")) in drawn  # the NaN corner


def test_rate_color_scale_is_the_nws_palette():
    levels, colours = rate_color_scale()
    assert len(levels) == len(colours) == 15
    assert np.all(np.diff(levels) > 0) and levels[0] == 0.2 and levels[-1] == 100
    assert colours[:3] == ("#04e9e7", "#019ff4", "#0300f4")


def test_gif_has_a_frame_per_lead_time(forecast, tmp_path):
    (path,) = export_gif(forecast, tmp_path, products=["prob_gt_0p2mmh"])
    assert path.name == f"{STAMP}_prob_gt_0p2mmh.gif"
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == len(LEADS)
        assert gif.size == (800, 650)
        assert gif.info["loop"] == 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("exporter", [export_netcdf, export_cog, export_png, export_gif])
def test_path_escape_is_rejected(forecast, tmp_path, exporter):
    out = tmp_path / "out"
    with pytest.raises(
        ExportError, match=r"product name '\.\./evil' would escape the output folder"
    ):
        exporter(forecast, out, products=["../evil"])
    assert not list(tmp_path.rglob("*evil*"))


def test_a_link_out_of_the_output_folder_is_rejected(forecast, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / f"{STAMP}_lead030min_rate_mean.png").symlink_to(elsewhere / "target.png")
    with pytest.raises(ExportError, match=r"output name '.*rate_mean\.png' would escape"):
        export_png(forecast, out, lead_times=[30], products=["rate_mean"])
    assert not list(elsewhere.iterdir())


def test_unknown_product_and_lead_time(forecast, tmp_path):
    with pytest.raises(
        ExportError,
        match=r"unknown product 'rate_q99'; this forecast has: prob_gt_0p2mmh, .*rate_mean",
    ):
        export_png(forecast, tmp_path, products=["rate_q99"])
    with pytest.raises(
        ExportError, match=r"lead times \[45\] are not in the forecast; it has 30, 60, 90 minutes"
    ):
        export_cog(forecast, tmp_path, lead_times=[45])
    assert not list(tmp_path.iterdir())


def test_not_a_forecast(forecast, tmp_path):
    with pytest.raises(
        ExportError, match=r"is not a forecast dataset: it has no forecast_reference_time"
    ):
        export_png(forecast.drop_vars("forecast_reference_time"), tmp_path)
    with pytest.raises(ExportError, match="holds no forecast products"):
        export_png(forecast.drop_vars(list(forecast.data_vars)), tmp_path)
    with pytest.raises(ExportError, match=r"forecast .*nowhere\.zarr does not exist"):
        open_forecast(tmp_path / "nowhere.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ExportError, match=r"cannot read forecast .*empty\.zarr"):
        open_forecast(tmp_path / "empty.zarr")


def test_a_failed_write_leaves_nothing_behind(forecast, tmp_path):
    # An attribute netCDF cannot store makes the writer fail half way through the file.
    broken = forecast.copy()
    broken.attrs["bad"] = {"not": "storable"}
    with pytest.raises(TypeError):
        export_netcdf(broken, tmp_path)
    assert list(tmp_path.iterdir()) == []
    # And an existing product survives a failed rewrite untouched.
    path = tmp_path / "product.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), _atomic(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["product.png"]


# ----------------------------------------------------------------------------- CLI


def test_cli_export(forecast, tmp_path):
    store = tmp_path / "forecast.zarr"
    forecast.to_zarr(store, consolidated=False)
    out = tmp_path / "exports"
    result = CliRunner().invoke(
        app,
        [
            "export", "--forecast", str(store), "--out", str(out),
            "--formats", "NetCDF,COG,png,gif", "--lead-times", "30,90", "--products", "rate_mean",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cog: 2 file(s)" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{STAMP}_forecast.nc", f"{STAMP}_rate_mean.gif"]
        + [
            f"{STAMP}_lead{lead:03d}min_rate_mean.{ext}"
            for lead in (30, 90)
            for ext in ("tif", "png")
        ]
    )
    with Image.open(out / f"{STAMP}_rate_mean.gif") as gif:
        assert gif.n_frames == 2
    with xr.open_dataset(out / f"{STAMP}_forecast.nc") as back:
        assert list(back.data_vars) == [MEAN]
        xr.testing.assert_allclose(back[MEAN], forecast[MEAN].sel(lead_time=[30, 90]))


def test_cli_errors(forecast, tmp_path):
    store = tmp_path / "forecast.zarr"
    forecast.to_zarr(store, consolidated=False)
    runner = CliRunner()
    base = ["export", "--forecast", str(store), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, base + ["--formats", "png,jpeg"])
    assert result.exit_code == 1
    assert "unknown export format 'jpeg'; valid formats: netcdf, cog, png, gif" in result.output
    result = runner.invoke(app, base + ["--lead-times", "30,soon"])
    assert result.exit_code == 2
    assert "lead times must be whole minutes" in result.output
    result = runner.invoke(
        app, ["export", "--forecast", str(tmp_path / "missing.zarr"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "missing.zarr does not exist" in result.output
    assert not (tmp_path / "out").exists()
