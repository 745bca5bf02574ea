"""Prefect backfill flow: forecasts (and exports) for every time of a past period.

Forecast times are ``start, start + interval, ..., <= end``. They are processed in
chunks of ``chunk_size``: the times of a chunk whose outputs are not complete are
submitted as :func:`pipelines.forecast.forecast_task` runs, the chunk is awaited, then
the next one starts, so a long period never floods the scheduler with task runs.

**Resumable.** Completeness is decided from the outputs (see :mod:`pipelines.forecast`:
a forecast store exists only when finished, an export folder only counts with its
manifest), never from Prefect's state. After a crash, a kill or a failed time, running
the same backfill again does exactly the missing times; finished ones are not touched.

**Concurrency.** At most ``max_workers`` forecasts run at the same time, bounded by the
task runner of the inner flow (threads: ``ThreadPoolTaskRunner(max_workers)``; dask:
a ``LocalCluster`` of ``max_workers`` single-threaded worker processes, or an existing
scheduler at ``dask_address``, whose own size then bounds it). ``task_runner``
selects which; the outputs are the same. To bound forecasts across *several* flow runs
(e.g. two backfills and the live forecast on one machine), limit the task runs tagged
:data:`pipelines.forecast.FORECAST_TAG` on the server:
``prefect concurrency-limit create metnet-forecast 2``.

Times whose inputs are missing are reported (``missing_inputs``) and do not fail the
run; other failures (a broken checkpoint, a full disk) are reported in ``failed`` and
fail the flow run after the whole period was attempted, so they are visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from metnet.forecast import DEFAULT_BATCH_TILES
from pipelines.common import iso, parse_time
from pipelines.export import exports_complete
from pipelines.forecast import (
    MissingInputsError,
    OutputLayout,
    forecast_complete,
    forecast_task,
)
from pipelines.serve_config import TASK_RUNNERS


class BackfillError(RuntimeError):
    """Some forecast times failed for reasons other than missing inputs."""


def forecast_times(start: Any, end: Any, interval_minutes: int) -> np.ndarray:
    """``start, start + interval, ...`` up to ``end`` inclusive, ``datetime64[ns]``."""
    t_start, t_end = parse_time(start, "start"), parse_time(end, "end")
    if t_start is None or t_end is None:
        raise ValueError("start and end are required")
    if interval_minutes <= 0:
        raise ValueError(f"interval_minutes must be positive, got {interval_minutes}")
    if t_end < t_start:
        raise ValueError(f"end {iso(t_end)} is before start {iso(t_start)}")
    step = np.timedelta64(int(interval_minutes), "m")
    return np.arange(t_start, t_end + np.timedelta64(1, "ns"), step).astype("datetime64[ns]")


def pending_times(
    times: np.ndarray,
    outputs: str,
    formats: list[str],
    export_lead_times: list[int] | None = None,
    products: list[str] | None = None,
) -> np.ndarray:
    """The times among ``times`` whose forecast or exports are not complete (the test
    of :func:`pipelines.forecast.run_forecast`, made here to submit no needless task)."""
    layout = OutputLayout(Path(outputs))

    def complete(t: np.datetime64) -> bool:
        path = layout.forecast(t)
        return forecast_complete(path) and (
            not formats or exports_complete(layout.maps(t), formats, export_lead_times, products, path)
        )

    return np.array([t for t in times if not complete(t)], dtype="datetime64[ns]")


def make_task_runner(task_runner: str, max_workers: int, dask_address: str | None = None):
    """The task runner named ``task_runner`` (``threads`` or ``dask``) running at most
    ``max_workers`` tasks at once (a dask scheduler at ``dask_address`` sizes itself)."""
    key = task_runner.lower()
    if key not in TASK_RUNNERS:
        raise ValueError(f"unknown task runner {task_runner!r}; valid: {', '.join(TASK_RUNNERS)}")
    if max_workers < 1:
        raise ValueError(f"max_workers must be positive, got {max_workers}")
    if key == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": max_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,  # no web server: nothing to bind on a shared host
        },
    )


@flow(name="metnet-backfill-chunks")
def _run_chunks(
    archive: str,
    checkpoint: str,
    outputs: str,
    times: list[str],
    chunk_size: int,
    formats: list[str],
    export_lead_times: list[int] | None,
    products: list[str] | None,
    bbox: list[float] | None,
    allow_missing: bool,
    batch_tiles: int,
    device: str | None,
) -> list[dict[str, Any]]:
    """Submit the forecasts of ``times`` chunk by chunk on this flow's task runner."""
    logger = get_run_logger()
    results = []
    for first in range(0, len(times), chunk_size):
        chunk = times[first : first + chunk_size]
        futures = [
            forecast_task.submit(
                archive, checkpoint, outputs, t, formats, None, export_lead_times, products,
                bbox, allow_missing, False, batch_tiles, device,
            )
            for t in chunk
        ]
        for t, future in zip(chunk, futures):
            future.wait()
            outcome = future.state.result(raise_on_failure=False)
            if isinstance(outcome, dict):
                results.append(outcome)
            elif isinstance(outcome, MissingInputsError):
                results.append({"time": t, "status": "missing inputs", "missing": outcome.missing})
            else:
                results.append({"time": t, "status": "failed", "reason": f"{type(outcome).__name__}: {outcome}"})
        done = first + len(chunk)
        logger.info("backfill: %d/%d forecast times processed", done, len(times))
    return results


@flow(name="metnet-backfill", validate_parameters=True)
def backfill_flow(
    archive: str,
    checkpoint: str,
    outputs: str,
    start: str,
    end: str,
    interval_minutes: int = 10,
    chunk_size: int = 24,
    max_workers: int = 2,
    task_runner: str = "threads",
    dask_address: str | None = None,
    formats: list[str] = [],  # noqa: B006 - Prefect parameter default
    export_lead_times: list[int] | None = None,
    products: list[str] | None = None,
    bbox: list[float] | None = None,
    allow_missing: bool = False,
    batch_tiles: int = DEFAULT_BATCH_TILES,
    device: str | None = None,
) -> dict[str, Any]:
    """Forecast (and export ``formats``) every ``interval_minutes`` from ``start`` to
    ``end`` (UTC, inclusive) into ``outputs``; resumable (see the module docstring).

    Returns ``times`` (all), ``already_done`` (complete before this run), ``computed``,
    ``missing_inputs`` (time -> what is missing) and ``failed`` (time -> reason).
    Raises :class:`BackfillError` after the whole period when any time failed.
    """
    logger = get_run_logger()
    times = forecast_times(start, end, interval_minutes)
    todo = pending_times(times, outputs, formats, export_lead_times, products)
    logger.info(
        "backfill %s .. %s every %d min: %d times, %d already done, %d to do (%s, %d workers)",
        iso(times[0]), iso(times[-1]), interval_minutes, times.size, times.size - todo.size,
        todo.size, task_runner, max_workers,
    )  # fmt: skip
    runner = make_task_runner(task_runner, max_workers, dask_address)
    results = []
    if todo.size:
        results = _run_chunks.with_options(task_runner=runner)(
            archive, checkpoint, outputs, [iso(t) for t in todo], chunk_size, formats,
            export_lead_times, products, bbox, allow_missing, batch_tiles, device,
        )  # fmt: skip
    todo_set = {iso(t) for t in todo}
    summary = {
        "times": [iso(t) for t in times],
        "already_done": [iso(t) for t in times if iso(t) not in todo_set],
        "computed": [r["time"] for r in results if r["status"] in ("forecast", "exported")],
        "missing_inputs": {r["time"]: r["missing"] for r in results if r["status"] == "missing inputs"},
        "failed": {r["time"]: r["reason"] for r in results if r["status"] == "failed"},
    }
    problems = [
        {"time": t, "problem": "missing inputs", "detail": "; ".join(m)}
        for t, m in summary["missing_inputs"].items()
    ] + [{"time": t, "problem": "failed", "detail": r} for t, r in summary["failed"].items()]
    if problems:
        create_table_artifact(
            key="backfill-problems", table=problems,
            description=f"Forecast times of the backfill into {outputs} that were not made",
        )  # fmt: skip
    logger.info(
        "backfill done: %d computed, %d already done, %d missing inputs, %d failed",
        len(summary["computed"]), len(summary["already_done"]),
        len(summary["missing_inputs"]), len(summary["failed"]),
    )  # fmt: skip
    if summary["failed"]:
        raise BackfillError(
            f"{len(summary['failed'])} forecast time(s) failed:\n  "
            + "\n  ".join(f"{t}: {r}" for t, r in summary["failed"].items())
        )
    return summary
