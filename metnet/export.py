"""Exports of a forecast dataset: CF netCDF, Cloud-Optimized GeoTIFF, PNG maps, GIF.

Exporters are registered by name (``get_exporter``: ``netcdf``, ``cog``, ``png``,
``gif``) and share one signature::

    exporter(forecast, out_dir, *, lead_times=None, products=None) -> list[Path]

``forecast`` is the dataset of :mod:`metnet.products` (opened from disk with
:func:`open_forecast`); ``lead_times`` (minutes) and ``products`` (names from
:func:`list_products`) select what to export, ``None`` meaning all. A *product* is one
map per lead time:

- ``prob_gt_<t>mmh``: probability that the rate exceeds ``t`` mm/h (``prob_gt_0p2mmh``,
  ``prob_gt_1mmh``, ...; a decimal point is written ``p``);
- ``rate_q<p>``: the ``p``-th percentile of the rate (``rate_q50``, ``rate_q90``), mm/h;
- ``rate_mean``: the expected rate, mm/h.

Output names derive from the forecast time, the lead time and the product only, e.g.
``20190610T0000Z_lead030min_prob_gt_1mmh.tif`` (COG, PNG), ``20190610T0000Z_rate_mean.gif``
(one animation over the lead times) and ``20190610T0000Z_forecast.nc`` (one netCDF with
every selected product; it keeps the bin distribution when the forecast has one and no
``products`` were named). A name that would land outside ``out_dir`` is rejected.

Every file is written under a temporary name in ``out_dir`` and renamed into place, so a
crash never leaves a half-written product under a final name.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from metnet import __version__
from metnet.grid import Grid
from metnet.products import MEAN, PROBABILITY, QUANTILE, grid_of

log = logging.getLogger(__name__)

#: Size of the PNG maps and GIF frames: inches at ``_DPI`` dots per inch (800 x 650 px).
FIGURE_SIZE_IN = (8.0, 6.5)
_DPI = 100
#: Time each GIF frame is shown, milliseconds.
GIF_FRAME_MS = 400
#: Probability classes of the exceedance maps (below the first: blank).
_PROBABILITY_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_MISSING_COLOR = "#c8c8c8"
#: Side of the netCDF chunks in pixels (one lead time, threshold, quantile or bin each).
_NETCDF_TILE = 512
_REQUIRED = ("lead_time", "forecast_reference_time", "x", "y", "crs")


class ExportError(ValueError):
    """A forecast that cannot be exported as asked; the message names the file or key."""


@dataclass(frozen=True)
class Product:
    """One map per lead time: ``forecast[variable].sel(selector)`` ``(lead_time, y, x)``."""

    name: str
    """File-name part, e.g. ``prob_gt_1mmh``."""
    variable: str
    """Variable of the forecast dataset."""
    selector: dict[str, float] = field(default_factory=dict)
    """Coordinate selection giving ``(lead_time, y, x)``, e.g. ``{"threshold": 1.0}``."""
    title: str = ""
    """What the map shows, for plot titles."""

    @property
    def is_probability(self) -> bool:
        """True for exceedance probabilities (0..1), False for rates (mm/h)."""
        return self.variable == PROBABILITY

    def select(self, forecast: xr.Dataset) -> xr.DataArray:
        """The product's ``(lead_time, y, x)`` DataArray (lazy if ``forecast`` is)."""
        return forecast[self.variable].sel(self.selector)


# ----------------------------------------------------------------------------- products


def list_products(forecast: xr.Dataset) -> dict[str, Product]:
    """The products a forecast dataset holds, by name, in dataset order."""
    products: dict[str, Product] = {}
    if PROBABILITY in forecast:
        for t in forecast["threshold"].values:
            name = f"prob_gt_{_number(t)}mmh"
            title = f"Probability of precipitation rate > {t:g} mm/h"
            products[name] = Product(name, PROBABILITY, {"threshold": float(t)}, title)
    if QUANTILE in forecast:
        for q in forecast["quantile"].values:
            name = f"rate_q{_number(q * 100)}"
            title = f"{q * 100:g}% quantile of precipitation rate"
            products[name] = Product(name, QUANTILE, {"quantile": float(q)}, title)
    if MEAN in forecast:
        products["rate_mean"] = Product("rate_mean", MEAN, {}, "Expected precipitation rate")
    return products


def select_products(forecast: xr.Dataset, names: Sequence[str] | None = None) -> list[Product]:
    """The named products (case-insensitive), or all of them for ``None``.

    Raises:
        ExportError: a name that could escape the output folder, or that the forecast
            does not hold (the message lists the valid names).
    """
    available = list_products(forecast)
    if names is None:
        return list(available.values())
    selected = []
    for name in names:
        _check_name(name, "product name")
        key = name.strip().lower()
        if key not in available:
            raise ExportError(
                f"unknown product {name!r}; this forecast has: {', '.join(available)}"
            )
        selected.append(available[key])
    return selected


def select_lead_times(forecast: xr.Dataset, lead_times: Sequence[int] | None) -> np.ndarray:
    """The requested lead times (minutes, int64), all of the forecast's for ``None``.

    Raises:
        ExportError: a lead time the forecast does not have (the message lists them).
    """
    have = forecast["lead_time"].values.astype(np.int64)  # (lead_time,)
    if lead_times is None:
        return have
    wanted = np.asarray(list(lead_times), dtype=np.int64)
    unknown = wanted[~np.isin(wanted, have)]
    if unknown.size or wanted.size == 0:
        raise ExportError(
            f"lead times {unknown.tolist() or '(none given)'} are not in the forecast; "
            f"it has {_summary(have)} minutes"
        )
    return wanted


# ----------------------------------------------------------------------------- opening


def open_forecast(path: str | Path) -> xr.Dataset:
    """Open a forecast dataset lazily: a zarr store (folder) or a netCDF file.

    Raises:
        ExportError: the path does not exist, cannot be read, or is not a forecast.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"forecast {path} does not exist")
    try:
        if path.is_dir():
            ds = xr.open_zarr(path, chunks={}, consolidated=False)
        else:
            ds = xr.open_dataset(path, chunks={})
    except Exception as exc:  # any reader error: the file is not a readable dataset
        raise ExportError(f"cannot read forecast {path}: {exc}") from exc
    _check_forecast(ds, str(path))
    return ds


def _check_forecast(forecast: xr.Dataset, where: str = "the forecast dataset") -> None:
    missing = [name for name in _REQUIRED if name not in forecast.variables]
    if missing:
        raise ExportError(f"{where} is not a forecast dataset: it has no {', '.join(missing)}")
    if not list_products(forecast):
        raise ExportError(
            f"{where} holds no forecast products (expected {PROBABILITY}, {QUANTILE} or {MEAN})"
        )


# ----------------------------------------------------------------------------- exporters


def export_netcdf(
    forecast: xr.Dataset,
    out_dir: str | Path,
    *,
    lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
) -> list[Path]:
    """One CF-1.10 netCDF-4 file with the selected products and lead times (zlib level 4).

    Returns ``[out_dir / "<t0>_forecast.nc"]``.
    """
    out, chosen, leads = _prepare(forecast, out_dir, lead_times, products)
    ds = forecast.sel(lead_time=leads)
    if products is not None:
        ds = _only(ds, chosen)
    ds = ds.assign_attrs(
        history=f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} written by metnet-nowcast "
        f"{__version__} export netcdf"
    )
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if name in ds.data_vars and var.dtype.kind == "f":
            # Chunks of one map tile: a reader of one lead time and area reads little.
            chunks = [min(n, _NETCDF_TILE) if d in ("y", "x") else 1 for d, n in var.sizes.items()]
            encoding[name] = {
                "zlib": True,
                "complevel": 4,
                "chunksizes": tuple(chunks),
                "_FillValue": np.float32(np.nan),
            }
        elif var.dtype.kind == "f" and var.ndim == 2:
            # 2-D latitude/longitude: float32 (1e-5 degrees, about 1 m) and compressed.
            encoding[name] = {"dtype": "float32", "zlib": True, "_FillValue": None}
        elif var.dtype.kind == "f":
            encoding[name] = {"_FillValue": None}  # coordinates have no missing values
    # int32 minutes: CF before 1.9 has no int64, and minutes since 1970 fit until 6053.
    encoding["time"] = {
        "units": "minutes since 1970-01-01 00:00:00",
        "calendar": "standard",
        "dtype": "int32",
    }
    encoding["forecast_reference_time"] = dict(encoding["time"])
    path = _output_path(out, f"{_stamp(ds)}_forecast.nc")
    with _atomic(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
    log.info("wrote %s", path)
    return [path]


def export_cog(
    forecast: xr.Dataset,
    out_dir: str | Path,
    *,
    lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
) -> list[Path]:
    """One Cloud-Optimized GeoTIFF (float32, DEFLATE, NaN nodata) per lead time and product.

    The raster carries the grid's CRS and geotransform; its tags hold the forecast
    reference time, lead time, valid time, product and units.
    """
    import rasterio

    out, chosen, leads = _prepare(forecast, out_dir, lead_times, products)
    grid = grid_of(forecast)
    written = []
    for product in chosen:
        data = product.select(forecast)
        for lead in leads:
            values = np.asarray(data.sel(lead_time=lead), dtype=np.float32)  # (y, x)
            raster = _raster(values, grid, forecast, product, int(lead))
            path = _output_path(out, _file_name(forecast, product, int(lead), "tif"))
            # No .aux.xml side files: everything the raster needs is inside it.
            with _atomic(path) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
                raster.rio.to_raster(tmp, driver="COG", compress="DEFLATE", predictor=3)
            written.append(path)
            log.info("wrote %s", path)
    return written


def export_png(
    forecast: xr.Dataset,
    out_dir: str | Path,
    *,
    lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
) -> list[Path]:
    """One PNG map (800 x 650 px) per lead time and product, with legend and title.

    Rates use the NWS precipitation colour scale in mm/h; probabilities a sequential
    scale in percent. NaN (no forecast) is grey.
    """
    out, chosen, leads = _prepare(forecast, out_dir, lead_times, products)
    grid = grid_of(forecast)
    written = []
    for product in chosen:
        frames = _map_frames(product.select(forecast), grid, forecast, product, leads)
        for lead, png in frames:
            path = _output_path(out, _file_name(forecast, product, lead, "png"))
            with _atomic(path) as tmp:
                tmp.write_bytes(png)
            written.append(path)
            log.info("wrote %s", path)
    return written


def export_gif(
    forecast: xr.Dataset,
    out_dir: str | Path,
    *,
    lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
) -> list[Path]:
    """One animated GIF per product, a frame per lead time (the PNG map), looping."""
    from PIL import Image

    out, chosen, leads = _prepare(forecast, out_dir, lead_times, products)
    grid = grid_of(forecast)
    written = []
    for product in chosen:
        frames = [
            Image.open(io.BytesIO(png))
            .convert("RGB")
            .quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            for _, png in _map_frames(product.select(forecast), grid, forecast, product, leads)
        ]
        path = _output_path(out, f"{_stamp(forecast)}_{product.name}.gif")
        with _atomic(path) as tmp:
            frames[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=frames[1:],
                duration=GIF_FRAME_MS,
                loop=0,
                optimize=False,
            )
        written.append(path)
        log.info("wrote %s (%d frames)", path, len(frames))
    return written


Exporter = Callable[..., list[Path]]

_EXPORTERS: dict[str, Exporter] = {
    "netcdf": export_netcdf,
    "cog": export_cog,
    "png": export_png,
    "gif": export_gif,
}
EXPORTER_NAMES: tuple[str, ...] = tuple(_EXPORTERS)


def get_exporter(name: str) -> Exporter:
    """The exporter registered under ``name`` (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    key = name.strip().lower()
    if key not in _EXPORTERS:
        raise ValueError(
            f"unknown export format {name!r}; valid formats: {', '.join(EXPORTER_NAMES)}"
        )
    return _EXPORTERS[key]


def export_forecast(
    forecast: xr.Dataset,
    out_dir: str | Path,
    formats: Sequence[str] = EXPORTER_NAMES,
    *,
    lead_times: Sequence[int] | None = None,
    products: Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """Run the named exporters (all checked before any writes); files written per format."""
    exporters = {name.strip().lower(): get_exporter(name) for name in formats}
    _prepare(forecast, out_dir, lead_times, products)  # fail on bad selections up front
    return {
        name: exporter(forecast, out_dir, lead_times=lead_times, products=products)
        for name, exporter in exporters.items()
    }


# ----------------------------------------------------------------------------- paths


def _prepare(
    forecast: xr.Dataset,
    out_dir: str | Path,
    lead_times: Sequence[int] | None,
    products: Sequence[str] | None,
) -> tuple[Path, list[Product], np.ndarray]:
    """Check the forecast and the selections; create ``out_dir``."""
    _check_forecast(forecast)
    chosen = select_products(forecast, products)
    leads = select_lead_times(forecast, lead_times)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, chosen, leads


def _check_name(name: str, what: str) -> None:
    """Reject names with path separators or ``..``: they could leave the output folder."""
    if not name or "/" in name or "\\" in name or ".." in name or "\0" in name:
        raise ExportError(
            f"{what} {name!r} would escape the output folder: names may not be empty or "
            f"contain '/', '\\', '..' or NUL"
        )


def _output_path(out_dir: Path, name: str) -> Path:
    """``out_dir / name``, checked to stay inside ``out_dir`` (links resolved)."""
    _check_name(name, "output name")
    path = out_dir / name
    root = out_dir.resolve()
    if path.resolve().parent != root:
        raise ExportError(f"output name {name!r} would escape the output folder {root}")
    return path


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success and
    delete it on failure, so ``path`` is either the old file or the complete new one."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _stamp(forecast: xr.Dataset) -> str:
    """The forecast reference time as ``YYYYmmddTHHMMZ``."""
    t0 = np.datetime64(forecast["forecast_reference_time"].values, "m")
    return t0.astype(datetime).strftime("%Y%m%dT%H%MZ")


def _file_name(forecast: xr.Dataset, product: Product, lead: int, ext: str) -> str:
    return f"{_stamp(forecast)}_lead{lead:03d}min_{product.name}.{ext}"


def _number(value: float) -> str:
    """A number for a file name: ``0.2 -> "0p2"``, ``1.0 -> "1"``, ``99.9 -> "99p9"``."""
    return f"{float(value):.6g}".replace(".", "p")


def _summary(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:6])
    return f"{shown}, ..., {values[-1]}" if values.size > 6 else shown


def _only(ds: xr.Dataset, products: list[Product]) -> xr.Dataset:
    """``ds`` reduced to the variables, thresholds and quantiles of ``products``."""
    keep: dict[str, list[dict[str, float]]] = {}
    for product in products:
        keep.setdefault(product.variable, []).append(product.selector)
    ds = ds.drop_vars([v for v in ds.data_vars if v not in keep])
    for dim in ("threshold", "quantile"):
        values = [s[dim] for sels in keep.values() for s in sels if dim in s]
        ds = ds.sel({dim: values}) if values else ds.drop_vars(dim, errors="ignore")
    return ds


# ----------------------------------------------------------------------------- rasters


def _raster(
    values: np.ndarray, grid: Grid, forecast: xr.Dataset, product: Product, lead: int
) -> xr.DataArray:
    """A ``(y, x)`` float32 DataArray with CRS, transform, NaN nodata and tags for GDAL."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    from affine import Affine

    t0 = np.datetime64(forecast["forecast_reference_time"].values, "s")
    units = forecast[product.variable].attrs.get("units", "")
    raster = xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": grid.y, "x": grid.x},
        name=product.name,
        attrs={
            "product": product.name,
            "long_name": product.title,
            "units": units,
            "forecast_reference_time": f"{t0}Z",
            "lead_time_minutes": str(lead),
            "valid_time": f"{t0 + np.timedelta64(lead, 'm')}Z",
        },
    )
    raster = raster.rio.write_crs(grid.crs.to_wkt())
    raster = raster.rio.write_transform(Affine.from_gdal(*grid.transform))
    return raster.rio.write_nodata(np.nan, encoded=False)


# ----------------------------------------------------------------------------- maps


@lru_cache(maxsize=1)
def rate_color_scale() -> tuple[tuple[float, ...], tuple[str, ...]]:
    """The NWS precipitation colour scale: class lower bounds in mm/h and hex colours.

    The 15 colours are those of the NWS precipitation maps; the lower bounds (0.2 to
    100 mm/h, the last class open-ended) are ours, spaced for rain rates. Read from
    ``metnet/assets/nws_precip_rate.csv``.
    """
    text = resources.files("metnet").joinpath("assets/nws_precip_rate.csv").read_text()
    rows = [line.split(",") for line in text.split()[1:]]  # skip the header
    return tuple(float(r[0]) for r in rows), tuple(r[1] for r in rows)


def _style(product: Product) -> dict[str, Any]:
    """Colormap, norm, colourbar ticks and label of a product's map."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    if product.is_probability:
        levels = _PROBABILITY_LEVELS
        colors = colormaps["YlGnBu"](np.linspace(0.15, 1.0, len(levels) - 1))
        cmap = ListedColormap(colors)
        ticks, labels = levels, [f"{100 * v:g}" for v in levels]
        label, extend = "probability (%)", "neither"
    else:
        levels, colors = rate_color_scale()
        # The last colour is the open class above the last bound: drawn as "over".
        cmap = ListedColormap(colors[:-1]).with_extremes(over=colors[-1])
        ticks, labels = levels, [f"{v:g}" for v in levels]
        label, extend = "precipitation rate (mm/h)", "max"
    cmap = cmap.with_extremes(under="white", bad=_MISSING_COLOR)
    norm = BoundaryNorm(levels, cmap.N)
    return {
        "cmap": cmap,
        "norm": norm,
        "ticks": ticks,
        "labels": labels,
        "label": label,
        "extend": extend,
    }


def _map_frames(
    data: xr.DataArray, grid: Grid, forecast: xr.Dataset, product: Product, leads: np.ndarray
) -> Iterator[tuple[int, bytes]]:
    """``(lead, PNG bytes)`` of the map of ``data`` (``(lead_time, y, x)``) at each lead.

    One figure serves every lead time: the layout is computed on the first frame, then
    only the image and the title change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    style = _style(product)
    x_min, y_min, x_max, y_max = (v / 1000.0 for v in grid.bounds)  # km
    t0 = np.datetime64(forecast["forecast_reference_time"].values, "m")

    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg backend without pyplot's global state
    ax = fig.add_subplot()
    image = ax.imshow(
        np.full(grid.shape, np.nan, dtype=np.float32),  # (y, x), filled per lead time
        extent=(x_min, x_max, y_min, y_max),
        origin="upper",  # row 0 is the northernmost row
        cmap=style["cmap"],
        norm=style["norm"],
        interpolation="nearest",
    )
    _graticule(ax, grid)
    bar = fig.colorbar(image, ax=ax, extend=style["extend"], ticks=style["ticks"], shrink=0.9)
    bar.ax.set_yticklabels(style["labels"])
    bar.set_label(style["label"])
    title = fig.suptitle("", fontsize=11)
    ax.set_xlabel(f"easting (km, {grid.crs.name}); grey: no forecast")
    ax.set_ylabel("northing (km)")
    for lead in leads:
        image.set_data(np.asarray(data.sel(lead_time=lead), dtype=np.float32))  # (y, x)
        valid = t0 + np.timedelta64(int(lead), "m")
        title.set_text(
            f"{product.title}\nforecast {t0.astype(datetime):%Y-%m-%d %H:%M} UTC, "
            f"lead time +{int(lead)} min, valid {valid.astype(datetime):%Y-%m-%d %H:%M} UTC"
        )
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=_DPI)
        fig.set_layout_engine("none")  # keep the first frame's layout for the others
        yield int(lead), buffer.getvalue()


def _graticule(ax: Any, grid: Grid) -> None:
    """Thin labelled latitude/longitude lines, for orientation without a map library."""
    lat, lon = grid.lat_lon()  # (ny, nx) degrees each
    stride = max(1, max(grid.shape) // 400)  # contouring needs no more than ~400 px a side
    lat, lon = lat[::stride, ::stride], lon[::stride, ::stride]
    x = grid.x[::stride] / 1000.0  # km
    y = grid.y[::stride] / 1000.0
    for field_deg, east_north in ((lat, "NS"), (lon, "EW")):
        span = float(field_deg.max() - field_deg.min())
        step = next((s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10) if span / s <= 6), 20)
        levels = np.arange(np.floor(field_deg.min() / step), np.ceil(field_deg.max() / step) + 1)
        lines = ax.contour(
            x, y, field_deg, levels=levels * step, colors="#505050", linewidths=0.5,
            linestyles="dotted",
        )  # fmt: skip
        labels = ax.clabel(
            lines, fontsize=7, fmt=lambda v, h=east_north: f"{abs(v):g}°{h[int(v < 0)]}"
        )
        for label in labels:  # legible on dark colours too
            label.set_bbox({"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.5})
