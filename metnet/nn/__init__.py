"""Torch modules of the MetNet model: downsampler, ConvLSTM, axial attention, head, MetNet."""

from metnet.nn.model import BLOCKS, MetNet

__all__ = ["BLOCKS", "MetNet"]
