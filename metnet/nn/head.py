"""Output head: 4 km latent tokens -> 1 km logits over the precipitation-rate bins.

How the 4 km latent becomes 1 km output (the paper leaves it open; our choice): the
target tile is the central ``target_px`` pixels of the packed central view, which
the latent covers with ``target_px / 4`` cells per side (config validation keeps the
tile centred on whole cells). The head crops those cells, normalises them, and a
per-cell linear layer predicts ``num_bins * 4 * 4`` values that ``PixelShuffle(4)``
rearranges into the 4 x 4 pixels of the cell (sub-pixel convolution, Shi et al. 2016):
output channel ``b * 16 + dy * 4 + dx`` becomes bin ``b`` of pixel ``(4i + dy, 4j + dx)``.
"""

from __future__ import annotations

import torch
from torch import nn

from metnet.config import DOWNSAMPLE_FACTOR


class SubPixelHead(nn.Module):
    """Tokens (N, Hl, Wl, D) -> logits (N, num_bins, target_px, target_px)."""

    def __init__(self, channels: int, latent_size: int, target_px: int, num_bins: int):
        super().__init__()
        factor = DOWNSAMPLE_FACTOR
        self.cells = target_px // factor
        self.start = (latent_size - self.cells) // 2
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, num_bins * factor * factor)
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = slice(self.start, self.start + self.cells)
        x = self.norm(x[:, window, window])  # (N, h, w, D), h = w = target_px / 4
        x = self.proj(x).permute(0, 3, 1, 2)  # (N, num_bins * 16, h, w)
        return self.shuffle(x)  # (N, num_bins, 4h, 4w)
