"""``metnet info`` and the meta-device summary behind it: counts, FLOPs, speed, errors."""

from __future__ import annotations

import dataclasses
import itertools
import resource
import time

import pytest
import torch
from typer.testing import CliRunner

from metnet.cli import app
from metnet.config import MetNetConfig, preset
from metnet.nn import MetNet
from metnet.nn.summary import count_flops, meta_model, summarize


def expected_forward_flops(config: MetNetConfig, leads: int = 1) -> int:
    """FLOPs by hand for one sample: convs, linears and attention, multiply-add = 2."""
    t, m = config.task, config.model
    size, frames, c = t.packed_size, t.num_frames, m.downsampler_channels
    k2, kl2 = m.kernel_size**2, m.convlstm_kernel_size**2
    shared = 2 * frames * size**2 * t.num_input_channels * c[0] * k2  # first conv, input part
    k = m.kernel_size  # first conv, one-hot part: two matrix products with the border mask
    per_lead = 2 * c[0] * k * k * size + 2 * c[0] * k * size * size
    per_lead += 2 * frames * (size // 2) ** 2 * k2 * sum(a * b for a, b in itertools.pairwise(c))
    side = size // 4
    cells, h, d = side**2, m.convlstm_channels, m.attention_channels
    per_lead += 2 * frames * cells * kl2 * c[-1] * 4 * h  # ConvLSTM input gates, all frames
    per_lead += 2 * (frames - 1) * cells * kl2 * h * 4 * h  # hidden gates, zero first state
    per_lead += 2 * cells * h * d  # projection to the attention width
    per_lead += m.attention_blocks * (2 * cells * d * 4 * d + 2 * 2 * cells * side * d)
    per_lead += 2 * (t.target_px // 4) ** 2 * d * t.num_bins * 16  # sub-pixel head
    return shared + leads * per_lead


@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_flops_match_hand_count(name):
    config = preset(name)
    assert count_flops(config) == expected_forward_flops(config)
    assert count_flops(config, leads=3) == expected_forward_flops(config, leads=3)
    summary = summarize(config)
    assert summary.flops_per_lead == expected_forward_flops(config)
    assert summary.flops_per_extra_lead < summary.flops_per_lead


def test_backward_flops_about_twice_forward():
    config = preset("tiny")
    ratio = count_flops(config, batch=2, backward=True) / count_flops(config, batch=2)
    assert 2.5 < ratio < 3.1


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_meta_parameter_counts_equal_real_model(name):
    config = preset(name)
    real = MetNet(config).parameter_counts()
    assert meta_model(config).parameter_counts() == real
    assert real["total"] == sum(v for k, v in real.items() if k != "total")


def test_paper_counts_and_no_allocation():
    model = meta_model(preset("paper"))
    assert all(p.is_meta for p in model.parameters())
    counts = model.parameter_counts()
    assert counts["total"] == 162_971_872
    # 8 blocks x (q, k, v, out projections 4 D^2 + 4 D biases + LayerNorm 2 D), D = 2048
    blocks = 8 * (4 * 2048**2 + 4 * 2048 + 2 * 2048)
    assert counts["attention"] == blocks + 384 * 2048 + 2048 + 64 * 2048 * 2  # + proj, pos. enc.


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_info_paper_prints_counts_and_flops_fast():
    before = peak_rss_mb()
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["info", "--preset", "paper"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    out = result.output
    assert "attention_channels: 2048" in out  # the resolved config
    for label in ("input/downsampler", "convlstm", "attention", "head"):
        assert f"\n  {label} " in out
    assert "total                 162,971,872  (  162.97 M)" in out
    assert "one lead time                      2.02 TFLOP" in out
    assert "all 240 lead times of one tile" in out
    assert "~225 M parameters; this config: 163.0 M" in out
    assert "with feedforward_ratio = 1" in out and "230.1 M" in out
    # the 163 M fp32 weights (650 MB) are never allocated, and it takes seconds
    assert peak_rss_mb() - before < 300
    assert elapsed < 20


def test_info_config_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: tiny\nmodel:\n  convlstm_channels: 24\n  feedforward_ratio: 2\n")
    result = CliRunner().invoke(app, ["info", "--config", str(path)])
    assert result.exit_code == 0, result.output
    config = preset("tiny")
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, convlstm_channels=24, feedforward_ratio=2.0),
    )
    total = MetNet(config).parameter_counts()["total"]
    assert "convlstm_channels: 24" in result.output
    assert f"  {'total':<18} {total:>14,d}" in result.output
    assert "With model.feedforward_ratio = 2 the blocks have a feed-forward layer" in result.output


def test_info_defaults_to_paper():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "162,971,872" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "error: unknown preset 'huge'; valid presets: paper, small, tiny"),
        (["--preset", "tiny", "--config", "x.yaml"], "error: give either --preset or --config"),
        (
            ["--config", "{missing}"],
            "error: invalid configuration in {missing}:\n  cannot read file",
        ),
        (
            ["--config", "{bad}"],
            "error: invalid configuration in {bad}:\n  model.heads: unknown key",
        ),
    ],
    ids=["unknown-preset", "both", "missing-file", "unknown-key"],
)
def test_info_errors(tmp_path, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  heads: 4\n")
    paths = {"missing": tmp_path / "missing.yaml", "bad": bad}
    args = [a.format(**paths) for a in args]
    result = CliRunner().invoke(app, ["info", *args])
    assert result.exit_code == 1
    assert message.format(**paths) in result.stderr
    assert "parameters:" not in result.stdout


def test_count_flops_leaves_no_grad_state():
    count_flops(preset("tiny"), backward=True)
    assert torch.is_grad_enabled()
