"""Deployments of the flows, served by one long-running process (``metnet serve``).

:func:`build_deployments` turns a validated serve file (:mod:`pipelines.serve_config`)
into Prefect deployments; :func:`serve` registers them with the Prefect API named by
``PREFECT_API_URL`` and runs their scheduled and manual runs in this process until it
is stopped (Ctrl-C pauses the schedules, see ``prefect.serve``):

- ``metnet-ingest/ingest-<name>``: :func:`pipelines.ingest.ingest_flow` over the newest
  minutes, every 2 minutes by default (one per ``ingest`` entry);
- ``metnet-forecast/forecast``: :func:`pipelines.forecast.forecast_flow` from the latest
  time with complete inputs, every 10 minutes by default;
- ``metnet-backfill/backfill``: :func:`pipelines.backfill.backfill_flow`, on demand (give
  ``start`` and ``end``);
- ``metnet-export/export``: :func:`pipelines.export.export_flow`, on demand (give
  ``forecast`` and ``out_dir``);
- ``metnet-train/train``: :func:`pipelines.train.train_flow`, weekly by default, off
  unless ``train.enabled``; it publishes ``<train.out_dir>/latest.pt``, so point
  ``checkpoint`` there for forecasts to pick up retrained models.

Scheduled deployments get ``concurrency_limit=1``: a run that outlasts its interval
delays the next one instead of racing it on the same archive or outputs. For work-pool
based deployment (workers in containers, see ``docker/``), ``pipelines/prefect.yaml``
declares the same deployments for ``prefect deploy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import serve as prefect_serve
from prefect.deployments.runner import RunnerDeployment

from pipelines.backfill import backfill_flow
from pipelines.export import export_flow
from pipelines.forecast import forecast_flow
from pipelines.ingest import ingest_flow
from pipelines.serve_config import ServeConfig, load_serve_config
from pipelines.train import train_flow

_TAGS = ["metnet"]


def _ingest_parameters(config: ServeConfig, ing: Any) -> dict[str, Any]:
    return {
        "archive": config.archive,
        "locations": list(ing.locations),
        "source": ing.source,
        "latest_minutes": ing.latest_minutes,
        "source_options": dict(ing.source_options),
        "preset": ing.preset,
        "config_file": ing.config_file,
        "dem": ing.dem,
        "retries": ing.retries,
        "backoff_seconds": ing.backoff_seconds,
    }


def build_deployments(config: ServeConfig) -> list[RunnerDeployment]:
    """The enabled deployments of ``config`` (see the module docstring for the names)."""
    deployments = []
    for ing in config.ingest:
        if ing.enabled:
            name = f"ingest-{ing.name or ing.source}"
            deployments.append(
                ingest_flow.to_deployment(
                    name=name, cron=ing.cron, parameters=_ingest_parameters(config, ing),
                    concurrency_limit=1, tags=[*_TAGS, "ingest"],
                    description=f"Ingest the newest {ing.source} files into {config.archive}.",
                )
            )
    fc = config.forecast
    if fc.enabled:
        deployments.append(
            forecast_flow.to_deployment(
                name="forecast", cron=fc.cron, concurrency_limit=1, tags=[*_TAGS, "forecast"],
                parameters={
                    "archive": config.archive, "checkpoint": config.checkpoint,
                    "outputs": config.outputs, "formats": list(fc.formats),
                    "export_lead_times": None if fc.lead_times is None else list(fc.lead_times),
                    "allow_missing": fc.allow_missing,
                },
                description="Forecast from the latest time with complete inputs and export maps.",
            )
        )
    bf = config.backfill
    if bf.enabled:
        deployments.append(
            backfill_flow.to_deployment(
                name="backfill", tags=[*_TAGS, "backfill"],
                parameters={
                    "archive": config.archive, "checkpoint": config.checkpoint,
                    "outputs": config.outputs, "interval_minutes": bf.interval_minutes,
                    "chunk_size": bf.chunk_size, "max_workers": bf.max_workers,
                    "task_runner": bf.task_runner, "dask_address": bf.dask_address,
                    "formats": list(bf.formats),
                },
                description="Forecasts for every time of a period (give start and end); resumable.",
            )
        )
    deployments.append(
        export_flow.to_deployment(
            name="export", tags=[*_TAGS, "export"],
            description="Export a forecast store (give forecast and out_dir).",
        )
    )
    tr = config.train
    if tr.enabled:
        deployments.append(
            train_flow.to_deployment(
                name="train", cron=tr.cron, concurrency_limit=1, tags=[*_TAGS, "train"],
                parameters={
                    "archive": config.archive, "out_dir": tr.out_dir, "steps": tr.steps_per_run,
                    "preset": tr.preset, "config_file": tr.config_file,
                },
                description=f"Retrain and publish {tr.out_dir}/latest.pt.",
            )
        )
    return deployments


def serve(config_file: str | Path, *, limit: int | None = None) -> None:
    """Serve the deployments of the serve file ``config_file`` until interrupted;
    ``limit`` bounds the flow runs executing at once in this process."""
    deployments = build_deployments(load_serve_config(config_file))
    if not deployments:
        raise ValueError(f"{config_file}: every deployment is disabled; nothing to serve")
    prefect_serve(*deployments, limit=limit)
