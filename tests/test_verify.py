"""Tests of metnet.verify against pysteps' verification functions, golden values and sums.

pysteps conventions met here (read from pysteps/verification/*.py): ``det_cat_fct``
counts events as ``value > thr`` and, despite its docstring, counts NaN as "no event";
``reldiag_*`` and ``ROC_curve_*`` count observed events as ``X_o >= X_min`` and skip
non-finite pairs. We count ``>=`` everywhere and skip NaN pairs, so the comparisons feed
pysteps the valid pairs only and ``np.nextafter(t, -inf)`` as ``det_cat_fct``'s threshold.
"""

from __future__ import annotations

import numpy as np
import pygrib
import pytest
from pysteps.verification import detcatscores, probscores

from metnet import bins, verify

THRESHOLDS = [0.2, 1.0, 2.0]  # mm/h, the paper's
PYSTEPS_NAMES = {
    "pod": "POD", "far": "FAR", "pofd": "FA", "csi": "CSI", "f1": "F1", "bias": "BIAS",
    "hss": "HSS", "ets": "GSS",
}  # fmt: skip


def rates(shape: tuple[int, ...], seed: int, nan_fraction: float = 0.1) -> np.ndarray:
    """Random rates, mm/h: 60 % dry, the rest exponential, quantised to 0.1 mm/h as MRMS
    (so many values sit exactly on the thresholds), with NaN gaps."""
    rng = np.random.default_rng(seed)
    values = np.where(rng.random(shape) < 0.6, 0.0, rng.exponential(2.0, shape))
    values = np.round(values, 1)
    values[rng.random(shape) < nan_fraction] = np.nan
    return values


def probabilities(shape: tuple[int, ...], seed: int, nan_fraction: float = 0.05) -> np.ndarray:
    """Random probabilities with exact 0s and 1s and NaN gaps, kept more than 1e-5 away
    from the interior edges k / 10 (where pysteps' reldiag bin edges sit, 1e-6 off)."""
    rng = np.random.default_rng(seed)
    p = rng.random(shape)
    p[rng.random(shape) < 0.1] = 0.0
    p[rng.random(shape) < 0.05] = 1.0
    interior = np.round(p * 10) / 10
    near = (np.abs(p - interior) < 1e-5) & (interior > 0) & (interior < 1)
    p[near] += 2e-5
    p[rng.random(shape) < nan_fraction] = np.nan
    return p


def pysteps_scores(forecast: np.ndarray, observed: np.ndarray, threshold: float) -> dict:
    """pysteps' scores on the valid pairs, with events counted as ``>= threshold``."""
    valid = np.isfinite(forecast) & np.isfinite(observed)
    with np.errstate(divide="ignore", invalid="ignore"):
        return detcatscores.det_cat_fct(
            forecast[valid], observed[valid], np.nextafter(threshold, -np.inf)
        )


def assert_counts_equal(a: verify.Contingency, b: verify.Contingency) -> None:
    for name in ("hits", "misses", "false_alarms", "correct_negatives"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def read_mrms(path) -> np.ndarray:
    """A real MRMS PrecipRate field, mm/h, with the missing flag (-3) as NaN."""
    with pygrib.open(str(path)) as grib:
        values = grib.message(1).values
    values = np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)
    return np.where(values < 0, np.nan, values)


# ----------------------------------------------------------------------------- categorical


def test_golden_contingency_table():
    """H = 3, M = 1, F = 2, R = 4, worked by hand."""
    forecast = np.array([5, 5, 5, 0, 5, 5, 0, 0, 0, 0], dtype=float)
    observed = np.array([5, 5, 5, 5, 0, 0, 0, 0, 0, 0], dtype=float)
    counts = verify.contingency(forecast, observed, 1.0)
    cells = [counts.hits, counts.misses, counts.false_alarms, counts.correct_negatives]
    np.testing.assert_array_equal(np.concatenate(cells), [3, 1, 2, 4])
    got = verify.categorical_scores(counts, list(verify.CATEGORICAL_SCORES))
    expected = dict(
        pod=0.75, far=0.4, pofd=1 / 3, csi=0.5, f1=2 / 3, bias=1.25,
        hss=2 * (3 * 4 - 2 * 1) / (4 * 5 + 5 * 6), ets=(3 - 2) / (3 + 1 + 2 - 2),
    )  # fmt: skip
    for name, value in expected.items():
        assert got[name] == pytest.approx([value]), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_pysteps(seed):
    forecast, observed = rates((60, 70), seed), rates((60, 70), seed + 100)
    counts = verify.contingency(forecast, observed, THRESHOLDS)
    assert counts.hits.shape == (3,)
    for r, t in enumerate(THRESHOLDS):
        reference = pysteps_scores(forecast, observed, t)
        for ours, theirs in PYSTEPS_NAMES.items():
            got = verify.CATEGORICAL_SCORES[ours](counts)[r]
            assert got == pytest.approx(reference[theirs], rel=1e-12), (t, ours)


def test_thresholds_count_values_equal_to_them_as_events():
    observed = np.array([0.0, 0.2, 1.0, 1.0, 2.0])
    forecast = np.array([1.0, 0.2, 0.9, 1.0, 2.0])
    counts = verify.contingency(forecast, observed, [0.2, 1.0])
    np.testing.assert_array_equal(counts.hits, [4, 2])
    np.testing.assert_array_equal(counts.false_alarms, [1, 1])
    np.testing.assert_array_equal(counts.misses, [0, 1])
    # pysteps at the plain threshold counts ">" and so disagrees exactly on these ties.
    plain = detcatscores.det_cat_fct(forecast, observed, 1.0, scores="POD")["POD"]
    assert plain == pytest.approx(1 / 1) and verify.pod(counts)[1] == pytest.approx(2 / 3)


def test_nan_pairs_are_left_out():
    forecast = np.array([5.0, np.nan, 5.0, 0.0])
    observed = np.array([np.nan, 5.0, 5.0, 0.0])
    counts = verify.contingency(forecast, observed, 1.0)
    total = counts.hits + counts.misses + counts.false_alarms + counts.correct_negatives
    assert total == [2] and counts.hits == [1] and counts.correct_negatives == [1]


def test_kept_lead_time_axis_equals_pysteps_per_lead_time():
    forecast, observed = rates((4, 30, 40), 5), rates((4, 30, 40), 6)
    counts = verify.contingency(forecast, observed, THRESHOLDS, axis=(1, 2))
    assert counts.hits.shape == (3, 4)
    for lead in range(4):
        for r, t in enumerate(THRESHOLDS):
            reference = pysteps_scores(forecast[lead], observed[lead], t)
            assert verify.csi(counts)[r, lead] == pytest.approx(reference["CSI"])
            assert verify.frequency_bias(counts)[r, lead] == pytest.approx(reference["BIAS"])
    # Negative axes mean the same.
    same = verify.contingency(forecast, observed, THRESHOLDS, axis=(-1, -2))
    assert_counts_equal(counts, same)


def test_counts_accumulate_over_chunks_like_pysteps():
    forecast, observed = rates((6, 25, 25), 7), rates((6, 25, 25), 8)
    whole = verify.contingency(forecast, observed, THRESHOLDS)
    chunks = [verify.contingency(forecast[i], observed[i], THRESHOLDS) for i in range(6)]
    total = sum(chunks)
    assert_counts_equal(total, whole)
    first_two = verify.contingency(forecast[:2], observed[:2], THRESHOLDS)
    assert_counts_equal(chunks[0] + chunks[1], first_two)
    # pysteps' own accumulation over the same chunks (valid pairs only).
    table = detcatscores.det_cat_fct_init(np.nextafter(1.0, -np.inf))
    for f, o in zip(forecast, observed):
        valid = np.isfinite(f) & np.isfinite(o)
        detcatscores.det_cat_fct_accum(table, f[valid], o[valid])
    reference = detcatscores.det_cat_fct_compute(table, ["POD", "FAR", "CSI", "F1", "BIAS"])
    for name in ("POD", "FAR", "CSI", "F1", "BIAS"):
        ours = verify.categorical_scores(total, [name])[name.lower()][1]
        assert ours == pytest.approx(reference[name], rel=1e-12)


@pytest.mark.realdata
def test_persistence_of_real_mrms_equals_pysteps(mrms_files):
    """Persistence of the 00:00 UTC field as a 30-minute forecast of the 00:30 field."""
    # The eastern US and the Gulf, 2400 x 3000 px: storms and no-coverage (NaN) areas.
    forecast = read_mrms(mrms_files[0])[600:3000, 4000:7000]
    observed = read_mrms(mrms_files[15])[600:3000, 4000:7000]
    assert np.isnan(observed).mean() > 0.05 and (observed >= 2.0).sum() > 10_000
    counts = verify.contingency(forecast, observed, THRESHOLDS)
    for r, t in enumerate(THRESHOLDS):
        reference = pysteps_scores(forecast, observed, t)
        for ours, theirs in PYSTEPS_NAMES.items():
            got = verify.CATEGORICAL_SCORES[ours](counts)[r]
            assert got == pytest.approx(reference[theirs], rel=1e-12), (t, ours)
    assert 0.3 < verify.csi(counts)[0] < 1  # persistence over 30 minutes has skill


def test_scores_are_nan_without_events():
    counts = verify.contingency(np.zeros(5), np.zeros(5), 1.0)
    assert np.isnan(verify.pod(counts)).all() and np.isnan(verify.far(counts)).all()
    assert verify.pofd(counts) == [0.0]


# ----------------------------------------------------------------------------- ROC


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_equals_pysteps(seed):
    observed = rates((50, 60), seed)
    probability = probabilities((3, 50, 60), seed + 10)
    p_thr = np.linspace(0.0, 1.0, 10)
    counts = verify.probability_contingency(probability, observed, THRESHOLDS, p_thr)
    assert counts.hits.shape == (3, 10)
    x, y = verify.roc_curve(counts)
    area = verify.roc_auc(counts)
    for r, t in enumerate(THRESHOLDS):
        pofd, pod, auc = probscores.ROC_curve(
            probability[r], observed, t, n_prob_thrs=10, compute_area=True
        )
        np.testing.assert_allclose(x[r], pofd, rtol=1e-12)
        np.testing.assert_allclose(y[r], pod, rtol=1e-12)
        assert area[r] == pytest.approx(auc, rel=1e-12)


def test_probability_contingency_equals_thresholding_each_probability():
    observed = rates((3, 20, 20), 3)
    probability = probabilities((2, 3, 20, 20), 4)
    p_thr = np.array([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
    counts = verify.probability_contingency(probability, observed, [0.5, 2.0], p_thr, axis=(1, 2))
    assert counts.hits.shape == (2, 6, 3)
    for r, t in enumerate([0.5, 2.0]):
        for i, p in enumerate(p_thr):
            # A deterministic forecast that is t where probability >= p and 0 elsewhere.
            forecast = np.where(probability[r] >= p, t, 0.0)
            forecast[np.isnan(probability[r])] = np.nan
            single = verify.contingency(forecast, observed, t, axis=(1, 2))
            for name in ("hits", "misses", "false_alarms", "correct_negatives"):
                np.testing.assert_array_equal(getattr(counts, name)[r, i], getattr(single, name)[0])


def test_roc_auc_golden_values():
    observed = np.array([0.0, 0.0, 5.0, 5.0])
    perfect = verify.probability_contingency([[0.0, 0.1, 0.9, 1.0]], observed, 1.0, [0, 0.5, 1])
    assert verify.roc_auc(perfect) == pytest.approx([1.0])
    constant = verify.probability_contingency([[0.3, 0.3, 0.3, 0.3]], observed, 1.0)
    assert verify.roc_auc(constant) == pytest.approx([0.5])


# ----------------------------------------------------------------------------- reliability


@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_equals_pysteps(seed):
    observed = rates((80, 80), seed)
    probability = probabilities((3, 80, 80), seed + 20)
    sums = verify.reliability_sums(probability, observed, THRESHOLDS, n_bins=10)
    assert sums.count.shape == (3, 10)
    valid = np.isfinite(observed) & np.isfinite(probability)  # (3, 80, 80)
    np.testing.assert_array_equal(sums.count.sum(axis=1), valid.sum(axis=(1, 2)))
    forecast, frequency = verify.reliability_curve(sums, min_count=10)
    for r, t in enumerate(THRESHOLDS):
        with np.errstate(divide="ignore", invalid="ignore"):
            r_ref, f_ref = probscores.reldiag(probability[r], observed, t, n_bins=10, min_count=10)
        np.testing.assert_allclose(forecast[r], r_ref, rtol=1e-12)
        np.testing.assert_allclose(frequency[r], f_ref, rtol=1e-12)


def test_reliability_sums_accumulate_and_hide_sparse_bins():
    observed = rates((4, 30, 30), 9)
    probability = probabilities((2, 4, 30, 30), 10)
    whole = verify.reliability_sums(probability, observed, [0.5, 1.0], n_bins=5, axis=(1, 2))
    assert whole.count.shape == (2, 5, 4)  # (threshold, bin, lead time)
    for lead in range(4):  # one lead time at a time, all axes summed
        single = verify.reliability_sums(probability[:, lead], observed[lead], [0.5, 1.0], 5)
        np.testing.assert_array_equal(single.count, whole.count[..., lead])
        np.testing.assert_allclose(single.probability, whole.probability[..., lead])
        np.testing.assert_array_equal(single.events, whole.events[..., lead])
    halves = [
        verify.reliability_sums(probability[:, :, rows], observed[:, rows], [0.5, 1.0], 5, (1, 2))
        for rows in (slice(0, 13), slice(13, 30))
    ]
    total = sum(halves)
    np.testing.assert_array_equal(total.count, whole.count)
    np.testing.assert_allclose(total.probability, whole.probability, rtol=1e-12)
    np.testing.assert_array_equal(total.events, whole.events)
    forecast, frequency = verify.reliability_curve(whole, min_count=10**6)
    assert np.isnan(forecast).all() and np.isnan(frequency).all()


def test_reliability_bins_probabilities_by_floor():
    probability = np.array([[0.0, 0.05, 0.1, 0.3, 0.7, 0.95, 1.0]])
    sums = verify.reliability_sums(probability, np.ones(7), 0.5, n_bins=10)
    np.testing.assert_array_equal(sums.count[0], [2, 1, 0, 1, 0, 0, 0, 1, 0, 2])


# ----------------------------------------------------------------------------- Brier


def test_brier_score_golden_values():
    probability = np.array([[1.0, 0.0, 0.5, 0.25, 0.9]])
    observed = np.array([3.0, 0.0, 0.0, 1.0, np.nan])  # events at 1 mm/h: 1, 0, 0, 1, missing
    sums = verify.brier_sums(probability, observed, 1.0)
    assert sums.count == [4] and sums.events == [2]
    assert verify.brier_score(sums) == pytest.approx([(0 + 0 + 0.25 + 0.5625) / 4])
    # Against the sample climatology (0.5, Brier score 0.25).
    assert verify.brier_skill_score(sums) == pytest.approx([1 - 0.203125 / 0.25])


def test_brier_skill_score_of_climatology_is_zero():
    observed = rates((4, 50, 50), 11)
    valid = np.isfinite(observed)
    frequency = [np.mean(observed[valid] >= t) for t in THRESHOLDS]
    climatology = np.broadcast_to(np.reshape(frequency, (3, 1, 1, 1)), (3, 4, 50, 50))
    sums = verify.brier_sums(climatology, observed, THRESHOLDS)
    np.testing.assert_allclose(verify.brier_skill_score(sums), 0.0, atol=1e-12)
    # A perfect forecast has skill 1 against climatology and against any reference.
    perfect = np.stack([(observed >= t).astype(float) for t in THRESHOLDS])
    perfect[:, ~valid] = np.nan
    best = verify.brier_sums(perfect, observed, THRESHOLDS)
    np.testing.assert_allclose(verify.brier_skill_score(best), 1.0)
    np.testing.assert_allclose(verify.brier_skill_score(best, reference=sums), 1.0)
    np.testing.assert_allclose(verify.brier_skill_score(sums, reference=sums), 0.0)


def test_brier_sums_accumulate():
    observed = rates((5, 20, 20), 12)
    probability = probabilities((3, 5, 20, 20), 13)
    whole = verify.brier_sums(probability, observed, THRESHOLDS, axis=(1, 2))
    parts = [verify.brier_sums(probability[:, i], observed[i], THRESHOLDS) for i in range(5)]
    np.testing.assert_allclose(whole.squared_error.sum(-1), sum(parts).squared_error)
    np.testing.assert_array_equal(whole.count.sum(-1), sum(parts).count)
    np.testing.assert_array_equal(whole.events.sum(-1), sum(parts).events)


def test_brier_skill_score_needs_the_same_pairs():
    observed = rates((20, 20), 14)
    a = verify.brier_sums(probabilities((1, 20, 20), 15), observed, 1.0)
    b = verify.brier_sums(probabilities((1, 20, 20), 16), observed, 1.0)
    with pytest.raises(ValueError, match=r"reference was scored on \[\d+\] pairs but the forecast"):
        verify.brier_skill_score(a, reference=b)


# ----------------------------------------------------------------------------- calibrated F1


def test_calibrated_f1_picks_the_threshold_that_maximises_validation_f1():
    # A forecast whose probabilities are informative but overconfident.
    rng = np.random.default_rng(21)
    observed = rates((2, 4, 40, 40), 22, nan_fraction=0.02)  # (period, lead, y, x)
    signal = np.nan_to_num(observed) >= 1.0
    probability = np.clip(0.5 * signal + rng.normal(0.15, 0.2, observed.shape), 0, 1)[None]
    p_thr = np.linspace(0, 1, 21)
    validation = verify.probability_contingency(
        probability[:, 0], observed[0], 1.0, p_thr, axis=(1, 2)
    )  # (1, 21, 4): per lead time
    test = verify.probability_contingency(probability[:, 1], observed[1], 1.0, p_thr, axis=(1, 2))
    chosen = verify.calibrate_probability_threshold(validation)
    assert chosen.shape == (1, 4)
    for lead in range(4):
        # Brute force: F1 of the deterministic forecast "probability >= p" for every p.
        scores = []
        for p in p_thr:
            forecast = np.where(probability[0, 0, lead] >= p, 1.0, 0.0)
            single = verify.contingency(forecast, observed[0, lead], 1.0)
            scores.append(verify.f1(single)[0])
        assert chosen[0, lead] == p_thr[int(np.argmax(scores))]
        assert 0.2 < chosen[0, lead] < 0.8
    score, used = verify.calibrated_f1(validation, test)
    np.testing.assert_array_equal(used, chosen)
    for lead in range(4):
        forecast = np.where(probability[0, 1, lead] >= chosen[0, lead], 1.0, 0.0)
        expected = verify.f1(verify.contingency(forecast, observed[1, lead], 1.0))[0]
        assert score[0, lead] == pytest.approx(expected)


def test_a_threshold_calibrated_over_all_lead_times_applies_to_each():
    observed = rates((2, 4, 30, 30), 25)
    probability = probabilities((3, 2, 4, 30, 30), 26)
    # Validation summed over lead times (kept: none); test per lead time (kept: lead).
    validation = verify.probability_contingency(probability[:, 0], observed[0], THRESHOLDS)
    test = verify.probability_contingency(
        probability[:, 1], observed[1], THRESHOLDS, axis=(1, 2)
    )  # (3, 101, 4)
    chosen = verify.calibrate_probability_threshold(validation)  # (3,)
    score, used = verify.calibrated_f1(validation, test)
    assert score.shape == used.shape == (3, 4)
    np.testing.assert_array_equal(used, np.repeat(chosen[:, None], 4, axis=1))
    index = np.searchsorted(verify.DEFAULT_PROBABILITY_THRESHOLDS, chosen)  # (3,)
    np.testing.assert_allclose(score, verify.f1(test)[np.arange(3), index])


def test_calibrated_f1_errors():
    observed = rates((10, 10), 23)
    probability = probabilities((1, 10, 10), 24)
    counts = verify.probability_contingency(probability, observed, 1.0, [0.0, 0.5, 1.0])
    other = verify.probability_contingency(probability, observed, 1.0, [0.0, 0.4, 1.0])
    deterministic = verify.contingency(observed, observed, 1.0)
    with pytest.raises(ValueError, match=r"needs counts per probability threshold: use probab"):
        verify.calibrated_f1(deterministic, counts)
    with pytest.raises(ValueError, match=r"different probability_thresholds: \[0.  0.5 1. \]"):
        verify.calibrated_f1(counts, other)
    with pytest.raises(ValueError, match=r"ROC curve needs counts per probability threshold"):
        verify.roc_curve(deterministic)


# ----------------------------------------------------------------------------- CRPS


def test_mean_crps_is_the_mean_of_bins_crps():
    rng = np.random.default_rng(30)
    probs = rng.dirichlet(np.full(16, 0.5), size=(3, 8, 8)).transpose(0, 3, 1, 2)  # (3, 16, 8, 8)
    observed = rates((3, 8, 8), 31)
    sums = verify.crps_sums(probs, observed, 0.2, axis=(1, 2))
    expected = np.nanmean(bins.crps(probs, observed, 0.2), axis=(1, 2))
    np.testing.assert_allclose(verify.mean_crps(sums), expected, rtol=1e-12)
    parts = sum(verify.crps_sums(probs[i], observed[i], 0.2, bin_axis=0) for i in range(3))
    assert verify.mean_crps(parts) == pytest.approx(np.nanmean(bins.crps(probs, observed, 0.2)))


@pytest.mark.parametrize("members_per_bin", [8, 32])
def test_crps_matches_pysteps_for_a_stratified_ensemble(members_per_bin):
    """pysteps' CRPS scores an ensemble (a step CDF); a bin distribution is piecewise
    uniform, so the two agree only in the limit of an ensemble that fills each bin
    evenly. With K evenly spaced members per unit of probability mass, the step CDF
    differs from the linear one by a sawtooth of height 1/K, which changes the CRPS by
    O(W / K^2): test that bound, which also makes the comparison meaningful."""
    rng = np.random.default_rng(40)
    n, w, shape = 12, 0.5, (6, 5)
    counts = rng.multinomial(8, np.full(n, 1 / n), size=shape)  # (6, 5, 12) mass in 1/8 steps
    probs = np.moveaxis(counts / 8, -1, 0)  # (12, 6, 5)
    observed = rng.uniform(0, n * w + 1, shape)
    k = members_per_bin
    members = []  # for a bin with c eighths: c * k members evenly inside it
    for idx in np.ndindex(*shape):
        positions = [
            (b + (np.arange(c * k) + 0.5) / (c * k)) * w
            for b, c in enumerate(counts[idx]) if c
        ]
        members.append(np.concatenate(positions))
    ensemble = np.stack(members, axis=1).reshape(8 * k, *shape)  # (members, 6, 5)
    ours = verify.mean_crps(verify.crps_sums(probs, observed, w, bin_axis=0))
    theirs = probscores.CRPS(ensemble, observed)
    assert abs(ours - theirs) < w / k**2
    assert abs(ours - theirs) > 0  # genuinely different distributions, no shared code


# ----------------------------------------------------------------------------- sums and errors


def test_sums_refuse_to_add_different_thresholds_or_shapes():
    observed = rates((3, 10), 50)
    a = verify.contingency(observed, observed, [0.2, 1.0])
    b = verify.contingency(observed, observed, [0.2])
    with pytest.raises(ValueError, match=r"cannot add Contingency with thresholds \[0.2 1. \] to "
                       r"Contingency with thresholds \[0.2\]"):
        _ = a + b
    kept = verify.contingency(observed, observed, [0.2, 1.0], axis=1)
    with pytest.raises(ValueError, match=r"cannot add Contingency of shape \(2,\) to Contingency "
                       r"of shape \(2, 3\) \(hits\); were they reduced over the same axes"):
        _ = a + kept
    probabilistic = verify.probability_contingency(np.zeros((2, 3, 10)), observed, [0.2, 1.0])
    with pytest.raises(ValueError, match=r"probability_thresholds None to Contingency with "):
        _ = a + probabilistic
    with pytest.raises(TypeError):
        _ = a + verify.brier_sums(np.zeros((2, 3, 10)), observed, [0.2, 1.0])


ERRORS = [
    (
        lambda o: verify.contingency(o[:, :5], o, 1.0),
        r"forecast has shape \(4, 5\) but observed has shape \(4, 6\); they must match",
    ),
    (
        lambda o: verify.contingency(o, o - 3, 1.0),
        r"observed rates must be >= 0 mm/h \(missing data must be NaN\); got a minimum of -3",
    ),
    (
        lambda o: verify.contingency(o, o, [[1.0], [2.0]]),
        r"thresholds must be a 1-D sequence of finite rates",
    ),
    (
        lambda o: verify.contingency(o, o, 1.0, axis=2),
        r"axis 2 is out of range for observations of shape \(4, 6\)",
    ),
    (
        lambda o: verify.brier_sums(np.zeros((4, 6)), o, 1.0),
        r"probability has shape \(4, 6\) but needs \(1, 4, 6\): one leading axis for the 1 "
        r"threshold\(s\), then the shape of observed \(4, 6\)",
    ),
    (
        lambda o: verify.brier_sums(np.full((1, 4, 6), 1.5), o, 1.0),
        r"probabilities must lie in \[0, 1\]; got 1.5",
    ),
    (
        lambda o: verify.probability_contingency(np.zeros((1, 4, 6)), o, 1.0, [0.5, 0.2]),
        r"probability_thresholds must be strictly increasing values in \[0, 1\], got \[0.5 0.2\]",
    ),
    (
        lambda o: verify.reliability_sums(np.zeros((1, 4, 6)), o, 1.0, n_bins=0),
        r"n_bins must be a positive integer, got 0",
    ),
    (
        lambda o: verify.crps_sums(np.full((4, 5, 6), 0.25), o, 0.2, bin_axis=0),
        r"observed has shape \(4, 6\), which does not broadcast",
    ),
    (
        lambda o: verify.categorical_scores(verify.contingency(o, o, 1.0), ["CSI", "rmse"]),
        r"unknown score 'rmse'; valid scores: pod, far, pofd, csi, f1, bias, hss, ets",
    ),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_errors_name_the_rule(call, message):
    observed = rates((4, 6), 60, nan_fraction=0.0)
    with pytest.raises(ValueError, match=message):
        call(observed)


def test_score_names_are_case_insensitive():
    observed = rates((4, 6), 61)
    counts = verify.contingency(observed, observed, 0.2)
    scores = verify.categorical_scores(counts, ["CSI", "Bias"])
    assert set(scores) == {"csi", "bias"} and scores["csi"] == pytest.approx([1.0])
