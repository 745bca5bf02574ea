"""``metnet demo``: the whole system, end to end, on one machine, through the Prefect flows.

:func:`demo_flow` runs, as subflows of one flow run (a local ephemeral Prefect API
starts by itself when ``PREFECT_API_URL`` is not set):

1. :func:`pipelines.ingest.ingest_flow`: two hours of synthetic radar and satellite
   frames (:mod:`metnet.sources.synthetic`), or the real MRMS files of ``mrms_dir``,
   into a zarr archive on the ``tiny`` preset's 128 x 128 km grid;
2. :func:`pipelines.train.train_flow`: a short training run of the tiny model;
3. :func:`pipelines.forecast.forecast_flow`: one forecast from the latest time with
   complete inputs, exported as CF netCDF, Cloud-Optimized GeoTIFFs, PNG maps and GIF
   animations.

Everything goes under ``root`` (default ``data/``, whose ``archive/``, ``checkpoints/``
and ``outputs/`` subfolders git ignores): ``archive/demo.zarr``, ``checkpoints/demo/``
and ``outputs/demo/``. Running it again reuses what exists (ingest skips ingested
times, the forecast is "already done") except training, which continues the same run
when it has fewer than ``steps`` steps.

The config is the tiny preset; with real MRMS data it is radar only (no GOES files are
available offline) on a grid over Lake Huron where it rains in the sample files
(:data:`MRMS_GRID`), trained on the first part of the files and validated on the last
:func:`short_periods`. It is written to ``root/outputs/demo/config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from metnet.archive import Archive
from metnet.config import MetNetConfig, TaskConfig, config_from_dict, save_config
from pipelines.common import iso, parse_time
from pipelines.forecast import forecast_flow
from pipelines.ingest import ingest_flow
from pipelines.train import LATEST, train_flow

#: Start of the synthetic period (any time works; this is the real data's day).
SYNTHETIC_START = "2019-06-10T00:00"
#: Length of the synthetic period: enough times for training and validation examples.
SYNTHETIC_MINUTES = 120
#: Grid of the real-data demo: the tiny preset's size, moved to where the 2019-06-10
#: sample files have rain (north-west corner near 45.4 N, 84.6 W; 88-93 % of the pixels
#: above 0.2 mm/h, up to 16 mm/h).
MRMS_GRID = {"x_min_m": 897_000.0, "y_max_m": 2_549_000.0}
#: Products exported by the demo: a few maps, quickly. The median, not the mean: after a
#: short training the distribution's upper tail is still wide, and the mean with it (on
#: the synthetic demo after 100 steps, 13-15 mm/h in rain observed at 2.4 mm/h; the
#: median 0.9-1.2 mm/h there and 0.2 mm/h in dry pixels).
DEMO_PRODUCTS = ("prob_gt_1mmh", "rate_q50")
#: Formats exported by the demo.
DEMO_FORMATS = ("netcdf", "cog", "png", "gif")
#: Learning rate of the demo's short training (the tiny preset's is 1e-3): measured on the
#: synthetic demo, 100 steps reach a validation loss of 1.02 (60 steps at 1e-3: 4.3; a
#: uniform distribution over the 512 bins: 6.24), and P(rate > 1 mm/h) averages 0.45-0.5
#: where it rains against 0.10-0.13 where it does not.
DEMO_LEARNING_RATE = 5e-3
#: Default number of training steps (about a minute on two CPU cores).
DEMO_STEPS = 100


def demo_config(real_data: bool) -> MetNetConfig:
    """The tiny preset trained at :data:`DEMO_LEARNING_RATE`; radar only on
    :data:`MRMS_GRID` for real MRMS data."""
    data: dict[str, Any] = {"preset": "tiny", "train": {"learning_rate": DEMO_LEARNING_RATE}}
    if real_data:
        data |= {"grid": dict(MRMS_GRID), "task": {"satellite_bands": []}}
    return config_from_dict(data)


def short_periods(archive: str, task: TaskConfig) -> tuple[list[str], list[str]]:
    """Training and validation periods for a short archive (the 48-minute real sample):
    validation is the last ``history + largest lead time`` minutes (the span of one
    example, whose inputs and targets must all lie in it, plus two minutes), training
    everything before. Train's default 80/20 split leaves no example in 20 % of 48 min."""
    times = Archive.open(archive).available_times(task.radar_variables[0])
    if times.size == 0:
        raise ValueError(f"archive {archive} holds no {task.radar_variables[0]}")
    span = np.timedelta64(task.history_minutes + task.max_lead_time_minutes + 2, "m")
    step = np.timedelta64(2, "m")
    val_start = times[-1] - span
    return [iso(times[0]), iso(val_start - step)], [iso(val_start), iso(times[-1])]


def paths(root: str | Path) -> dict[str, Path]:
    """Where the demo writes: ``archive``, ``checkpoints``, ``outputs`` and ``config``."""
    root = Path(root)
    return {
        "archive": root / "archive" / "demo.zarr",
        "checkpoints": root / "checkpoints" / "demo",
        "outputs": root / "outputs" / "demo",
        "config": root / "outputs" / "demo" / "config.yaml",
    }


@flow(name="metnet-demo", validate_parameters=True)
def demo_flow(
    root: str = "data",
    mrms_dir: str | None = None,
    steps: int = DEMO_STEPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Ingest, train, forecast and export under ``root`` (see the module docstring).

    ``mrms_dir``: a folder of MRMS PrecipRate GRIB2 files to use instead of synthetic
    data. ``steps``: training steps. ``seed``: of the synthetic weather.
    Returns the paths written and the numbers of the summary.
    """
    logger = get_run_logger()
    where = paths(root)
    config = demo_config(mrms_dir is not None)
    where["config"].parent.mkdir(parents=True, exist_ok=True)
    save_config(config, where["config"])
    archive = str(where["archive"])

    if mrms_dir is None:
        start = parse_time(SYNTHETIC_START, "start")
        end = start + np.timedelta64(SYNTHETIC_MINUTES, "m")
        ingest = ingest_flow(
            archive, [f"synthetic://seed={seed}"], source="synthetic", start=iso(start),
            end=iso(end), source_options={"variables": list(config.task.input_variables())},
            config_file=str(where["config"]),
        )  # fmt: skip
    else:
        ingest = ingest_flow(archive, [mrms_dir], source="mrms", config_file=str(where["config"]))
    if ingest["failed"]:
        raise RuntimeError(
            "demo ingest failed for "
            + "; ".join(f"{f['path']}: {f['reason']}" for f in ingest["failed"])
        )
    logger.info("archive %s: %d times written", archive, len(ingest["times_written"]))

    train_period, val_period = (None, None) if mrms_dir is None else short_periods(archive, config.task)
    trained = train_flow(
        archive, str(where["checkpoints"]), steps=steps, preset=None,
        config_file=str(where["config"]), run_name="run", checkpoint_every=steps,
        val_every=steps, val_examples=16, train_period=train_period, val_period=val_period,
    )  # fmt: skip
    forecast = forecast_flow(
        archive, str(where["checkpoints"] / LATEST), str(where["outputs"]),
        formats=list(DEMO_FORMATS), products=list(DEMO_PRODUCTS),
    )  # fmt: skip
    return {
        "archive": archive,
        "times_ingested": len(ingest["times_written"]) + len(ingest["skipped"]),
        "source": "mrms" if mrms_dir else "synthetic",
        "checkpoint": trained["published"],
        "train_step": trained["step"],
        "val_loss": trained["val_loss"],
        "forecast_time": forecast["time"],
        "forecast": forecast["forecast"],
        "maps": forecast["maps"],
        "files": forecast["files"],
        "config": str(where["config"]),
    }


def format_summary(result: dict[str, Any], seconds: float) -> str:
    """The text ``metnet demo`` prints: what ran and where the outputs are."""
    val = result["val_loss"]
    lines = [
        f"metnet demo finished in {seconds:.0f} s",
        f"  data:        {result['times_ingested']} {result['source']} times in {result['archive']}",
        f"  model:       tiny MetNet, {result['train_step']} training steps"
        + (f", validation loss {val:.3f}" if val is not None else "")
        + f" -> {result['checkpoint']}",
        f"  forecast:    from {result['forecast_time']} UTC -> {result['forecast']}",
        f"  maps:        {result['maps']}/",
    ]
    for fmt, names in result["files"].items():
        example = f" (e.g. {names[0]})" if names else ""
        lines.append(f"    {fmt:<6} {len(names)} file(s){example}")
    lines.append(f"  config:      {result['config']}")
    return "\n".join(lines)
