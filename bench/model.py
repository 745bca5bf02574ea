"""Model benchmark: speed of the MetNet model on this machine, against the openclimatefix port.

Measures, in one run (CPU, fp32):

1. The fp32 matrix-product rate of this machine (best of 1024^2 and 2048^2 products,
   sampled after every round), the yardstick for the model's achieved GFLOP/s (FLOPs
   from the meta-device flop counter / time).
2. The ``small`` preset: forward (``torch.inference_mode``) and forward + backward
   (cross-entropy, no optimiser step) per sample at batch 1 and 4, one lead time each;
   all lead times of one tile in one batched call against one call per lead time;
   with ``--compile``, the same per-sample timings under ``torch.compile``.
3. Matched sizes against the openclimatefix ``metnet`` package (``metnet.MetNet`` from
   PyPI, run by ``bench/model_ocf.py`` in ``.venv-ocf``, a separate venv because it is
   also imported as ``metnet``). Its architecture fixes the downsampler at
   160/256/256/256 channels and uses one width for the recurrent state and attention,
   so ``small``'s own sizes cannot be matched; both models get the ``small`` task
   (7 frames, 60 lead times, 64 x 64 packed input of 20 channels + 60 one-hot) and
   ``MATCHED``: downsampler 160/256/256/256, recurrent and attention width 128, 4 axial
   attention passes with 4 heads. Differences that remain: it uses a ConvGRU (3 gate
   convs, ours a ConvLSTM with 4), attends along rows and columns in each of its 2
   layers (ours alternates over 4 blocks), packs the raw 256 x 256 frames itself, and
   its head predicts 512 bins per 4 km cell without upsampling (ours 512 bins per 1 km
   pixel of the central target). FLOPs are counted for both.

The machine has 2 cores shared with other work, whose load changes from minute to
minute. So the timings of one group are interleaved: every round times each case once,
ours and openclimatefix's alternately (the worker process waits on a pipe meanwhile),
and a case's time is the best over the rounds after one warm-up round. One thread by
default: with two OpenMP threads on two shared cores every parallel region waits
whenever one thread is descheduled, which swamps the comparison.

Prints a table and writes ``bench/results/model.json``.
Run: ``python bench/model.py [--threads 1] [--rounds 5] [--compile] [--skip-ocf]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from metnet.config import MetNetConfig, preset
from metnet.nn import MetNet
from metnet.nn.summary import count_flops

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "model.json"
OCF_PYTHON = ROOT / ".venv-ocf" / "bin" / "python"
OCF_WORKER = ROOT / "bench" / "model_ocf.py"
#: Our model sizes that match what the openclimatefix MetNet can be configured to.
MATCHED = {
    "downsampler_channels": (160, 256, 256, 256),
    "convlstm_channels": 128,
    "attention_channels": 128,
    "attention_blocks": 4,
    "attention_heads": 4,
}
BATCHES = (1, 4)
#: A case: a function timing one call (seconds), its FLOPs and samples per call.
Case = tuple[Callable[[], float], int | None, int]


class OcfUnavailable(RuntimeError):
    """The openclimatefix model cannot be run; the message says why."""


class OcfWorker:
    """The openclimatefix model in a ``.venv-ocf`` subprocess, timed one call at a time."""

    def __init__(self, config: MetNetConfig, threads: int):
        if not OCF_PYTHON.exists():
            raise OcfUnavailable(
                f"{OCF_PYTHON} not found; create it with: python -m venv .venv-ocf && "
                ".venv-ocf/bin/pip install torch==2.13.0 && .venv-ocf/bin/pip install metnet"
            )
        self.proc = subprocess.Popen(
            [str(OCF_PYTHON), str(OCF_WORKER), json.dumps(ocf_request(config, threads))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=OCF_WORKER.parent,
        )
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            tail = " | ".join(self.proc.stderr.read().strip().splitlines()[-3:])
            raise OcfUnavailable(f"openclimatefix worker exited ({self.proc.wait()}): {tail}")
        return json.loads(line)

    def timer(self, op: str, batch: int | None = None) -> Callable[[], float]:
        def run() -> float:
            self.proc.stdin.write(json.dumps({"op": op, "batch": batch}) + "\n")
            self.proc.stdin.flush()
            return self._reply()["seconds"]

        return run

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def matmul_gflops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 3) -> float:
    """Best achieved fp32 GFLOP/s of ``n x n`` matrix products over ``sizes`` (2 n^3 FLOPs)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def matched_config() -> MetNetConfig:
    small = preset("small")
    return dataclasses.replace(small, model=dataclasses.replace(small.model, **MATCHED))


def ocf_request(config: MetNetConfig, threads: int) -> dict:
    """Arguments for ``bench/model_ocf.py`` giving the openclimatefix model our sizes.

    Its preprocessor turns ``sat_channels`` raw channels into 8x as many (space-to-depth
    of a centre crop and of a pooled view) and keeps the others as a centre crop, so 2
    "satellite" + 4 other raw channels of 4 * packed_size pixels give our 20 channels
    of packed_size pixels; with 60 one-hot channels its first conv sees our 80.
    """
    t, m = config.task, config.model
    sat, other = 2, t.num_input_channels - 2 * 8
    return {
        "threads": threads,
        "batches": list(BATCHES),
        "model": {
            "input_channels": sat + other,
            "sat_channels": sat,
            "input_size": t.packed_size,
            "output_channels": t.num_bins,
            "hidden_dim": m.attention_channels,
            "num_att_layers": m.attention_blocks // 2,
            "num_att_heads": m.attention_heads,
            "forecast_steps": t.num_lead_times,
            "kernel_size": m.convlstm_kernel_size,
        },
        "raw_channels": sat + other,
        "raw_size": 4 * t.packed_size,
        "frames": t.num_frames,
        "tile_leads": t.num_lead_times,
    }


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def our_cases(name: str, model: torch.nn.Module, config: MetNetConfig) -> dict[str, Case]:
    """Forward and forward + backward at each batch size, one lead time per sample."""
    t = config.task
    gen = torch.Generator().manual_seed(0)
    cases: dict[str, Case] = {}
    for batch in BATCHES:
        x = torch.randn(
            batch, t.num_frames, t.num_input_channels, t.packed_size, t.packed_size, generator=gen
        )  # (B, T, C, S, S)
        leads = torch.full((batch, 1), t.lead_times[len(t.lead_times) // 2])  # (B, 1)
        target = torch.randint(0, t.num_bins, (batch, t.target_px, t.target_px), generator=gen)

        def forward(x=x, leads=leads) -> None:
            with torch.inference_mode():
                model.eval()(x, leads)

        def train_step(x=x, leads=leads, target=target) -> None:
            model.train().zero_grad(set_to_none=True)
            logits = model(x, leads)[:, 0]  # (B, bins, P, P)
            F.cross_entropy(logits, target).backward()

        cases[f"{name}/forward/b{batch}"] = (timed(forward), count_flops(config, batch), batch)
        cases[f"{name}/forward_backward/b{batch}"] = (
            timed(train_step),
            count_flops(config, batch, backward=True),
            batch,
        )
    return cases


def tile_cases(name: str, model: torch.nn.Module, config: MetNetConfig) -> dict[str, Case]:
    """All lead times of one sample: one batched call, and one call per lead time."""
    t = config.task
    x = torch.randn(1, t.num_frames, t.num_input_channels, t.packed_size, t.packed_size)
    all_leads = torch.tensor([t.lead_times])  # (1, L)

    def predict(leads: torch.Tensor) -> None:
        with torch.inference_mode():
            model.eval()(x, leads)

    def looped() -> None:
        for i in range(all_leads.shape[1]):
            predict(all_leads[:, i : i + 1])

    return {
        f"{name}/tile_batched": (
            timed(lambda: predict(all_leads)),
            count_flops(config, 1, t.num_lead_times),
            1,
        ),
        f"{name}/tile_looped": (timed(looped), t.num_lead_times * count_flops(config), 1),
    }


def ocf_cases(worker: OcfWorker) -> dict[str, Case]:
    flops = worker.info["flops"]
    cases: dict[str, Case] = {}
    for batch in BATCHES:
        for op in ("forward", "forward_backward"):
            key = f"{op}/b{batch}"
            cases[f"matched/openclimatefix/{key}"] = (worker.timer(op, batch), flops[key], batch)
    return cases


def interleave(
    cases: dict[str, Case], rounds: int, warmup: bool, matmul: list[float]
) -> dict[str, dict]:
    """Time every case once per round, in turn; best and median over the timed rounds.

    A warm-up round (untimed) comes first when ``warmup``. The matrix-product rate is
    sampled after every round into ``matmul``.
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(rounds + int(warmup)):
        for name, (run, _, _) in cases.items():
            seconds = run()
            if i >= int(warmup):
                times[name].append(seconds)
        matmul.append(matmul_gflops())
        print(f"  round {i + 1}/{rounds + int(warmup)} of {len(cases)} cases done", flush=True)
    return {
        name: {
            "best_s": min(times[name]),
            "median_s": statistics.median(times[name]),
            "samples_per_call": cases[name][2],
            "flops": cases[name][1],
        }
        for name in cases
    }


def add_rates(results: dict[str, dict], matmul: float) -> None:
    for entry in results.values():
        entry["ms_per_sample"] = entry["best_s"] / entry["samples_per_call"] * 1e3
        if entry["flops"]:
            entry["gflops"] = entry["flops"] / entry["best_s"] / 1e9
            entry["fraction_of_matmul"] = entry["gflops"] / matmul


def table(results: dict[str, dict]) -> list[str]:
    lines = [f"{'case':<46} {'time':>12} {'per sample':>14} {'GFLOP/s':>8} {'%matmul':>8}"]
    for name, e in results.items():
        rate = f"{e['gflops']:8.1f} {100 * e['fraction_of_matmul']:7.0f}%" if "gflops" in e else ""
        lines.append(
            f"{name:<46} {e['best_s']:10.3f} s {e['ms_per_sample']:11.1f} ms {rate}".rstrip()
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per group")
    parser.add_argument("--tile-rounds", type=int, default=1, help="timed rounds of the tiles")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip-ocf", action="store_true", help="skip the openclimatefix model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average_start": os.getloadavg()[0],
    }
    matmul: list[float] = [matmul_gflops()]
    results: dict[str, dict] = {}

    print("small preset", flush=True)
    small = preset("small")
    cases = our_cases("small", MetNet(small), small)
    if args.compile:
        cases |= our_cases("small/torch.compile", torch.compile(MetNet(small)), small)
    cases |= tile_cases("small", MetNet(small), small)
    results |= interleave(cases, args.rounds, warmup=True, matmul=matmul)

    print("matched sizes", flush=True)
    matched = matched_config()
    ours = MetNet(matched)
    cases = our_cases("matched/ours", ours, matched)
    ocf: dict = {}
    try:
        if args.skip_ocf:
            raise OcfUnavailable("skipped (--skip-ocf)")
        worker = OcfWorker(matched, args.threads)
        ocf = {k: v for k, v in worker.info.items() if k != "flops"}
        cases |= ocf_cases(worker)
    except OcfUnavailable as exc:
        worker, ocf = None, {"error": str(exc)}
        print(f"  openclimatefix model not measured: {exc}", flush=True)
    results |= interleave(cases, args.rounds, warmup=True, matmul=matmul)
    cases = tile_cases("matched/ours", ours, matched)
    if worker is not None:
        cases["matched/openclimatefix/tile_looped"] = (
            worker.timer("tile"),
            worker.info["flops"].get("tile"),
            1,
        )
    results |= interleave(cases, args.tile_rounds, warmup=False, matmul=matmul)
    if worker is not None:
        worker.close()

    best_matmul = max(matmul)
    add_rates(results, best_matmul)
    ratios = {
        "small_tile_looped_over_batched": results["small/tile_looped"]["best_s"]
        / results["small/tile_batched"]["best_s"],
        "matched_tile_looped_over_batched": results["matched/ours/tile_looped"]["best_s"]
        / results["matched/ours/tile_batched"]["best_s"],
    }
    if worker is not None:
        for key in [f"{op}/b{b}" for b in BATCHES for op in ("forward", "forward_backward")]:
            ratios[f"openclimatefix_over_ours/{key}"] = (
                results[f"matched/openclimatefix/{key}"]["best_s"]
                / results[f"matched/ours/{key}"]["best_s"]
            )
        ratios["openclimatefix_over_ours/tile"] = (
            results["matched/openclimatefix/tile_looped"]["best_s"]
            / results["matched/ours/tile_batched"]["best_s"]
        )
    machine["load_average_end"] = os.getloadavg()[0]
    report = {
        "machine": machine,
        "rounds": args.rounds,
        "tile_rounds": args.tile_rounds,
        "matmul_gflops": best_matmul,
        "matmul_gflops_samples": matmul,
        "matched_sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in MATCHED.items()},
        "openclimatefix": ocf,
        "results": results,
        "ratios": ratios,
        "wall_s": time.time() - started,
    }

    lines = [
        (
            f"model benchmark: {machine['cpu']}, {args.threads} thread(s), torch "
            f"{torch.__version__}, load {machine['load_average_start']:.1f} -> "
            f"{machine['load_average_end']:.1f}, best of {args.rounds} interleaved rounds "
            f"({args.tile_rounds} for tiles)"
        ),
        (
            f"matmul fp32: {best_matmul:.1f} GFLOP/s (best of {len(matmul)} samples, "
            f"worst {min(matmul):.1f})"
        ),
        *table(results),
        "ratios (goal: openclimatefix / ours >= 2, model >= 50% of matmul):",
        *(f"  {k:<44} {v:6.2f}" for k, v in ratios.items()),
    ]
    if "error" in ocf:
        lines.append(f"openclimatefix: not measured: {ocf['error']}")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
