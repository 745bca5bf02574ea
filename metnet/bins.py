"""Precipitation-rate bins: rate <-> bin index, and a distribution over bins -> products.

Bins. With bin width ``w`` (mm/h) and ``N`` bins, bin ``k < N - 1`` holds the rates in
``[k w, (k + 1) w)`` and the last bin ``N - 1`` is open-ended, ``[(N - 1) w, inf)``. With
the paper's defaults (0.2 mm/h, 512 bins) the last bin holds every rate >= 102.2 mm/h.

Distributions. A forecast is a probability vector over the bins along a ``bin`` axis
(``probs``: non-negative, summing to 1), e.g. ``(lead_time, bin, y, x)`` with the bin axis
at ``-3``, the default ``axis`` of every function here. Inside each bin the distribution
is taken to be uniform, so the CDF is piecewise linear between the bin edges. The open
last bin is treated as uniform over one bin width, ``[(N - 1) w, N w)``: the model says
nothing about the shape of the tail, and this choice keeps the mean, the quantiles and
the CRPS finite. It understates the tail above ``N w`` (102.4 mm/h by default), which a
few MRMS pixels per million reach. Exceedance probabilities at thresholds inside the
regular bins do not depend on this choice.

Rounding. Rates and thresholds are placed relative to the edges after snapping values
within ``1e-4`` bin widths of an edge onto it, so decimal rates such as 1.4 mm/h (stored
as 1.3999999... in float64 and float32, as in MRMS files) fall into the bin that starts
at 1.4 mm/h, as written, and a threshold of 1.4 mm/h means "the bins from 1.4 mm/h up".

All functions are pure numpy. Large inputs are processed in blocks of the non-bin axes,
so temporaries stay near ``_BLOCK_ELEMENTS`` values whatever the size of ``probs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import ArrayLike

#: Values within this many bin widths of a bin edge are snapped onto the edge.
_SNAP = 1e-4
#: Probabilities along the bin axis must sum to 1 within this tolerance.
_SUM_TOLERANCE = 1e-3
#: Upper bound on bin-axis values handled per block (float64 temporaries of 8 MiB each).
_BLOCK_ELEMENTS = 1 << 20


def bin_edges(bin_width: float = 0.2, num_bins: int = 512) -> np.ndarray:
    """Edges of the bins, mm/h: float64 ``(num_bins + 1,)``, ``0, w, ..., num_bins * w``.

    The last edge closes the open last bin only for the piecewise-uniform treatment of a
    distribution (see the module docstring); observed rates above it still fall in the
    last bin.
    """
    _check_bins(bin_width, num_bins)
    return np.arange(num_bins + 1) * float(bin_width)


def rate_to_bin(rate: ArrayLike, bin_width: float = 0.2, num_bins: int = 512) -> np.ndarray:
    """Bin index of each precipitation rate.

    Args:
        rate: precipitation rates in mm/h, any shape; NaN marks missing data.
        bin_width: width of the bins, mm/h.
        num_bins: number of bins; the last one is open-ended.

    Returns:
        int64 array of the shape of ``rate``: the bin index in ``[0, num_bins)``, or
        ``-1`` where the rate is NaN (callers build their validity mask as ``index >= 0``).

    Raises:
        ValueError: a rate is negative (missing data must be NaN, not a negative flag).
    """
    _check_bins(bin_width, num_bins)
    rate = np.asarray(rate, dtype=np.float64)
    if np.any(rate < 0):
        raise ValueError(
            f"precipitation rates must be >= 0 mm/h (missing data must be NaN, e.g. MRMS's "
            f"-3 flag); got a minimum of {np.nanmin(rate):g} mm/h"
        )
    index = np.minimum(np.floor(_position(rate, bin_width)), num_bins - 1)
    return np.where(np.isnan(rate), -1, index).astype(np.int64)


def exceedance_probability(
    probs: ArrayLike, thresholds: ArrayLike, bin_width: float = 0.2, axis: int = -3
) -> np.ndarray:
    """Probability that the rate exceeds each threshold, ``P(rate > threshold)``.

    Inside a bin the CDF is linear, so a threshold in the middle of a bin counts half of
    that bin's probability. At a bin edge ``k w`` the result is the total probability of
    bins ``k`` and above, i.e. the forecast probability of an observation ``>= k w``.

    Args:
        probs: probabilities over bins along ``axis``, e.g. ``(lead_time, bin, y, x)``.
        thresholds: rates in mm/h (>= 0), shape ``Q`` (a scalar or e.g. ``(n_thresholds,)``).
        bin_width: width of the bins, mm/h.
        axis: the bin axis of ``probs``.

    Returns:
        float64 ``(*Q, *rest)`` in ``[0, 1]``, where ``rest`` is the shape of ``probs``
        without the bin axis, e.g. ``(n_thresholds, lead_time, y, x)``. Pixels whose
        probabilities contain NaN give NaN.
    """
    thresholds = _nonnegative(thresholds, "thresholds (mm/h)")
    flat = thresholds.ravel()  # (K,)

    def block(cdf: np.ndarray) -> np.ndarray:  # cdf (N + 1, *b)
        n = cdf.shape[0] - 1
        pos = np.minimum(_position(flat, bin_width), n)  # (K,) beyond the last edge: F = 1
        k = np.minimum(np.floor(pos).astype(np.int64), n - 1)
        frac = _expand(pos - k, cdf.ndim - 1)  # (K, 1, ...)
        below = cdf[k] + (cdf[k + 1] - cdf[k]) * frac  # (K, *b) CDF at each threshold
        return np.clip(1.0 - below, 0.0, 1.0)  # rounding must not leave [0, 1]

    result = _over_blocks(probs, axis, bin_width, flat.shape, block)  # (K, *rest)
    return result.reshape(thresholds.shape + result.shape[1:])


def quantile(
    probs: ArrayLike, qs: ArrayLike, bin_width: float = 0.2, axis: int = -3
) -> np.ndarray:
    """Quantiles of the distribution: the inverse of its piecewise-linear CDF, mm/h.

    The quantile of level ``q`` is the smallest rate ``x >= 0`` with ``F(x) >= q``, so
    ``exceedance_probability(probs, quantile(probs, q)) == 1 - q`` and ``q = 0`` gives 0.

    Args:
        probs: probabilities over bins along ``axis``, e.g. ``(lead_time, bin, y, x)``.
        qs: quantile levels in ``[0, 1]``, shape ``Q``.
        bin_width: width of the bins, mm/h.
        axis: the bin axis of ``probs``.

    Returns:
        float64 ``(*Q, *rest)`` rates in mm/h, at most ``num_bins * bin_width``; NaN for
        pixels whose probabilities contain NaN.
    """
    qs = _nonnegative(qs, "quantile levels")
    if np.any(qs > 1):
        raise ValueError(f"quantile levels must lie in [0, 1]; got {qs.max():g}")
    flat = qs.ravel()  # (K,)

    def block(cdf: np.ndarray) -> np.ndarray:  # cdf (N + 1, *b)
        n = cdf.shape[0] - 1
        level = _expand(flat, cdf.ndim - 1)  # (K, 1, ...)
        # The bin holding level q is the first k with F(upper edge of k) >= q.
        k = (cdf[None, 1:] < level[:, None]).sum(axis=1)  # (K, *b)
        k = np.minimum(k, n - 1)  # only when rounding leaves F(N w) a hair below q
        low = np.take_along_axis(cdf[None], k[:, None], axis=1)[:, 0]  # (K, *b)
        high = np.take_along_axis(cdf[None], k[:, None] + 1, axis=1)[:, 0]  # (K, *b)
        mass = high - low
        frac = np.divide(level - low, mass, out=np.zeros_like(mass), where=mass > 0)
        rate = (k + np.clip(frac, 0.0, 1.0)) * bin_width  # (K, *b)
        return np.where(np.isnan(cdf[-1]), np.nan, rate)

    result = _over_blocks(probs, axis, bin_width, flat.shape, block)  # (K, *rest)
    return result.reshape(qs.shape + result.shape[1:])


def expected_rate(probs: ArrayLike, bin_width: float = 0.2, axis: int = -3) -> np.ndarray:
    """Mean rate of the distribution, mm/h: float64 ``rest`` (``probs`` without the bin axis).

    Each bin contributes its probability times its centre; the open last bin counts at
    ``(N - 0.5) w`` (101.3 mm/h by default), per the one-bin-width convention.
    """

    def block(cdf: np.ndarray) -> np.ndarray:  # cdf (N + 1, *b)
        # E[X] = integral of (1 - F); F is linear inside each bin (trapezoid rule is exact).
        return bin_width * (1.0 - 0.5 * (cdf[:-1] + cdf[1:])).sum(axis=0)  # (*b)

    return _over_blocks(probs, axis, bin_width, (), block)


def crps(
    probs: ArrayLike, observed: ArrayLike, bin_width: float = 0.2, axis: int = -3
) -> np.ndarray:
    """Continuous ranked probability score of the distribution against observed rates.

    ``CRPS = integral over x of (F(x) - 1{x >= y})^2``, in mm/h, exact for the
    piecewise-uniform distribution. In bin ``k`` the CDF runs linearly from ``a_k`` to
    ``b_k`` (its values at the edges), and the integral of the square of a linear function
    running from ``u`` to ``v`` over a length ``L`` is ``L (u^2 + u v + v^2) / 3``. So a bin
    wholly below ``y`` adds ``w g_k`` with ``g_k = (a_k^2 + a_k b_k + b_k^2) / 3``, a bin
    wholly above adds ``w (1 - a_k - b_k + g_k)`` (the same formula for ``1 - F``), the bin
    holding ``y`` is split at ``y``, and an observation above the closing edge ``N w`` adds
    ``y - N w`` (``F`` is 1 there). The sums over bins are taken in closed form from sums
    of the CDF, which is ~3x faster than adding per-bin terms.

    Args:
        probs: probabilities over bins along ``axis``, e.g. ``(lead_time, bin, y, x)``.
        observed: observed rates in mm/h (>= 0, NaN = missing), broadcastable to the shape
            of ``probs`` without the bin axis, e.g. ``(lead_time, y, x)``.
        bin_width: width of the bins, mm/h.
        axis: the bin axis of ``probs``.

    Returns:
        float64 CRPS in mm/h with the shape of ``probs`` without the bin axis; NaN where
        the observation or the probabilities are NaN.
    """
    observed = np.asarray(observed, dtype=np.float64)
    if np.any(observed < 0):
        raise ValueError(
            f"observed rates must be >= 0 mm/h (missing data must be NaN); "
            f"got a minimum of {np.nanmin(observed):g} mm/h"
        )
    w = bin_width

    def block(cdf: np.ndarray, obs: np.ndarray) -> np.ndarray:  # cdf (N + 1, *b), obs (*b)
        n = cdf.shape[0] - 1
        missing = np.isnan(obs)
        y = np.where(missing, 0.0, obs)  # (*b)
        j = np.minimum(np.floor(y / w), n - 1).astype(np.int64)  # (*b) the bin split at y
        a, b = _at(cdf, j), _at(cdf, j + 1)  # (*b) CDF at the edges of bin j
        # Sum of g_k over all bins: sum(a_k^2 + b_k^2) = 2 sum(C^2) - C_0^2 - C_N^2, C_N = 1.
        g_all = (2.0 * _dot(cdf, cdf) - 1.0 + _dot(cdf[:-1], cdf[1:])) / 3.0  # (*b)
        g_j = (a * a + a * b + b * b) / 3.0
        # tail[m] = sum of C_k over k >= m, zero past the end.
        tail = np.zeros((n + 2,) + cdf.shape[1:])  # (N + 2, *b)
        tail[1:] = cdf[::-1]
        tail = _accumulate(tail)[::-1]
        # sum over bins k > j of (1 - a_k - b_k); a_k = C_k, b_k = C_{k+1}.
        ones_above = (n - 1 - j) - (_at(tail, j + 1) - 1.0) - _at(tail, j + 2)
        length = np.clip(y - j * w, 0.0, w)  # (*b) part of bin j below y
        at_y = a + (b - a) * (length / w)  # (*b) F(y), or F at the bin's top if y is beyond
        u, v = 1.0 - at_y, 1.0 - b
        split = length * (a * a + a * at_y + at_y * at_y) / 3.0 + (w - length) * (
            u * u + u * v + v * v
        ) / 3.0
        beyond = np.maximum(y - n * w, 0.0)
        total = w * (g_all - g_j) + w * ones_above + split + beyond  # (*b)
        return np.where(missing, np.nan, total)

    return _over_blocks(probs, axis, bin_width, (), block, observed)


# ----------------------------------------------------------------------------- helpers


def _check_width(bin_width: float) -> None:
    if not (np.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be a positive number of mm/h, got {bin_width!r}")


def _check_bins(bin_width: float, num_bins: int) -> None:
    _check_width(bin_width)
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")


def _position(rate: ArrayLike, bin_width: float) -> np.ndarray:
    """Rates in units of bin widths, snapped onto an edge when within ``_SNAP`` of it."""
    pos = np.asarray(rate, dtype=np.float64) / bin_width
    edge = np.rint(pos)
    with np.errstate(invalid="ignore"):  # inf - inf: infinite rates stay infinite
        return np.where(np.abs(pos - edge) < _SNAP, edge, pos)


def _nonnegative(values: ArrayLike, what: str) -> np.ndarray:
    """``values`` as float64, checked finite and >= 0; ``what`` names them in the error."""
    values = np.asarray(values, dtype=np.float64)
    good = np.isfinite(values) & (values >= 0)
    if not np.all(good):
        raise ValueError(f"{what} must be finite and >= 0; got {values[~good].ravel()[0]:g}")
    return values


def _expand(values: np.ndarray, ndim: int) -> np.ndarray:
    """``values`` (K,) as (K, 1, ..., 1) with ``ndim`` trailing axes for broadcasting."""
    return values.reshape(values.shape + (1,) * ndim)


def _accumulate(values: np.ndarray) -> np.ndarray:
    """Running sum along axis 0, in place; returns ``values``.

    ``np.cumsum`` along a leading axis is ~25x slower than this loop over rows.
    """
    for k in range(1, values.shape[0]):
        values[k] += values[k - 1]
    return values


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index[...], ...]``: one entry along axis 0 per pixel; (K, *b), (*b) -> (*b)."""
    return np.take_along_axis(values, index[None], axis=0)[0]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over axis 0 of ``a * b`` without a full-size temporary: (K, *b) -> (*b)."""
    return np.einsum("k...,k...->...", a, b)


def _bins_first(probs: ArrayLike, axis: int) -> np.ndarray:
    """``probs`` as a view with the bin axis first: ``(N, *rest)``."""
    probs = np.asarray(probs)
    if not -probs.ndim <= axis < probs.ndim:
        raise ValueError(f"bin axis {axis} is out of range for probs of shape {probs.shape}")
    return np.moveaxis(probs, axis, 0)


def _cdf(block: np.ndarray, axis: int) -> np.ndarray:
    """The CDF at the bin edges, ``(N + 1, *b)`` float64 from 0 to exactly 1.

    Checks that probabilities are non-negative and sum to 1 (within ``_SUM_TOLERANCE``),
    then divides by the sum so that rounding never leaves mass above or below the ends.
    """
    cdf = np.zeros((block.shape[0] + 1,) + block.shape[1:], dtype=np.float64)
    cdf[1:] = block
    _accumulate(cdf)
    if np.any(block < 0):
        raise ValueError(
            f"probabilities along the bin axis (axis={axis}) must be >= 0; "
            f"got {np.nanmin(block):g}"
        )
    total = cdf[-1]
    if np.any(np.abs(total - 1.0) > _SUM_TOLERANCE):
        worst = total.ravel()[np.nanargmax(np.abs(total - 1.0))]
        raise ValueError(
            f"probabilities along the bin axis (axis={axis}) must sum to 1; got a sum of "
            f"{worst:g} (apply a softmax to logits first)"
        )
    cdf /= total
    return cdf


def _block_slices(rest: tuple[int, ...], num_bins: int) -> Iterator[tuple]:
    """Index tuples into the non-bin axes, each selecting about ``_BLOCK_ELEMENTS`` values.

    The trailing axes that fit stay whole; the first axis that does not fit is cut in
    steps, and the axes before it are walked one index at a time.
    """
    inner = num_bins
    split = len(rest)
    while split > 0 and inner * rest[split - 1] <= _BLOCK_ELEMENTS:
        split -= 1
        inner *= rest[split]
    if split == 0:
        yield ()
        return
    step = max(1, _BLOCK_ELEMENTS // inner)
    for outer in np.ndindex(*rest[: split - 1]):
        for start in range(0, rest[split - 1], step):
            yield outer + (slice(start, start + step),)


def _over_blocks(
    probs: ArrayLike,
    axis: int,
    bin_width: float,
    lead_shape: tuple[int, ...],
    fn: Callable[..., np.ndarray],
    observed: np.ndarray | None = None,
) -> np.ndarray:
    """Apply ``fn(cdf_block[, observed_block]) -> (*lead_shape, *block)`` block by block.

    Returns float64 ``(*lead_shape, *rest)``, ``rest`` being ``probs`` without the bin axis.
    """
    _check_width(bin_width)
    p = _bins_first(probs, axis)  # (N, *rest)
    rest = p.shape[1:]
    if observed is not None:
        try:
            observed = np.broadcast_to(observed, rest)  # (*rest)
        except ValueError:
            raise ValueError(
                f"observed has shape {observed.shape}, which does not broadcast to the shape "
                f"of probs {np.shape(probs)} without its bin axis {axis}: {rest}"
            ) from None
    out = np.empty(lead_shape + rest, dtype=np.float64)  # (*lead_shape, *rest)
    lead = (slice(None),) * len(lead_shape)
    for index in _block_slices(rest, p.shape[0]):
        cdf = _cdf(p[(slice(None),) + index], axis)  # (N + 1, *b)
        extra = () if observed is None else (observed[index],)
        out[lead + index] = fn(cdf, *extra)
    return out
