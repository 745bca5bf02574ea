"""Evaluation over a period: the model and the baselines against the observed archive.

:func:`evaluate` forecasts from every forecast time of a period (``start`` to ``end``
every ``every_minutes``) with the model (:class:`metnet.forecast.Forecaster`) and each
baseline (:mod:`metnet.baselines`), compares every lead time with the archive's
``precipitation_rate`` at the valid time, and accumulates :mod:`metnet.verify`
statistics, one forecast time and one tile at a time (memory does not grow with the
period or the domain). It writes to ``out_dir``:

- ``metrics.csv``: one row per (method, lead time, threshold), columns
  :data:`COLUMNS`: the contingency counts and POD, FAR, CSI, F1, frequency bias and ETS;
  Brier score and skill (against the sample climatology); for the model also the ROC
  area, the mean CRPS (mm/h, per lead time, repeated on each threshold's row) and the
  probability threshold its categorical scores use;
- ``skill.png``: CSI and F1 against lead time, one panel per threshold, a line per method;
- ``reliability.png``: the model's reliability diagram per threshold (all lead times
  pooled) with the number of forecasts per probability bin;
- ``evaluation.json``: what was evaluated (times, skipped times and why, domain, lead
  times, thresholds, probability thresholds).

Choices:

- **Domain**: the union of the model's target tiles over ``bbox`` (default the whole
  grid; :func:`metnet.forecast.domain_of`), observations at 1 km on the same pixels.
- **Same pairs for every method**: a pixel and lead time enter the statistics only
  where the observation and every method's forecast are valid (a baseline has no value
  where rain would be advected in from beyond the ``(context_px - target_px) / 2``
  margin it reads, which is what the model's context sees), so the counts of all
  methods are over identical pairs and skill scores compare like with like.
- **Forecast times skipped** (listed with the reason in ``evaluation.json``): incomplete
  model inputs (:meth:`~metnet.archive.Archive.missing_inputs`), radar frames a
  baseline needs, or no observation at any lead time. A lead time whose valid time has
  no observation simply adds no pairs.
- **The model's categorical scores** need a probability threshold. As in the MetNet
  paper it is calibrated per rate threshold and lead time to maximise F1 on a validation
  period (``val_period``: forecast times in it, verified like the test period;
  :func:`metnet.verify.calibrate_probability_threshold`); without one, or where the
  validation has no observed event, it is :data:`DEFAULT_PROBABILITY_THRESHOLD`. Baselines are
  deterministic (exceedance is 0 or 1).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metnet import bins, verify
from metnet.archive import Archive
from metnet.baselines import (
    BASELINE_NAMES,
    BASELINES,
    Baseline,
    BaselineError,
    baseline_forecast,
    get_baseline,
)
from metnet.checkpoint import Checkpoint
from metnet.dataset import TARGET_VARIABLE
from metnet.forecast import (
    DEFAULT_BATCH_TILES,
    DEFAULT_LEAD_CHUNK,
    Domain,
    Forecaster,
    domain_of,
    open_inputs,
    parse_time,
    progress_bar,
    read_window,
)
from metnet.products import MEAN, PROBABILITY

log = logging.getLogger(__name__)

#: Rate thresholds evaluated by default, mm/h (those of the MetNet paper).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.2, 1.0, 2.0)
#: The model's probability threshold when none is calibrated.
DEFAULT_PROBABILITY_THRESHOLD = 0.5
#: Name of the model in the table and plots.
MODEL = "metnet"
#: Probability bins of the reliability diagram.
RELIABILITY_BINS = 10
#: Columns of ``metrics.csv``.
COLUMNS: tuple[str, ...] = (
    "method", "lead_time", "threshold", "probability_threshold", "hits", "misses",
    "false_alarms", "correct_negatives", "POD", "FAR", "CSI", "F1", "bias", "ETS",
    "Brier", "BSS", "ROC_AUC", "CRPS",
)  # fmt: skip
_SCORES = {"POD": "pod", "FAR": "far", "CSI": "csi", "F1": "f1", "bias": "bias", "ETS": "ets"}


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; names the period, time or method."""


@dataclass
class _ModelSums:
    """The model's statistics, each with kept axes ``(lead_time,)``."""

    counts: verify.Contingency | int = 0
    """Per probability threshold: ``(R, P, L)``."""
    brier: verify.BrierSums | int = 0
    reliability: verify.ReliabilitySums | int = 0
    crps: verify.CRPSSums | int = 0

    def add(self, probs: np.ndarray, observed: np.ndarray, thresholds: np.ndarray, bin_width: float) -> None:
        """Add one tile: ``probs`` ``(L, bins, h, w)``, ``observed`` ``(L, h, w)`` mm/h."""
        exceed = bins.exceedance_probability(probs, thresholds, bin_width, axis=1)  # (R, L, h, w)
        space = (1, 2)  # of (L, h, w): keep the lead time
        self.counts += verify.probability_contingency(exceed, observed, thresholds, axis=space)
        self.brier += verify.brier_sums(exceed, observed, thresholds, axis=space)
        self.reliability += verify.reliability_sums(exceed, observed, thresholds, RELIABILITY_BINS, axis=space)
        self.crps += verify.crps_sums(probs, observed, bin_width, bin_axis=1, axis=space)


@dataclass
class _BaselineSums:
    """A baseline's statistics, kept axes ``(lead_time,)``."""

    counts: verify.Contingency | int = 0
    """``(R, L)``."""
    brier: verify.BrierSums | int = 0

    def add(self, rate: np.ndarray, exceed: np.ndarray, observed: np.ndarray, thresholds: np.ndarray) -> None:
        """Add one forecast: ``rate`` ``(L, y, x)`` mm/h, its 0/1 exceedance ``(R, L, y, x)``."""
        self.counts += verify.contingency(rate, observed, thresholds, axis=(1, 2))
        self.brier += verify.brier_sums(exceed, observed, thresholds, axis=(1, 2))


@dataclass
class Evaluation:
    """What :func:`evaluate` computed and wrote."""

    table: pd.DataFrame
    """``metrics.csv``: one row per (method, lead time, threshold), :data:`COLUMNS`."""
    times: np.ndarray
    """Forecast times evaluated, ``datetime64[ns]``."""
    skipped: dict[str, str]
    """Forecast time (ISO) -> why it was skipped."""
    probability_thresholds: np.ndarray
    """``(R, L)`` the model's probability threshold per rate threshold and lead time."""
    files: list[Path] = field(default_factory=list)
    """Files written."""


# ----------------------------------------------------------------------------- helpers


def forecast_times(start: Any, end: Any, every_minutes: int, what: str = "period") -> np.ndarray:
    """``start``, ``start + every``, ... up to ``end`` inclusive, ``datetime64[ns]``."""
    t0, t1 = parse_time(start, f"{what} start"), parse_time(end, f"{what} end")
    if isinstance(every_minutes, bool) or not isinstance(every_minutes, int) or every_minutes < 1:
        raise EvaluationError(f"every_minutes must be a positive integer, got {every_minutes!r}")
    if t0 > t1:
        raise EvaluationError(f"{what} starts after it ends: {_iso(t0)} > {_iso(t1)}")
    count = int((t1 - t0) // np.timedelta64(every_minutes, "m")) + 1
    return t0 + np.arange(count) * np.timedelta64(every_minutes, "m")


def _iso(t: np.datetime64) -> str:
    return str(np.datetime64(t, "m"))


def _make_baseline(name: str | Baseline, margin_px: int) -> Baseline:
    """A baseline by name (with ``margin_px`` when it reads a margin) or as given."""
    if not isinstance(name, str):
        return name
    cls = BASELINES.get(name.lower())
    accepts_margin = cls is not None and "margin_px" in inspect.signature(cls).parameters
    return get_baseline(name, **({"margin_px": margin_px} if accepts_margin else {}))


def _at(counts: verify.Contingency, index: np.ndarray) -> verify.Contingency:
    """Deterministic counts ``(R, L)`` of ``(R, P, L)`` counts at probability-threshold
    indices ``index`` ``(R, L)``."""

    def pick(values: np.ndarray) -> np.ndarray:
        return np.take_along_axis(values, index[:, None, :], axis=1)[:, 0]  # (R, L)

    return verify.Contingency(
        thresholds=counts.thresholds,
        probability_thresholds=None,
        hits=pick(counts.hits),
        misses=pick(counts.misses),
        false_alarms=pick(counts.false_alarms),
        correct_negatives=pick(counts.correct_negatives),
    )


def _write_atomic(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (no half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- the loop


class _Runner:
    """Forecasts and observations of one evaluation, one forecast time at a time."""

    def __init__(
        self, forecaster: Forecaster, baselines: list[Baseline], domain: Domain,
        leads: np.ndarray, thresholds: np.ndarray,
    ):  # fmt: skip
        self.forecaster, self.baselines, self.domain = forecaster, baselines, domain
        self.leads, self.thresholds = leads, thresholds
        self.archive = forecaster.archive
        self.tiles = forecaster.tiles(domain)

    def skip_reason(self, t0: np.datetime64) -> str | None:
        """Why the model cannot forecast from ``t0`` (None: it can)."""
        missing = self.archive.missing_inputs(t0, self.forecaster.task)
        return f"missing model inputs: {', '.join(missing)}" if missing else None

    def observed(self, t0: np.datetime64) -> np.ndarray:
        """``(L, ny, nx)`` observed rates (mm/h) at ``t0 + leads`` on the domain."""
        valid = t0 + self.leads.astype("timedelta64[m]")
        return read_window(self.archive, TARGET_VARIABLE, valid, self.domain)

    def add_model(self, sums: _ModelSums, t0: np.datetime64, observed: np.ndarray) -> None:
        """Forecast every tile from ``t0`` and add it against ``observed`` ``(L, ny, nx)``."""
        p = self.forecaster.tile_px
        bin_width = self.forecaster.task.bin_width_mm_h
        for tile, probs in self.forecaster.predict(t0, self.tiles, self.leads):
            ys, xs = self.domain.locate(*tile, p)
            obs = observed[:, ys, xs]  # (L, h, w)
            sums.add(probs[..., : obs.shape[1], : obs.shape[2]], obs, self.thresholds, bin_width)

    def baseline_fields(self, t0: np.datetime64) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per baseline: rates ``(L, ny, nx)`` and exceedance ``(R, L, ny, nx)`` from its
        forecast dataset. Raises :class:`BaselineError` when one cannot run."""
        fields = []
        for baseline in self.baselines:
            ds = baseline_forecast(baseline, self.archive, t0, self.leads.tolist(), self.domain, self.thresholds)
            fields.append((ds[MEAN].values, ds[PROBABILITY].values))
        return fields


def evaluate(
    archive: Archive | str,
    checkpoint: Checkpoint | str | Path,
    start: Any,
    end: Any,
    out_dir: str | Path,
    *,
    every_minutes: int | None = None,
    baselines: Sequence[str | Baseline] = BASELINE_NAMES,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    lead_times: Sequence[int] | None = None,
    bbox: Sequence[float] | None = None,
    val_period: tuple[Any, Any] | None = None,
    batch_tiles: int = DEFAULT_BATCH_TILES,
    lead_chunk: int | None = DEFAULT_LEAD_CHUNK,
    device: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate the model and ``baselines`` over forecast times ``start`` .. ``end``.

    Args:
        archive: the observation archive (or its path / URL).
        checkpoint: a loaded checkpoint or its file.
        start, end: first and last forecast time (UTC, inclusive).
        out_dir: folder for the outputs (see the module docstring); created if missing.
        every_minutes: spacing of the forecast times (default: the archive's time step).
        baselines: baseline names (:data:`metnet.baselines.BASELINE_NAMES`) or objects.
        thresholds: rate thresholds, mm/h.
        lead_times: minutes (default: every lead time of the model).
        bbox: ``(x0, y0, x1, y1)`` metres in the grid's CRS (default: the whole grid).
        val_period: ``(start, end)`` forecast times to calibrate the model's probability
            threshold on (see the module docstring).
        batch_tiles, lead_chunk, device: as for :func:`metnet.forecast.forecast`.
        progress: show a progress bar over forecast times.

    Raises:
        EvaluationError: bad periods or thresholds, or no forecast time could be evaluated.
        ForecastError, BaselineError, ValueError: a checkpoint that does not fit the
            archive, an unknown baseline or lead time, a box outside the grid.
    """
    archive, ckpt, name = open_inputs(archive, checkpoint, device)
    forecaster = Forecaster(ckpt, archive, device=device, batch_tiles=batch_tiles, lead_chunk=lead_chunk, name=name)
    task = forecaster.task
    leads = forecaster.lead_times(lead_times)
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0 or not np.all(thr > 0) or np.any(np.diff(thr) <= 0):
        raise EvaluationError(f"thresholds must be positive and strictly increasing (mm/h), got {list(thresholds)!r}")
    step = int(archive.time_step / np.timedelta64(1, "m"))
    every = step if every_minutes is None else every_minutes
    times = forecast_times(start, end, every, "evaluation period")
    val_times = None if val_period is None else forecast_times(*val_period, every, "validation period")
    domain = domain_of(archive.grid, forecaster.tile_px, bbox)
    margin = (task.context_px - task.target_px) // 2
    runner = _Runner(forecaster, [_make_baseline(b, margin) for b in baselines], domain, leads, thr)
    names = [b.name for b in runner.baselines]
    if len(set(names)) != len(names) or MODEL in names:
        raise EvaluationError(f"baseline names must be unique and differ from {MODEL!r}, got {names}")

    model, base = _ModelSums(), {n: _BaselineSums() for n in names}
    validation = _ModelSums()
    evaluated: list[np.datetime64] = []
    skipped: dict[str, str] = {}
    val_skipped: dict[str, str] = {}
    total = len(times) + (0 if val_times is None else len(val_times))
    with progress_bar(progress, total, "evaluate forecast times") as advance:
        for t0 in [] if val_times is None else val_times:
            reason = runner.skip_reason(t0)
            observed = runner.observed(t0) if reason is None else None
            if observed is not None and not np.isfinite(observed).any():
                reason = "no observation at any lead time"
            if reason is None:
                runner.add_model(validation, t0, observed)
            else:
                val_skipped[_iso(t0)] = reason
            advance()
        for t0 in times:
            reason = runner.skip_reason(t0)
            fields: list[tuple[np.ndarray, np.ndarray]] = []
            if reason is None:
                try:
                    fields = runner.baseline_fields(t0)
                except BaselineError as exc:
                    reason = str(exc)
            observed = runner.observed(t0) if reason is None else None
            if observed is not None:
                for rate, _ in fields:  # the same pairs for every method
                    observed[np.isnan(rate)] = np.nan
                if not np.isfinite(observed).any():
                    reason = "no observation at any lead time"
            if reason is not None:
                skipped[_iso(t0)] = reason
                log.info("skipping %s: %s", _iso(t0), reason)
                advance()
                continue
            runner.add_model(model, t0, observed)
            for n, (rate, exceed) in zip(names, fields):
                base[n].add(rate, exceed, observed, thr)
            evaluated.append(t0)
            advance()
    if not evaluated:
        raise EvaluationError(
            f"no forecast time in {_iso(times[0])} .. {_iso(times[-1])} could be evaluated:\n  "
            + "\n  ".join(f"{t}: {r}" for t, r in skipped.items())
        )

    p_index = _probability_index(validation, thr.size, leads.size)
    table = _table(model, base, leads, thr, p_index)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "metrics.csv", out_dir / "skill.png", out_dir / "reliability.png", out_dir / "evaluation.json"]
    _write_atomic(files[0], lambda p: table.to_csv(p, index=False, float_format="%.6g"))
    _write_atomic(files[1], lambda p: plot_skill(table, p))
    _write_atomic(files[2], lambda p: plot_reliability(model.reliability, p))
    p_thr = verify.DEFAULT_PROBABILITY_THRESHOLDS[p_index]  # (R, L)
    summary = {
        "checkpoint": name,
        "archive": archive.store,
        "period": [_iso(times[0]), _iso(times[-1])],
        "every_minutes": every,
        "validation_period": None if val_times is None else [_iso(val_times[0]), _iso(val_times[-1])],
        "evaluated_times": [_iso(t) for t in evaluated],
        "skipped_times": skipped,
        "skipped_validation_times": val_skipped,
        "domain_px": dataclasses.asdict(domain),
        "domain_bounds_m": list(domain.grid(archive.grid).bounds),
        "lead_times": leads.tolist(),
        "thresholds": thr.tolist(),
        "probability_thresholds": {f"{t:g}": p_thr[r].tolist() for r, t in enumerate(thr)},
        "methods": [MODEL, *names],
    }
    _write_atomic(files[3], lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return Evaluation(table, np.asarray(evaluated, dtype="datetime64[ns]"), skipped, p_thr, files)


def _probability_index(validation: _ModelSums, n_thresholds: int, n_leads: int) -> np.ndarray:
    """``(R, L)`` index into :data:`metnet.verify.DEFAULT_PROBABILITY_THRESHOLDS`: the
    F1-maximising one on the validation counts where they hold an observed event, else
    :data:`DEFAULT_PROBABILITY_THRESHOLD`."""
    p_thr = verify.DEFAULT_PROBABILITY_THRESHOLDS
    default = int(np.argmin(np.abs(p_thr - DEFAULT_PROBABILITY_THRESHOLD)))
    index = np.full((n_thresholds, n_leads), default, dtype=np.int64)
    if isinstance(validation.counts, verify.Contingency):
        counts = validation.counts
        chosen = verify.calibrate_probability_threshold(counts)  # (R, L), NaN if undefined
        # Without an observed event every threshold scores F1 = 0 and the "best" is 0.
        events = (counts.hits + counts.misses)[:, 0]  # (R, L), the same at every p
        defined = np.isfinite(chosen) & (events > 0)
        index[defined] = np.searchsorted(p_thr, chosen[defined])
    return index


def _table(
    model: _ModelSums, base: dict[str, _BaselineSums], leads: np.ndarray, thr: np.ndarray, p_index: np.ndarray
) -> pd.DataFrame:
    """The rows of ``metrics.csv``, model first, then the baselines in order."""
    nan = np.full((thr.size, leads.size), np.nan)
    methods = {
        MODEL: {
            "counts": _at(model.counts, p_index),
            "brier": model.brier,
            "probability_threshold": verify.DEFAULT_PROBABILITY_THRESHOLDS[p_index],
            "ROC_AUC": verify.roc_auc(model.counts),
            "CRPS": np.broadcast_to(verify.mean_crps(model.crps), nan.shape),
        },
        **{
            n: {"counts": s.counts, "brier": s.brier, "probability_threshold": nan, "ROC_AUC": nan, "CRPS": nan}
            for n, s in base.items()
        },
    }
    rows = []
    for method, m in methods.items():
        counts = m["counts"]
        values = {
            "probability_threshold": m["probability_threshold"],
            **{k: getattr(counts, k) for k in ("hits", "misses", "false_alarms", "correct_negatives")},
            **{col: verify.CATEGORICAL_SCORES[key](counts) for col, key in _SCORES.items()},
            "Brier": verify.brier_score(m["brier"]),
            "BSS": verify.brier_skill_score(m["brier"]),
            "ROC_AUC": m["ROC_AUC"],
            "CRPS": m["CRPS"],
        }  # each (R, L)
        for i, lead in enumerate(leads):
            for r, t in enumerate(thr):
                rows.append(
                    {"method": method, "lead_time": int(lead), "threshold": float(t)}
                    | {k: v[r, i] for k, v in values.items()}
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ----------------------------------------------------------------------------- plots


def plot_skill(table: pd.DataFrame, path: str | Path) -> None:
    """CSI (top row) and F1 (bottom row) against lead time, one column per threshold,
    one line per method, from a ``metrics.csv`` table; written as PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = sorted(table["threshold"].unique())
    fig, axes = plt.subplots(
        2, len(thresholds), figsize=(4.2 * len(thresholds), 7), squeeze=False, sharex=True, layout="constrained"
    )
    for col, t in enumerate(thresholds):
        for row, score in enumerate(("CSI", "F1")):
            ax = axes[row, col]
            for method, rows in table[table["threshold"] == t].groupby("method", sort=False):
                ax.plot(rows["lead_time"], rows[score], marker="o", ms=3, label=method)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.set_title(f"{score}, rate >= {t:g} mm/h")
            if row == 1:
                ax.set_xlabel("lead time (min)")
            if col == 0:
                ax.set_ylabel(score)
    axes[0, 0].legend()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_reliability(sums: verify.ReliabilitySums, path: str | Path, min_count: int = 10) -> None:
    """The reliability diagram of ``sums`` ``(R, n_bins, L)`` with the lead times pooled:
    one panel per threshold, observed frequency against forecast probability (bins with
    fewer than ``min_count`` forecasts left out) over bars of the forecast counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = dataclasses.replace(
        sums, count=sums.count.sum(-1), probability=sums.probability.sum(-1), events=sums.events.sum(-1)
    )  # (R, n_bins)
    forecast, observed = verify.reliability_curve(pooled, min_count)  # (R, n_bins) each
    edges = pooled.bin_edges
    fig, axes = plt.subplots(
        1, len(pooled.thresholds), figsize=(4.6 * len(pooled.thresholds), 4.4), squeeze=False, layout="constrained"
    )
    for r, t in enumerate(pooled.thresholds):
        ax = axes[0, r]
        counts = ax.twinx()
        counts.bar(edges[:-1], np.where(pooled.count[r] > 0, pooled.count[r], np.nan), width=np.diff(edges), align="edge",
                   color="0.85", log=True)  # fmt: skip
        counts.set_ylabel("forecasts per bin")
        ax.set_zorder(counts.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1)
        ax.plot(forecast[r], observed[r], marker="o", color="C0", label=MODEL)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("forecast probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"rate >= {t:g} mm/h")
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
