"""Evaluation: the table, plots and summary, and its numbers recomputed independently
from the forecast store, the baselines' forecast datasets and metnet.verify."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from metnet import verify
from metnet.baselines import baseline_forecast, get_baseline
from metnet.checkpoint import save_checkpoint
from metnet.cli import app
from metnet.config import preset
from metnet.dataset import compute_normalization
from metnet.evaluate import (
    COLUMNS,
    DEFAULT_PROBABILITY_THRESHOLD,
    EvaluationError,
    evaluate,
)
from metnet.forecast import Domain, forecast
from metnet.nn import MetNet
from metnet.products import BIN_PROBABILITY, MEAN, PROBABILITY
from tests.archive_fixtures import T0, make_archive

MIN = np.timedelta64(1, "m")
CONFIG = preset("tiny")
TASK = CONFIG.task
LEADS = np.asarray(TASK.lead_times)  # 2 .. 12 min
THRESHOLDS = (0.2, 1.0, 2.0)
#: Four tiles at the grid's south edge, rows 112..127, columns 16..31: the synthetic rain
#: moves north, so optical flow has no forecast where rain comes from beyond the grid.
BBOX = (16_000.0, 1_472_000.0, 32_000.0, 1_488_000.0)
DOMAIN = Domain(112, 16, 16, 16)
#: 00:08 lacks the model's history (23:58); 00:10 and 00:12 are complete.
START, END = T0 + 8 * MIN, T0 + 12 * MIN
EVALUATED = [T0 + 10 * MIN, T0 + 12 * MIN]
VALIDATION = (T0 + 14 * MIN, T0 + 16 * MIN)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("evaluate_archive"))


@pytest.fixture(scope="module")
def checkpoint(archive, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, MetNet(CONFIG), CONFIG, compute_normalization(archive, TASK, max_times=4))
    return path


@pytest.fixture(scope="module")
def result(archive, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    return evaluate(archive, checkpoint, START, END, out, bbox=BBOX, thresholds=THRESHOLDS, val_period=VALIDATION), out


def _observed(archive, t0) -> np.ndarray:
    """``(L, 16, 16)`` observed rates on the domain, straight from the archive."""
    values = archive.read("precipitation_rate", t0 + LEADS * MIN, DOMAIN.y0, DOMAIN.x0, 16)
    return values.astype(np.float64)


def _model(archive, checkpoint, t0, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """Bin probabilities ``(L, bins, y, x)`` and exceedance ``(R, L, y, x)`` from a forecast store."""
    out = forecast(archive, checkpoint, t0, tmp_path / f"{t0}.zarr", bbox=BBOX, thresholds=THRESHOLDS,
                   keep_distribution=True)  # fmt: skip
    ds = xr.open_zarr(out, consolidated=False)
    return ds[BIN_PROBABILITY].values, ds[PROBABILITY].values


def _table(result) -> pd.DataFrame:
    return result[0].table.set_index(["method", "lead_time", "threshold"]).sort_index()


# ----------------------------------------------------------------------------- outputs


def test_evaluation_writes_every_method_lead_and_threshold(result):
    evaluation, out = result
    table = pd.read_csv(out / "metrics.csv")
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 3 * len(LEADS) * len(THRESHOLDS)
    assert list(table["method"].unique()) == ["metnet", "persistence", "optical-flow"]
    for _, rows in table.groupby("method"):
        assert sorted(rows["lead_time"].unique()) == LEADS.tolist()
        assert sorted(rows["threshold"].unique()) == list(THRESHOLDS)
    pd.testing.assert_frame_equal(table, evaluation.table, check_exact=False, rtol=1e-5)
    for name in ("skill.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["evaluated_times"] == ["2019-06-10T00:10", "2019-06-10T00:12"]
    assert summary["skipped_times"] == {
        "2019-06-10T00:08": "missing model inputs: precipitation_rate at 2019-06-09T23:58, "
        "abi_c13 within 15 min before 2019-06-09T23:58"
    }
    assert summary["domain_px"] == {"y0": 112, "x0": 16, "ny": 16, "nx": 16}
    assert summary["methods"] == ["metnet", "persistence", "optical-flow"]
    np.testing.assert_array_equal(evaluation.times, np.array(EVALUATED, dtype="datetime64[ns]"))
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "metrics.csv", "reliability.png", "skill.png"]


def test_the_numbers_equal_verify_on_the_same_arrays(result, archive, checkpoint, tmp_path):
    table = _table(result)
    thr = np.asarray(THRESHOLDS)
    space = (0, 2, 3)  # of (time, lead, y, x): keep the lead time
    margin = (TASK.context_px - TASK.target_px) // 2
    baselines = {"persistence": get_baseline("persistence"), "optical-flow": get_baseline("optical-flow", margin_px=margin)}

    observed, probs, exceed, rates, exceed_b = [], [], [], {n: [] for n in baselines}, {n: [] for n in baselines}
    for t0 in EVALUATED:
        obs = _observed(archive, t0)
        for name, baseline in baselines.items():
            ds = baseline_forecast(baseline, archive, t0, LEADS.tolist(), DOMAIN, THRESHOLDS)
            rates[name].append(ds[MEAN].values)
            exceed_b[name].append(ds[PROBABILITY].values)
            obs[np.isnan(ds[MEAN].values)] = np.nan  # pairs every method has
        p, e = _model(archive, checkpoint, t0, tmp_path)
        observed.append(obs), probs.append(p), exceed.append(e)  # fmt: skip
    observed = np.stack(observed)  # (N, L, y, x)
    exceed = np.stack(exceed, axis=1)  # (R, N, L, y, x)
    assert np.isnan(observed).any() and np.isfinite(observed).mean() > 0.5  # the mask matters

    # Model: probability threshold calibrated on the validation forecasts.
    val_obs = np.stack([_observed(archive, t) for t in VALIDATION])
    val_exceed = np.stack([_model(archive, checkpoint, t, tmp_path)[1] for t in VALIDATION], axis=1)
    val_counts = verify.probability_contingency(val_exceed, val_obs, thr, axis=space)  # (R, P, L)
    counts = verify.probability_contingency(exceed, observed, thr, axis=space)
    f1, p_thr = verify.calibrated_f1(val_counts, counts)  # (R, L)
    has_events = (val_counts.hits + val_counts.misses)[:, 0] > 0
    assert has_events[0].all(), "0.2 mm/h must have validation events for the test to mean much"
    brier = verify.brier_score(verify.brier_sums(exceed, observed, thr, axis=space))
    auc = verify.roc_auc(counts)
    crps = verify.mean_crps(verify.crps_sums(np.stack(probs), observed, 0.2, bin_axis=2, axis=space))  # (L,)
    for i, lead in enumerate(LEADS):
        for r, t in enumerate(THRESHOLDS):
            row = table.loc[("metnet", lead, t)]
            if has_events[r, i]:
                assert row["probability_threshold"] == pytest.approx(p_thr[r, i])
                np.testing.assert_allclose(row["F1"], f1[r, i], rtol=1e-6, equal_nan=True)
            else:
                assert row["probability_threshold"] == DEFAULT_PROBABILITY_THRESHOLD
            k = round(row["probability_threshold"] * 100)
            assert row["hits"] == counts.hits[r, k, i] and row["false_alarms"] == counts.false_alarms[r, k, i]
            assert row["misses"] == counts.misses[r, k, i]
            assert row["correct_negatives"] == counts.correct_negatives[r, k, i]
            np.testing.assert_allclose(row["Brier"], brier[r, i], rtol=1e-6)
            np.testing.assert_allclose(row["ROC_AUC"], auc[r, i], rtol=1e-6, equal_nan=True)
            np.testing.assert_allclose(row["CRPS"], crps[i], rtol=1e-6)

    for name in baselines:
        rate = np.stack(rates[name])  # (N, L, y, x)
        det = verify.contingency(rate, observed, thr, axis=space)  # (R, L)
        scores = verify.categorical_scores(det, ("pod", "far", "csi", "f1", "bias", "ets"))
        b = verify.brier_score(verify.brier_sums(np.stack(exceed_b[name], axis=1), observed, thr, axis=space))
        for i, lead in enumerate(LEADS):
            for r, t in enumerate(THRESHOLDS):
                row = table.loc[(name, lead, t)]
                assert row["hits"] == det.hits[r, i] and row["misses"] == det.misses[r, i]
                assert row["false_alarms"] == det.false_alarms[r, i]
                assert row["correct_negatives"] == det.correct_negatives[r, i]
                for column, key in (("POD", "pod"), ("FAR", "far"), ("CSI", "csi"), ("F1", "f1"), ("bias", "bias"), ("ETS", "ets")):
                    np.testing.assert_allclose(row[column], scores[key][r, i], rtol=1e-6, equal_nan=True, err_msg=column)
                np.testing.assert_allclose(row["Brier"], b[r, i], rtol=1e-6)
                assert np.isnan(row["CRPS"]) and np.isnan(row["probability_threshold"])
    # Every method is scored on the same pairs.
    totals = table[["hits", "misses", "false_alarms", "correct_negatives"]].sum(axis=1)
    assert totals.groupby(level=["lead_time", "threshold"]).nunique().eq(1).all()


def test_without_validation_the_probability_threshold_is_the_default(archive, checkpoint, tmp_path):
    evaluation = evaluate(archive, checkpoint, EVALUATED[0], EVALUATED[0], tmp_path, bbox=BBOX,
                          baselines=["persistence"], lead_times=[2, 4], thresholds=(1.0,))  # fmt: skip
    table = evaluation.table
    assert table["method"].tolist() == ["metnet", "metnet", "persistence", "persistence"]
    assert (table.loc[table["method"] == "metnet", "probability_threshold"] == DEFAULT_PROBABILITY_THRESHOLD).all()
    np.testing.assert_array_equal(evaluation.probability_thresholds, [[0.5, 0.5]])


# ----------------------------------------------------------------------------- errors


def test_a_period_without_any_usable_time_lists_every_reason(archive, checkpoint, tmp_path):
    with pytest.raises(EvaluationError) as info:
        evaluate(archive, checkpoint, T0, T0 + 2 * MIN, tmp_path / "out", bbox=BBOX, baselines=[])
    message = str(info.value)
    assert "no forecast time in 2019-06-10T00:00 .. 2019-06-10T00:02 could be evaluated" in message
    assert "2019-06-10T00:02: missing model inputs: precipitation_rate at 2019-06-09T23:52" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"start": T0 + 20 * MIN, "end": T0 + 10 * MIN}, EvaluationError, "evaluation period starts after it ends: 2019-06-10T00:20 > 2019-06-10T00:10"),
        ({"every_minutes": 0}, EvaluationError, "every_minutes must be a positive integer"),
        ({"thresholds": (1.0, 0.2)}, EvaluationError, "thresholds must be positive and strictly increasing"),
        ({"baselines": ["hrrr"]}, ValueError, "unknown baseline 'hrrr'; valid baselines: persistence, optical-flow"),
        ({"baselines": ["persistence", "Persistence"]}, EvaluationError, "baseline names must be unique"),
        ({"val_period": ("soon", T0)}, ValueError, "validation period start 'soon' is not a time"),
    ],
)
def test_bad_arguments_are_refused(archive, checkpoint, tmp_path, kwargs, error, message):
    args = {"start": EVALUATED[0], "end": EVALUATED[0], "bbox": BBOX, **kwargs}
    with pytest.raises(error, match=message):
        evaluate(archive, checkpoint, args.pop("start"), args.pop("end"), tmp_path, **args)


# ----------------------------------------------------------------------------- CLI


def test_cli_evaluate(archive, checkpoint, tmp_path):
    args = ["evaluate", "--archive", archive.store, "--checkpoint", str(checkpoint), "--start", "2019-06-10T00:10",
            "--end", "2019-06-10T00:12", "--every", "2", "--baselines", "persistence", "--thresholds", "0.2,1",
            "--lead-times", "2,4", "--bbox", ",".join(str(v) for v in BBOX), "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert "evaluated 2 forecast time(s), skipped 0" in outcome.output
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 2 * 2 * 2
    outcome = CliRunner().invoke(app, [*args, "--val-start", "2019-06-10T00:14"])
    assert outcome.exit_code == 1
    assert "give both --val-start and --val-end, or neither" in outcome.output
