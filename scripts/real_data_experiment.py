"""The real-data experiment: 25 real MRMS frames -> archive -> small MetNet -> verification.

One command (``make experiment``)::

    python scripts/real_data_experiment.py [--steps 100] [--eval-km 128] [--every 4] [--out data/runs/real_mrms]

1. **Ingest** the 25 MRMS PrecipRate files of 2019-06-10 00:00-00:48 UTC
   (``../shared/data/mrms/2019/06/10``) into ``OUT/archive.zarr`` on the grid of
   ``configs/real_mrms.yaml`` (512 x 512 km over Michigan and Lake Huron, where it rains),
   with latitude and longitude as static fields (no DEM is available offline).
2. **Train** the ``small`` preset adapted to the data (the config file says exactly how:
   radar only, 12 min of history every 4 min, lead times 2..18 min) on the training
   period 00:00-00:30 (forecast times 00:12..00:28, targets up to 00:30) for ``--steps``
   steps of 8 examples; the validation loss train() reports is on 00:32-00:48 (monitoring
   only, nothing is selected on it).
3. **Evaluate** with :func:`metnet.evaluate.evaluate` from forecast times 00:30 to 00:46
   every ``--every`` minutes, every lead time up to 18 min (a lead time only counts the
   valid times up to 00:48 that exist), on the central ``--eval-km`` square of the grid,
   against persistence and pysteps optical flow. The model's F1 probability thresholds
   are calibrated on forecasts from 00:12 (targets 00:14..00:30, inside the training
   period: the test targets are never seen).

Writes ``OUT/evaluation/`` (metrics.csv, skill.png, reliability.png, evaluation.json) and
``OUT/results.md`` (the CSI / F1 table), and prints the table. Re-running resumes: ingest
skips frames already in the archive and training continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mrms" / "2019" / "06" / "10"
DAY = np.datetime64("2019-06-10T00:00", "ns")
MIN = np.timedelta64(1, "m")
#: Training, train()'s validation, test and calibration periods, minutes after 00:00.
TRAIN, VALIDATION, TEST, CALIBRATION = (0, 30), (32, 48), (30, 46), (12, 12)


def at(minutes: int) -> np.datetime64:
    return DAY + minutes * MIN


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the MRMS GRIB2 files")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "real_mrms.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "runs" / "real_mrms")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps of 8 examples")
    parser.add_argument("--eval-km", type=int, default=128, help="side of the central evaluation square, km")
    parser.add_argument("--every", type=int, default=4, help="minutes between test forecast times")
    parser.add_argument("--batch-tiles", type=int, default=4)
    return parser.parse_args(argv)


def skill_table(table: pd.DataFrame) -> pd.DataFrame:
    """CSI and F1 per lead time (rows) and method / threshold (columns)."""
    wide = table.pivot_table(index="lead_time", columns=["threshold", "method"], values=["CSI", "F1"], sort=False)
    return wide.reindex(columns=sorted(wide.columns, key=lambda c: (c[0], c[1]))).round(3)


def main(argv: list[str] | None = None) -> int:
    from metnet.archive import Archive
    from metnet.config import load_config
    from metnet.evaluate import evaluate
    from metnet.ingest import ingest
    from metnet.sources import get_source
    from metnet.train import train

    args = parse_args(argv)
    files = sorted(args.data.glob("PrecipRate_00.00_*.grib2"))
    if len(files) != 25:
        print(f"error: expected the 25 MRMS files in {args.data}, found {len(files)}", file=sys.stderr)
        return 1
    config = load_config(args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}

    began = time.perf_counter()
    archive = Archive.open_or_create(str(args.out / "archive.zarr"), config.grid)
    summary = ingest(
        archive, get_source("mrms", regrid_cache_dir=str(args.out / "regrid")), [str(args.data)],
        static_source=get_source("static"), progress=True,
    )  # fmt: skip
    print(summary.format())
    if not summary.ok:
        return 1
    rate = archive.read("precipitation_rate", [at(0), at(48)], 0, 0, config.grid.nx)  # (2, ny, nx)
    print(f"raining >= 0.2 mm/h: {np.mean(rate[0] >= 0.2):.1%} of the grid at 00:00, {np.mean(rate[1] >= 0.2):.1%} at 00:48")
    timings["ingest"] = time.perf_counter() - began

    began = time.perf_counter()
    trained = train(
        config, archive.store, args.out / "train", args.steps, resume=True, checkpoint_every=0, val_every=0,
        val_examples=8, train_period=(at(TRAIN[0]), at(TRAIN[1])), val_period=(at(VALIDATION[0]), at(VALIDATION[1])),
    )  # fmt: skip
    print(f"trained to step {trained.step}: last training losses {np.round(trained.train_losses[-5:], 3).tolist()}, "
          f"validation {trained.val_losses}")  # fmt: skip
    timings["train"] = time.perf_counter() - began

    began = time.perf_counter()
    g = config.grid
    cx, cy = g.x_min_m + g.nx * 500.0, g.y_max_m - g.ny * 500.0  # the grid's centre, metres
    half = args.eval_km * 500.0
    evaluation = evaluate(
        archive, trained.checkpoint, at(TEST[0]), at(TEST[1]), args.out / "evaluation", every_minutes=args.every,
        bbox=(cx - half, cy - half, cx + half, cy + half), val_period=(at(CALIBRATION[0]), at(CALIBRATION[1])),
        batch_tiles=args.batch_tiles, progress=True,
    )  # fmt: skip
    timings["evaluate"] = time.perf_counter() - began

    table = skill_table(evaluation.table)
    pd.set_option("display.width", 200)
    print(table.to_string())
    times = ", ".join(str(np.datetime64(t, "m"))[11:] for t in evaluation.times)
    report = [
        "# Real-data experiment (MRMS 2019-06-10 00:00-00:48 UTC)",
        "",
        (
            f"Config {args.config.name}; {trained.step} training steps of {config.train.batch_size} examples; "
            f"test forecast times {times}; evaluation square {args.eval_km} km; "
            "F1 probability thresholds calibrated on forecasts from 00:12."
        ),
        "",
        "Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        "",
        "```\n" + table.to_string() + "\n```",
        "",
    ]
    (args.out / "results.md").write_text("\n".join(report))
    print("\n" + report[4])
    print(f"outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
