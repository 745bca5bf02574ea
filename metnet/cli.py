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


if __name__ == "__main__":
    app()
