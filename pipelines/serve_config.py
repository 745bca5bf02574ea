"""The YAML file of ``metnet serve``: which deployments to serve, their schedules and
parameters. Validated on load; unknown keys and bad values raise :class:`ServeConfigError`
naming the file and listing every problem at once (as :mod:`metnet.config` does).

Example (every key but ``archive``, ``outputs`` and ``checkpoint`` has a default)::

    archive: data/archive/metnet.zarr     # the observation archive (path or URL)
    outputs: data/outputs/live           # forecasts/ and maps/ are written here
    checkpoint: data/checkpoints/metnet/latest.pt  # a .pt file or a training folder
    ingest:                              # one deployment per entry: ingest-<name>
      - name: mrms
        source: mrms
        locations: [s3://noaa-mrms-pds/CONUS/PrecipRate_00.00]
        cron: "*/2 * * * *"
        latest_minutes: 30
        preset: small                    # grid of a new archive
    forecast:
      cron: "*/10 * * * *"
      formats: [netcdf, cog, png]
    backfill:                            # deployed without a schedule: run on demand
      interval_minutes: 10
      max_workers: 2
    train:                               # off by default
      enabled: true
      cron: "0 4 * * 0"
      out_dir: data/checkpoints/metnet   # publishes data/checkpoints/metnet/latest.pt
      preset: small
      steps_per_run: 1000
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metnet.config import PRESET_NAMES, read_yaml
from metnet.export import EXPORTER_NAMES
from metnet.sources import SOURCE_NAMES

#: Task runners the backfill flow can use.
TASK_RUNNERS: tuple[str, ...] = ("threads", "dask")


class ServeConfigError(ValueError):
    """An invalid serve configuration; ``errors`` lists one ``"key: rule"`` line each."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(errors)
        where = f" in {source}" if source else ""
        super().__init__(f"invalid serve configuration{where}:\n  " + "\n  ".join(self.errors))


@dataclass(frozen=True)
class IngestSettings:
    """One scheduled ingest deployment (``ingest-<name>``)."""

    locations: tuple[str, ...]
    """Folders or fsspec URLs searched for new files."""
    name: str = ""
    """Deployment suffix; defaults to the source name."""
    source: str = "mrms"
    """Source name (see ``metnet.sources.SOURCE_NAMES``)."""
    enabled: bool = True
    """Serve this deployment."""
    cron: str = "*/2 * * * *"
    """Schedule (cron, UTC)."""
    latest_minutes: int = 30
    """Each run looks for files observed in the last this many minutes."""
    source_options: dict = field(default_factory=dict)
    """Keyword options of the source (e.g. ``{bands: [13]}`` for goes)."""
    preset: str | None = None
    """Preset whose grid a new archive gets."""
    config_file: str | None = None
    """YAML config whose grid a new archive gets."""
    dem: str | None = None
    """DEM file for the elevation static field."""
    retries: int = 3
    """Retries of a file that fails with a transient I/O error."""
    backoff_seconds: float = 2.0
    """First retry delay; doubles with every retry."""


@dataclass(frozen=True)
class ForecastSettings:
    """The scheduled forecast deployment."""

    enabled: bool = True
    """Serve this deployment."""
    cron: str = "*/10 * * * *"
    """Schedule (cron, UTC)."""
    formats: tuple[str, ...] = ("netcdf", "cog", "png")
    """Export formats written after each forecast (empty: none)."""
    lead_times: tuple[int, ...] | None = None
    """Lead times exported, minutes (None: all)."""
    allow_missing: bool = False
    """Forecast with gaps in the inputs instead of failing (masks carry the gaps)."""


@dataclass(frozen=True)
class BackfillSettings:
    """The on-demand backfill deployment (no schedule; its parameters are defaults)."""

    enabled: bool = True
    """Serve this deployment."""
    interval_minutes: int = 10
    """Time between forecast times."""
    chunk_size: int = 24
    """Forecast times submitted at once."""
    max_workers: int = 2
    """Forecasts running at the same time."""
    task_runner: str = "threads"
    """``threads`` or ``dask``."""
    dask_address: str | None = None
    """Existing dask scheduler (``tcp://host:8786``); None starts a LocalCluster."""
    formats: tuple[str, ...] = ()
    """Export formats written for each forecast."""


@dataclass(frozen=True)
class TrainSettings:
    """The scheduled retraining deployment."""

    enabled: bool = False
    """Serve this deployment."""
    cron: str = "0 4 * * 0"
    """Schedule (cron, UTC)."""
    out_dir: str | None = None
    """Training folder: one subfolder per run, the newest model published as ``latest.pt``."""
    preset: str | None = "small"
    """Preset of the model (ignored when ``config_file`` is set)."""
    config_file: str | None = None
    """YAML model config."""
    steps_per_run: int = 1000
    """Optimiser steps added by each run."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``metnet serve`` needs."""

    archive: str
    """The observation archive (path or URL)."""
    outputs: str
    """Folder of the forecasts and maps."""
    checkpoint: str
    """A checkpoint file, or a training folder whose latest checkpoint is used."""
    ingest: tuple[IngestSettings, ...] = ()
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    backfill: BackfillSettings = field(default_factory=BackfillSettings)
    train: TrainSettings = field(default_factory=TrainSettings)


_SECTIONS = {"forecast": ForecastSettings, "backfill": BackfillSettings, "train": TrainSettings}


def _check_type(value: Any, hint: Any, key: str, errors: list[str]) -> Any:
    """``value`` converted to ``hint`` (lists to tuples, ints to floats), or an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key, errors)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: must be a list, got {value!r}")
            return value
        return tuple(_check_type(v, args[0], f"{key}[{i}]", errors) for i, v in enumerate(value))
    if hint is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: must be a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        errors.append(f"{key}: must be of type {hint.__name__}, got {value!r}")
    return value


def _section(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    """``cls`` built from the mapping ``data`` (keys reported as ``prefix.key``), or None
    when a required key is missing; every problem is appended to ``errors``."""
    if not isinstance(data, dict):
        errors.append(f"{prefix}: must be a mapping of keys to values, got {data!r}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            errors.append(f"{name}: unknown key; valid keys: {', '.join(fields)}")
            continue
        kwargs[key] = _check_type(value, hints[key], name, errors)
    required = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    for name in required:
        if name not in kwargs:
            errors.append(f"{prefix + '.' if prefix else ''}{name}: required")
    if any(name not in kwargs for name in required):
        return None
    return cls(**kwargs)


def _check_cron(cron: str, key: str, errors: list[str]) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone="UTC")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors.append(f"{key}: invalid cron expression {cron!r} ({str(exc).splitlines()[-1].strip()})")


def _check_choice(value: str | None, valid: tuple[str, ...], key: str, errors: list[str]) -> None:
    if value is not None and value.lower() not in valid:
        errors.append(f"{key}: unknown {value!r}; valid: {', '.join(valid)}")


def _check_positive(value: float, key: str, errors: list[str]) -> None:
    if value <= 0:
        errors.append(f"{key}: must be positive, got {value}")


def _validate(config: ServeConfig, errors: list[str]) -> None:
    names = set()
    for i, ing in enumerate(config.ingest):
        key = f"ingest[{i}]"
        _check_choice(ing.source, SOURCE_NAMES, f"{key}.source", errors)
        _check_choice(ing.preset, PRESET_NAMES, f"{key}.preset", errors)
        _check_cron(ing.cron, f"{key}.cron", errors)
        _check_positive(ing.latest_minutes, f"{key}.latest_minutes", errors)
        _check_positive(ing.backoff_seconds, f"{key}.backoff_seconds", errors)
        if ing.retries < 0:
            errors.append(f"{key}.retries: must not be negative, got {ing.retries}")
        if not ing.locations:
            errors.append(f"{key}.locations: at least one location is required")
        if ing.preset is not None and ing.config_file is not None:
            errors.append(f"{key}: give either preset or config_file, not both")
        name = ing.name or ing.source
        if name in names:
            errors.append(f"{key}.name: duplicate ingest deployment name {name!r}")
        names.add(name)
    fc, bf, tr = config.forecast, config.backfill, config.train
    _check_cron(fc.cron, "forecast.cron", errors)
    for prefix, formats in (("forecast", fc.formats), ("backfill", bf.formats)):
        for fmt in formats:
            _check_choice(fmt, EXPORTER_NAMES, f"{prefix}.formats", errors)
    for lead in fc.lead_times or ():
        _check_positive(lead, "forecast.lead_times", errors)
    for key in ("interval_minutes", "chunk_size", "max_workers"):
        _check_positive(getattr(bf, key), f"backfill.{key}", errors)
    _check_choice(bf.task_runner, TASK_RUNNERS, "backfill.task_runner", errors)
    _check_cron(tr.cron, "train.cron", errors)
    _check_choice(tr.preset, PRESET_NAMES, "train.preset", errors)
    _check_positive(tr.steps_per_run, "train.steps_per_run", errors)
    if tr.enabled and tr.preset is None and tr.config_file is None:
        errors.append("train: a preset or a config_file is required")
    if tr.enabled and tr.out_dir is None:
        errors.append("train.out_dir: required when train is enabled")


def serve_config_from_dict(data: Any, source: str | None = None) -> ServeConfig:
    """Build and validate a :class:`ServeConfig`; raises :class:`ServeConfigError`."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ServeConfigError([f"top level: must be a mapping, got {type(data).__name__}"], source)
    data = dict(data)
    ingest = data.pop("ingest", []) or []
    if not isinstance(ingest, list):
        errors.append("ingest: must be a list of ingest deployments")
        ingest = []
    sections = {
        name: _section(cls, data.pop(name, None) or {}, name, errors)
        for name, cls in _SECTIONS.items()
    }
    top = _section(ServeConfig, data, "", errors)
    entries = tuple(_section(IngestSettings, e, f"ingest[{i}]", errors) for i, e in enumerate(ingest))
    if errors:
        raise ServeConfigError(errors, source)
    config = dataclasses.replace(top, ingest=entries, **sections)
    _validate(config, errors)
    if errors:
        raise ServeConfigError(errors, source)
    return config


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read and validate a serve YAML file; errors name the file and each bad key."""
    data = read_yaml(path, ServeConfigError)
    return serve_config_from_dict(data, source=str(path))
