"""The ``metnet`` command: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

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


if __name__ == "__main__":
    app()
