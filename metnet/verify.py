"""Verification metrics as pure functions, accumulable over many forecasts.

Every metric comes in two steps. A ``*_sums`` / ``*contingency`` function reduces one
forecast (or a chunk of forecasts) to sufficient statistics, counts and sums held in a
small frozen dataclass that adds with ``+`` (and ``sum(...)``); score functions then turn
the accumulated statistics into values. Scoring a season never holds more than one
forecast in memory, and the counts of any split of the data add up to the counts of the
whole.

Conventions:

- An event is ``rate >= threshold`` (mm/h), for observations and deterministic
  forecasts alike. This matches the bins (:mod:`metnet.bins`: the exceedance probability
  at a bin edge ``k w`` is the mass of bins ``k`` and up, i.e. of observations
  ``>= k w``) and pysteps' reliability and ROC functions. pysteps' ``det_cat_fct`` uses
  ``>`` instead; its counts equal ours at the threshold ``np.nextafter(t, -inf)``.
- A probabilistic forecast says "yes" at probability threshold ``p`` where its
  probability is ``>= p`` (as pysteps' ROC curve).
- A pair whose observation or forecast is NaN is left out of every count and sum.
  (pysteps' ``det_cat_fct`` counts NaN as "no event", although its docstring says it
  ignores NaNs.)
- Shapes: forecasts and observations share a shape ``S``, e.g. ``(lead_time, y, x)``;
  probabilities carry a leading threshold axis, ``(R, *S)``. ``axis`` names the axes of
  ``S`` that are summed over (default: all); the others (``kept``, e.g. ``lead_time``)
  stay in the statistics after the threshold axes, e.g. counts ``(R, lead_time)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from metnet import bins

Axis = int | Sequence[int] | None

#: Probability thresholds for ROC curves and F1 calibration: 0, 0.01, ..., 1.
DEFAULT_PROBABILITY_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def _label() -> Any:
    """A dataclass field that identifies the statistics (must match to add), not a sum."""
    return field(metadata={"label": True})


@dataclass(frozen=True, eq=False)
class _Sums:
    """Sufficient statistics that add field by field; ``_label`` fields must match."""

    def __add__(self, other: Any) -> Any:
        if type(other) is not type(self):
            return NotImplemented
        name = type(self).__name__
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.metadata.get("label"):
                same = (mine is None and theirs is None) or (
                    mine is not None and theirs is not None and np.array_equal(mine, theirs)
                )
                if not same:
                    raise ValueError(
                        f"cannot add {name} with {f.name} {_show(mine)} to {name} with "
                        f"{f.name} {_show(theirs)}"
                    )
            elif mine.shape != theirs.shape:
                raise ValueError(
                    f"cannot add {name} of shape {mine.shape} to {name} of shape {theirs.shape} "
                    f"({f.name}); were they reduced over the same axes?"
                )
        sums = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if not f.metadata.get("label")
        }
        return dataclasses.replace(self, **sums)

    def __radd__(self, other: Any) -> Any:
        # sum(stats) starts from 0.
        return self if isinstance(other, int) and other == 0 else NotImplemented


@dataclass(frozen=True, eq=False)
class Contingency(_Sums):
    """Contingency-table counts per rate threshold (and probability threshold).

    Counts are int64 ``(R, *kept)`` for deterministic forecasts, ``(R, P, *kept)`` for
    probabilistic ones (``P`` probability thresholds).
    """

    thresholds: np.ndarray = _label()
    """(R,) rate thresholds, mm/h; an event is ``rate >= threshold``."""
    probability_thresholds: np.ndarray | None = _label()
    """(P,) increasing probability thresholds, or None for deterministic forecasts."""
    hits: np.ndarray
    """Event forecast and observed."""
    misses: np.ndarray
    """Event observed, not forecast."""
    false_alarms: np.ndarray
    """Event forecast, not observed."""
    correct_negatives: np.ndarray
    """Event neither forecast nor observed."""


@dataclass(frozen=True, eq=False)
class BrierSums(_Sums):
    """Sums for the Brier score: float64 / int64 ``(R, *kept)``."""

    thresholds: np.ndarray = _label()
    """(R,) rate thresholds, mm/h."""
    squared_error: np.ndarray
    """Sum of (probability - event)^2."""
    events: np.ndarray
    """Number of observed events."""
    count: np.ndarray
    """Number of valid pairs."""


@dataclass(frozen=True, eq=False)
class ReliabilitySums(_Sums):
    """Sums for the reliability curve per probability bin: ``(R, n_bins, *kept)``."""

    thresholds: np.ndarray = _label()
    """(R,) rate thresholds, mm/h."""
    bin_edges: np.ndarray = _label()
    """(n_bins + 1,) probability bin edges ``k / n_bins``; bin k holds ``[k/n, (k+1)/n)``."""
    count: np.ndarray
    """Number of valid pairs per bin, int64."""
    probability: np.ndarray
    """Sum of the forecast probabilities per bin, float64."""
    events: np.ndarray
    """Number of observed events per bin, int64."""


@dataclass(frozen=True, eq=False)
class CRPSSums(_Sums):
    """Sums for the mean CRPS: ``(*kept)``."""

    total: np.ndarray
    """Sum of the CRPS, mm/h, float64."""
    count: np.ndarray
    """Number of valid pixels, int64."""


# ----------------------------------------------------------------------------- statistics


def contingency(
    forecast: ArrayLike, observed: ArrayLike, thresholds: ArrayLike, axis: Axis = None
) -> Contingency:
    """Contingency counts of deterministic rate forecasts against observations.

    Args:
        forecast: forecast rates, mm/h, shape ``S``, e.g. ``(lead_time, y, x)``.
        observed: observed rates, mm/h, shape ``S``; NaN = missing.
        thresholds: ``(R,)`` rate thresholds, mm/h (a scalar counts as one).
        axis: axes of ``S`` summed over; default all.

    Returns:
        :class:`Contingency` with int64 counts ``(R, *kept)``.
    """
    forecast = _rates(forecast, "forecast")
    observed = _rates(observed, "observed")
    if forecast.shape != observed.shape:
        raise ValueError(
            f"forecast has shape {forecast.shape} but observed has shape {observed.shape}; "
            f"they must match"
        )
    thresholds = _thresholds(thresholds)
    reduce, _ = _axes(observed.shape, axis)
    valid = ~(np.isnan(forecast) | np.isnan(observed))  # (*S)
    counts: dict[str, list[np.ndarray]] = {
        "hits": [], "misses": [], "false_alarms": [], "correct_negatives": []
    }  # fmt: skip
    for t in thresholds:
        yes = (forecast >= t) & valid  # (*S)
        event = observed >= t
        for name, cell in (
            ("hits", yes & event),
            ("misses", ~yes & event & valid),
            ("false_alarms", yes & ~event),
            ("correct_negatives", ~yes & ~event & valid),
        ):
            counts[name].append(np.count_nonzero(cell, axis=reduce))  # (*kept)
    return Contingency(
        thresholds=thresholds,
        probability_thresholds=None,
        **{k: np.asarray(v, dtype=np.int64) for k, v in counts.items()},  # (R, *kept)
    )


def probability_contingency(
    probability: ArrayLike,
    observed: ArrayLike,
    thresholds: ArrayLike,
    probability_thresholds: ArrayLike = DEFAULT_PROBABILITY_THRESHOLDS,
    axis: Axis = None,
) -> Contingency:
    """Contingency counts of exceedance probabilities, per probability threshold.

    The forecast says "yes" at probability threshold ``p`` where ``probability >= p``.
    Counted with one histogram per threshold, so the cost does not grow with ``P``.

    Args:
        probability: ``(R, *S)`` forecast probabilities of ``rate >= thresholds[r]``, in
            [0, 1], e.g. the forecast's ``probability_of_precipitation_rate_above_threshold``.
        observed: observed rates, mm/h, shape ``S``; NaN = missing.
        thresholds: ``(R,)`` rate thresholds, mm/h.
        probability_thresholds: ``(P,)`` strictly increasing values in [0, 1].
        axis: axes of ``S`` summed over; default all.

    Returns:
        :class:`Contingency` with int64 counts ``(R, P, *kept)``.
    """
    probability, observed, thresholds = _probabilistic(probability, observed, thresholds)
    p_thr = _probability_thresholds(probability_thresholds)
    n_p = p_thr.size
    reduce, kept = _axes(observed.shape, axis)
    obs = _rows(observed, reduce, kept)  # (K, M)
    n_rows = obs.shape[0]
    row = np.arange(n_rows)[:, None]  # (K, 1)
    tables = {"hits": [], "misses": [], "false_alarms": [], "correct_negatives": []}
    for r, t in enumerate(thresholds):
        prob = _rows(probability[r], reduce, kept)  # (K, M)
        valid = ~(np.isnan(prob) | np.isnan(obs))
        event = obs >= t
        # j = number of probability thresholds <= prob: "yes" at thresholds 0 .. j - 1.
        j = np.searchsorted(p_thr, np.where(valid, prob, 0.0), side="right")  # (K, M)
        code = row * (n_p + 1) + j  # (K, M) one histogram of j per kept row
        size = n_rows * (n_p + 1)
        hist_event = np.bincount(code[valid & event], minlength=size).reshape(n_rows, n_p + 1)
        hist_none = np.bincount(code[valid & ~event], minlength=size).reshape(n_rows, n_p + 1)
        # "yes" at threshold index p <=> j > p: sum the histogram over j = p + 1 .. P.
        yes_event = np.cumsum(hist_event[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (K, P)
        yes_none = np.cumsum(hist_none[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (K, P)
        tables["hits"].append(yes_event)
        tables["misses"].append(hist_event.sum(axis=1, keepdims=True) - yes_event)
        tables["false_alarms"].append(yes_none)
        tables["correct_negatives"].append(hist_none.sum(axis=1, keepdims=True) - yes_none)
    kept_shape = tuple(observed.shape[a] for a in kept)
    return Contingency(
        thresholds=thresholds,
        probability_thresholds=p_thr,
        **{
            k: np.moveaxis(np.asarray(v, dtype=np.int64), 1, -1).reshape(
                (thresholds.size, n_p) + kept_shape
            )  # (R, K, P) -> (R, P, *kept)
            for k, v in tables.items()
        },
    )


def brier_sums(
    probability: ArrayLike, observed: ArrayLike, thresholds: ArrayLike, axis: Axis = None
) -> BrierSums:
    """Sums for the Brier score of exceedance probabilities.

    Args:
        probability: ``(R, *S)`` forecast probabilities of ``rate >= thresholds[r]``.
        observed: observed rates, mm/h, shape ``S``; NaN = missing.
        thresholds: ``(R,)`` rate thresholds, mm/h.
        axis: axes of ``S`` summed over; default all.

    Returns:
        :class:`BrierSums` with arrays ``(R, *kept)``.
    """
    probability, observed, thresholds = _probabilistic(probability, observed, thresholds)
    reduce, _ = _axes(observed.shape, axis)
    reduce_p = tuple(a + 1 for a in reduce)  # the same axes of (R, *S)
    event = (observed >= _expand(thresholds, observed.ndim)).astype(np.float64)  # (R, *S)
    valid = ~(np.isnan(probability) | np.isnan(observed))  # (R, *S)
    error = np.where(valid, (probability - event) ** 2, 0.0)
    return BrierSums(
        thresholds=thresholds,
        squared_error=error.sum(axis=reduce_p),  # (R, *kept)
        events=np.count_nonzero(valid & (event > 0), axis=reduce_p).astype(np.int64),
        count=np.count_nonzero(valid, axis=reduce_p).astype(np.int64),
    )


def reliability_sums(
    probability: ArrayLike,
    observed: ArrayLike,
    thresholds: ArrayLike,
    n_bins: int = 10,
    axis: Axis = None,
) -> ReliabilitySums:
    """Sums for the reliability curve: pairs binned by forecast probability.

    Bin ``k`` holds probabilities in ``[k / n_bins, (k + 1) / n_bins)`` (computed as
    ``floor(n_bins p)``), the last bin also 1. pysteps' ``reldiag`` bins the same way except
    within 1e-6 of the interior edges, where its edges sit.

    Args:
        probability: ``(R, *S)`` forecast probabilities of ``rate >= thresholds[r]``.
        observed: observed rates, mm/h, shape ``S``; NaN = missing.
        thresholds: ``(R,)`` rate thresholds, mm/h.
        n_bins: number of equal probability bins.
        axis: axes of ``S`` summed over; default all.

    Returns:
        :class:`ReliabilitySums` with arrays ``(R, n_bins, *kept)``.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    probability, observed, thresholds = _probabilistic(probability, observed, thresholds)
    reduce, kept = _axes(observed.shape, axis)
    obs = _rows(observed, reduce, kept)  # (K, M)
    n_rows = obs.shape[0]
    row = np.arange(n_rows)[:, None]  # (K, 1)
    size = n_rows * n_bins
    sums: dict[str, list[np.ndarray]] = {"count": [], "probability": [], "events": []}
    for r, t in enumerate(thresholds):
        prob = _rows(probability[r], reduce, kept)  # (K, M)
        valid = ~(np.isnan(prob) | np.isnan(obs))
        p = prob[valid]
        k = np.minimum(np.floor(p * n_bins), n_bins - 1).astype(np.int64)
        code = np.broadcast_to(row, prob.shape)[valid] * n_bins + k  # (n_valid,)
        event = obs[valid] >= t
        sums["count"].append(np.bincount(code, minlength=size))
        sums["probability"].append(np.bincount(code, weights=p, minlength=size))
        sums["events"].append(np.bincount(code[event], minlength=size))
    kept_shape = tuple(observed.shape[a] for a in kept)

    def arrange(values: list[np.ndarray], dtype: type) -> np.ndarray:
        stacked = np.asarray(values, dtype=dtype).reshape(thresholds.size, n_rows, n_bins)
        return np.moveaxis(stacked, 1, -1).reshape((thresholds.size, n_bins) + kept_shape)

    return ReliabilitySums(
        thresholds=thresholds,
        bin_edges=np.arange(n_bins + 1) / n_bins,
        count=arrange(sums["count"], np.int64),  # (R, n_bins, *kept)
        probability=arrange(sums["probability"], np.float64),
        events=arrange(sums["events"], np.int64),
    )


def crps_sums(
    probs: ArrayLike,
    observed: ArrayLike,
    bin_width: float = 0.2,
    bin_axis: int = -3,
    axis: Axis = None,
) -> CRPSSums:
    """Sums for the mean CRPS of bin distributions (:func:`metnet.bins.crps`).

    Args:
        probs: probabilities over rate bins along ``bin_axis``, e.g. ``(lead_time, bin, y, x)``.
        observed: observed rates, mm/h, shape ``S`` = ``probs`` without the bin axis.
        bin_width: width of the bins, mm/h.
        bin_axis: the bin axis of ``probs``.
        axis: axes of ``S`` summed over; default all.

    Returns:
        :class:`CRPSSums` with arrays ``(*kept)``.
    """
    observed = _rates(observed, "observed")
    score = bins.crps(probs, observed, bin_width, bin_axis)  # (*S), NaN where missing
    if score.shape != observed.shape:
        raise ValueError(
            f"observed has shape {observed.shape} but probs without its bin axis has shape "
            f"{score.shape}; they must match"
        )
    reduce, _ = _axes(observed.shape, axis)
    valid = ~np.isnan(score)
    return CRPSSums(
        total=np.where(valid, score, 0.0).sum(axis=reduce),  # (*kept)
        count=np.count_nonzero(valid, axis=reduce).astype(np.int64),
    )


# ----------------------------------------------------------------------------- scores


def pod(counts: Contingency) -> np.ndarray:
    """Probability of detection (hit rate, recall): H / (H + M)."""
    return _ratio(counts.hits, counts.hits + counts.misses)


def far(counts: Contingency) -> np.ndarray:
    """False alarm ratio: F / (H + F)."""
    return _ratio(counts.false_alarms, counts.hits + counts.false_alarms)


def pofd(counts: Contingency) -> np.ndarray:
    """Probability of false detection (false alarm rate): F / (F + R)."""
    return _ratio(counts.false_alarms, counts.false_alarms + counts.correct_negatives)


def csi(counts: Contingency) -> np.ndarray:
    """Critical success index (threat score): H / (H + M + F)."""
    return _ratio(counts.hits, counts.hits + counts.misses + counts.false_alarms)


def f1(counts: Contingency) -> np.ndarray:
    """F1, the harmonic mean of precision and recall: 2H / (2H + F + M)."""
    return _ratio(2 * counts.hits, 2 * counts.hits + counts.false_alarms + counts.misses)


def frequency_bias(counts: Contingency) -> np.ndarray:
    """Frequency bias: forecast events over observed events, (H + F) / (H + M)."""
    return _ratio(counts.hits + counts.false_alarms, counts.hits + counts.misses)


def hss(counts: Contingency) -> np.ndarray:
    """Heidke skill score: 2 (H R - F M) / ((H + M)(M + R) + (H + F)(F + R))."""
    h, m, f, r = _cells(counts)
    return _ratio(2 * (h * r - f * m), (h + m) * (m + r) + (h + f) * (f + r))


def ets(counts: Contingency) -> np.ndarray:
    """Equitable threat score (Gilbert skill score): (H - H_r) / (H + M + F - H_r).

    ``H_r = (H + F)(H + M) / N`` is the number of hits expected by chance.
    """
    h, m, f, r = _cells(counts)
    chance = _ratio((h + f) * (h + m), h + m + f + r)
    return _ratio(h - chance, h + m + f - chance)


#: Categorical scores by name (see :func:`categorical_scores`).
CATEGORICAL_SCORES: dict[str, Callable[[Contingency], np.ndarray]] = {
    "pod": pod,
    "far": far,
    "pofd": pofd,
    "csi": csi,
    "f1": f1,
    "bias": frequency_bias,
    "hss": hss,
    "ets": ets,
}


def categorical_scores(
    counts: Contingency, names: Sequence[str] = ("pod", "far", "csi", "f1", "bias")
) -> dict[str, np.ndarray]:
    """Several scores by name (case-insensitive), keyed by the lower-case name."""
    result = {}
    for name in names:
        key = name.lower()
        if key not in CATEGORICAL_SCORES:
            raise ValueError(
                f"unknown score {name!r}; valid scores: {', '.join(CATEGORICAL_SCORES)}"
            )
        result[key] = CATEGORICAL_SCORES[key](counts)
    return result


def brier_score(sums: BrierSums) -> np.ndarray:
    """Mean squared error of the event probabilities: ``(R, *kept)``, in [0, 1]."""
    return _ratio(sums.squared_error, sums.count)


def brier_skill_score(sums: BrierSums, reference: BrierSums | None = None) -> np.ndarray:
    """``1 - BS / BS_ref``: ``(R, *kept)``; 1 is perfect, 0 no better than the reference.

    Args:
        sums: the forecast's sums.
        reference: the reference forecast's sums over the same pairs (e.g. persistence, or
            a fixed climatological probability). Default: the sample climatology, a
            constant probability equal to the observed event frequency ``o``, whose
            Brier score is ``o (1 - o)``.
    """
    if reference is None:
        frequency = _ratio(sums.events, sums.count)
        reference_score = frequency * (1.0 - frequency)
    else:
        if not np.array_equal(reference.thresholds, sums.thresholds):
            raise ValueError(
                f"the reference has thresholds {_show(reference.thresholds)} but the forecast "
                f"{_show(sums.thresholds)}"
            )
        if not np.array_equal(reference.count, sums.count):
            raise ValueError(
                f"the reference was scored on {_show(reference.count)} pairs but the forecast "
                f"on {_show(sums.count)}; score both on the same valid pixels"
            )
        reference_score = brier_score(reference)
    return 1.0 - _ratio(brier_score(sums), reference_score)


def reliability_curve(
    sums: ReliabilitySums, min_count: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Points of the reliability diagram, each ``(R, n_bins, *kept)``.

    Returns:
        ``(forecast_probability, observed_frequency)``: the mean forecast probability and
        the observed event frequency in each probability bin; NaN in bins with fewer than
        ``min_count`` pairs (counts are in ``sums.count``).
    """
    enough = sums.count >= max(min_count, 1)
    nan = np.full(sums.count.shape, np.nan)
    forecast = np.divide(sums.probability, sums.count, out=nan.copy(), where=enough)
    observed = np.divide(sums.events, sums.count, out=nan, where=enough)
    return forecast, observed


def roc_curve(counts: Contingency) -> tuple[np.ndarray, np.ndarray]:
    """ROC points per probability threshold: ``(pofd, pod)``, each ``(R, P, *kept)``."""
    _require_probabilistic(counts, "a ROC curve")
    return pofd(counts), pod(counts)


def roc_auc(counts: Contingency) -> np.ndarray:
    """Area under the ROC curve, ``(R, *kept)``: trapezoids from (1, 1) through the points
    (increasing probability thresholds) to (0, 0), as pysteps' ``ROC_curve_compute``."""
    x, y = roc_curve(counts)  # (R, P, *kept)
    edge = np.ones_like(x[:, :1])  # (R, 1, *kept)
    x = np.concatenate([edge, x, 0 * edge], axis=1)  # (R, P + 2, *kept)
    y = np.concatenate([edge, y, 0 * edge], axis=1)
    return ((x[:, :-1] - x[:, 1:]) * (y[:, :-1] + y[:, 1:]) / 2.0).sum(axis=1)


def calibrate_probability_threshold(validation: Contingency) -> np.ndarray:
    """The probability threshold that maximises F1 on validation counts, ``(R, *kept)``.

    As in the MetNet paper: choose on a validation period, then apply on the test period
    (:func:`calibrated_f1`). Ties go to the smallest threshold; NaN where F1 is undefined
    at every threshold (no valid pairs).
    """
    _require_probabilistic(validation, "calibrating a probability threshold")
    index, defined = _best_f1(validation)
    chosen = validation.probability_thresholds[index]  # (R, *kept)
    return np.where(defined, chosen, np.nan)


def calibrated_f1(validation: Contingency, test: Contingency) -> tuple[np.ndarray, np.ndarray]:
    """F1 on the test counts at the probability threshold chosen on validation counts.

    Both must come from :func:`probability_contingency` with the same rate and probability
    thresholds. The validation's kept axes must broadcast to the test's, so a threshold
    chosen over all lead times together (validation summed over lead time) applies to each.

    Returns:
        ``(f1, probability_threshold)``, each ``(R, *kept)`` of the test counts.
    """
    for which, counts in (("validation", validation), ("test", test)):
        _require_probabilistic(counts, f"calibrated F1 ({which} counts)")
    for name in ("thresholds", "probability_thresholds"):
        if not np.array_equal(getattr(validation, name), getattr(test, name)):
            raise ValueError(
                f"validation and test counts have different {name}: "
                f"{_show(getattr(validation, name))} and {_show(getattr(test, name))}"
            )
    index, defined = _best_f1(validation)  # (R, *kept_v)
    # Broadcast kept_v to kept_t (aligned at the right) with the threshold axis kept first.
    shape = test.hits.shape[2:] + test.hits.shape[:1]  # (*kept_t, R)
    try:
        index, defined = (
            np.moveaxis(np.broadcast_to(np.moveaxis(a, 0, -1), shape), -1, 0)  # (R, *kept_t)
            for a in (index, defined)
        )
    except ValueError:
        raise ValueError(
            f"the kept axes of the validation counts {validation.hits.shape[2:]} do not "
            f"broadcast to those of the test counts {test.hits.shape[2:]}"
        ) from None
    score = np.take_along_axis(f1(test), index[:, None], axis=1)[:, 0]  # (R, *kept_t)
    chosen = test.probability_thresholds[index]
    return np.where(defined, score, np.nan), np.where(defined, chosen, np.nan)


def mean_crps(sums: CRPSSums) -> np.ndarray:
    """Mean CRPS, mm/h, ``(*kept)``; NaN where no pixel was valid."""
    return _ratio(sums.total, sums.count)


# ----------------------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    return "None" if value is None else np.array2string(np.asarray(value), threshold=8)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _cells(counts: Contingency) -> tuple[np.ndarray, ...]:
    """H, M, F, R as float64 (products of int64 counts of big domains can overflow)."""
    return tuple(
        np.asarray(getattr(counts, name), dtype=np.float64)
        for name in ("hits", "misses", "false_alarms", "correct_negatives")
    )


def _rates(values: ArrayLike, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if np.any(values < 0):
        raise ValueError(
            f"{what} rates must be >= 0 mm/h (missing data must be NaN); "
            f"got a minimum of {np.nanmin(values):g} mm/h"
        )
    return values


def _thresholds(thresholds: ArrayLike) -> np.ndarray:
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if thresholds.ndim != 1 or not np.all(np.isfinite(thresholds)):
        raise ValueError(f"thresholds must be a 1-D sequence of finite rates, got {thresholds}")
    return thresholds


def _probability_thresholds(values: ArrayLike) -> np.ndarray:
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if (
        values.ndim != 1
        or not np.all((values >= 0) & (values <= 1))
        or np.any(np.diff(values) <= 0)
    ):
        raise ValueError(
            f"probability_thresholds must be strictly increasing values in [0, 1], "
            f"got {_show(values)}"
        )
    return values


def _probabilistic(
    probability: ArrayLike, observed: ArrayLike, thresholds: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``probability (R, *S)``, ``observed (*S)`` and ``thresholds (R,)``."""
    probability = np.asarray(probability, dtype=np.float64)
    observed = _rates(observed, "observed")
    thresholds = _thresholds(thresholds)
    expected = (thresholds.size,) + observed.shape
    if probability.shape != expected:
        raise ValueError(
            f"probability has shape {probability.shape} but needs {expected}: one leading "
            f"axis for the {thresholds.size} threshold(s), then the shape of observed "
            f"{observed.shape}"
        )
    if np.any((probability < 0) | (probability > 1)):
        bad = probability[(probability < 0) | (probability > 1)].ravel()[0]
        raise ValueError(f"probabilities must lie in [0, 1]; got {bad:g}")
    return probability, observed, thresholds


def _axes(shape: tuple[int, ...], axis: Axis) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(reduced axes, kept axes) of an array of ``shape``; ``axis`` None means all."""
    ndim = len(shape)
    if axis is None:
        return tuple(range(ndim)), ()
    wanted = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in wanted:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for observations of shape {shape}")
    reduce = tuple(sorted({a % ndim for a in wanted}))
    return reduce, tuple(a for a in range(ndim) if a not in reduce)


def _rows(values: np.ndarray, reduce: tuple[int, ...], kept: tuple[int, ...]) -> np.ndarray:
    """``values`` as ``(K, M)``: one row per kept index (K = product of the kept sizes)."""
    n_rows = int(np.prod([values.shape[a] for a in kept]))
    return values.transpose(kept + reduce).reshape(n_rows, -1)


def _expand(values: np.ndarray, ndim: int) -> np.ndarray:
    """``values`` (R,) as (R, 1, ..., 1) with ``ndim`` trailing axes for broadcasting."""
    return values.reshape(values.shape + (1,) * ndim)


def _require_probabilistic(counts: Contingency, purpose: str) -> None:
    if counts.probability_thresholds is None:
        raise ValueError(
            f"{purpose} needs counts per probability threshold: use "
            f"probability_contingency, not contingency"
        )


def _best_f1(validation: Contingency) -> tuple[np.ndarray, np.ndarray]:
    """Index of the probability threshold with the highest F1, and where F1 is defined."""
    score = f1(validation)  # (R, P, *kept)
    defined = ~np.all(np.isnan(score), axis=1)  # (R, *kept)
    index = np.argmax(np.where(np.isnan(score), -np.inf, score), axis=1)  # (R, *kept)
    return index, defined
