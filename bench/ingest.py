"""Ingest benchmark on the real MRMS sample files (``../shared/data``).

Measures, in one run, on a 512 x 512 km grid over central Texas (where the sample files
hold a squall line):

1. Per file: MRMS GRIB2 decode, regrid onto the grid, archive write (both levels), and the
   whole ``ingest_file`` (read + write), next to pysteps' ``import_mrms_grib`` alone on the
   same files. Goal: ingest per file <= 1.2 x pysteps' decode.
2. Ingest of N files with 2 dask worker processes (single-threaded each) against 1,
   alternating, best of a few rounds, with the share of each task's wall time it got a
   CPU (to tell a slow machine from serialised code). Goal: >= 1.7 x. Workers share the
   regridding tables through ``regrid_cache_dir``.
3. Archive reads: :meth:`Archive.read` (zarr directly) against the same window through
   ``xarray.open_zarr``, and the stored size per time slot.
4. Training examples per second of :class:`metnet.dataset.ArchiveSampler` on a synthetic
   archive of the ``small`` preset, against the examples per second a small training
   step (``small`` model, CPU, its batch size) consumes.

Prints a table and writes ``bench/results/ingest.json``. Exits with a message (code 0)
when the sample data is absent. Run: ``python bench/ingest.py [--files 8]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "mrms" / "2019" / "06" / "10"
RESULTS = ROOT / "bench" / "results" / "ingest.json"
#: 512 x 512 km over central Texas, EPSG:5070: the rain band of 2019-06-10 00 UTC.
TEXAS = {"x_min_m": -456_000.0, "y_max_m": 1_088_000.0, "nx": 512, "ny": 512}


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def per_file(files: list[Path], work: Path) -> dict:
    """Section 1: component and end-to-end times per file, seconds (medians)."""
    import pysteps.io.importers as pysteps_importers

    from metnet.archive import Archive
    from metnet.config import GridConfig
    from metnet.grid import Regridder
    from metnet.ingest import ingest_file
    from metnet.sources import get_source
    from metnet.sources.mrms import decode

    grid_config = GridConfig(**TEXAS)
    parts = Archive.create(str(work / "parts.zarr"), grid_config)
    whole = Archive.create(str(work / "whole.zarr"), grid_config)
    source = get_source("mrms", regrid_cache_dir=str(work / "regrid"))
    # Build the regridding table once, outside the timings (it is cached on disk).
    first = decode(str(files[0]))
    Regridder.from_lonlat(first.lon, first.lat, parts.grid, cache_dir=str(work / "regrid"))

    times = {k: [] for k in ("pysteps_decode", "decode", "regrid", "write", "ingest_file")}
    for path in files:
        t = time.perf_counter()
        pysteps_importers.import_mrms_grib(str(path), window_size=1)
        times["pysteps_decode"].append(time.perf_counter() - t)

        t = time.perf_counter()
        field = decode(str(path))
        times["decode"].append(time.perf_counter() - t)
        t = time.perf_counter()
        regrid = Regridder.from_lonlat(field.lon, field.lat, parts.grid, cache_dir=str(work / "regrid"))
        values = regrid(field.values)[None]  # (1, ny, nx)
        times["regrid"].append(time.perf_counter() - t)
        ds = parts.grid.dataset(
            {"precipitation_rate": (("time", "y", "x"), values, {"units": "mm/h"})}, time=field.time
        )
        t = time.perf_counter()
        parts.write(ds)
        times["write"].append(time.perf_counter() - t)

        t = time.perf_counter()
        result = ingest_file(whole, source, str(path), overwrite=True)
        times["ingest_file"].append(time.perf_counter() - t)
        if result.status != "written":
            raise RuntimeError(f"{path}: {result.reason}")
    medians = {k: _median(v) for k, v in times.items()}
    medians["ratio_ingest_to_pysteps"] = medians["ingest_file"] / medians["pysteps_decode"]
    return {"files": len(files), "median_s": medians, "all_s": times}


def _ingest_one(store: str, path: str, cache: str) -> tuple[float, float]:
    """Dask task: ingest one file into the archive at ``store``; returns its wall and CPU
    seconds (CPU < wall: the task waited for a core or for I/O)."""
    from metnet.archive import Archive
    from metnet.ingest import ingest_file
    from metnet.sources import get_source

    t, cpu = time.perf_counter(), time.process_time()
    result = ingest_file(Archive.open(store, mode="r+"), get_source("mrms", regrid_cache_dir=cache), path)
    if result.status != "written":
        raise RuntimeError(f"{path}: {result.reason}")
    return time.perf_counter() - t, time.process_time() - cpu


def parallel(files: list[Path], work: Path, rounds: int) -> dict:
    """Section 2: wall time of ingesting ``files`` with 1 and 2 dask worker processes.

    The two configurations alternate for ``rounds`` rounds, each into a fresh archive,
    and the fastest round of each counts: on a shared machine the minimum is the run
    least disturbed by other load.
    """
    from dask.distributed import Client, LocalCluster

    from metnet.archive import Archive
    from metnet.config import GridConfig
    from metnet.sources import get_source

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cache = str(work / "regrid")
    source = get_source("mrms")
    first, last = source.time_of(str(files[0])), source.time_of(str(files[-1]))
    clusters = {
        n: LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        for n in (1, 2)
    }
    wall: dict[int, list[float]] = {1: [], 2: []}
    cpu_share: dict[int, list[float]] = {1: [], 2: []}
    try:
        clients = {n: Client(cluster, set_as_default=False) for n, cluster in clusters.items()}
        for client in clients.values():
            client.run(lambda: __import__("metnet.sources.mrms"))  # imports outside the timing
        for r in range(rounds):
            for n, client in clients.items():
                store = str(work / f"parallel-{n}-{r}.zarr")
                archive = Archive.create(store, GridConfig(**TEXAS))
                archive.write(get_source("static").read(None, archive.grid))
                archive.reserve(first, last)  # as ingest() does: workers never grow the axis
                paths = [str(p) for p in files]
                t = time.perf_counter()
                tasks = client.gather(
                    client.map(_ingest_one, [store] * len(paths), paths, [cache] * len(paths), pure=False)
                )
                wall[n].append(time.perf_counter() - t)
                cpu_share[n].append(sum(c for _, c in tasks) / sum(w for w, _ in tasks))
                written = Archive.open(store).available_times("precipitation_rate")
                if written.size != len(files):
                    raise RuntimeError(f"{store}: {written.size} of {len(files)} times written")
        for client in clients.values():
            client.close()
    finally:
        for cluster in clusters.values():
            cluster.close()
    return {
        "files": len(files),
        "rounds": rounds,
        "wall_s_1_worker": min(wall[1]),
        "wall_s_2_workers": min(wall[2]),
        "speedup_2_vs_1": min(wall[1]) / min(wall[2]),
        "all_wall_s": {f"{n}_workers": v for n, v in wall.items()},
        # CPU seconds / wall seconds of the tasks in the fastest round: 1.0 = never waited.
        "task_cpu_share_1_worker": cpu_share[1][int(np.argmin(wall[1]))],
        "task_cpu_share_2_workers": cpu_share[2][int(np.argmin(wall[2]))],
    }


def reads(work: Path) -> dict:
    """Section 3: a paper-sized 7-frame 256 px window through Archive.read and xarray."""
    import xarray as xr

    from metnet.archive import Archive

    archive = Archive.open(str(work / "whole.zarr"))
    times = archive.available_times("precipitation_rate")[:7]
    y0, x0, size = 130, 70, 256  # not chunk-aligned: touches 2 x 2 chunks per frame

    def direct() -> np.ndarray:
        return archive.read("precipitation_rate", times, y0, x0, size)  # (7, 256, 256)

    ds = xr.open_zarr(archive.store, group="level1")

    def via_xarray() -> np.ndarray:
        window = ds["precipitation_rate"].sel(time=times).isel(y=slice(y0, y0 + size), x=slice(x0, x0 + size))
        return window.values  # (7, 256, 256)

    np.testing.assert_allclose(direct(), via_xarray(), atol=1e-5, equal_nan=True)
    result = {}
    for name, fn in (("archive_read_ms", direct), ("xarray_read_ms", via_xarray)):
        runs = []
        for _ in range(10):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        result[name] = 1000 * _median(runs)
    chunks = list((Path(archive.store) / "level1" / "precipitation_rate" / "c").rglob("*"))
    level1 = sum(p.stat().st_size for p in chunks if p.is_file())
    result["stored_kb_per_slot_level1"] = level1 / 1024 / len(archive.available_times("precipitation_rate"))
    result["raw_float32_kb_per_slot_level1"] = 4 * TEXAS["nx"] * TEXAS["ny"] / 1024
    return result


def sampler_vs_training(work: Path, examples: int, steps: int) -> dict:
    """Section 4: ArchiveSampler examples/s against one small training step on CPU."""
    import torch

    sys.path.insert(0, str(ROOT))
    from metnet.config import preset
    from metnet.dataset import ArchiveSampler, compute_normalization
    from metnet.nn.model import MetNet
    from metnet.train import masked_cross_entropy
    from tests.archive_fixtures import make_archive

    config = preset("small")
    t = time.perf_counter()
    archive = make_archive(work, "small", name="small.zarr")
    build_s = time.perf_counter() - t
    normalization = compute_normalization(archive, config.task)
    batch_size = config.train.batch_size
    total = examples + 1 + (steps + 1) * batch_size  # timed, warm-up, training batches
    sampler = ArchiveSampler(archive, config.task, normalization, num_examples=total)
    sampler[0]  # opens arrays, warms caches
    t = time.perf_counter()
    for i in range(1, examples + 1):
        sampler[i]
    sampler_rate = examples / (time.perf_counter() - t)

    torch.set_num_threads(os.cpu_count() or 1)  # dask's workers leave OMP_NUM_THREADS=1 behind
    torch.manual_seed(0)
    model = MetNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.learning_rate)
    batches = [
        torch.utils.data.default_collate([sampler[examples + 1 + s * batch_size + j] for j in range(batch_size)])
        for s in range(steps + 1)
    ]

    def step(batch) -> None:
        logits = model(batch["inputs"], batch["lead_time"][:, None])  # (B, 1, bins, H, W)
        total, count = masked_cross_entropy(logits[:, 0], batch["target"], batch["target_valid"])
        optimizer.zero_grad(set_to_none=True)
        (total / count.clamp(min=1)).backward()
        optimizer.step()

    step(batches[0])  # warm-up
    t = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    step_s = (time.perf_counter() - t) / steps
    return {
        "preset": "small",
        "archive_build_s": build_s,
        "sampler_examples_per_s": sampler_rate,
        "train_step_s": step_s,
        "batch_size": batch_size,
        "train_examples_per_s": batch_size / step_s,
        "sampler_to_training_ratio": sampler_rate * step_s / batch_size,
        "torch_threads": torch.get_num_threads(),
    }


def table(results: dict) -> str:
    f, p = results["per_file"]["median_s"], results["parallel"]
    lines = [
        f"MRMS ingest, {results['grid']} grid, {results['per_file']['files']} files (medians per file)",
        f"  pysteps import_mrms_grib      {f['pysteps_decode']:7.3f} s",
        f"  decode (metnet mrms)          {f['decode']:7.3f} s",
        f"  regrid to the grid            {f['regrid']:7.3f} s",
        f"  archive write (1 + 4 km)      {f['write']:7.3f} s",
        (
            f"  ingest_file (read + write)    {f['ingest_file']:7.3f} s   "
            f"= {f['ratio_ingest_to_pysteps']:.2f} x pysteps (goal <= 1.2)"
        ),
        f"Parallel ingest of {p['files']} files (dask worker processes, best of {p['rounds']})",
        f"  1 worker                      {p['wall_s_1_worker']:7.2f} s",
        (
            f"  2 workers                     {p['wall_s_2_workers']:7.2f} s   "
            f"= {p['speedup_2_vs_1']:.2f} x (goal >= 1.7)"
        ),
        (
            f"  task CPU / wall, 1 | 2 workers {p['task_cpu_share_1_worker']:6.2f} | "
            f"{p['task_cpu_share_2_workers']:.2f}   (< 1: waiting for a core)"
        ),
    ]
    r = results["reads"]
    lines += [
        "Reads of 7 frames x 256 x 256 px at 1 km",
        f"  Archive.read (zarr)           {r['archive_read_ms']:7.1f} ms",
        f"  xarray.open_zarr + isel       {r['xarray_read_ms']:7.1f} ms",
        (
            f"  stored per slot (1 km)        {r['stored_kb_per_slot_level1']:7.1f} KB "
            f"(float32 raw {r['raw_float32_kb_per_slot_level1']:.0f} KB)"
        ),
    ]
    s = results.get("sampler")
    if s:
        lines += [
            f"Training examples, {s['preset']} preset, CPU ({s['torch_threads']} torch threads)",
            f"  ArchiveSampler                {s['sampler_examples_per_s']:7.2f} examples/s (one process)",
            (
                f"  training step (batch {s['batch_size']})      {s['train_step_s']:7.2f} s "
                f"= {s['train_examples_per_s']:.2f} examples/s"
            ),
            f"  sampler / training            {s['sampler_to_training_ratio']:7.2f} x",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=8, help="files timed one by one")
    parser.add_argument("--parallel-files", type=int, default=12, help="files of the 1 vs 2 worker run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the 1 vs 2 worker run")
    parser.add_argument("--examples", type=int, default=40, help="sampler examples timed")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    files = sorted(DATA.glob("PrecipRate_00.00_*.grib2"))
    if not files:
        print(f"skipped: the real MRMS sample files are not under {DATA.resolve()}")
        return 0
    results = {
        "grid": f"{TEXAS['ny']} x {TEXAS['nx']} km Texas",
        "grid_config": TEXAS,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_at_start": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="metnet-bench-") as tmp:
        work = Path(tmp)
        results["per_file"] = per_file(files[: args.files], work)
        results["parallel"] = parallel(files[: args.parallel_files], work, args.rounds)
        results["reads"] = reads(work)
        results["sampler"] = sampler_vs_training(work, args.examples, args.steps)
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
