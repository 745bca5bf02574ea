"""Size and cost of a MetNet config, computed without allocating its weights.

The model is built on ``torch.device("meta")`` (shapes only, no storage, no random
init) and one forward pass is traced with ``torch.utils.flop_counter.FlopCounterMode``,
which counts convolutions, matrix products and attention (a multiply-add = 2 FLOPs).
On the meta device ``scaled_dot_product_attention`` decomposes into matrix products,
so attention is counted as well; elementwise ops, norms and pooling are not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from metnet.config import MetNetConfig
from metnet.nn.model import MetNet

#: Parameter count reported by Sønderby et al. (2020) for MetNet.
PAPER_PARAMETERS = 225_000_000


@dataclass(frozen=True)
class ModelSummary:
    """Parameter counts and FLOPs of one config."""

    parameters: dict[str, int]
    """Parameters per block (input/downsampler, convlstm, attention, head) and ``total``."""
    flops_per_lead: int
    """FLOPs of one forward pass for one sample and one lead time."""
    flops_per_extra_lead: int
    """FLOPs each further lead time of the same sample adds when batched in one call."""
    parameters_with_feedforward: int
    """Total parameters of the same config with ``model.feedforward_ratio = 1``."""


def meta_model(config: MetNetConfig) -> MetNet:
    """``MetNet(config)`` on the meta device: parameter shapes without storage."""
    with torch.device("meta"):
        return MetNet(config)


def count_flops(
    config: MetNetConfig, batch: int = 1, leads: int = 1, backward: bool = False
) -> int:
    """FLOPs of ``config``'s model on ``batch`` samples x ``leads`` lead times.

    Forward only, or forward and backward when ``backward``; traced on the meta
    device, so it costs no memory and little time whatever the size.
    """
    task = config.task
    size = task.packed_size
    model = meta_model(config)
    with torch.device("meta"):
        x = torch.zeros(batch, task.num_frames, task.num_input_channels, size, size)
        lead_times = torch.zeros(batch, leads, dtype=torch.int64)  # (B, L), values unchecked
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
        out = model(x, lead_times)  # (B, L, bins, P, P)
        if backward:
            out.sum().backward()
    return int(counter.get_total_flops())


def summarize(config: MetNetConfig) -> ModelSummary:
    """Parameter counts and forward FLOPs of ``config`` (seconds even for ``paper``)."""
    one, two = count_flops(config, leads=1), count_flops(config, leads=2)
    with_ff = dataclasses.replace(
        config, model=dataclasses.replace(config.model, feedforward_ratio=1.0)
    )
    return ModelSummary(
        parameters=meta_model(config).parameter_counts(),
        flops_per_lead=one,
        flops_per_extra_lead=two - one,
        parameters_with_feedforward=meta_model(with_ff).parameter_counts()["total"],
    )


def _flops(value: float) -> str:
    """``2.02e12`` -> ``"2.02 TFLOP"``."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} FLOP"


def format_summary(config: MetNetConfig, summary: ModelSummary) -> str:
    """Human-readable parameter table, FLOPs and the comparison with the paper."""
    m, task = config.model, config.task
    per_tile = summary.flops_per_lead + (task.num_lead_times - 1) * summary.flops_per_extra_lead
    total = summary.parameters["total"]
    feedforward = "no feed-forward layer" if m.feedforward_ratio == 0 else "a feed-forward layer"
    lines = ["parameters:"]
    for label, count in summary.parameters.items():
        lines.append(f"  {label:<18} {count:>14,d}  ({count / 1e6:8.2f} M)")
    m_ch = m.attention_channels
    lines += [
        "FLOPs of one forward pass, one sample (multiply-add = 2):",
        f"  one lead time                      {_flops(summary.flops_per_lead)}",
        (
            f"  each extra lead time in that call  {_flops(summary.flops_per_extra_lead)}"
            "  (the first conv's input term is shared)"
        ),
        f"  {f'all {task.num_lead_times} lead times of one tile':<34} {_flops(per_tile)}",
        "",
        (
            f"paper (Sønderby et al. 2020): ~{PAPER_PARAMETERS / 1e6:.0f} M parameters; "
            f"this config: {total / 1e6:.1f} M."
        ),
        "  The paper gives no per-layer breakdown. Most weights are in the attention blocks",
        (
            f"  (q, k, v, output: 4 x {m_ch}^2 per block x {m.attention_blocks} blocks) and in "
            f"the head ({m_ch} -> {task.num_bins} bins x 16 sub-pixels)."
        ),
        (
            f"  With model.feedforward_ratio = {m.feedforward_ratio:g} the blocks have "
            f"{feedforward}; with feedforward_ratio = 1"
        ),
        (
            f"  (2 x {m_ch}^2 more per block) the total would be "
            f"{summary.parameters_with_feedforward / 1e6:.1f} M."
        ),
    ]
    return "\n".join(lines)
