"""MetNet (Sønderby et al. 2020): packed input frames + lead times -> rate-bin logits.

Data flow for a batch of B samples and L lead times each (S = task.packed_size,
latent side S/4, target side P = task.target_px):

    x (B, T, C, S, S) --first-conv frame term, once per sample--> (B, T, C0, S, S)
    + lead term per lead time, ReLU, rest of the downsampler      -> (B*L, T, Cd, S/4, S/4)
    ConvLSTM over the T frames, last hidden state                 -> (B*L, Ch, S/4, S/4)
    projection + positional encoding + axial attention            -> (B*L, S/4, S/4, D)
    crop target cells, sub-pixel head                             -> (B, L, num_bins, P, P)

Lead times are folded into the batch after the first convolution, so one call handles
any number of lead times without a Python loop over them; ``lead_chunk`` bounds the
memory by processing that many lead times per sample at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from metnet.config import DOWNSAMPLE_FACTOR, MetNetConfig
from metnet.nn.attention import AxialAggregator
from metnet.nn.conditioning import lead_time_indices
from metnet.nn.convlstm import ConvLSTM
from metnet.nn.downsampler import Downsampler
from metnet.nn.head import SubPixelHead

#: Top-level blocks and the label :meth:`MetNet.parameter_counts` reports them under.
BLOCKS: dict[str, str] = {
    "downsampler": "input/downsampler",
    "temporal_encoder": "convlstm",
    "aggregator": "attention",
    "head": "head",
}


class MetNet(nn.Module):
    """The MetNet network, built only from ``config.task`` and ``config.model``.

    Weights are initialised from ``config.train.seed`` inside a forked RNG, so the same
    config always gives the same initial weights and the global RNG is left untouched.
    """

    def __init__(self, config: MetNetConfig):
        super().__init__()
        self.config = config
        task, m = config.task, config.model
        latent = task.packed_size // DOWNSAMPLE_FACTOR
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            self.downsampler = Downsampler(
                task.num_input_channels,
                task.num_lead_times,
                m.downsampler_channels,
                m.kernel_size,
            )
            self.temporal_encoder = ConvLSTM(
                self.downsampler.out_channels, m.convlstm_channels, m.convlstm_kernel_size
            )
            self.aggregator = AxialAggregator(
                m.convlstm_channels,
                latent,
                m.attention_channels,
                m.attention_blocks,
                m.attention_heads,
                m.feedforward_ratio,
                m.dropout,
                m.positional_encoding,
            )
            self.head = SubPixelHead(m.attention_channels, latent, task.target_px, task.num_bins)
        # Channels-last conv weights make every conv run in NHWC, which oneDNN (CPU) and
        # cuDNN (GPU) execute faster than NCHW; activations follow the weights' layout.
        self.to(memory_format=torch.channels_last)

    def forward(
        self, x: torch.Tensor, lead_times: torch.Tensor, *, lead_chunk: int | None = None
    ) -> torch.Tensor:
        """Logits (B, L, num_bins, target_px, target_px) for every sample and lead time.

        ``x``: (B, T, C, S, S) float, NaN-free, channels in the order of
        ``task.input_channel_names()``. ``lead_times``: (B, L) integer minutes, each
        one of ``task.lead_times``. ``lead_chunk``: at most this many lead times per
        sample go through the network at once (default: all L); the result does not
        depend on it. Raises ``ValueError`` naming what is wrong with the inputs.
        """
        lead_index = self.check_inputs(x, lead_times)  # (B, L)
        leads = lead_index.shape[1]
        chunk = leads if lead_chunk is None else lead_chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"lead_chunk must be a positive integer or None, got {lead_chunk!r}")
        frame_term = self.downsampler.encode_frames(x)  # (B, T, C0, S, S), shared by all leads
        if chunk >= leads:
            return self._decode(frame_term, lead_index)  # (B, L, bins, P, P)
        # Fill a preallocated output rather than concatenating chunks, so the logits of
        # all lead times are held once, not twice, at the peak.
        first = self._decode(frame_term, lead_index[:, :chunk])  # (B, chunk, bins, P, P)
        logits = first.new_empty((first.shape[0], leads, *first.shape[2:]))  # (B, L, bins, P, P)
        logits[:, :chunk] = first
        del first
        for i in range(chunk, leads, chunk):
            logits[:, i : i + chunk] = self._decode(frame_term, lead_index[:, i : i + chunk])
        return logits

    def _decode(self, frame_term: torch.Tensor, lead_index: torch.Tensor) -> torch.Tensor:
        """(B, T, C0, S, S) frame term and (B, L) lead indices -> (B, L, bins, P, P)."""
        h = self.downsampler(frame_term, lead_index)  # (B*L, T, Cd, S/4, S/4)
        h = self.temporal_encoder(h)  # (B*L, Ch, S/4, S/4)
        h = self.aggregator(h)  # (B*L, S/4, S/4, D)
        logits = self.head(h)  # (B*L, bins, P, P)
        return logits.unflatten(0, tuple(lead_index.shape))  # (B, L, bins, P, P)

    @torch.compiler.disable  # value checks need host syncs; under torch.compile run eagerly
    def check_inputs(self, x: torch.Tensor, lead_times: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` and ``lead_times``; return the (B, L) int64 one-hot lead indices.

        Value checks (NaN/inf, lead times) are skipped on the meta device, which has no
        values.
        """
        task = self.config.task
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 5:
            raise ValueError(
                f"inputs must have 5 dimensions (batch, time, channel, y, x), "
                f"got shape {tuple(x.shape)}"
            )
        batch, frames, channels, height, width = x.shape
        if frames != task.num_frames:
            raise ValueError(
                f"inputs have {frames} frames, expected {task.num_frames} "
                f"(task.history_minutes / task.history_interval_minutes + 1 = "
                f"{task.history_minutes} / {task.history_interval_minutes} + 1)"
            )
        if channels != task.num_input_channels:
            raise ValueError(
                f"inputs have {channels} channels per frame, expected "
                f"{task.num_input_channels}: one per name in task.input_channel_names(), "
                f"in that order ({', '.join(task.input_channel_names()[:3])}, ...)"
            )
        if (height, width) != (task.packed_size, task.packed_size):
            raise ValueError(
                f"inputs have spatial size {height}x{width}, expected "
                f"{task.packed_size}x{task.packed_size} (task.packed_size)"
            )
        if not x.is_floating_point():
            raise ValueError(f"inputs must be floating point, got dtype {x.dtype}")
        if not x.is_meta:
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise ValueError(
                    f"inputs contain {bad} NaN or infinite values; fill missing data and "
                    f"flag it in the validity-mask channels before calling the model"
                )
        if not isinstance(lead_times, torch.Tensor):
            raise ValueError(
                f"lead_times must be a torch.Tensor of shape (batch, num_leads), "
                f"got {type(lead_times).__name__}"
            )
        if lead_times.ndim != 2 or lead_times.shape[0] != batch or lead_times.shape[1] == 0:
            raise ValueError(
                f"lead_times must have shape (batch, num_leads) = ({batch}, L) with L >= 1, "
                f"got shape {tuple(lead_times.shape)}"
            )
        return lead_time_indices(lead_times, task).to(x.device)  # (B, L)

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters per top-level block (labels from :data:`BLOCKS`) and total."""
        counts = {
            label: sum(p.numel() for p in getattr(self, name).parameters())
            for name, label in BLOCKS.items()
        }
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
