"""Benchmark of :func:`metnet.forecast.forecast`: wall time and peak memory.

Cases, each in a fresh subprocess (peak memory is the child's ``ru_maxrss``, which
counts torch's allocations that ``tracemalloc`` does not see):

- ``metnet``: an untrained ``small`` model with ``max_lead_time_minutes = 480`` (all 240
  lead times, 8 hours) forecasting a ``--size`` km square domain into a zarr store
  (products only), next to
- ``optical-flow``: pysteps Lucas-Kanade + semi-Lagrangian extrapolation
  (:class:`metnet.baselines.OpticalFlow`, reading the same 112 km margin the model's
  context sees) of the same domain and lead times, written to a zarr store in the same
  format;
- ``area``: the model at ``--scaling-sizes`` km squares with ``--scaling-leads`` lead
  times each (default 24, i.e. 48 minutes: the time is proportional to the lead times,
  which the headline's 256 km at 240 lead times shows, and 240 lead times at 384 km take
  over an hour on a 2-core CPU), to show how the time grows with the area.

The archive is synthetic (:mod:`metnet.sources.synthetic`) on the ``small`` grid
(512 x 512 km): 60 minutes of radar every 2 minutes, band 13 every 10 minutes, static
fields. Prints a table and writes ``--out`` (JSON)::

    python bench/forecast.py [--size 256] [--leads 240] [--scaling-sizes 128,256,384]
                             [--scaling-leads 24] [--batch-tiles 4] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.archive_fixtures

T0 = np.datetime64("2019-06-10T01:00", "ns")
GRID_KM = 512


def small_480():
    """The ``small`` preset predicting 8 hours (240 lead times)."""
    from metnet.config import config_from_dict

    return config_from_dict({"preset": "small", "task": {"max_lead_time_minutes": 480}})


def bbox(size_km: int) -> tuple[float, float, float, float]:
    """A ``size_km`` square centred on the small grid (x 0..512 km, y 1088..1600 km)."""
    cx, cy, half = 256_000.0, 1_600_000.0 - 256_000.0, size_km * 500.0
    return (cx - half, cy - half, cx + half, cy + half)


def setup(folder: Path) -> tuple[Path, Path]:
    """Write the synthetic archive and the untrained checkpoint; return their paths."""
    from metnet.checkpoint import save_checkpoint
    from metnet.dataset import compute_normalization
    from metnet.nn import MetNet
    from tests.archive_fixtures import make_archive

    config = small_480()
    times = T0 - np.arange(30, -1, -1) * np.timedelta64(2, "m")  # t0 - 60 min .. t0
    archive = make_archive(folder, "small", times=times)
    checkpoint = folder / "small_480.pt"
    save_checkpoint(checkpoint, MetNet(config), config, compute_normalization(archive, config.task, max_times=8))
    return Path(archive.store), checkpoint


def run_case(spec: dict) -> dict:
    """One case in this process (the child): the wall time of the whole forecast (opening
    the checkpoint and the archive included), the peak RSS and the store's size."""
    import torch

    from metnet.archive import Archive
    from metnet.baselines import OpticalFlow, baseline_forecast
    from metnet.forecast import domain_of, forecast

    torch.set_num_threads(spec["threads"])
    archive = Archive.open(spec["archive"])
    leads = list(range(2, 2 * spec["leads"] + 1, 2))
    out = Path(spec["folder"]) / f"{spec['method']}_{spec['size']}_{spec['leads']}.zarr"
    began = time.perf_counter()
    if spec["method"] == "metnet":
        forecast(archive, spec["checkpoint"], T0, out, bbox=bbox(spec["size"]), lead_times=leads,
                 batch_tiles=spec["batch_tiles"])  # fmt: skip
    else:
        task = small_480().task
        domain = domain_of(archive.grid, task.target_px, bbox(spec["size"]))
        flow = OpticalFlow(margin_px=(task.context_px - task.target_px) // 2)
        baseline_forecast(flow, archive, T0, leads, domain).to_zarr(out, mode="w-", consolidated=False)
    seconds = time.perf_counter() - began
    stored = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {**spec, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_mib, 1), "store_mib": round(stored / 2**20, 2)}


def child(spec: dict) -> dict:
    """Run one case in a fresh interpreter and return its result."""
    command = [sys.executable, __file__, "--case", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"case {spec['case']} {spec['method']} {spec['size']} km failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = f"{'case':<11} {'method':<13} {'domain km':>9} {'tiles':>5} {'leads':>5} {'wall s':>8} {'s/tile/lead':>11} {'peak RSS MiB':>12} {'store MiB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        tiles = (r["size"] // 32) ** 2
        per = f"{r['seconds'] / tiles / r['leads']:.3f}" if r["method"] == "metnet" else "-"
        lines.append(
            f"{r['case']:<11} {r['method']:<13} {r['size']:>9} {tiles:>5} {r['leads']:>5} {r['seconds']:>8.1f} "
            f"{per:>11} {r['peak_rss_mib']:>12.0f} {r['store_mib']:>9.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Forecast benchmark (see the module docstring).")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help="domain side of the headline case, km")
    parser.add_argument("--leads", type=int, default=240, help="lead times of the headline case (240 = 8 h)")
    parser.add_argument("--scaling-sizes", default="128,256,384", help="domain sides of the scaling cases, km")
    parser.add_argument("--scaling-leads", type=int, default=24, help="lead times of the scaling cases")
    parser.add_argument("--batch-tiles", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forecast.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    with tempfile.TemporaryDirectory(prefix="metnet-bench-") as tmp:
        began = time.perf_counter()
        archive, checkpoint = setup(Path(tmp))
        print(f"setup (synthetic archive, checkpoint): {time.perf_counter() - began:.1f} s", flush=True)
        common = {"archive": str(archive), "checkpoint": str(checkpoint), "folder": tmp,
                  "batch_tiles": args.batch_tiles, "threads": args.threads}  # fmt: skip
        specs = [
            {"case": "vs-pysteps", "method": "metnet", "size": args.size, "leads": args.leads},
            {"case": "vs-pysteps", "method": "optical-flow", "size": args.size, "leads": args.leads},
        ] + [
            {"case": "area", "method": "metnet", "size": int(s), "leads": args.scaling_leads}
            for s in args.scaling_sizes.split(",")
        ]
        rows = []
        for spec in specs:
            rows.append(child({**common, **spec}))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    results = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": "small preset, max_lead_time_minutes=480, untrained",
        "batch_tiles": args.batch_tiles,
        "threads": args.threads,
        "rows": [{k: v for k, v in r.items() if k not in ("archive", "checkpoint", "folder")} for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
