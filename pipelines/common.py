"""Small helpers shared by the flows: time parameters, JSON-lines logs, grid choice.

Flow parameters arrive from the CLI, a deployment or a YAML file as strings, so every
time parameter goes through :func:`parse_time`, which names the parameter in its error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from metnet.config import GridConfig, MetNetConfig, load_config, preset
from metnet.sources import is_url
from metnet.times import to_utc_datetime64


def parse_time(value: Any, name: str) -> np.datetime64 | None:
    """``value`` (ISO string, ``datetime``, ``datetime64`` or None) as UTC ``datetime64[ns]``.

    A timezone-aware ``datetime`` is converted to UTC; naive values are taken as UTC.
    Raises ValueError naming the parameter ``name`` for anything else.
    """
    if value is None:
        return None
    try:
        return to_utc_datetime64(value)
    except ValueError:
        raise ValueError(f"{name}: not a time: {value!r} (e.g. 2019-06-10T00:10)") from None


def utc_now() -> np.datetime64:
    """The current UTC time as ``datetime64[ns]``."""
    return np.datetime64(datetime.now(UTC).replace(tzinfo=None), "ns")


def iso(t: np.datetime64) -> str:
    """``2019-06-10T00:10`` (minutes), for logs, file names' neighbours and messages."""
    return str(np.datetime_as_string(np.datetime64(t, "m"), unit="m"))


def stamp(t: np.datetime64) -> str:
    """``20190610T0010Z``: the forecast-time stamp used in output names (as metnet.export)."""
    return np.datetime64(t, "m").astype(datetime).strftime("%Y%m%dT%H%MZ")


def resolve_config(preset_name: str | None, config_file: str | None) -> MetNetConfig:
    """The config of a YAML file or a preset (exactly one may be given; neither: None
    is not allowed here because a new archive or a training run needs a grid)."""
    if preset_name is not None and config_file is not None:
        raise ValueError("give either preset or config_file, not both")
    if config_file is not None:
        return load_config(config_file)
    if preset_name is None:
        raise ValueError("a preset or a config_file is required")
    return preset(preset_name)


def grid_config_of(preset_name: str | None, config_file: str | None) -> GridConfig | None:
    """The grid a new archive gets, or None when neither is given (open an existing one)."""
    if preset_name is None and config_file is None:
        return None
    return resolve_config(preset_name, config_file).grid


def append_jsonl(path: str, records: Iterable[dict[str, Any]]) -> int:
    """Append one JSON object per line to ``path`` (local file or fsspec URL); returns
    how many were written. Remote files, which cannot be appended to, are rewritten."""
    lines = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
    if not lines:
        return 0
    if is_url(path) and not path.startswith("file://"):
        fs, root = fsspec.core.url_to_fs(path)
        old = fs.cat_file(root).decode() if fs.exists(root) else ""
        fs.pipe_file(root, (old + lines).encode())
    else:
        local = Path(path.removeprefix("file://"))
        local.parent.mkdir(parents=True, exist_ok=True)
        with local.open("a") as f:
            f.write(lines)
    return lines.count("\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; ``[]`` when it does not exist."""
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        return []
    text = fs.cat_file(root).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
