"""ConvLSTM temporal encoder (Shi et al. 2015): a sequence of feature maps -> last hidden state.

All four gates come from one convolution, split in two: the input part is computed for
every frame in one batched call before the recurrence (it does not depend on the
state), and only the hidden-state part runs inside the time loop. With a zero initial
state the first step needs no hidden conv at all.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvLSTM(nn.Module):
    """Frames (N, T, C_in, H, W) in time order -> last hidden state (N, C_h, H, W)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        padding = kernel_size // 2
        # Gate order along the output channels: input, forget, output, cell candidate,
        # so one sigmoid call covers the first three.
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=padding)
        self.hidden_conv = nn.Conv2d(
            hidden_channels, 4 * hidden_channels, kernel_size, padding=padding, bias=False
        )
        # A forget-gate bias of 1 keeps the cell state at the start of training
        # (Jozefowicz et al. 2015).
        with torch.no_grad():
            self.input_conv.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the recurrence from a zero state; returns the hidden state after the last frame."""
        n, frames = x.shape[:2]
        ch = self.hidden_channels
        gates_x = self.input_conv(x.flatten(0, 1))  # (N*T, 4*C_h, H, W)
        gates_x = gates_x.unflatten(0, (n, frames))  # (N, T, 4*C_h, H, W)
        h = c = None
        for t in range(frames):
            gates = gates_x[:, t] if h is None else gates_x[:, t] + self.hidden_conv(h)
            i, f, o = torch.sigmoid(gates[:, : 3 * ch]).chunk(3, dim=1)  # 3 x (N, C_h, H, W)
            g = torch.tanh(gates[:, 3 * ch :])  # (N, C_h, H, W)
            c = i * g if c is None else f * c + i * g  # (N, C_h, H, W)
            h = o * torch.tanh(c)  # (N, C_h, H, W)
        return h
