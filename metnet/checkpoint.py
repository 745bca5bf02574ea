"""Checkpoints: one file that alone rebuilds a trained model.

A checkpoint is a ``torch.save`` dict with

- ``format``: ``"metnet-checkpoint"`` and ``format_version``: :data:`FORMAT_VERSION`;
- ``config``: the complete :class:`~metnet.config.MetNetConfig` as ``config.to_dict()``;
- ``normalization``: per input name ``{"mean": float, "std": float}`` (from
  :func:`metnet.dataset.compute_normalization`);
- ``state_dict``: the model weights;
- ``extra``: anything else the caller wants back (optimiser state, step, ...), made of
  tensors and plain Python values only, so it loads with ``weights_only=True``.

Files are written to a temporary name next to the target and renamed into place, so a
crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metnet.config import ConfigError, MetNetConfig, config_from_dict
from metnet.nn import MetNet

FORMAT = "metnet-checkpoint"
#: Version of the file layout; bumped when a key changes meaning.
FORMAT_VERSION = 1
_KEYS = ("format", "format_version", "config", "normalization", "state_dict", "extra")
#: Plain types that ``torch.load(weights_only=True)`` accepts inside ``extra``.
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and what was saved with it."""

    model: MetNet
    config: MetNetConfig
    normalization: dict[str, dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    inner = getattr(model, "module", None)
    if not isinstance(inner, nn.Module):
        inner = getattr(model, "_orig_mod", None)
    return _unwrap(inner) if isinstance(inner, nn.Module) else model


def _check_plain(value: Any, where: str, path: Path) -> None:
    """Raise if ``value`` holds anything ``weights_only`` loading would refuse."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{path}: key {key!r} in {where} must be a str or int")
            _check_plain(item, f"{where}[{key!r}]", path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", path)
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(
            f"{path}: {where} is a {type(value).__name__}; checkpoints hold only tensors, "
            f"numbers, strings, None, lists and dicts"
        )


def _plain_normalization(normalization: dict, path: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, stats in normalization.items():
        if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
            raise CheckpointError(
                f"{path}: normalization[{name!r}] must be a dict with keys 'mean' and 'std', "
                f"got {stats!r}"
            )
        out[str(name)] = {k: float(v) for k, v in stats.items()}
    return out


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: MetNetConfig,
    normalization: dict[str, dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights with ``config``, ``normalization`` and ``extra`` to ``path``.

    ``model`` may be wrapped in DDP or ``torch.compile``. Raises :class:`CheckpointError`
    when ``config`` does not describe ``model`` or ``extra`` holds a non-plain value.
    """
    path = Path(path)
    model = _unwrap(model)
    model_config = getattr(model, "config", None)
    if isinstance(model_config, MetNetConfig) and (
        model_config.task != config.task or model_config.model != config.model
    ):
        raise CheckpointError(
            f"{path}: config.task / config.model differ from the config the model was built with"
        )
    extra = dict(extra or {})
    _check_plain(extra, "extra", path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "normalization": _plain_normalization(normalization, path),
        "state_dict": model.state_dict(),
        "extra": extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip or pickle
        raise CheckpointError(
            f"{path}: cannot read checkpoint (truncated, corrupt or not a MetNet checkpoint): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a MetNet checkpoint (no format {FORMAT!r} marker)")
    missing = [k for k in _KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing key(s) {', '.join(missing)}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload['format_version']} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    return payload


def _check_weights(path: Path, state: dict[str, torch.Tensor], expected: dict[str, Any]) -> None:
    """Raise naming the first missing, unexpected or wrongly shaped parameter."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict is not a dict of tensors")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the checkpoint's config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: weights do not match the checkpoint's config: parameter {name!r} "
                f"has shape {tuple(state[name].shape)} in the file, the config gives "
                f"{tuple(tensor.shape)}"
            )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model saved at ``path`` from the file alone, on ``map_location``.

    Loads with ``torch.load(weights_only=True)``. The model is built on the meta device
    and takes the stored tensors as its parameters (no random init, no extra copy).
    Raises :class:`CheckpointError` naming the file for a missing, truncated or corrupt
    file, a missing key, an invalid config, or weights that do not match the config.
    """
    path = Path(path)
    payload = _read(path, map_location)
    try:
        config = config_from_dict(payload["config"], source=f"{path} (config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    with torch.device("meta"):
        model = MetNet(config)
    state = payload["state_dict"]
    _check_weights(path, state, model.state_dict())
    model.load_state_dict(state, assign=True)
    normalization = _plain_normalization(payload["normalization"], path)
    return Checkpoint(model.eval(), config, normalization, payload["extra"])
