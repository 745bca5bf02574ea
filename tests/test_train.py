"""Training: schedule, EMA, data order, loss, resume, checkpoints, metrics and errors.

Every training run uses a real zarr archive of synthetic radar and satellite frames
(tests/archive_fixtures.py) and the ``tiny`` preset on CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from metnet.checkpoint import load_checkpoint
from metnet.cli import app
from metnet.config import MetNetConfig, preset
from metnet.dataset import ArchiveSampler
from metnet.ema import EMA
from metnet.nn import MetNet
from metnet.schedule import lr_factor, make_scheduler
from metnet.train import (
    METRIC_COLUMNS,
    TrainError,
    batch_indices,
    checkpoint_path,
    latest_checkpoint,
    masked_cross_entropy,
    train,
)
from tests.archive_fixtures import T0, make_archive

MIN = np.timedelta64(1, "m")
#: 30 slots (T0 .. T0 + 58 min): train t0 in 10..34 min (13 times), validation t0 in 50..56 min.
TIMES = T0 + np.arange(30) * 2 * MIN
TRAIN_PERIOD = (T0, T0 + 36 * MIN)
VAL_PERIOD = (T0 + 40 * MIN, T0 + 58 * MIN)
EMA_DECAY = 0.9


def tiny(**train_overrides) -> MetNetConfig:
    """The tiny preset with ``train`` fields replaced."""
    config = preset("tiny")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_overrides))


#: The config of the EMA run (and of the runs that resume or compare with it).
EMA_CONFIG = tiny(ema_decay=EMA_DECAY, warmup_steps=2)


def run(config, archive, out: Path, steps: int, **kwargs):
    """``train`` with this file's periods, a 4-example validation set and no progress bar."""
    options = {
        "train_period": TRAIN_PERIOD,
        "val_period": VAL_PERIOD,
        "val_examples": 4,
        "val_every": 2,
        "checkpoint_every": 2,
        "progress": False,
        "device": "cpu",
    }
    return train(config, archive.store, out, steps, **{**options, **kwargs})


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("archive"), "tiny", times=TIMES)


@pytest.fixture(scope="module")
def ema_run(archive, tmp_path_factory):
    """4 steps with EMA and a 2-step warm-up, a checkpoint after every step, validation every
    2 steps."""
    out = tmp_path_factory.mktemp("ema_run")
    return run(EMA_CONFIG, archive, out, 4, checkpoint_every=1)


# ----------------------------------------------------------------------------- pure parts


def test_lr_factor_golden_values():
    factors = [lr_factor(s, warmup_steps=4, total_steps=12, schedule="cosine") for s in range(13)]
    expected = [0.25, 0.5, 0.75, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    np.testing.assert_allclose(factors, expected, rtol=0, atol=1e-12)
    assert factors[8] == pytest.approx(0.5) and factors[12] == pytest.approx(0.0)
    assert [lr_factor(s, warmup_steps=2, total_steps=5, schedule="CONSTANT") for s in range(6)] == [
        0.5, 1.0, 1.0, 1.0, 1.0, 1.0,
    ]  # fmt: skip
    assert lr_factor(0, warmup_steps=0, total_steps=10, schedule="cosine") == 1.0


def test_lr_factor_unknown_schedule_lists_valid_names():
    with pytest.raises(
        ValueError, match="unknown schedule 'linear'; valid schedules: cosine, constant"
    ):
        lr_factor(0, warmup_steps=1, total_steps=2, schedule="linear")


def test_scheduler_sets_peak_rate_times_factor():
    config = preset("tiny").train  # warm-up 5 steps, cosine, peak 1e-3
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=config.learning_rate)
    scheduler = make_scheduler(optimizer, config, total_steps=20)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [
        config.learning_rate * lr_factor(s, warmup_steps=5, total_steps=20, schedule="cosine")
        for s in range(20)
    ]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_ema_update_and_applied_restore_raw_weights():
    model = torch.nn.Linear(2, 1)
    w0 = model.weight.detach().clone()
    ema = EMA(model, 0.75)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    np.testing.assert_allclose(ema.state_dict()["weight"], 0.75 * w0 + 0.25 * (w0 + 1.0), atol=1e-7)
    with ema.applied(model):
        torch.testing.assert_close(model.weight.detach(), ema.state_dict()["weight"])
    torch.testing.assert_close(model.weight.detach(), w0 + 1.0)
    with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\), got 1.0"):
        EMA(model, 1.0)
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        ema.load_state_dict({"weight": w0})


def test_batch_indices_split_the_global_batch_disjointly():
    assert batch_indices(3, 4).tolist() == [12, 13, 14, 15]
    parts = [batch_indices(3, 4, rank, 2).tolist() for rank in range(2)]
    assert parts == [[12, 13], [14, 15]]
    with pytest.raises(
        TrainError,
        match=r"train.batch_size \(4\) must be divisible by the number of processes \(3\)",
    ):
        batch_indices(0, 4, 0, 3)


def test_masked_cross_entropy_matches_torch_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 5, 4, generator=g)  # (B, bins, H, W)
    target = torch.randint(0, 7, (3, 5, 4), generator=g)
    valid = torch.rand(3, 5, 4, generator=g) > 0.3
    total, count = masked_cross_entropy(logits, torch.where(valid, target, -1), valid)
    reference = F.cross_entropy(logits, torch.where(valid, target, -100))  # mean over non-ignored
    assert count == valid.sum()
    torch.testing.assert_close(total / count, reference)
    # Invalid pixels contribute nothing whatever their logits.
    total2, _ = masked_cross_entropy(torch.where(valid[:, None], logits, 1e3), target, valid)
    torch.testing.assert_close(total2, total)


# ----------------------------------------------------------------------------- training runs


def test_training_loss_decreases(archive, tmp_path):
    result = run(tiny(), archive, tmp_path / "run", 20, val_every=0, checkpoint_every=0)
    losses = np.array(result.train_losses)
    assert losses.shape == (20,) and np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    # Uniform over 512 bins is ln 512 = 6.24; the model learns the dry-heavy climatology.
    assert first > 5.5 and last < first - 0.5, (first, last)
    assert set(result.val_losses) == {20} and result.val_losses[20] < first


def test_metrics_csv_has_columns_and_one_row_per_step(ema_run):
    rows = read_metrics(ema_run.metrics_csv)
    with open(ema_run.metrics_csv) as f:
        assert f.readline().strip() == ",".join(METRIC_COLUMNS)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    # Peak 1e-3, warm-up 2 steps, cosine to 0 at step 4.
    np.testing.assert_allclose([float(r["lr"]) for r in rows], [5e-4, 1e-3, 1e-3, 5e-4], rtol=1e-7)
    np.testing.assert_allclose(
        [float(r["train_loss"]) for r in rows], ema_run.train_losses, rtol=1e-7
    )
    assert [r["val_loss"] for r in rows][0::2] == ["", ""]
    np.testing.assert_allclose(
        [float(rows[1]["val_loss"]), float(rows[3]["val_loss"])],
        [ema_run.val_losses[2], ema_run.val_losses[4]],
        rtol=1e-7,
    )
    assert all(float(r["examples_per_s"]) > 0 for r in rows)
    assert all(datetime.fromisoformat(r["time"]).tzinfo is not None for r in rows)


def test_checkpoint_rebuilds_model_that_reproduces_validation_loss(archive, ema_run):
    assert ema_run.checkpoint == checkpoint_path(ema_run.checkpoint.parents[1], 4)
    assert latest_checkpoint(ema_run.checkpoint.parents[1]) == ema_run.checkpoint
    ckpt = load_checkpoint(ema_run.checkpoint)
    assert ckpt.config == EMA_CONFIG
    assert ckpt.normalization == ema_run.normalization
    assert set(ckpt.extra) >= {"step", "total_steps", "optimizer", "scheduler", "raw_model", "data"}
    assert ckpt.extra["step"] == 4 and ckpt.extra["data"]["periods"]["train"] == [
        "2019-06-10T00:00",
        "2019-06-10T00:36",
    ]
    # The validation set is items 0..3 of the validation-period sampler (one batch).
    val = ArchiveSampler(
        archive, ckpt.config.task, ckpt.normalization, period=VAL_PERIOD, num_examples=4, seed=0
    )
    batch = torch.utils.data.default_collate([val[i] for i in range(4)])
    with torch.no_grad():
        logits = ckpt.model(batch["inputs"], batch["lead_time"][:, None])  # (4, 1, bins, P, P)
    total, count = masked_cross_entropy(logits[:, 0], batch["target"], batch["target_valid"])
    assert float(total / count) == pytest.approx(ema_run.val_losses[4], rel=1e-6)


def test_ema_weights_equal_hand_computed_average(ema_run):
    out = ema_run.checkpoint.parents[1]
    average = MetNet(EMA_CONFIG).state_dict()  # w0: initial weights from the seed
    for step in (1, 2, 3, 4):
        ckpt = load_checkpoint(checkpoint_path(out, step))
        raw = ckpt.extra["raw_model"]
        ema = ckpt.model.state_dict()
        for name, value in average.items():
            expected = EMA_DECAY * value + (1 - EMA_DECAY) * raw[name]
            torch.testing.assert_close(
                ema[name], expected, rtol=0, atol=1e-6, msg=f"{name} at step {step}"
            )
            average[name] = expected
    differs = [name for name in raw if not torch.allclose(raw[name], ema[name], atol=1e-6)]
    assert len(differs) > len(raw) // 2


class Killed(BaseException):
    """Stands for SIGKILL: escapes every ``except Exception``."""


def test_resume_after_kill_mid_checkpoint_equals_uninterrupted_run(
    archive, ema_run, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_then_die(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint after step 4: write half a file, then die
            f.write(b"PK\x03\x04 half a zip")
            raise Killed
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(Killed):
        run(EMA_CONFIG, archive, out, 4)
    monkeypatch.undo()
    # The kill left the step-2 checkpoint and no partial file; the CSV got to step 3.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt"]
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]

    # A worker process builds the batches now: same items, since they depend on (seed, index).
    resumed = run(EMA_CONFIG, archive, out, 4, resume=True, workers=1)
    assert resumed.step == 4 and len(resumed.train_losses) == 2
    # Identical loss history (steps 3 and 4 recomputed, the stale row 3 replaced) ...
    rows, reference = read_metrics(out / "metrics.csv"), read_metrics(ema_run.metrics_csv)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for key in ("lr", "train_loss", "val_loss"):
        assert [r[key] for r in rows] == [r[key] for r in reference], key
    # ... and identical EMA and raw weights and optimiser state.
    a, b = load_checkpoint(resumed.checkpoint), load_checkpoint(ema_run.checkpoint)
    for name, value in b.model.state_dict().items():
        torch.testing.assert_close(a.model.state_dict()[name], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            a.extra["raw_model"][name], b.extra["raw_model"][name], rtol=0, atol=1e-6
        )
    moments_a = a.extra["optimizer"]["state"][0]["exp_avg_sq"]
    torch.testing.assert_close(
        moments_a, b.extra["optimizer"]["state"][0]["exp_avg_sq"], rtol=0, atol=1e-9
    )


def test_resume_at_final_step_trains_nothing(archive, ema_run):
    out = ema_run.checkpoint.parents[1]
    result = run(EMA_CONFIG, archive, out, 4, resume=True, checkpoint_every=1)
    assert (
        result.step == 4 and result.train_losses == () and result.checkpoint == ema_run.checkpoint
    )
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- errors


def test_archive_with_another_grid_names_the_differing_fields(archive, tmp_path):
    config = preset("tiny")
    config = dataclasses.replace(
        config, grid=dataclasses.replace(config.grid, nx=256, x_min_m=1000.0)
    )
    with pytest.raises(TrainError) as info:
        run(config, archive, tmp_path / "run", 2)
    message = str(info.value)
    assert f"archive {archive.store} does not match the config" in message
    assert (
        "grid.nx: archive 128, config 256" in message
        and "grid.x_min_m: archive 0.0, config 1000.0" in message
    )


def test_archive_without_a_task_variable_names_it(archive, tmp_path):
    config = preset("tiny")
    config = dataclasses.replace(
        config, task=dataclasses.replace(config.task, satellite_bands=(13, 14))
    )
    with pytest.raises(
        TrainError, match=r"has no variable 'abi_c14'; it has: precipitation_rate, abi_c13"
    ):
        run(config, archive, tmp_path / "run", 2)


def test_period_without_data_is_a_clear_error(archive, tmp_path):
    empty = (np.datetime64("2020-01-01T00:00"), np.datetime64("2020-01-02T00:00"))
    with pytest.raises(
        TrainError,
        match=r"training period: .*no precipitation_rate data in 2020-01-01T00:00 \.\. 2020-01-02T00:00",
    ):
        run(tiny(), archive, tmp_path / "run", 2, train_period=empty)


def test_period_without_complete_history_has_no_training_times(archive, tmp_path):
    short = (T0, T0 + 8 * MIN)  # radar at 0..8 min, but a t0 needs t0 - 10 min and t0 + 2 min
    with pytest.raises(
        TrainError,
        match=r"training period 2019-06-10T00:00 \.\. 2019-06-10T00:08: .*no valid forecast times",
    ):
        run(tiny(), archive, tmp_path / "run", 2, train_period=short)


def test_overlapping_periods_are_refused(archive, tmp_path):
    with pytest.raises(
        TrainError,
        match=r"train period 2019-06-10T00:00 \.\. 2019-06-10T00:36 overlaps validation period 2019-06-10T00:30",
    ):
        run(tiny(), archive, tmp_path / "run", 2, val_period=(T0 + 30 * MIN, T0 + 58 * MIN))
    with pytest.raises(TrainError, match=r"train end \(--train-end\): not a time, got 'yesterday'"):
        run(tiny(), archive, tmp_path / "run", 2, train_period=(T0, "yesterday"))


def test_existing_run_needs_resume_and_the_same_config(archive, ema_run):
    out = ema_run.checkpoint.parents[1]
    with pytest.raises(
        TrainError, match=r"already holds checkpoints \(latest step_00000004.pt\); pass --resume"
    ):
        run(EMA_CONFIG, archive, out, 4)
    with pytest.raises(
        TrainError,
        match=r"cannot resume from .*step_00000004.pt: the config differs:\n  train.learning_rate: checkpoint 0.001, config 0.002",
    ):
        run(
            tiny(ema_decay=EMA_DECAY, warmup_steps=2, learning_rate=2e-3),
            archive,
            out,
            8,
            resume=True,
        )
    with pytest.raises(
        TrainError,
        match=r"it trained on periods .*'train': \['2019-06-10T00:00', '2019-06-10T00:36'\]",
    ):
        run(
            EMA_CONFIG,
            archive,
            out,
            8,
            resume=True,
            train_period=(T0, T0 + 30 * MIN),
        )


def test_bf16_autocast_step_matches_fp32(archive, tmp_path):
    """The GPU path (bf16 autocast, fp32 loss) run on CPU: same loss to bf16 precision."""
    fp32 = run(tiny(), archive, tmp_path / "fp32", 1, val_every=0)
    bf16 = run(tiny(precision="bf16"), archive, tmp_path / "bf16", 1, val_every=0)
    assert bf16.train_losses[0] == pytest.approx(fp32.train_losses[0], rel=2e-2)
    assert bf16.train_losses[0] != fp32.train_losses[0]  # autocast really ran in bf16


def test_bad_arguments_are_refused(archive, tmp_path):
    with pytest.raises(TrainError, match="steps must be positive, got 0"):
        run(tiny(), archive, tmp_path, 0)
    with pytest.raises(TrainError, match="val_every must not be negative, got -1"):
        run(tiny(), archive, tmp_path, 2, val_every=-1)
    with pytest.raises(TrainError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        run(tiny(), archive, tmp_path, 2, device="tpu")


# ----------------------------------------------------------------------------- CLI


def test_cli_train_writes_checkpoint_and_metrics(archive, tmp_path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text("train:\n  ema_decay: 0.5\n  batch_size: 2\n")
    out = tmp_path / "run"
    args = [
        "train", "--archive", archive.store, "--preset", "tiny", "--config", str(config_file),
        "--steps", "2", "--out", str(out), "--val-examples", "2", "--device", "cpu",
        "--train-start", "2019-06-10T00:00", "--train-end", "2019-06-10T00:36",
        "--val-start", "2019-06-10T00:40", "--val-end", "2019-06-10T00:58",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained to step 2, validation loss" in result.output
    ckpt = load_checkpoint(out / "checkpoints" / "step_00000002.pt")
    assert ckpt.config.train.ema_decay == 0.5 and ckpt.config.train.batch_size == 2
    assert ckpt.config.task == preset("tiny").task
    assert len(read_metrics(out / "metrics.csv")) == 2


def test_cli_train_errors_exit_1_with_the_message(tmp_path):
    missing = tmp_path / "nowhere.zarr"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--archive",
            str(missing),
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1
    assert f"error: {missing}: no archive there" in result.output
    config_file = tmp_path / "c.yaml"
    config_file.write_text("preset: small\n")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--archive",
            str(missing),
            "--preset",
            "tiny",
            "--config",
            str(config_file),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1
    assert "preset: the file names 'small' but --preset is 'tiny'" in result.output
