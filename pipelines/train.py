"""Prefect training flow: scheduled retraining with :func:`metnet.train.train`.

Each run trains a model afresh on what the archive holds now (default periods: the
archive split 80/20 into training and validation, see :func:`metnet.train.resolve_periods`)
into its own folder ``out_dir/<run_name>/`` (default name: the UTC date, so a retry on
the same day resumes the crashed run from its last checkpoint instead of starting over;
the run's periods are fixed in ``<run_name>/periods.json`` when it starts, so data
ingested meanwhile does not change what a resumed run trains on).
When it finishes, its final checkpoint is *published*: copied atomically to
``out_dir/latest.pt``, the file the forecast deployment reads, so forecasts switch to
the new model only once it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from metnet.archive import Archive
from metnet.config import MetNetConfig
from metnet.train import resolve_periods, train
from pipelines.common import resolve_config

#: File name of the published checkpoint in the training folder.
LATEST = "latest.pt"


def publish(checkpoint: Path, out_dir: Path) -> Path:
    """Copy ``checkpoint`` to ``out_dir/latest.pt`` atomically (temporary file, rename)."""
    target = out_dir / LATEST
    tmp = out_dir / f".{LATEST}.partial"
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, target)
    return target


def run_periods(
    archive: str,
    config: MetNetConfig,
    run_dir: Path,
    train_period: Sequence[str] | None = None,
    val_period: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """The run's ``train`` and ``validation`` periods (inclusive ISO bounds): those saved
    in ``run_dir/periods.json`` by an earlier attempt, or else the given ones (a missing
    one is chosen by :func:`metnet.train.resolve_periods`), saved there now.

    Raises ValueError when given periods differ from the saved ones.
    """
    saved = run_dir / "periods.json"
    if saved.exists():
        chosen = json.loads(saved.read_text())
        for key, given in (("train", train_period), ("validation", val_period)):
            if given is not None and [_iso(t) for t in given] != chosen[key]:
                raise ValueError(
                    f"{run_dir} started with {key} period {chosen[key]}, not {list(given)}: "
                    "give another run_name for other periods"
                )
        return chosen
    periods = resolve_periods(
        Archive.open(archive), config, tuple(train_period or (None, None)),
        tuple(val_period or (None, None)),
    )  # fmt: skip
    chosen = {k: [_iso(t) for t in p] for k, p in periods.items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".periods.json.partial"
    tmp.write_text(json.dumps(chosen, indent=1))
    os.replace(tmp, saved)
    return chosen


def _iso(t: Any) -> str:
    return str(np.datetime64(t, "m"))


@task(name="train", task_run_name="train {run_dir}", cache_policy=NO_CACHE)
def train_task(
    archive: str,
    run_dir: str,
    steps: int,
    preset: str | None,
    config_file: str | None,
    checkpoint_every: int,
    val_every: int,
    val_examples: int,
    device: str | None,
    train_period: list[str] | None = None,
    val_period: list[str] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir`` to ``steps`` steps."""
    config = resolve_config(preset, config_file)
    periods = run_periods(archive, config, Path(run_dir), train_period, val_period)
    result = train(
        config, archive, run_dir, steps, resume=True, checkpoint_every=checkpoint_every,
        val_every=val_every, val_examples=val_examples, device=device, progress=False,
        train_period=tuple(periods["train"]), val_period=tuple(periods["validation"]),
    )  # fmt: skip
    val = result.val_losses.get(result.step)
    return {"checkpoint": str(result.checkpoint), "step": result.step, "val_loss": val}


@flow(name="metnet-train", validate_parameters=True)
def train_flow(
    archive: str,
    out_dir: str,
    steps: int = 1000,
    preset: str | None = "small",
    config_file: str | None = None,
    run_name: str | None = None,
    checkpoint_every: int = 500,
    val_every: int = 500,
    val_examples: int = 64,
    device: str | None = None,
    train_period: list[str] | None = None,
    val_period: list[str] | None = None,
    publish_checkpoint: bool = True,
) -> dict[str, Any]:
    """Train ``steps`` steps of the ``preset`` (or ``config_file``) model on ``archive``
    in ``out_dir/<run_name>`` and publish the result as ``out_dir/latest.pt``.

    ``train_period`` / ``val_period``: inclusive ``[start, end]`` (UTC) of the training
    and validation examples' inputs and targets; by default the archive is split 80/20
    (:func:`metnet.train.resolve_periods`). A run keeps the periods it started with.

    Returns ``checkpoint`` (the run's last), ``step``, ``val_loss`` (at the last step,
    None if not validated there) and ``published`` (the latest.pt path, or None).
    """
    logger = get_run_logger()
    if config_file is not None:
        preset = None  # a config file names its own preset
    name = run_name or datetime.now(UTC).strftime("%Y%m%d")
    run_dir = Path(out_dir) / name
    result = train_task(
        archive, str(run_dir), steps, preset, config_file, checkpoint_every, val_every,
        val_examples, device, train_period, val_period,
    )  # fmt: skip
    result["published"] = None
    if publish_checkpoint:
        result["published"] = str(publish(Path(result["checkpoint"]), Path(out_dir)))
    logger.info(
        "trained %s to step %d (validation loss %s); published %s",
        run_dir, result["step"], result["val_loss"], result["published"],
    )  # fmt: skip
    return result
