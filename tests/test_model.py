"""The MetNet model: shapes, gradients, lead-time batching, reference implementations, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from metnet.config import MetNetConfig, preset
from metnet.nn import MetNet
from metnet.nn.attention import AxialSelfAttention, get_positional_encoding, sinusoidal_encoding_2d
from metnet.nn.conditioning import lead_time_indices
from metnet.nn.convlstm import ConvLSTM
from metnet.nn.head import SubPixelHead


def with_model(config: MetNetConfig, **changes) -> MetNetConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))


def inputs(config: MetNetConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random normalised inputs (B, T, C, S, S)."""
    t = config.task
    g = torch.Generator().manual_seed(seed)
    size = (batch, t.num_frames, t.num_input_channels, t.packed_size, t.packed_size)
    return torch.randn(size, generator=g)


@pytest.fixture(scope="module")
def tiny() -> MetNetConfig:
    return preset("tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny) -> MetNet:
    return MetNet(tiny).eval()


def naive_forward(model: MetNet, x: torch.Tensor, lead_times: torch.Tensor) -> torch.Tensor:
    """Reference: tile the one-hot, concatenate it to every frame, conv, then the rest.

    One lead time at a time through the whole network, exactly as the paper describes.
    """
    task = model.config.task
    conv = model.downsampler.input_conv.conv
    batch, frames, _, size, _ = x.shape
    out = []
    for lead in lead_times.unbind(1):  # (B,)
        index = torch.tensor([task.lead_times.index(int(v)) for v in lead])  # (B,)
        onehot = F.one_hot(index, task.num_lead_times).float()  # (B, NL)
        tiled = onehot[:, None, :, None, None].expand(
            -1, frames, -1, size, size
        )  # (B, T, NL, S, S)
        stacked = torch.cat([x, tiled], dim=2).flatten(0, 1)  # (B*T, C+NL, S, S)
        h = F.relu(conv(stacked))  # (B*T, C0, S, S)
        h = model.downsampler.body(h).unflatten(0, (batch, frames))  # (B, T, Cd, S/4, S/4)
        h = model.temporal_encoder(h)  # (B, Ch, S/4, S/4)
        out.append(model.head(model.aggregator(h)))  # (B, bins, P, P)
    return torch.stack(out, dim=1)  # (B, L, bins, P, P)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_forward_shape_and_finite(name):
    config = preset(name)
    t = config.task
    model = MetNet(config).eval()
    leads = torch.tensor([[t.lead_times[0], t.lead_times[-1]]])  # (1, 2)
    with torch.inference_mode():
        out = model(inputs(config, batch=1), leads)
    assert out.shape == (1, 2, t.num_bins, t.target_px, t.target_px)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "changes",
    [{}, {"positional_encoding": "sinusoidal", "feedforward_ratio": 2.0, "dropout": 0.1}],
    ids=["default", "sinusoidal-ff-dropout"],
)
def test_every_parameter_gets_a_finite_nonzero_gradient(tiny, changes):
    config = with_model(tiny, **changes)
    model = MetNet(config).train()
    t = config.task
    x = inputs(config)
    leads = torch.tensor([[2, 12], [6, 4]])  # (B, L)
    target = torch.randint(0, t.num_bins, (2, 2, t.target_px, t.target_px))
    logits = model(x, leads)  # (B, L, bins, P, P)
    F.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_lead_time_changes_output(tiny, tiny_model):
    x = inputs(tiny)
    with torch.inference_mode():
        a = tiny_model(x, torch.tensor([[2], [2]]))
        b = tiny_model(x, torch.tensor([[4], [4]]))
        c = tiny_model(x, torch.tensor([[12], [12]]))
    assert (a - b).abs().max() > 1e-3
    assert (a - c).abs().max() > 1e-3


def test_batched_lead_times_equal_one_at_a_time(tiny, tiny_model):
    x = inputs(tiny)
    all_leads = torch.tensor([tiny.task.lead_times] * 2)  # (2, 6)
    mixed = torch.tensor([[12, 2, 6], [4, 4, 10]])  # (2, 3): any order, repeats
    with torch.inference_mode():
        for leads in (all_leads, mixed):
            batched = tiny_model(x, leads)  # (B, L, bins, P, P)
            chunked = tiny_model(x, leads, lead_chunk=2)
            single = torch.cat(
                [tiny_model(x, leads[:, i : i + 1]) for i in range(leads.shape[1])], 1
            )
            torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(chunked, single, rtol=1e-5, atol=1e-5)


def test_batched_lead_times_equal_one_at_a_time_small():
    config = preset("small")
    model = MetNet(config).eval()
    x = inputs(config, batch=1)
    leads = torch.tensor([[2, 60, 120]])
    with torch.inference_mode():
        batched = model(x, leads)
        single = torch.cat([model(x, leads[:, i : i + 1]) for i in range(3)], dim=1)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_shared_first_conv_equals_concat_then_conv(tiny, tiny_model):
    x = inputs(tiny)
    leads = torch.tensor([[2, 8, 12], [12, 4, 2]])
    with torch.inference_mode():
        reference = naive_forward(tiny_model, x, leads)
        out = tiny_model(x, leads)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_lead_term_includes_zero_padding_border(tiny_model):
    """The lead term is not a per-channel constant: the border sees the zero padding."""
    first = tiny_model.downsampler.input_conv
    with torch.no_grad():
        term = first.lead_term(torch.tensor([0, 5]), 16)  # (2, C0, 16, 16)
        weight = first.conv.weight[:, first.in_channels :]  # (C0, NL, 3, 3)
    torch.testing.assert_close(term[1, :, 8, 8], weight[:, 5].sum((1, 2)))  # interior: full sum
    torch.testing.assert_close(term[1, :, 0, 0], weight[:, 5, 1:, 1:].sum((1, 2)))  # corner
    assert not torch.allclose(term[1, :, 0, 0], term[1, :, 8, 8])


def test_initialisation_is_deterministic_and_seeded_from_config(tiny):
    state = torch.get_rng_state()
    a, b = MetNet(tiny), MetNet(tiny)
    assert torch.equal(torch.get_rng_state(), state), "building the model moved the global RNG"
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    other = MetNet(dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, seed=1)))
    for (name, p), q in zip(a.named_parameters(), other.parameters()):
        if p.ndim >= 2:  # random weights (norm scales and biases start at constants)
            assert not torch.equal(p, q), f"{name} does not depend on train.seed"
    x, leads = inputs(tiny), torch.tensor([[2], [2]])
    with torch.inference_mode():
        torch.testing.assert_close(a.eval()(x, leads), b.eval()(x, leads), rtol=0, atol=0)


def test_convlstm_matches_reference_cell():
    """Our split gate conv equals the textbook cell: one conv over concat(x_t, h), zero state."""
    torch.manual_seed(0)
    lstm = ConvLSTM(3, 5, 3)
    x = torch.randn(2, 4, 3, 6, 6)  # (N, T, C, H, W)
    weight = torch.cat(
        [lstm.input_conv.weight, lstm.hidden_conv.weight], dim=1
    )  # (4Ch, C+Ch, 3, 3)
    h = c = torch.zeros(2, 5, 6, 6)
    for t in range(4):
        gates = F.conv2d(torch.cat([x[:, t], h], 1), weight, lstm.input_conv.bias, padding=1)
        i, f, o, g = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    with torch.no_grad():
        torch.testing.assert_close(lstm(x), h, rtol=1e-5, atol=1e-6)
    # the frames are used in time order: reversing them changes the state
    with torch.no_grad():
        assert (lstm(x.flip(1)) - h).abs().max() > 1e-3


@pytest.mark.parametrize("axis", [1, 2])
def test_axial_attention_mixes_only_along_its_axis(axis):
    torch.manual_seed(0)
    attn = AxialSelfAttention(8, 2, axis, dropout=0.0).eval()
    x = torch.randn(1, 5, 6, 8)  # (N, H, W, D)
    y = x.clone()
    y[0, 2, 3] += 1.0  # perturb one cell
    with torch.no_grad():
        changed = (attn(y) - attn(x)).abs().amax(-1)[0] > 1e-6  # (H, W)
    expected = torch.zeros(5, 6, dtype=torch.bool)
    if axis == 2:
        expected[2, :] = True  # its row
    else:
        expected[:, 3] = True  # its column
    assert torch.equal(changed, expected)


def test_axial_attention_equals_full_attention_on_one_axis():
    """Along one row, our block is ordinary multi-head attention (checked with torch's MHA)."""
    torch.manual_seed(0)
    attn = AxialSelfAttention(8, 2, axis=2, dropout=0.0).eval()
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.out.weight)
        mha.out_proj.bias.copy_(attn.out.bias)
        x = torch.randn(2, 3, 7, 8)  # (N, H, W, D)
        rows = x.reshape(6, 7, 8)
        expected = mha(rows, rows, rows, need_weights=False)[0].reshape(2, 3, 7, 8)
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_sinusoidal_encoding_values():
    enc = sinusoidal_encoding_2d(4, 5, 8)  # (H, W, D): rows use channels 0-3, columns 4-7
    assert enc.shape == (4, 5, 8)
    torch.testing.assert_close(enc[3, 0, :2], torch.tensor([math.sin(3), math.cos(3)]))
    torch.testing.assert_close(enc[3, 0, 2:4], torch.tensor([math.sin(0.03), math.cos(0.03)]))
    torch.testing.assert_close(enc[0, 4, 4:6], torch.tensor([math.sin(4), math.cos(4)]))
    assert torch.equal(enc[2, 0, :4], enc[2, 4, :4])  # row channels constant along a row
    flat = enc.reshape(20, 8)
    assert torch.cdist(flat, flat).add(torch.eye(20)).min() > 0.1  # every cell distinct


def test_positional_encoding_registry_is_case_insensitive():
    assert get_positional_encoding("Sinusoidal", 2, 2, 4)(torch.zeros(1, 2, 2, 4)).abs().sum() > 0
    with pytest.raises(
        ValueError, match="unknown positional encoding 'rope'; valid names: learned, sinusoidal"
    ):
        get_positional_encoding("rope", 2, 2, 4)


def test_head_uses_only_target_cells_and_pixel_shuffle_order():
    torch.manual_seed(0)
    head = SubPixelHead(channels=4, latent_size=6, target_px=8, num_bins=3).eval()  # 2x2 cells
    x = torch.randn(1, 6, 6, 4)  # (N, Hl, Wl, D)
    y = x.clone()
    y[:, :2] += 5.0  # outside the central 2x2 cells (rows 2-3, cols 2-3)
    y[:, :, 4:] -= 5.0
    with torch.no_grad():
        out = head(x)
        torch.testing.assert_close(head(y), out)
        # bin b of pixel (4i + dy, 4j + dx) is channel b*16 + dy*4 + dx of cell (i, j)
        cell = head.proj(head.norm(x[0, 3, 2]))  # cell (i=1, j=0) -> (3 * 16,)
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out[0, 2, 4 + 1, 0 + 3], cell[2 * 16 + 1 * 4 + 3])


def test_lead_time_indices():
    task = preset("paper").task
    torch.testing.assert_close(
        lead_time_indices(torch.tensor([2, 4, 480]), task), torch.tensor([0, 1, 239])
    )


def test_meta_device_builds_paper_model_without_storage():
    with torch.device("meta"):
        model = MetNet(preset("paper"))
    assert all(p.is_meta for p in model.parameters())
    assert 150e6 < model.parameter_counts()["total"] < 250e6


# ----------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x, t: (x[0], t), r"5 dimensions \(batch, time, channel, y, x\), got shape \(2, 14, 16, 16\)"),
        (lambda x, t: (x[:, :1], t), r"1 frames, expected 2 \(task.history_minutes / task.history_interval_minutes \+ 1 = 10 / 10 \+ 1\)"),
        (lambda x, t: (x[:, :, :13], t), r"13 channels per frame, expected 14: one per name in task.input_channel_names\(\)"),
        (lambda x, t: (x[..., :12, :12], t), r"spatial size 12x12, expected 16x16 \(task.packed_size\)"),
        (lambda x, t: (x.to(torch.int64), t), r"inputs must be floating point, got dtype torch.int64"),
        (lambda x, t: (x.index_fill(3, torch.tensor([0]), float("nan")), t), r"inputs contain 896 NaN or infinite values; fill missing data and flag it in the validity-mask"),
        (lambda x, t: (x.index_fill(0, torch.tensor([1]), float("inf")), t), r"inputs contain 7168 NaN or infinite"),
        (lambda x, t: (x.numpy(), t), r"inputs must be a torch.Tensor, got ndarray"),
        (lambda x, t: (x, torch.tensor([[3], [2]])), r"lead time\(s\) 3 min are not predicted by this model: lead times must be multiples of 2 min in \[2, 12\]"),
        (lambda x, t: (x, torch.tensor([[0, 14], [2, -2]])), r"lead time\(s\) -2, 0, 14 min"),
        (lambda x, t: (x, torch.tensor([[2.0], [4.0]])), r"lead_times must be an integer tensor of minutes, got dtype torch.float32"),
        (lambda x, t: (x, torch.tensor([2, 4])), r"lead_times must have shape \(batch, num_leads\) = \(2, L\) with L >= 1, got shape \(2,\)"),
        (lambda x, t: (x, torch.tensor([[2]])), r"got shape \(1, 1\)"),
        (lambda x, t: (x, torch.zeros(2, 0, dtype=torch.int64)), r"got shape \(2, 0\)"),
        (lambda x, t: (x, [[2], [2]]), r"lead_times must be a torch.Tensor of shape \(batch, num_leads\), got list"),
    ],
    ids=["ndim", "frames", "channels", "size", "dtype", "nan", "inf", "numpy", "lead-step",
         "lead-range", "lead-dtype", "lead-ndim", "lead-batch", "lead-empty", "lead-list"],
)  # fmt: skip
def test_input_errors(tiny, tiny_model, make, message):
    x, leads = make(inputs(tiny), torch.tensor([[2], [4]]))
    with pytest.raises(ValueError, match=message):
        tiny_model(x, leads)


@pytest.mark.parametrize("chunk", [0, -1, 1.5, True])
def test_bad_lead_chunk(tiny, tiny_model, chunk):
    with pytest.raises(
        ValueError, match=f"lead_chunk must be a positive integer or None, got {chunk!r}"
    ):
        tiny_model(inputs(tiny), torch.tensor([[2], [4]]), lead_chunk=chunk)
