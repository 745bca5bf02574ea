"""The ``metnet`` command: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from metnet.config import ConfigError, load_config

app = typer.Typer(help="MetNet precipitation nowcasting.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect and check configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("validate")
def config_validate(file: Path = typer.Argument(..., help="YAML config file.")) -> None:
    """Print the resolved config, or every error in FILE and exit with code 1."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(config.to_yaml().rstrip())


@app.command("info")
def info(
    preset_name: str | None = typer.Option(
        None, "--preset", help="Preset to describe: paper, small or tiny (default: paper)."
    ),
    config_file: Path | None = typer.Option(None, "--config", help="YAML config file."),
) -> None:
    """Print the resolved config, parameters per block and FLOPs per lead time.

    The model is built on the meta device, so even the paper model allocates no weights.
    """
    from metnet.config import preset
    from metnet.nn.summary import format_summary, summarize

    if preset_name is not None and config_file is not None:
        typer.echo("error: give either --preset or --config, not both", err=True)
        raise typer.Exit(code=1)
    try:
        config = load_config(config_file) if config_file else preset(preset_name or "paper")
    except ValueError as exc:  # ConfigError or an unknown preset name
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(config.to_yaml().rstrip())
    typer.echo("")
    typer.echo(format_summary(config, summarize(config)))


def _comma_list(text: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``None`` stays ``None`` (meaning "all")."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@app.command("export")
def export(
    forecast: Path = typer.Option(..., "--forecast", help="Forecast dataset (zarr or netCDF)."),
    out: Path = typer.Option(..., "--out", help="Output folder (created if missing)."),
    formats: str = typer.Option(
        "netcdf,cog,png,gif", "--formats", help="Comma-separated: netcdf, cog, png, gif."
    ),
    lead_times: str | None = typer.Option(
        None, "--lead-times", help="Comma-separated lead times in minutes (default: all)."
    ),
    products: str | None = typer.Option(
        None,
        "--products",
        help="Comma-separated products, e.g. prob_gt_1mmh,rate_mean (default: all).",
    ),
) -> None:
    """Export a forecast as CF netCDF, Cloud-Optimized GeoTIFFs, PNG maps and GIFs."""
    from metnet.export import export_forecast, open_forecast

    try:
        leads = None if lead_times is None else [int(v) for v in _comma_list(lead_times)]
    except ValueError as exc:
        raise typer.BadParameter(
            f"lead times must be whole minutes: {exc}", param_hint="--lead-times"
        ) from None
    try:
        written = export_forecast(
            open_forecast(forecast),
            out,
            _comma_list(formats),
            lead_times=leads,
            products=_comma_list(products),
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    for fmt, paths in written.items():
        typer.echo(f"{fmt}: {len(paths)} file(s) in {out}")



def _preset_and_file(preset_name: str | None, config_file: Path | None):
    """The config of ``--preset`` with ``--config``'s keys on top (either alone works;
    neither is the paper preset). A file naming another preset than ``--preset`` is an
    error."""
    import yaml

    from metnet.config import config_from_dict, preset

    if config_file is None:
        return preset(preset_name or "paper")
    config = load_config(config_file)  # reports unreadable files and bad keys, naming the file
    if preset_name is None:
        return config
    data = yaml.safe_load(config_file.read_text()) or {}
    named = data.get("preset")
    if named is not None and str(named).lower() != preset_name.lower():
        raise ConfigError(
            [f"preset: the file names {named!r} but --preset is {preset_name!r}"], str(config_file)
        )
    return config_from_dict({**data, "preset": preset_name}, source=str(config_file))


@app.command("train")
def train_command(
    archive: str = typer.Option(..., "--archive", help="Archive zarr store (path or URL)."),
    preset_name: str | None = typer.Option(
        None, "--preset", help="paper, small or tiny (default: paper)."
    ),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML config; its keys override --preset."
    ),
    steps: int = typer.Option(..., "--steps", min=1, help="Total steps, earlier runs included."),
    out: Path = typer.Option(..., "--out", help="Folder for checkpoints/ and metrics.csv."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the latest checkpoint in --out."
    ),
    checkpoint_every: int = typer.Option(
        1000, "--checkpoint-every", min=0, help="Steps between checkpoints (0: at the end only)."
    ),
    val_every: int = typer.Option(
        500, "--val-every", min=0, help="Steps between validations (0: at the end only)."
    ),
    val_examples: int = typer.Option(
        64, "--val-examples", min=1, help="Size of the fixed validation set."
    ),
    train_start: str | None = typer.Option(
        None, "--train-start", help="First training time (UTC), e.g. 2019-06-01T00:00."
    ),
    train_end: str | None = typer.Option(None, "--train-end", help="Last training time (UTC)."),
    val_start: str | None = typer.Option(None, "--val-start", help="First validation time."),
    val_end: str | None = typer.Option(None, "--val-end", help="Last validation time (UTC)."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes."),
    device: str | None = typer.Option(
        None, "--device", help="cpu or cuda (default: cuda when available)."
    ),
) -> None:
    """Train MetNet on an archive; under torchrun, one process per GPU (DDP).

    Periods not given: the archive's time range, split 80/20 into training and validation.

    Only rank 0 prints and writes files.
    """
    import logging

    from metnet.train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # e.g. "resumed from ..."
    try:
        config = _preset_and_file(preset_name, config_file)
        result = train(
            config, archive, out, steps, resume=resume, checkpoint_every=checkpoint_every,
            val_every=val_every, val_examples=val_examples, workers=workers, device=device,
            train_period=(train_start, train_end), val_period=(val_start, val_end),
        )  # fmt: skip
    except ValueError as exc:  # config, archive, dataset, checkpoint and training errors
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    if int(os.environ.get("RANK", "0")) == 0:
        val = result.val_losses.get(result.step)
        last = "" if val is None else f", validation loss {val:.4f}"
        typer.echo(f"trained to step {result.step}{last}; checkpoint {result.checkpoint}")


@app.command("ingest")
def ingest_command(
    source: str = typer.Option(..., "--source", help="Source name, e.g. mrms or goes."),
    inputs: list[str] = typer.Option(..., "--input", help="File, folder or URL to search; repeatable."),
    archive: str = typer.Option(..., "--archive", help="Archive zarr store (path or URL)."),
    start: str | None = typer.Option(None, "--start", help="Earliest observation time (UTC), e.g. 2019-06-10T00:00."),
    end: str | None = typer.Option(None, "--end", help="Latest observation time (UTC)."),
    grid_config: Path | None = typer.Option(None, "--grid-config", help="YAML config whose grid a new archive gets."),
    preset_name: str | None = typer.Option(None, "--preset", help="Preset whose grid a new archive gets."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rewrite slots already in the archive."),
    dem: str | None = typer.Option(None, "--dem", help="DEM file for the elevation static field."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Read observation files onto the archive grid and write them into the archive.

    An existing archive keeps its grid (another one is an error); a new one needs --grid-config
    or --preset. Bad files are reported and skipped; the exit code is 1 if any failed.
    """
    import numpy as np

    from metnet.archive import Archive
    from metnet.config import preset
    from metnet.ingest import ingest
    from metnet.sources import get_source

    times = {}
    for flag, text in (("--start", start), ("--end", end)):
        try:
            times[flag] = None if text is None else np.datetime64(text, "ns")
        except ValueError:
            raise typer.BadParameter(f"not a time: {text!r} (e.g. 2019-06-10T00:00)", param_hint=flag) from None
    try:
        if grid_config is not None and preset_name is not None:
            raise ValueError("give either --grid-config or --preset, not both")
        observations, static = get_source(source), get_source("static", dem=dem)
        if grid_config is not None or preset_name is not None:
            grid = load_config(grid_config).grid if grid_config else preset(preset_name).grid
            target = Archive.open_or_create(archive, grid)
        else:
            try:
                target = Archive.open(archive, mode="r+")
            except ValueError as exc:
                raise ValueError(f"{exc}; give --grid-config or --preset to create it") from None
        summary = ingest(
            target, observations, inputs, start=times["--start"], end=times["--end"],
            overwrite=overwrite, static_source=static, progress=progress,
        )  # fmt: skip
    except ValueError as exc:  # unknown source, bad config, archive errors
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(summary.format())
    if not summary.ok:
        raise typer.Exit(code=1)


def _numbers(text: str | None, kind: type, flag: str, count: int | None = None) -> list | None:
    """``"1,2"`` -> ``[kind(1), kind(2)]`` (None stays None); a bad item is a usage error."""
    items = _comma_list(text)
    if items is None:
        return None
    try:
        values = [kind(v) for v in items]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {kind.__name__}s, got {text!r}", param_hint=flag) from None
    if count is not None and len(values) != count:
        raise typer.BadParameter(f"expected {count} comma-separated numbers, got {text!r}", param_hint=flag)
    return values


def _bbox(archive: str, bbox: str | None, bbox_lonlat: str | None) -> list[float] | None:
    """The ``--bbox`` (metres) or ``--bbox-lonlat`` (degrees, projected to the archive's grid)."""
    if bbox is not None and bbox_lonlat is not None:
        raise ValueError("give either --bbox or --bbox-lonlat, not both")
    if bbox_lonlat is None:
        return _numbers(bbox, float, "--bbox", 4)
    from metnet.archive import Archive
    from metnet.forecast import lonlat_bbox

    return list(lonlat_bbox(Archive.open(archive).grid, _numbers(bbox_lonlat, float, "--bbox-lonlat", 4)))


_BBOX_HELP = "Domain x0,y0,x1,y1 in metres of the grid's CRS (default: the whole grid)."
_BBOX_LONLAT_HELP = "Domain lon0,lat0,lon1,lat1 in degrees (instead of --bbox)."


@app.command("forecast")
def forecast_command(
    archive: str = typer.Option(..., "--archive", help="Archive zarr store (path or URL)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model checkpoint file."),
    time: str = typer.Option(..., "--time", help="Forecast time t0 (UTC), e.g. 2019-06-10T00:30."),
    out: Path = typer.Option(..., "--out", help="Output zarr store (local path), e.g. forecast.zarr."),
    bbox: str | None = typer.Option(None, "--bbox", help=_BBOX_HELP),
    bbox_lonlat: str | None = typer.Option(None, "--bbox-lonlat", help=_BBOX_LONLAT_HELP),
    lead_times: str | None = typer.Option(None, "--lead-times", help="Comma-separated minutes (default: all)."),
    thresholds: str | None = typer.Option(None, "--thresholds", help="Comma-separated mm/h (default 0.2,1,2,5,10,25)."),
    quantiles: str | None = typer.Option(None, "--quantiles", help="Comma-separated levels (default 0.5,0.9)."),
    keep_distribution: bool = typer.Option(False, "--keep-distribution", help="Also store the bin probabilities."),
    batch_tiles: int = typer.Option(4, "--batch-tiles", min=1, help="Tiles per model call (bounds memory)."),
    lead_chunk: int = typer.Option(32, "--lead-chunk", min=1, help="Lead times per pass inside the model."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Forecast with missing inputs masked."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out store."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cpu)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Forecast from one time over a domain and write the forecast dataset (zarr).

    The store appears at --out only once complete (it is written under a temporary name).
    """
    from metnet.forecast import forecast
    from metnet.products import DEFAULT_QUANTILES, DEFAULT_THRESHOLDS

    try:
        written = forecast(
            archive, checkpoint, time, out, bbox=_bbox(archive, bbox, bbox_lonlat),
            lead_times=_numbers(lead_times, int, "--lead-times"),
            thresholds=_numbers(thresholds, float, "--thresholds") or DEFAULT_THRESHOLDS,
            quantiles=_numbers(quantiles, float, "--quantiles") or DEFAULT_QUANTILES,
            keep_distribution=keep_distribution, batch_tiles=batch_tiles, lead_chunk=lead_chunk,
            allow_missing=allow_missing, overwrite=overwrite, device=device, progress=progress,
        )  # fmt: skip
    except ValueError as exc:  # forecast, checkpoint, archive and product errors
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"forecast written to {written}")


@app.command("evaluate")
def evaluate_command(
    archive: str = typer.Option(..., "--archive", help="Archive zarr store (path or URL)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model checkpoint file."),
    start: str = typer.Option(..., "--start", help="First forecast time (UTC)."),
    end: str = typer.Option(..., "--end", help="Last forecast time (UTC)."),
    out: Path = typer.Option(..., "--out", help="Output folder: metrics.csv, skill.png, reliability.png."),
    every: int | None = typer.Option(None, "--every", min=1, help="Minutes between forecast times (default: the archive step)."),
    baselines: str = typer.Option("persistence,optical-flow", "--baselines", help="Comma-separated baselines ('' for none)."),
    thresholds: str = typer.Option("0.2,1,2", "--thresholds", help="Comma-separated rate thresholds, mm/h."),
    lead_times: str | None = typer.Option(None, "--lead-times", help="Comma-separated minutes (default: all)."),
    bbox: str | None = typer.Option(None, "--bbox", help=_BBOX_HELP),
    bbox_lonlat: str | None = typer.Option(None, "--bbox-lonlat", help=_BBOX_LONLAT_HELP),
    val_start: str | None = typer.Option(None, "--val-start", help="First validation forecast time (calibrates the F1 probability threshold)."),
    val_end: str | None = typer.Option(None, "--val-end", help="Last validation forecast time."),
    batch_tiles: int = typer.Option(4, "--batch-tiles", min=1, help="Tiles per model call."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cpu)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Verify the model and baselines against the archive over a period; write a table and plots."""
    from metnet.evaluate import evaluate

    try:
        if (val_start is None) != (val_end is None):
            raise ValueError("give both --val-start and --val-end, or neither")
        result = evaluate(
            archive, checkpoint, start, end, out, every_minutes=every,
            baselines=_comma_list(baselines) or [], thresholds=_numbers(thresholds, float, "--thresholds"),
            lead_times=_numbers(lead_times, int, "--lead-times"), bbox=_bbox(archive, bbox, bbox_lonlat),
            val_period=None if val_start is None else (val_start, val_end),
            batch_tiles=batch_tiles, device=device, progress=progress,
        )  # fmt: skip
    except ValueError as exc:  # evaluation, forecast, baseline and checkpoint errors
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"evaluated {len(result.times)} forecast time(s), skipped {len(result.skipped)}; wrote:")
    for path in result.files:
        typer.echo(f"  {path}")


# ----------------------------------------------------------------------------- Prefect
# These commands import prefect (through pipelines/) lazily: metnet/ works without it.


def _prefect_defaults() -> None:
    """Settings for running flows from the command line, unless the user set them: no
    telemetry, and time for a first ephemeral Prefect API to migrate its database on a
    slow machine (Prefect's default, 20 s, is too short on two busy cores). Call before
    importing prefect."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")


@app.command("serve")
def serve_command(
    config_file: Path = typer.Option(..., "--config", help="Serve YAML file (see pipelines/serve_config.py)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Most flow runs executing at once."),
) -> None:
    """Serve the ingest, forecast, backfill, export and train deployments with their
    schedules, against the Prefect API of PREFECT_API_URL, until interrupted."""
    _prefect_defaults()
    from pipelines.deploy import serve
    from pipelines.serve_config import ServeConfigError, load_serve_config

    try:
        load_serve_config(config_file)  # report every error before Prefect starts
    except ServeConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    serve(config_file, limit=limit)


@app.command("backfill")
def backfill_command(
    archive: str = typer.Option(..., "--archive", help="Archive zarr store (path or URL)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint file or training folder."),
    out: Path = typer.Option(..., "--out", help="Outputs folder: forecasts/ and maps/ go here."),
    start: str = typer.Option(..., "--start", help="First forecast time (UTC), e.g. 2019-06-10T00:10."),
    end: str = typer.Option(..., "--end", help="Last forecast time (UTC), inclusive."),
    every: int = typer.Option(10, "--every", min=1, help="Minutes between forecast times."),
    chunk_size: int = typer.Option(24, "--chunk-size", min=1, help="Forecast times submitted at once."),
    max_workers: int = typer.Option(2, "--max-workers", min=1, help="Forecasts running at the same time."),
    task_runner: str = typer.Option("threads", "--task-runner", help="threads or dask."),
    dask_address: str | None = typer.Option(None, "--dask-address", help="Existing dask scheduler (default: a LocalCluster)."),
    formats: str = typer.Option("", "--formats", help="Comma-separated exports per forecast: netcdf, cog, png, gif."),
    products: str | None = typer.Option(None, "--products", help="Comma-separated exported products (default: all)."),
    bbox: str | None = typer.Option(None, "--bbox", help=_BBOX_HELP),
    bbox_lonlat: str | None = typer.Option(None, "--bbox-lonlat", help=_BBOX_LONLAT_HELP),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Forecast with missing inputs masked."),
    batch_tiles: int = typer.Option(4, "--batch-tiles", min=1, help="Tiles per model call."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cpu)."),
) -> None:
    """Forecast every --every minutes from --start to --end as a Prefect flow; resumable:
    running it again does only the times whose outputs are missing."""
    _prefect_defaults()
    from pipelines.backfill import backfill_flow

    try:
        area = _bbox(archive, bbox, bbox_lonlat)
        state = backfill_flow(
            archive, str(checkpoint), str(out), start, end, interval_minutes=every,
            chunk_size=chunk_size, max_workers=max_workers, task_runner=task_runner,
            dask_address=dask_address, formats=_comma_list(formats) or [],
            products=_comma_list(products), bbox=area, allow_missing=allow_missing,
            batch_tiles=batch_tiles, device=device, return_state=True,
        )  # fmt: skip
    except ValueError as exc:  # bad times, box or task runner
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        typer.echo(f"error: {result}", err=True)
        raise typer.Exit(code=1)
    typer.echo(
        f"backfill: {len(result['computed'])} computed, {len(result['already_done'])} already done, "
        f"{len(result['missing_inputs'])} with missing inputs, of {len(result['times'])} times"
    )
    for t, missing in result["missing_inputs"].items():
        typer.echo(f"  {t}: missing {'; '.join(missing)}")


@app.command("demo")
def demo_command(
    root: Path = typer.Option(Path("data"), "--root", help="Folder for archive/, checkpoints/ and outputs/."),
    mrms_dir: Path | None = typer.Option(None, "--mrms-dir", help="Real MRMS PrecipRate GRIB2 files instead of synthetic data."),
    steps: int = typer.Option(100, "--steps", min=1, help="Training steps of the tiny model."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the synthetic weather."),
) -> None:
    """Run the whole system once: ingest, train, forecast, export (through Prefect flows)."""
    import time

    _prefect_defaults()
    from pipelines.demo import demo_flow, format_summary

    began = time.perf_counter()
    state = demo_flow(
        str(root), None if mrms_dir is None else str(mrms_dir), steps, seed, return_state=True
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        typer.echo(f"error: the demo failed: {result}", err=True)
        raise typer.Exit(code=1)
    typer.echo(format_summary(result, time.perf_counter() - began))


if __name__ == "__main__":
    app()
