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
    neither is the paper preset). A file naming another preset than ``--preset`` is an error."""
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
        raise ConfigError([f"preset: the file names {named!r} but --preset is {preset_name!r}"], str(config_file))
    return config_from_dict({**data, "preset": preset_name}, source=str(config_file))


@app.command("train")
def train_command(
    archive: str = typer.Option(..., "--archive", help="Archive zarr store (path or URL)."),
    preset_name: str | None = typer.Option(None, "--preset", help="paper, small or tiny (default: paper)."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML config; its keys override --preset."),
    steps: int = typer.Option(..., "--steps", min=1, help="Total optimiser steps, earlier runs included."),
    out: Path = typer.Option(..., "--out", help="Folder for checkpoints/ and metrics.csv."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every", min=0, help="Steps between checkpoints (0: end only)."),
    val_every: int = typer.Option(500, "--val-every", min=0, help="Steps between validations (0: end only)."),
    val_examples: int = typer.Option(64, "--val-examples", min=1, help="Size of the fixed validation set."),
    train_start: str | None = typer.Option(None, "--train-start", help="First training time (UTC), e.g. 2019-06-01T00:00."),
    train_end: str | None = typer.Option(None, "--train-end", help="Last training time (UTC)."),
    val_start: str | None = typer.Option(None, "--val-start", help="First validation time (UTC)."),
    val_end: str | None = typer.Option(None, "--val-end", help="Last validation time (UTC)."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Train MetNet on an archive; run under torchrun for several processes (DDP).

    Periods not given default to the archive's time range split 80/20 into training and
    validation. Only rank 0 prints and writes files.
    """
    from metnet.train import train

    try:
        config = _preset_and_file(preset_name, config_file)
        result = train(
            config, archive, out, steps, resume=resume, checkpoint_every=checkpoint_every,
            val_every=val_every, val_examples=val_examples, train_period=(train_start, train_end),
            val_period=(val_start, val_end), workers=workers, device=device,
        )  # fmt: skip
    except ValueError as exc:  # config, archive, dataset, checkpoint and training errors
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    if int(os.environ.get("RANK", "0")) == 0:
        last = f", validation loss {result.val_losses[result.step]:.4f}" if result.step in result.val_losses else ""
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


if __name__ == "__main__":
    app()
