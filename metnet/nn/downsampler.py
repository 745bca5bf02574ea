"""Spatial downsampler: packed 1 km-pixel frames -> 4 km latent features, per lead time.

Layout (paper: 160, then 256 x 3): a lead-conditioned ``k x k`` conv to
``channels[0]``, ReLU, 2x2 max-pool, one ``k x k`` conv + ReLU per remaining entry of
``channels``, 2x2 max-pool; the side shrinks by :data:`metnet.config.DOWNSAMPLE_FACTOR`.
The paper does not say which nonlinearity it uses; ReLU is ours. There is no
normalisation layer here because lead times are folded into the batch and the inputs
are already normalised by the dataset.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from metnet.nn.conditioning import LeadConditionedConv


class Downsampler(nn.Module):
    """Frames (B, T, C, S, S) and lead indices (B, L) -> features (B*L, T, C_out, S/4, S/4)."""

    def __init__(
        self, in_channels: int, num_leads: int, channels: tuple[int, ...], kernel_size: int
    ):
        super().__init__()
        self.input_conv = LeadConditionedConv(in_channels, num_leads, channels[0], kernel_size)
        layers: list[nn.Module] = [nn.MaxPool2d(2)]
        for c_in, c_out in itertools.pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.out_channels = channels[-1]

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The lead-independent part of the first conv: (B, T, C, S, S) -> (B, T, C0, S, S)."""
        batch, frames = x.shape[:2]
        out = self.input_conv.frame_term(x.flatten(0, 1))  # (B*T, C0, S, S)
        return out.unflatten(0, (batch, frames))  # (B, T, C0, S, S)

    def forward(self, frame_term: torch.Tensor, lead_index: torch.Tensor) -> torch.Tensor:
        """Add the lead term and run the rest of the downsampler.

        ``frame_term``: (B, T, C0, S, S) from :meth:`encode_frames`; ``lead_index``:
        (B, L) int64 one-hot indices. Returns (B*L, T, C_out, S/4, S/4), lead times
        folded into the batch, sample-major.
        """
        batch, frames, c0, size, _ = frame_term.shape
        leads = lead_index.shape[1]
        lead_term = self.input_conv.lead_term(lead_index.flatten(), size)  # (B*L, C0, S, S)
        lead_term = lead_term.view(batch, leads, 1, c0, size, size)  # (B, L, 1, C0, S, S)
        h = frame_term.unsqueeze(1) + lead_term  # (B, L, T, C0, S, S)
        h = F.relu(h, inplace=True).flatten(0, 2)  # (B*L*T, C0, S, S)
        h = self.body(h)  # (B*L*T, C_out, S/4, S/4)
        return h.unflatten(0, (batch * leads, frames))  # (B*L, T, C_out, S/4, S/4)
