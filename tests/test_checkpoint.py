"""Checkpoints: round trip, weights-only loading, and every error a user can cause."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from metnet.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from metnet.config import preset
from metnet.nn import MetNet

NORMALIZATION = {
    "precipitation_rate": {"mean": 0.4, "std": 1.7},
    "abi_c13": {"mean": 265.0, "std": 18.5},
}


@pytest.fixture(scope="module")
def tiny():
    return preset("tiny")


@pytest.fixture(scope="module")
def trained(tiny):
    """A tiny model after one AdamW step, and its optimiser."""
    model = MetNet(tiny)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 2, 14, 16, 16)
    model(x, torch.tensor([[2], [4]])).logsumexp(2).mean().backward()
    optimizer.step()
    return model.eval(), optimizer


@pytest.fixture()
def saved(tmp_path, tiny, trained) -> Path:
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, trained[0], tiny, NORMALIZATION, extra={"step": 1})
    return path


def test_round_trip_gives_identical_outputs(tmp_path, tiny, trained):
    model, optimizer = trained
    path = tmp_path / "model.pt"
    extra = {"step": 17, "optimizer": optimizer.state_dict(), "note": "first run"}
    save_checkpoint(path, model, tiny, NORMALIZATION, extra=extra)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left

    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.config == tiny
    assert ckpt.normalization == NORMALIZATION
    assert ckpt.extra["step"] == 17 and ckpt.extra["note"] == "first run"
    assert not ckpt.model.training
    assert all(p.device.type == "cpu" and p.requires_grad for p in ckpt.model.parameters())
    x = torch.randn(2, 2, 14, 16, 16)
    leads = torch.tensor([[2, 12], [6, 4]])
    with torch.inference_mode():
        assert torch.equal(ckpt.model(x, leads), model(x, leads))

    # the optimiser state resumes exactly
    resumed = torch.optim.AdamW(ckpt.model.parameters(), lr=1e-3)
    resumed.load_state_dict(ckpt.extra["optimizer"])
    for a, b in zip(resumed.state.values(), optimizer.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_round_trip_sinusoidal_from_wrapped_model(tmp_path, tiny):
    config = dataclasses.replace(
        tiny, model=dataclasses.replace(tiny.model, positional_encoding="sinusoidal")
    )
    model = MetNet(config).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, torch.nn.DataParallel(model), config, NORMALIZATION)
    loaded = load_checkpoint(path).model
    assert not any(t.is_meta for t in loaded.state_dict().values())
    x = torch.randn(1, 2, 14, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded(x, torch.tensor([[8]])), model(x, torch.tensor([[8]])))


def test_loads_with_weights_only(tmp_path, tiny):
    """A file holding an arbitrary pickled object is refused, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "metnet-checkpoint", "payload": np.arange(3)}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: cannot read checkpoint .*UnpicklingError"):
        load_checkpoint(path)


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError,
        match=rf"^{saved}: cannot read checkpoint \(truncated, corrupt or not a MetNet checkpoint\)",
    ):
        load_checkpoint(saved)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all"], ids=["empty", "garbage"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"^{path}: cannot read checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'nope.pt'}: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def rewrite(path: Path, **changes) -> None:
    """Load a checkpoint's raw dict, change or delete (value None) keys, save it back."""
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    torch.save(payload, path)


def test_missing_key(saved):
    rewrite(saved, normalization=None)
    with pytest.raises(
        CheckpointError, match=rf"^{saved}: checkpoint is missing key\(s\) normalization"
    ):
        load_checkpoint(saved)


def test_not_a_metnet_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: not a MetNet checkpoint"):
        load_checkpoint(path)


def test_newer_format_version(saved):
    rewrite(saved, format_version=FORMAT_VERSION + 1)
    with pytest.raises(
        CheckpointError, match=rf"format version {FORMAT_VERSION + 1} is not supported"
    ):
        load_checkpoint(saved)


def test_config_weights_shape_mismatch(saved, tiny):
    config = tiny.to_dict()
    config["model"]["convlstm_channels"] = 8
    rewrite(saved, config=config)
    with pytest.raises(
        CheckpointError,
        match=rf"^{saved}: weights do not match the checkpoint's config: parameter "
        r"'temporal_encoder.input_conv.weight' has shape \(64, 16, 3, 3\) in the file, "
        r"the config gives \(32, 16, 3, 3\)",
    ):
        load_checkpoint(saved)


def test_config_weights_missing_parameters(saved, tiny):
    config = tiny.to_dict()
    config["model"]["attention_blocks"] = 4
    rewrite(saved, config=config)
    with pytest.raises(CheckpointError, match=r"missing \['aggregator.blocks.2.attn_norm.weight'"):
        load_checkpoint(saved)


def test_state_dict_not_tensors(saved):
    rewrite(saved, state_dict={"downsampler.input_conv.conv.weight": [1.0, 2.0]})
    with pytest.raises(CheckpointError, match=rf"^{saved}: state_dict is not a dict of tensors"):
        load_checkpoint(saved)


def test_invalid_config_in_file(saved, tiny):
    config = tiny.to_dict()
    config["model"]["attention_head"] = 2
    rewrite(saved, config=config)
    with pytest.raises(
        CheckpointError, match=rf"(?s)in {saved} \(config\):.*model.attention_head: unknown key"
    ):
        load_checkpoint(saved)


def test_save_rejects_config_of_another_model(tmp_path, tiny):
    path = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match="config.task / config.model differ"):
        save_checkpoint(path, MetNet(tiny), preset("small"), NORMALIZATION)
    assert not path.exists()


def test_save_rejects_non_plain_extra(tmp_path, tiny):
    path = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match=r"extra\['history'\]\[1\] is a ndarray"):
        save_checkpoint(
            path, MetNet(tiny), tiny, NORMALIZATION, extra={"history": [1.0, np.ones(2)]}
        )
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_bad_normalization(tmp_path, tiny):
    with pytest.raises(
        CheckpointError,
        match=r"normalization\['abi_c13'\] must be a dict with keys 'mean' and 'std'",
    ):
        save_checkpoint(tmp_path / "m.pt", MetNet(tiny), tiny, {"abi_c13": {"mean": 1.0}})
