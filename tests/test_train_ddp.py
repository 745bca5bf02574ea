"""DDP: two real gloo processes under torchrun equal one process on the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from metnet.checkpoint import load_checkpoint
from metnet.config import load_config
from metnet.train import train
from tests.archive_fixtures import make_archive
from tests.test_train import TIMES, TRAIN_PERIOD, VAL_PERIOD

STEPS = 3
#: Sums of gradients and losses run in another order over 2 ranks (and with one thread
#: per process): agreement to float32 round-off, well inside this.
TOLERANCE = 1e-5
#: Adam divides by sqrt(v): a weight whose gradient is only round-off noise (sqrt(v)
#: below this, e.g. the attention key bias, whose exact gradient is 0 because softmax
#: ignores a shift shared by all keys) moves by up to the learning rate in a direction
#: the round-off picks. Such weights are only checked to move less than the summed rates.
NOISE_GRADIENT = 1e-7


def losses(path: Path, column: str) -> list[float]:
    with open(path, newline="") as f:
        return [float(r[column]) for r in csv.DictReader(f) if r[column]]


def test_two_gloo_processes_equal_one_process(tmp_path):
    archive = make_archive(tmp_path, "tiny", times=TIMES)
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text("preset: tiny\ntrain:\n  ema_decay: 0.8\n")  # global batch 4
    config = load_config(config_file)
    single = train(
        config, archive.store, tmp_path / "single", STEPS, train_period=TRAIN_PERIOD,
        val_period=VAL_PERIOD, val_examples=4, val_every=2, checkpoint_every=2,
        progress=False, device="cpu",
    )  # fmt: skip

    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "metnet.cli", "train", "--archive", archive.store, "--config", str(config_file),
        "--steps", str(STEPS), "--out", str(out), "--val-examples", "4", "--val-every", "2",
        "--checkpoint-every", "2", "--device", "cpu",
        "--train-start", str(TRAIN_PERIOD[0]), "--train-end", str(TRAIN_PERIOD[1]),
        "--val-start", str(VAL_PERIOD[0]), "--val-end", str(VAL_PERIOD[1]),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("trained to step 3") == 1  # only rank 0 reports

    # Only rank 0 wrote: one set of checkpoints, one row per step.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000002.pt",
        "step_00000003.pt",
    ]
    np.testing.assert_allclose(
        losses(out / "metrics.csv", "train_loss"), single.train_losses, rtol=TOLERANCE
    )
    np.testing.assert_allclose(
        losses(out / "metrics.csv", "val_loss"),
        [single.val_losses[2], single.val_losses[3]],
        rtol=TOLERANCE,
    )
    a, b = (
        load_checkpoint(out / "checkpoints" / "step_00000003.pt"),
        load_checkpoint(single.checkpoint),
    )
    assert a.config == b.config and a.normalization == b.normalization
    for name, value in b.model.state_dict().items():  # EMA weights
        torch.testing.assert_close(a.model.state_dict()[name], value, rtol=0, atol=TOLERANCE)
    names = [name for name, _ in b.model.named_parameters()]
    lr_sum = sum(losses(out / "metrics.csv", "lr"))
    loose = 0
    for index, state in b.extra["optimizer"]["state"].items():
        raw_a, raw_b = a.extra["raw_model"][names[index]], b.extra["raw_model"][names[index]]
        signal = state["exp_avg_sq"].sqrt() >= NOISE_GRADIENT
        torch.testing.assert_close(
            raw_a[signal], raw_b[signal], rtol=0, atol=TOLERANCE, msg=names[index]
        )
        assert torch.all((raw_a - raw_b)[~signal].abs() <= 2 * lr_sum), names[index]
        loose += int(((raw_a - raw_b).abs() > TOLERANCE).sum())
    assert loose < 1e-3 * sum(v.numel() for v in b.model.parameters())  # a handful of 305 k
