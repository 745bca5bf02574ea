"""Lead-time conditioning: lead minutes -> one-hot index, and the lead-conditioned first conv.

MetNet (Sønderby et al. 2020) tiles a one-hot encoding of the lead time over space and
concatenates it to every input frame, so the first convolution sees ``C + num_leads``
channels. That convolution is linear in its input, hence

    conv(concat(x, onehot_l)) = conv(x, W_x) + b + conv(ones, W_lead[:, l])

where ``W_x`` / ``W_lead`` are the weight slices over the frame and one-hot channels and
``ones`` is a single all-ones map (the only non-zero channel of the tiled one-hot).
:class:`LeadConditionedConv` computes the frame term once per sample and the lead term
once per requested lead, which is exact including the zero-padding border (where the
kernel overhangs the image the lead term is smaller), and lets many lead times share one
pass over the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metnet.config import TaskConfig


def lead_time_indices(lead_times: torch.Tensor, task: TaskConfig) -> torch.Tensor:
    """Map lead times in minutes to one-hot indices ``0 .. task.num_lead_times - 1``.

    ``lead_times``: integer tensor of any shape, minutes. Returns an int64 tensor of
    the same shape. Raises ``ValueError`` listing the offending values and the rule
    (multiples of ``task.lead_time_step_minutes`` in ``[step, max_lead_time_minutes]``).
    """
    if lead_times.dtype.is_floating_point or lead_times.dtype.is_complex:
        raise ValueError(
            f"lead_times must be an integer tensor of minutes, got dtype {lead_times.dtype}"
        )
    step, last = task.lead_time_step_minutes, task.max_lead_time_minutes
    if not lead_times.is_meta:
        bad = (lead_times % step != 0) | (lead_times < step) | (lead_times > last)
        if bool(bad.any()):
            values = sorted({int(v) for v in lead_times[bad].flatten().tolist()})
            shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
            raise ValueError(
                f"lead time(s) {shown} min are not predicted by this model: lead times must "
                f"be multiples of {step} min in [{step}, {last}] (task.lead_times)"
            )
    return (lead_times.long() // step) - 1


class LeadConditionedConv(nn.Module):
    """A ``k x k`` conv over ``concat(frame, tiled one-hot(lead))``, evaluated in two terms.

    Holds one ordinary ``nn.Conv2d`` with ``in_channels + num_leads`` input channels
    (so the weights are exactly those of the concat-then-conv formulation) but never
    builds the concatenated tensor.
    """

    def __init__(self, in_channels: int, num_leads: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.in_channels = in_channels
        self.num_leads = num_leads
        self.conv = nn.Conv2d(
            in_channels + num_leads, out_channels, kernel_size, padding=kernel_size // 2
        )

    def frame_term(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(x, W_x) + b``: (N, C, S, S) -> (N, C0, S, S), once per frame."""
        weight = self.conv.weight[:, : self.in_channels]  # (C0, C, k, k)
        return F.conv2d(x, weight, self.conv.bias, padding=self.conv.padding)

    def lead_term(self, lead_index: torch.Tensor, size: int) -> torch.Tensor:
        """``conv(ones, W_lead[:, l])`` for each index: (M,) int64 -> (M, C0, S, S).

        Constant in the interior, smaller near the border where the kernel overhangs
        the zero padding. A kernel tap ``(dy, dx)`` lands inside the image at pixel
        ``(i, j)`` iff row ``i + dy - p`` and column ``j + dx - p`` are inside, so the
        conv of a ones map factorises into ``sum_{dy,dx} w[dy, dx] * R[dy, i] * R[dx, j]``
        with the 0/1 border mask ``R`` (k, S): two small matrix products instead of a
        convolution with ``M * C0`` output channels. Returned channels-last in memory,
        the layout the first conv's frame term has.
        """
        kernel = self.conv.kernel_size[0]
        pad = self.conv.padding[0]
        lead_weight = self.conv.weight[:, self.in_channels :]  # (C0, NL, k, k)
        kernels = lead_weight.index_select(1, lead_index)  # (C0, M, k, k)
        pos = torch.arange(size, device=kernels.device)
        tap = torch.arange(kernel, device=kernels.device)[:, None]
        inside = ((pos + tap - pad >= 0) & (pos + tap - pad < size)).to(kernels.dtype)  # (k, S)
        term = torch.einsum("cmyx,yi,xj->mijc", kernels, inside, inside)  # (M, S, S, C0)
        return term.permute(0, 3, 1, 2)  # (M, C0, S, S), channels-last strides
