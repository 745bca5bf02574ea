"""Training loop: one process, or several under ``torchrun`` (PyTorch DDP).

:func:`train` fits a :class:`metnet.nn.MetNet` to examples drawn from an archive
(:class:`metnet.dataset.ArchiveSampler`) and writes everything to ``out_dir``::

    out_dir/checkpoints/step_00000100.pt   every ``checkpoint_every`` steps and at the end
    out_dir/metrics.csv                    one row per step (:data:`METRIC_COLUMNS`, time UTC)
    out_dir/tensorboard/                   the same scalars, when tensorboard is installed

Choices made here:

- **Data order** is a pure function of ``(seed, step)``: the global batch of step ``s``
  (0-based) is sampler items ``s*B .. s*B + B - 1`` (``B = config.train.batch_size``), and
  item ``i`` is drawn from ``(seed, i)`` alone. A resumed run therefore sees exactly the
  batches the uninterrupted run would have; the only "sampler state" is the step.
- **Lead times** are drawn per example by the sampler, uniformly among the task's lead
  times whose target is observed for the drawn forecast time
  (``train.lead_time_sampling = "uniform"``, the only option so far). Each example
  trains one lead time; the model is called with ``lead_times`` of shape ``(b, 1)``.
- **Loss**: cross-entropy over the ``num_bins`` bins at every 1 km target pixel, averaged
  over the valid pixels of the whole *global* batch (the count is all-reduced before the
  backward pass, so ranks with more valid pixels weigh more, exactly as in one process).
- **DDP**: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` select it (backend ``nccl`` on CUDA,
  ``gloo`` on CPU). Rank ``r`` of ``W`` takes the contiguous slice ``r*B/W .. (r+1)*B/W - 1``
  of the global batch, so ``W`` processes compute the gradient of one process on the
  whole batch. Only rank 0 writes checkpoints, metrics and the progress bar.
- **Randomness** inside the model (dropout) is reseeded from ``(seed, step, rank)`` at
  every step, for the same reason as the data order. (So with dropout, W processes draw
  other masks than one process; without it they compute the same step.)
- **Validation**: the mean loss over the valid pixels of a fixed set, items
  ``0 .. val_examples - 1`` of a sampler on the validation period (a separate period
  from training, :func:`resolve_periods`), every ``val_every`` steps and after the last.
- **Precision**: ``auto`` is bf16 autocast on CUDA and fp32 on CPU; the loss is always
  computed in fp32.
- **Optimiser**: AdamW, linear warm-up then cosine or constant decay
  (:mod:`metnet.schedule`), clipping of the global gradient norm, optional EMA
  (:mod:`metnet.ema`). With EMA, validation and the checkpoint's model use the averaged
  weights; the raw weights travel in ``extra["raw_model"]`` for resuming.
- **Checkpoints** (:func:`metnet.checkpoint.save_checkpoint`) are written to a temporary
  file in the same folder and renamed, so a kill leaves either the old set of
  checkpoints or the new one, never a truncated file. ``extra`` holds
  ``step``, ``total_steps``, ``optimizer``, ``scheduler``, ``raw_model`` (or None) and
  ``data`` (seed and periods), all loadable with ``weights_only=True``.
- **Normalisation** statistics come from :func:`metnet.dataset.compute_normalization` on
  the training period (or from the checkpoint when resuming) and are saved in every
  checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from metnet.archive import Archive
from metnet.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from metnet.config import MetNetConfig
from metnet.dataset import (
    ArchiveSampler,
    DatasetError,
    Period,
    check_archive,
    compute_normalization,
    split_periods,
)
from metnet.ema import EMA
from metnet.nn import MetNet
from metnet.schedule import make_scheduler
from metnet.times import to_utc_datetime64

try:  # optional: TensorBoard logging when the tensorboard package is installed
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # pragma: no cover - depends on the environment
    SummaryWriter = None

log = logging.getLogger(__name__)

#: Columns of ``metrics.csv``; ``val_loss`` is empty on steps without validation.
METRIC_COLUMNS: tuple[str, ...] = ("step", "lr", "train_loss", "val_loss", "examples_per_s", "time")
#: Sub-folder of ``out_dir`` holding the checkpoints.
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^step_(\d{8})\.pt$")
#: Fraction of the archive's time range held out for validation when no periods are given.
VALIDATION_FRACTION = 0.2


class TrainError(ValueError):
    """Training cannot start or continue: bad archive, periods, output folder or resume."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did."""

    checkpoint: Path
    """The last checkpoint (EMA weights as the model when EMA is on)."""
    step: int
    """Optimiser steps completed in total, earlier runs included."""
    train_losses: tuple[float, ...]
    """Global-batch training loss of each step this call ran, in order."""
    val_losses: dict[int, float]
    """Validation loss by step, for the validations this call ran."""
    metrics_csv: Path
    """The metrics file (:data:`METRIC_COLUMNS`)."""
    normalization: dict[str, dict[str, float]]
    """The statistics the inputs were normalised with."""


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; ``world_size == 1`` without ``torchrun``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainError(f"environment variable {name} must be an integer, got {value!r}") from None


def setup_distributed(device: str | None = None) -> tuple[Distributed, bool]:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; join the process group when
    ``WORLD_SIZE > 1`` (``nccl`` on CUDA, ``gloo`` on CPU).

    ``device``: ``"cpu"``, ``"cuda"`` or None (CUDA when available); with CUDA each process
    uses GPU ``LOCAL_RANK``. Returns the context and whether this call created the process
    group (and so must destroy it).
    """
    world_size, rank, local_rank = (
        _env_int("WORLD_SIZE", 1),
        _env_int("RANK", 0),
        _env_int("LOCAL_RANK", 0),
    )
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda"):
        raise TrainError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise TrainError("device 'cuda' requested but no CUDA device is available")
    torch_device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(torch_device)
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        created = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Distributed(rank, world_size, local_rank, torch_device), created


def _all_reduce_sum(values: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    if ctx.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _broadcast(obj: Any, ctx: Distributed) -> Any:
    """``obj`` of rank 0 on every rank."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- data order


def batch_indices(step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Sampler item indices ``(batch_size // world_size,)`` int64 that rank ``rank`` trains
    on at 0-based ``step``: its contiguous slice of the global batch
    ``step * batch_size .. (step + 1) * batch_size - 1``."""
    if batch_size % world_size:
        raise TrainError(
            f"train.batch_size ({batch_size}) must be divisible by the number of processes "
            f"({world_size})"
        )
    local = batch_size // world_size
    start = step * batch_size + rank * local
    return np.arange(start, start + local, dtype=np.int64)


class _StepBatches(torch.utils.data.Sampler):
    """Batch sampler yielding :func:`batch_indices` for steps ``first .. last - 1``."""

    def __init__(self, first: int, last: int, batch_size: int, ctx: Distributed):
        self.first, self.last, self.batch_size, self.ctx = first, last, batch_size, ctx

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first, self.last):
            yield batch_indices(step, self.batch_size, self.ctx.rank, self.ctx.world_size).tolist()

    def __len__(self) -> int:
        return max(0, self.last - self.first)


def _step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of torch's generator for ``step`` on ``rank`` (dropout and the like)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- loss


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over valid pixels of the cross-entropy, and the number of valid pixels.

    ``logits`` ``(B, num_bins, H, W)``, ``target`` ``(B, H, W)`` int64 bin indices (any
    value where invalid), ``valid`` ``(B, H, W)`` bool. Computed in fp32; the mean loss is
    ``sum / count``.
    """
    per_pixel = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")  # (B, H, W)
    total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    return total, valid.sum().to(per_pixel.dtype)


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _forward_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], precision: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked cross-entropy sum and valid-pixel count of one (local) batch."""
    with _autocast(device, precision):
        logits = model(batch["inputs"], batch["lead_time"][:, None])  # (b, 1, bins, H, W)
    return masked_cross_entropy(logits[:, 0], batch["target"], batch["target_valid"])


# ----------------------------------------------------------------------------- checks


def _dataclass_diff(prefix: str, a: Any, b: Any, a_name: str, b_name: str) -> list[str]:
    """``"prefix.field: a_name X, b_name Y"`` for every field where dataclasses differ."""
    return [
        f"{prefix}.{f.name}: {a_name} {getattr(a, f.name)!r}, {b_name} {getattr(b, f.name)!r}"
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    ]


def check_archive_matches(archive: Archive, config: MetNetConfig, store: str) -> None:
    """Raise :class:`TrainError` naming every grid field that differs between ``archive``
    and ``config.grid``, and every variable or static field the task needs but the
    archive lacks."""
    problems = _dataclass_diff("grid", archive.grid_config, config.grid, "archive", "config")
    try:
        check_archive(archive, config.task)
    except DatasetError as exc:
        problems.append(str(exc))
    if problems:
        raise TrainError(f"archive {store} does not match the config:\n  " + "\n  ".join(problems))


def _parse_time(value: Any, what: str) -> np.datetime64 | None:
    if value is None:
        return None
    try:
        return to_utc_datetime64(value)
    except ValueError:
        raise TrainError(f"{what}: not a time, got {value!r} (use e.g. 2019-06-10T00:00)") from None


def resolve_periods(
    archive: Archive,
    config: MetNetConfig,
    train_period: tuple[Any, Any] = (None, None),
    val_period: tuple[Any, Any] = (None, None),
) -> dict[str, Period]:
    """The inclusive ``"train"`` and ``"validation"`` periods: given bounds as given, the
    others from :func:`metnet.dataset.split_periods` (the last
    :data:`VALIDATION_FRACTION` of the archive for validation, a gap of the largest lead
    time between). Raises :class:`TrainError` when a period is empty or they overlap."""
    names = (
        ("train", "train start (--train-start)", "train end (--train-end)"),
        ("validation", "validation start (--val-start)", "validation end (--val-end)"),
    )
    given = {
        key: (_parse_time(p[0], start), _parse_time(p[1], end))
        for (key, start, end), p in zip(names, (train_period, val_period))
    }
    if any(t is None for p in given.values() for t in p):
        try:
            default = split_periods(archive, config.task, VALIDATION_FRACTION)
        except DatasetError as exc:
            raise TrainError(
                f"cannot choose train and validation periods: {exc}; give them explicitly"
            ) from exc
        given = {
            k: tuple(d if g is None else g for g, d in zip(p, default[k])) for k, p in given.items()
        }
    periods: dict[str, Period] = {k: (p[0], p[1]) for k, p in given.items()}
    for key, (start, end) in periods.items():
        if start > end:
            raise TrainError(f"{key} period starts after it ends: {_iso(start)} > {_iso(end)}")
    (ts, te), (vs, ve) = periods["train"], periods["validation"]
    if ts <= ve and vs <= te:
        raise TrainError(
            f"train period {_iso(ts)} .. {_iso(te)} overlaps "
            f"validation period {_iso(vs)} .. {_iso(ve)}"
        )
    return periods


def _iso(t: np.datetime64) -> str:
    return str(np.datetime64(t, "m"))


def _sampler(archive, config, normalization, period, num_examples, what) -> ArchiveSampler:
    try:
        return ArchiveSampler(
            archive,
            config.task,
            normalization,
            period=period,
            num_examples=num_examples,
            seed=config.train.seed,
        )
    except DatasetError as exc:
        raise TrainError(f"{what} period {_iso(period[0])} .. {_iso(period[1])}: {exc}") from exc


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """Where the checkpoint after ``step`` optimiser steps is written."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``out_dir``, or None (temporary files ignored)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    found = [
        (int(m.group(1)), p)
        for p in folder.glob("step_*.pt")
        if (m := _CHECKPOINT_RE.match(p.name))
    ]
    return max(found)[1] if found else None


def _config_diff(saved: MetNetConfig, given: MetNetConfig) -> list[str]:
    return [
        line
        for name in ("grid", "task", "model", "train")
        for line in _dataclass_diff(
            name, getattr(saved, name), getattr(given, name), "checkpoint", "config"
        )
    ]


# ----------------------------------------------------------------------------- metrics


class _Metrics:
    """``metrics.csv`` (and TensorBoard when available), written by rank 0 only."""

    def __init__(self, out_dir: Path, resume_step: int | None):
        self.path = out_dir / "metrics.csv"
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                # Rows after the checkpoint come from a run killed later; they are redone.
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.path)
        self._tb = (
            SummaryWriter(str(out_dir / "tensorboard")) if SummaryWriter is not None else None
        )

    def write(
        self, step: int, lr: float, train_loss: float, val_loss: float | None, speed: float
    ) -> None:
        row = {
            "step": step,
            "lr": f"{lr:.9g}",
            "train_loss": f"{train_loss:.9g}",
            "val_loss": "" if val_loss is None else f"{val_loss:.9g}",
            "examples_per_s": f"{speed:.4g}",
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Opened per row: a killed run loses at most the row being written.
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRIC_COLUMNS).writerow(row)
        if self._tb is not None:
            self._tb.add_scalar("loss/train", train_loss, step)
            self._tb.add_scalar("lr", lr, step)
            self._tb.add_scalar("examples_per_s", speed, step)
            if val_loss is not None:
                self._tb.add_scalar("loss/validation", val_loss, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _progress(enabled: bool, total: int, completed: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} ex/s"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    task_id = bar.add_task("train", total=total, completed=completed, loss="-", speed="-")
    return bar, task_id


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def _validate(
    model: nn.Module,
    ema: EMA | None,
    val: ArchiveSampler,
    config: MetNetConfig,
    ctx: Distributed,
    workers: int,
) -> float:
    """Mean cross-entropy over the valid pixels of the fixed validation examples (items
    ``0 .. len(val) - 1``, split across ranks), with the EMA weights when enabled."""
    local = np.array_split(np.arange(len(val)), ctx.world_size)[ctx.rank]
    size = max(1, config.train.batch_size // ctx.world_size)
    batches = [
        chunk.tolist()
        for chunk in np.array_split(local, max(1, -(-local.size // size)))
        if chunk.size
    ]
    loader = torch.utils.data.DataLoader(val, batch_sampler=batches, num_workers=workers)
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (loss sum, valid pixels)
    was_training = model.training
    model.eval()
    with ema.applied(model) if ema else nullcontext():
        for batch in loader:
            total, count = _forward_loss(
                model, _to(batch, ctx.device), config.train.precision, ctx.device
            )
            totals += torch.stack([total.double(), count.double()])
    model.train(was_training)
    totals = _all_reduce_sum(totals, ctx)
    return float(totals[0] / totals[1].clamp(min=1))


# ----------------------------------------------------------------------------- state


class _TrainState:
    """Model, AdamW, learning-rate schedule and EMA of one run: what a step changes and
    what a checkpoint saves and restores."""

    def __init__(self, config: MetNetConfig, total_steps: int, device: torch.device):
        tc = config.train
        self.config, self.total_steps = config, total_steps
        self.model = MetNet(config).to(device)  # initial weights from the seed: equal on all ranks
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, tc, total_steps)
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.step = 0

    @property
    def lr(self) -> float:
        """Learning rate of the next optimiser step."""
        return self.optimizer.param_groups[0]["lr"]

    def update(self, loss: torch.Tensor) -> None:
        """Backward ``loss``, clip the global gradient norm, step AdamW, schedule and EMA."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1

    def save(self, path: Path, normalization: dict, data: dict[str, Any]) -> None:
        """Checkpoint: the EMA weights as the model when EMA is on (raw weights in
        ``extra["raw_model"]``). ``save_checkpoint`` writes a temporary file and renames
        it, so a kill mid-write leaves no broken file under ``path``."""
        model, ema = self.model, self.ema
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()} if ema else None
        extra = {
            "step": self.step,
            "total_steps": self.total_steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "raw_model": raw,
            "data": data,
        }
        with ema.applied(model) if ema else nullcontext():
            save_checkpoint(path, model, self.config, normalization, extra)

    def restore(self, checkpoint: Checkpoint, path: Path) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        extra = checkpoint.extra
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint.model.state_dict())
            self.model.load_state_dict(extra["raw_model"])
        else:
            self.model.load_state_dict(checkpoint.model.state_dict())
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        self.step = int(extra["step"])
        if int(extra["total_steps"]) != self.total_steps:
            log.warning(
                "%s was saved by a %d-step run, continued as a %d-step run: "
                "the learning-rate schedule changes",
                path, extra["total_steps"], self.total_steps,
            )  # fmt: skip
        log.info("resumed from %s at step %d", path, self.step)


def _resume_checkpoint(
    out_dir: Path, resume: bool, config: MetNetConfig, data: dict[str, Any], ctx: Distributed
) -> tuple[Checkpoint, Path] | None:
    """The checkpoint to continue from (None: start afresh), checked against this run."""
    previous = latest_checkpoint(out_dir)
    if previous is None:
        if resume:
            log.info("no checkpoint in %s: starting afresh", out_dir)
        return None
    if not resume:
        raise TrainError(
            f"{out_dir} already holds checkpoints (latest {previous.name}); "
            "pass --resume to continue that run or choose another output folder"
        )
    checkpoint = load_checkpoint(previous, map_location=ctx.device)
    diff = _config_diff(checkpoint.config, config)
    if diff:
        raise TrainError(
            f"cannot resume from {previous}: the config differs:\n  " + "\n  ".join(diff)
        )
    saved = checkpoint.extra["data"]["periods"]
    if saved != data["periods"]:
        raise TrainError(
            f"cannot resume from {previous}: it trained on periods {saved}, this run would "
            f"use {data['periods']}; give its periods with --train-start/--train-end/"
            "--val-start/--val-end"
        )
    return checkpoint, previous


def _shared_normalization(
    archive: Archive, config: MetNetConfig, period: Period, max_times: int, ctx: Distributed
) -> dict[str, dict[str, float]]:
    """Statistics of the training period, computed by rank 0 and sent to every rank
    (with the error, if any, so no rank waits forever)."""
    outcome: tuple[str, Any] = ("", None)
    if ctx.is_main:
        try:
            stats = compute_normalization(
                archive, config.task, max_times=max_times, seed=config.train.seed, period=period
            )
            outcome = ("ok", stats)
        except DatasetError as exc:
            outcome = ("error", f"training period: {exc}")
    status, value = _broadcast(outcome, ctx)
    if status == "error":
        raise TrainError(value)
    return value


# ----------------------------------------------------------------------------- training


def train(
    config: MetNetConfig,
    archive_path: str | Path,
    out_dir: str | Path,
    steps: int,
    *,
    resume: bool = False,
    checkpoint_every: int = 1000,
    val_every: int = 500,
    val_examples: int = 64,
    train_period: tuple[Any, Any] = (None, None),
    val_period: tuple[Any, Any] = (None, None),
    workers: int = 0,
    device: str | None = None,
    normalization_times: int = 64,
    storage_options: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``steps`` optimiser steps in total (earlier runs included when resuming).

    ``archive_path``: the zarr store (:class:`metnet.archive.Archive`). ``out_dir``: where
    checkpoints and metrics go; it must hold no checkpoint unless ``resume`` is set.
    ``resume``: continue from the latest checkpoint in ``out_dir`` (start afresh when there
    is none); the config and periods must equal the checkpoint's. ``checkpoint_every`` /
    ``val_every``: period in steps (0: only after the last step). ``val_examples``: size
    of the fixed validation set. ``train_period`` / ``val_period``: inclusive
    ``(start, end)`` times (str or datetime64); None bounds come from
    :func:`resolve_periods`. ``workers``: DataLoader worker processes. ``device``:
    ``"cpu"``, ``"cuda"`` or None (CUDA when available). ``normalization_times``: times
    sampled per variable for the statistics. Under ``torchrun`` every rank calls this
    with the same arguments. Raises :class:`TrainError` (or the archive's, dataset's or
    checkpoint's ``ValueError`` subclass) for user errors.
    """
    if steps < 1:
        raise TrainError(f"steps must be positive, got {steps}")
    for name, value in (("checkpoint_every", checkpoint_every), ("val_every", val_every)):
        if value < 0:
            raise TrainError(f"{name} must not be negative, got {value}")
    if workers < 0:
        raise TrainError(f"workers must not be negative, got {workers}")
    if val_examples < 1:
        raise TrainError(f"val_examples must be positive, got {val_examples}")
    out_dir = Path(out_dir)
    tc = config.train
    ctx, owns_group = setup_distributed(device)
    try:
        batch_indices(0, tc.batch_size, ctx.rank, ctx.world_size)  # an indivisible batch fails now
        archive = Archive.open(str(archive_path), storage_options=storage_options)
        check_archive_matches(archive, config, str(archive_path))
        periods = resolve_periods(archive, config, train_period, val_period)
        data = {
            "seed": tc.seed,
            "periods": {k: [_iso(p[0]), _iso(p[1])] for k, p in periods.items()},
            "val_examples": val_examples,
        }
        found = _resume_checkpoint(out_dir, resume, config, data, ctx)
        if found is not None:
            normalization = found[0].normalization
        else:
            normalization = _shared_normalization(
                archive, config, periods["train"], normalization_times, ctx
            )
        train_set = _sampler(
            archive, config, normalization, periods["train"], steps * tc.batch_size, "training"
        )
        val_set = _sampler(
            archive, config, normalization, periods["validation"], val_examples, "validation"
        )
        state = _TrainState(config, steps, ctx.device)
        if found is not None:
            state.restore(*found)
        start = state.step

        def save() -> Path:
            path = checkpoint_path(out_dir, state.step)
            if ctx.is_main:
                state.save(path, normalization, data)
            return path

        def validate() -> float:
            return _validate(state.model, state.ema, val_set, config, ctx, workers)

        losses, val_losses, last = _run_steps(
            state, train_set, steps, ctx, out_dir, save, validate,
            checkpoint_every=checkpoint_every, val_every=val_every, workers=workers,
            progress=progress,
        )  # fmt: skip
        if ctx.world_size > 1:
            dist.barrier()  # the final checkpoint exists before any rank returns
    finally:
        if owns_group:
            dist.destroy_process_group()
    return TrainResult(
        checkpoint=last if last is not None else found[1],  # None: resumed at the last step
        step=max(start, steps),
        train_losses=tuple(losses),
        val_losses=val_losses,
        metrics_csv=out_dir / "metrics.csv",
        normalization=normalization,
    )


def _run_steps(
    state: _TrainState,
    train_set: ArchiveSampler,
    steps: int,
    ctx: Distributed,
    out_dir: Path,
    save,
    validate,
    *,
    checkpoint_every: int,
    val_every: int,
    workers: int,
    progress: bool,
) -> tuple[list[float], dict[int, float], Path | None]:
    """Steps ``state.step + 1 .. steps``: train losses, validation losses by step and the
    last checkpoint written (None if no step ran)."""
    tc = state.config.train
    model = state.model
    ddp = model
    if ctx.world_size > 1:
        ddp = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_sampler=_StepBatches(state.step, steps, tc.batch_size, ctx),
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
    )
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    metrics = _Metrics(out_dir, state.step) if ctx.is_main else None
    bar, bar_task = _progress(progress and ctx.is_main, steps, state.step)
    losses: list[float] = []
    val_losses: dict[int, float] = {}
    last: Path | None = None
    model.train()
    try:
        with bar:
            tick = time.perf_counter()
            for batch in loader:
                torch.manual_seed(_step_seed(tc.seed, state.step, ctx.rank))
                batch = _to(batch, ctx.device)
                lr = state.lr
                # Valid pixels of the global batch, known before the forward pass.
                count = _all_reduce_sum(batch["target_valid"].sum().double(), ctx).clamp(min=1)
                total, _ = _forward_loss(ddp, batch, tc.precision, ctx.device)
                # DDP averages gradients over ranks; the factor world_size makes the result
                # the gradient of the mean over the valid pixels of the global batch.
                state.update(total / count.to(total.dtype) * ctx.world_size)
                loss = float(_all_reduce_sum(total.detach().double(), ctx) / count)
                losses.append(loss)
                speed = tc.batch_size / max(time.perf_counter() - tick, 1e-9)
                done = state.step
                val_loss = None
                if done == steps or (val_every and done % val_every == 0):
                    val_loss = val_losses[done] = validate()
                if done == steps or (checkpoint_every and done % checkpoint_every == 0):
                    last = save()
                if metrics is not None:
                    metrics.write(done, lr, loss, val_loss, speed)
                bar.update(bar_task, completed=done, loss=f"{loss:.4f}", speed=f"{speed:.1f}")
                tick = time.perf_counter()  # validation and saving do not count against speed
    finally:
        if metrics is not None:
            metrics.close()
    return losses, val_losses, last
