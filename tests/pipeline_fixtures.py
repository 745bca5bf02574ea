"""Helpers of the Prefect pipeline tests: an untrained checkpoint for a test archive, and
reading forecast stores back for comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from metnet.archive import Archive
from metnet.checkpoint import save_checkpoint
from metnet.config import preset as get_preset
from metnet.dataset import compute_normalization
from metnet.nn import MetNet


def make_checkpoint(archive: Archive, path: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """An untrained (seeded) ``preset`` model with the archive's normalisation, saved at
    ``path``: forecasts from it are deterministic functions of the archive."""
    config = get_preset(preset)
    torch.manual_seed(seed)
    model = MetNet(config)
    save_checkpoint(path, model, config, compute_normalization(archive, config.task, max_times=8))
    return path


def forecast_values(store: Path) -> dict[str, np.ndarray]:
    """Every data variable of a forecast store as numpy arrays."""
    with xr.open_zarr(store, consolidated=False) as ds:
        return {name: ds[name].values for name in ds.data_vars}
