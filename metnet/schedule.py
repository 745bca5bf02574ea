"""Learning-rate schedule of training: linear warm-up, then cosine or constant decay.

The schedule is a pure function of the optimiser step, so a resumed run recomputes the
same learning rates from the step alone. :func:`lr_factor` gives the multiplier of the
peak learning rate (``TrainConfig.learning_rate``) used by optimiser step ``step``
(0-based); :func:`make_scheduler` wraps it in a ``torch.optim.lr_scheduler.LambdaLR``.
"""

from __future__ import annotations

import math

import torch

from metnet.config import TrainConfig

SCHEDULES: tuple[str, ...] = ("cosine", "constant")


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier in [0, 1] of the peak learning rate for 0-based optimiser step ``step``.

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, so the
    first step already moves the weights and step ``warmup_steps - 1`` reaches the peak.
    After warm-up, ``constant`` keeps 1; ``cosine`` follows ``0.5 (1 + cos(pi p))``
    with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to
    [0, 1], reaching 0 at ``step = total_steps``.
    """
    key = schedule.lower()
    if key not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if key == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` applying :func:`lr_factor` to every parameter group's peak rate.

    Its ``state_dict`` holds only the step counter (the lambda is rebuilt from the
    config), so it loads with ``torch.load(weights_only=True)``.
    """

    def factor(step: int) -> float:
        return lr_factor(
            step, warmup_steps=train.warmup_steps, total_steps=total_steps, schedule=train.schedule
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
