"""Tests of metnet.bins: golden values worked by hand, exact identities and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from metnet import bins
from metnet.config import TaskConfig

W = 0.2  # bin width of the tests, mm/h


def one_bin(k: int, n: int = 10) -> np.ndarray:
    """A distribution with all its mass in bin k (uniform over [k W, (k + 1) W))."""
    p = np.zeros(n)
    p[k] = 1.0
    return p


def two_bins() -> np.ndarray:
    """0.3 in [0.2, 0.4) and 0.7 in [0.6, 0.8) mm/h."""
    p = np.zeros(10)
    p[1], p[3] = 0.3, 0.7
    return p


def random_probs(shape: tuple[int, ...], n: int, seed: int = 0, axis: int = -3) -> np.ndarray:
    """Random sharp distributions over n bins, with the bin axis at ``axis``."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(n, 0.3), size=shape)  # (*shape, n)
    return np.moveaxis(p, -1, axis)


def numerical_crps(p: np.ndarray, y: float, w: float) -> float:
    """Integral of (F(x) - 1{x >= y})^2 by the trapezoid rule on a fine grid split at y."""
    edges = np.arange(p.size + 1) * w
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    top = max(edges[-1], y) + w
    total = 0.0
    for lo, hi, step in ((0.0, y, 0.0), (y, top, 1.0)):
        inner_edges = edges[(edges > lo) & (edges < hi)]  # nodes at the kinks of F
        x = np.unique(np.concatenate([np.linspace(lo, hi, 200_001), inner_edges]))
        f = (np.interp(x, edges, cdf) - step) ** 2
        total += np.trapezoid(f, x)
    return total


# ----------------------------------------------------------------------------- binning


def test_defaults_are_the_paper_task():
    task = TaskConfig()
    edges = bins.bin_edges()
    assert (task.bin_width_mm_h, task.num_bins) == (0.2, 512)
    assert edges.shape == (513,) and edges[0] == 0.0
    assert edges[-2] == pytest.approx(102.2) and edges[-1] == pytest.approx(102.4)


def test_rate_to_bin_golden_values():
    rates = [0.0, 0.1999, 0.2, 0.3, 1.4, np.float32(1.4), 2.0, 102.19, 102.2, 1e3, np.inf, np.nan]
    expected = [0, 0, 1, 1, 7, 7, 10, 510, 511, 511, 511, -1]
    index = bins.rate_to_bin(rates)
    assert index.dtype == np.int64
    np.testing.assert_array_equal(index, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decimal_rates_fall_into_the_bin_they_start(dtype):
    """MRMS stores rates in steps of 0.1 mm/h; 1.4 (1.3999... in binary) starts bin 7."""
    tenths = np.arange(0, 1100)
    rates = (tenths / 10).astype(dtype)
    np.testing.assert_array_equal(bins.rate_to_bin(rates), np.minimum(tenths // 2, 511))


def test_rate_to_bin_agrees_with_the_edges():
    rates = np.random.default_rng(1).uniform(0, 30, 10_000)
    index = bins.rate_to_bin(rates, bin_width=0.5, num_bins=40)
    edges = bins.bin_edges(0.5, 40)
    assert np.all(edges[index] <= rates + 1e-4 * 0.5)  # snapping moves at most 1e-4 bins
    closed = index < 39  # the last bin is open-ended: 19.5 mm/h and up
    assert np.all(rates[closed] < edges[index[closed] + 1])
    assert np.all(rates[~closed] >= 19.5) and (~closed).sum() > 1000


def test_rate_to_bin_keeps_shape():
    rates = np.full((2, 3, 4), 0.5)
    assert bins.rate_to_bin(rates).shape == (2, 3, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rate=[1.0, -3.0]), r"rates must be >= 0 mm/h .*MRMS's -3 flag.*minimum of -3"),
        (dict(rate=[1.0], bin_width=0.0), r"bin_width must be a positive number of mm/h, got 0"),
        (dict(rate=[1.0], num_bins=2.5), r"num_bins must be a positive integer, got 2.5"),
        (dict(rate=[1.0], num_bins=0), r"num_bins must be a positive integer, got 0"),
    ],
)
def test_rate_to_bin_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bins.rate_to_bin(**kwargs)


# ----------------------------------------------------------------------------- exceedance


def test_exceedance_of_one_bin_interpolates_inside_it():
    p = one_bin(5)  # uniform over [1.0, 1.2)
    got = bins.exceedance_probability(p, [0.0, 0.9, 1.0, 1.05, 1.1, 1.2, 1.3, 50.0], W, axis=0)
    np.testing.assert_allclose(got, [1, 1, 1, 0.75, 0.5, 0, 0, 0], atol=1e-12)


def test_exceedance_of_two_bins():
    got = bins.exceedance_probability(two_bins(), [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8], W, axis=0)
    np.testing.assert_allclose(got, [1, 1, 0.85, 0.7, 0.7, 0.35, 0], atol=1e-12)


def test_exceedance_at_bin_edges_is_the_mass_of_the_bins_above():
    p = random_probs((3, 4, 5), n=12)  # (3, 12, 4, 5)
    edges = np.arange(13) * W  # 0.0, 0.2, ... includes decimals such as 0.6000000000000001
    got = bins.exceedance_probability(p, edges, W)  # (13, 3, 4, 5)
    tails = np.flip(np.cumsum(np.flip(p, 1), 1), 1)  # (3, 12, 4, 5) mass of bins >= k
    expected = np.concatenate([np.moveaxis(tails, 1, 0), np.zeros((1, 3, 4, 5))])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # A decimal threshold on an edge, e.g. 1.4 mm/h, means bins 7 and up.
    np.testing.assert_allclose(
        bins.exceedance_probability(p, 1.4, W), p[:, 7:].sum(axis=1), atol=1e-12
    )


def test_exceedance_shape_follows_thresholds():
    p = random_probs((2, 3, 3), n=8)  # (2, 8, 3, 3)
    assert bins.exceedance_probability(p, 0.5, W).shape == (2, 3, 3)
    assert bins.exceedance_probability(p, [0.5, 1.0], W).shape == (2, 2, 3, 3)
    assert bins.exceedance_probability(p, [[0.5], [1.0]], W).shape == (2, 1, 2, 3, 3)


def test_exceedance_decreases_with_threshold():
    p = random_probs((4, 6, 6), n=30)
    got = bins.exceedance_probability(p, np.linspace(0, 7, 71), W)
    assert np.all(np.diff(got, axis=0) <= 1e-15)
    assert got.min() >= 0 and got.max() <= 1


# ----------------------------------------------------------------------------- quantiles


def test_quantiles_of_two_bins():
    got = bins.quantile(two_bins(), [0.0, 0.15, 0.3, 0.5, 0.65, 1.0], W, axis=0)
    # F is flat on [0.4, 0.6]: the 0.3 quantile is the smallest x with F(x) >= 0.3.
    np.testing.assert_allclose(got, [0.0, 0.3, 0.4, 0.6 + W * 0.2 / 0.7, 0.7, 0.8], atol=1e-12)


def test_quantiles_of_the_uniform_distribution():
    n = 512
    p = np.full(n, 1.0 / n)
    qs = np.linspace(0, 1, 11)
    np.testing.assert_allclose(bins.quantile(p, qs, W, axis=0), qs * n * W, atol=1e-9)


def test_quantile_inverts_exceedance():
    p = random_probs((3, 5, 5), n=40)  # (3, 40, 5, 5)
    qs = np.array([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
    x = bins.quantile(p, qs, W)  # (7, 3, 5, 5)
    assert np.all(np.diff(x, axis=0) >= 0)
    for i, q in enumerate(qs):
        # Thresholds per pixel: evaluate pixel by pixel through a 1-D distribution.
        back = [
            bins.exceedance_probability(p[a, :, b, c], x[i, a, b, c], W, axis=0)
            for a, b, c in np.ndindex(3, 5, 5)
        ]
        np.testing.assert_allclose(back, 1 - q, atol=1e-12)
    # And the other way: the rate whose exceedance is e has quantile level 1 - e.
    rate = 1.3
    e = bins.exceedance_probability(p, rate, W)  # (3, 5, 5)
    inside = p[:, 6] > 1e-9  # bin [1.2, 1.4) has mass, so F is strictly increasing at 1.3
    for a, b, c in zip(*np.nonzero(inside)):
        got = bins.quantile(p[a, :, b, c], 1 - e[a, b, c], W, axis=0)
        assert got == pytest.approx(rate, abs=1e-9)


def test_quantile_stays_below_the_closing_edge():
    p = one_bin(9)  # the open last bin of 10, treated as [1.8, 2.0)
    np.testing.assert_allclose(bins.quantile(p, [0.5, 1.0], W, axis=0), [1.9, 2.0])


# ----------------------------------------------------------------------------- mean


def test_expected_rate_golden_values():
    assert bins.expected_rate(one_bin(5), W, axis=0) == pytest.approx(1.1)
    assert bins.expected_rate(two_bins(), W, axis=0) == pytest.approx(0.3 * 0.3 + 0.7 * 0.7)
    uniform = np.full(512, 1 / 512)
    assert bins.expected_rate(uniform, W, axis=0) == pytest.approx(51.2)
    # The open last bin counts at its one-bin-width centre, (N - 0.5) W.
    assert bins.expected_rate(one_bin(511, 512), W, axis=0) == pytest.approx(102.3)


def test_expected_rate_is_the_sum_over_bin_centres():
    p = random_probs((2, 3, 4), n=25)  # (2, 25, 3, 4)
    centres = (np.arange(25) + 0.5) * W
    expected = np.einsum("abij,b->aij", p, centres)
    np.testing.assert_allclose(bins.expected_rate(p, W), expected, rtol=1e-12)


# ----------------------------------------------------------------------------- CRPS


@pytest.mark.parametrize("y", [0.0, 0.5, 3.0, 10.0])
def test_crps_of_one_bin_away_from_it_is_the_distance_less_a_sixth(y):
    """For y outside [a, a + W]: |mean - y| - W / 6 (the point mass would give |mean - y|)."""
    p = one_bin(5)  # uniform over [1.0, 1.2)
    assert bins.crps(p, y, W, axis=0) == pytest.approx(abs(1.1 - y) - W / 6, abs=1e-12)


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_crps_inside_the_bin(t):
    """For y = a + t W: W (t^3 + (1 - t)^3) / 3, e.g. W / 12 at the centre."""
    p = one_bin(5)
    got = bins.crps(p, 1.0 + t * W, W, axis=0)
    assert got == pytest.approx(W * (t**3 + (1 - t) ** 3) / 3, abs=1e-12)


def test_crps_above_the_closing_edge_of_the_open_bin():
    p = one_bin(9)  # last of 10 bins, treated as uniform over [1.8, 2.0)
    assert bins.crps(p, 5.0, W, axis=0) == pytest.approx(5.0 - 1.9 - W / 6)


def test_crps_matches_numerical_integration():
    rng = np.random.default_rng(3)
    for seed in range(4):
        p = random_probs((), n=20, seed=seed, axis=0)  # (20,)
        for y in (0.0, rng.uniform(0, 4), 1.4, 3.9, 4.0, 6.5):
            expected = numerical_crps(p, y, W)
            assert bins.crps(p, y, W, axis=0) == pytest.approx(expected, abs=1e-8)


def test_crps_is_smallest_for_the_observed_bin():
    y = 1.1
    scores = [bins.crps(one_bin(k), y, W, axis=0) for k in range(10)]
    assert np.argmin(scores) == 5
    assert np.all(np.diff(scores[5:]) > 0) and np.all(np.diff(scores[:6]) < 0)


# ----------------------------------------------------------------------------- layout


def test_any_bin_axis_gives_the_same_results():
    p = random_probs((3, 4, 5), n=16, axis=-3)  # (3, 16, 4, 5)
    obs = np.random.default_rng(2).uniform(0, 4, (3, 4, 5))
    reference = {
        "exceedance": bins.exceedance_probability(p, [0.3, 1.0], W),
        "quantile": bins.quantile(p, [0.1, 0.9], W),
        "mean": bins.expected_rate(p, W),
        "crps": bins.crps(p, obs, W),
    }
    last = np.moveaxis(p, 1, -1)  # (3, 4, 5, 16)
    np.testing.assert_allclose(
        bins.exceedance_probability(last, [0.3, 1.0], W, axis=-1), reference["exceedance"]
    )
    np.testing.assert_allclose(bins.quantile(last, [0.1, 0.9], W, axis=3), reference["quantile"])
    np.testing.assert_allclose(bins.expected_rate(last, W, axis=-1), reference["mean"])
    np.testing.assert_allclose(bins.crps(last, obs, W, axis=-1), reference["crps"])
    # Pixel by pixel through 1-D distributions.
    for a, b, c in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        pixel = p[a, :, b, c]
        crps = bins.crps(pixel, obs[a, b, c], W, axis=0)
        assert crps == pytest.approx(reference["crps"][a, b, c])
        assert bins.expected_rate(pixel, W, axis=0) == pytest.approx(reference["mean"][a, b, c])


def test_blocked_processing_equals_one_block(monkeypatch):
    p = random_probs((5, 6, 7), n=32).astype(np.float32)  # (5, 32, 6, 7)
    obs = np.random.default_rng(4).uniform(0, 7, (5, 6, 7))
    whole = [
        bins.exceedance_probability(p, [0.2, 1.0, 2.0], W),
        bins.quantile(p, [0.1, 0.5, 0.9], W),
        bins.expected_rate(p, W),
        bins.crps(p, obs, W),
    ]
    monkeypatch.setattr(bins, "_BLOCK_ELEMENTS", 20)  # under one pixel's 32 bins: 1 pixel a block
    blocked = [
        bins.exceedance_probability(p, [0.2, 1.0, 2.0], W),
        bins.quantile(p, [0.1, 0.5, 0.9], W),
        bins.expected_rate(p, W),
        bins.crps(p, obs, W),
    ]
    monkeypatch.setattr(bins, "_BLOCK_ELEMENTS", 32 * 7 * 3)  # splits the y axis in steps of 3
    partial = bins.crps(p, obs, W)
    # Equal up to the summation order of np.einsum, which depends on the block's layout.
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(partial, whole[3], rtol=1e-13)


def test_missing_values_propagate_as_nan():
    p = random_probs((2, 3), n=10, axis=0)  # (10, 2, 3)
    p[:, 0, 1] = np.nan
    obs = np.full((2, 3), 0.7)
    obs[1, 2] = np.nan
    assert np.isnan(bins.exceedance_probability(p, [0.5, 1.0], W, axis=0)[:, 0, 1]).all()
    assert np.isnan(bins.quantile(p, [0.5], W, axis=0)[0, 0, 1])
    assert np.isnan(bins.expected_rate(p, W, axis=0)[0, 1])
    crps = bins.crps(p, obs, W, axis=0)
    assert np.isnan(crps[0, 1]) and np.isnan(crps[1, 2])
    assert np.isfinite(np.delete(crps.ravel(), [1, 5])).all()


# ----------------------------------------------------------------------------- errors


ERRORS = [
    (
        lambda p: bins.exceedance_probability(p * 3, 1.0, W, axis=0),
        r"along the bin axis \(axis=0\) must sum to 1; got a sum of 3 \(apply a softmax",
    ),
    (
        lambda p: bins.expected_rate(p - 0.05, W, axis=0),
        r"along the bin axis \(axis=0\) must be >= 0",
    ),
    (
        lambda p: bins.quantile(p, [0.5], W, axis=2),
        r"bin axis 2 is out of range for probs of shape \(10, 2\)",
    ),
    (
        lambda p: bins.exceedance_probability(p, [1.0, -0.2], W, axis=0),
        r"thresholds \(mm/h\) must be finite and >= 0; got -0.2",
    ),
    (
        lambda p: bins.exceedance_probability(p, np.nan, W, axis=0),
        r"thresholds \(mm/h\) must be finite and >= 0; got nan",
    ),
    (
        lambda p: bins.quantile(p, [0.5, 1.5], W, axis=0),
        r"quantile levels must lie in \[0, 1\]; got 1.5",
    ),
    (
        lambda p: bins.crps(p, [1.0, -3.0], W, axis=0),
        r"observed rates must be >= 0 mm/h .*minimum of -3",
    ),
    (
        lambda p: bins.crps(p, np.ones(3), W, axis=0),
        r"observed has shape \(3,\), which does not broadcast to .* axis 0: \(2,\)",
    ),
    (
        lambda p: bins.expected_rate(p, -0.2, axis=0),
        r"bin_width must be a positive number of mm/h, got -0.2",
    ),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_errors_name_the_rule(call, message):
    p = random_probs((2,), n=10, axis=0)  # (10, 2)
    with pytest.raises(ValueError, match=message):
        call(p)
