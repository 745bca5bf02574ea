"""Axial self-attention aggregator over the 4 km latent grid (Ho et al. 2019, as in MetNet).

Tensors here are channels-last token grids ``(N, H, W, D)``. A block attends along one
axis only: a *row* block lets every cell attend to the cells of its row (sequences of
length W), a *column* block to the cells of its column (length H). Blocks alternate,
row first, so two consecutive blocks give every cell a path to every other cell.

Each block is pre-norm: ``x + Attn(LN(x))``, then, when ``feedforward_ratio > 0``,
``x + FFN(LN(x))`` with a GELU MLP of hidden width ``ratio * D``. Attention uses
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where available).

Positional encoding (the paper leaves it open): ``learned`` adds a learned row
embedding (H, 1, D) and column embedding (1, W, D), factorised so the parameter count
grows with H + W rather than H * W; ``sinusoidal`` adds fixed 2-D sine/cosine features,
half of the channels encoding the row and half the column, stored as a buffer so a
checkpoint carries everything the model uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_encoding_2d(height: int, width: int, channels: int) -> torch.Tensor:
    """Fixed 2-D positional features (H, W, D): D/2 channels for the row, D/2 for the column.

    Within each half, channel pairs are ``sin(p * w_k), cos(p * w_k)`` with
    ``w_k = 10000 ** (-k / (D/4))`` (Vaswani et al. 2017); odd leftovers are zero.
    """
    half = channels // 2
    pairs = half // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(pairs) / max(pairs, 1))  # (P,)

    def encode(positions: int) -> torch.Tensor:
        angles = torch.arange(positions)[:, None] * freqs[None, :]  # (n, P)
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (n, 2P)

    out = torch.zeros(height, width, channels)
    out[:, :, : 2 * pairs] = encode(height)[:, None, :]  # rows
    out[:, :, half : half + 2 * pairs] = encode(width)[None, :, :]  # columns
    return out


class LearnedPositionalEncoding(nn.Module):
    """Adds a learned row embedding and column embedding to (N, H, W, D) tokens."""

    def __init__(self, height: int, width: int, channels: int):
        super().__init__()
        self.rows = nn.Parameter(torch.randn(height, 1, channels) * 0.02)
        self.cols = nn.Parameter(torch.randn(1, width, channels) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rows + self.cols  # (N, H, W, D)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds :func:`sinusoidal_encoding_2d` to (N, H, W, D) tokens."""

    def __init__(self, height: int, width: int, channels: int):
        super().__init__()
        self.register_buffer("encoding", sinusoidal_encoding_2d(height, width, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.encoding  # (N, H, W, D)


POSITIONAL_ENCODINGS: dict[str, type[nn.Module]] = {
    "learned": LearnedPositionalEncoding,
    "sinusoidal": SinusoidalPositionalEncoding,
}


def get_positional_encoding(name: str, height: int, width: int, channels: int) -> nn.Module:
    """The positional encoding called ``name`` (case-insensitive) for an H x W x D grid."""
    cls = POSITIONAL_ENCODINGS.get(name.lower())
    if cls is None:
        raise ValueError(
            f"unknown positional encoding {name!r}; valid names: {', '.join(POSITIONAL_ENCODINGS)}"
        )
    return cls(height, width, channels)


class AxialSelfAttention(nn.Module):
    """Multi-head self-attention along one axis of (N, H, W, D) tokens (axis 1 = H, 2 = W)."""

    def __init__(self, channels: int, heads: int, axis: int, dropout: float):
        super().__init__()
        if axis not in (1, 2):
            raise ValueError(f"axis must be 1 (columns, along H) or 2 (rows, along W), got {axis}")
        self.heads = heads
        self.axis = axis
        self.dropout = dropout
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == 1:
            x = x.transpose(1, 2)  # (N, W, H, D): attend along H
        n, outer, length, channels = x.shape
        qkv = self.qkv(x.reshape(n * outer, length, channels))  # (M, L, 3D)
        qkv = qkv.view(n * outer, length, 3, self.heads, channels // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (M, heads, L, D/heads)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (M, heads, L, D/heads)
        y = self.out(y.transpose(1, 2).reshape(n * outer, length, channels))  # (M, L, D)
        y = y.view(n, outer, length, channels)
        return y.transpose(1, 2) if self.axis == 1 else y  # (N, H, W, D)


class AxialBlock(nn.Module):
    """Pre-norm residual block: axial attention, then an optional GELU feed-forward."""

    def __init__(
        self, channels: int, heads: int, axis: int, feedforward_ratio: float, dropout: float
    ):
        super().__init__()
        self.attn_norm = nn.LayerNorm(channels)
        self.attn = AxialSelfAttention(channels, heads, axis, dropout)
        self.drop = nn.Dropout(dropout)
        hidden = round(feedforward_ratio * channels)
        self.ff = None
        if hidden > 0:
            self.ff = nn.Sequential(
                nn.LayerNorm(channels),
                nn.Linear(channels, hidden),
                nn.GELU(),
                nn.Linear(hidden, channels),
                nn.Dropout(dropout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x)))  # (N, H, W, D)
        if self.ff is not None:
            x = x + self.ff(x)  # (N, H, W, D)
        return x


class AxialAggregator(nn.Module):
    """ConvLSTM state (N, C_in, H, W) -> aggregated tokens (N, H, W, D).

    A linear projection from the ConvLSTM channels to the attention width D, the
    positional encoding and ``blocks`` alternating row/column blocks. The final
    LayerNorm sits in the head, after the crop to the target cells.
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        channels: int,
        blocks: int,
        heads: int,
        feedforward_ratio: float,
        dropout: float,
        positional_encoding: str,
    ):
        super().__init__()
        self.proj = nn.Linear(in_channels, channels)
        self.position = get_positional_encoding(positional_encoding, size, size, channels)
        self.blocks = nn.Sequential(
            *(
                AxialBlock(channels, heads, 2 if i % 2 == 0 else 1, feedforward_ratio, dropout)
                for i in range(blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.permute(0, 2, 3, 1))  # (N, H, W, D)
        return self.blocks(self.position(x))  # (N, H, W, D)
