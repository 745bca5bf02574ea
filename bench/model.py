"""Model benchmark: speed of the MetNet model on this machine, against the openclimatefix port.

Measures, in one run (CPU, fp32):

1. The fp32 matrix-product rate of this machine (2048 x 2048), the yardstick for the
   model's achieved GFLOP/s (FLOPs from the meta-device flop counter / time).
2. The ``small`` preset: forward (``torch.inference_mode``) and forward + backward
   (cross-entropy, no optimiser step) per sample at batch 1 and 4, one lead time each;
   all lead times of one tile in one batched call against one call per lead time.
3. Matched sizes against the openclimatefix ``metnet`` package (``metnet.MetNet`` from
   PyPI, timed by ``bench/model_ocf.py`` in ``.venv-ocf``, a separate venv because it
   is also imported as ``metnet``). Its architecture fixes the downsampler at
   160/256/256/256 channels and uses one width for the recurrent state and attention,
   so ``small``'s sizes cannot be matched exactly; both models get the ``small`` task
   (7 frames, 60 lead times, 64 x 64 packed input of 20 channels + 60 one-hot) and
   ``MATCHED``: downsampler 160/256/256/256, recurrent and attention width 128, 4 axial
   attention passes with 4 heads. Differences that remain: it uses a ConvGRU (3 gate
   convs, ours a ConvLSTM with 4), attends along rows and columns in each of its 2
   layers (ours alternates over 4 blocks), takes the raw 256 x 256 frames and packs
   them itself, and its head predicts 512 bins per 4 km cell without upsampling (ours
   512 bins per 1 km pixel of the central target). FLOPs are counted for both.
4. Optionally (``--compile``) the ``small`` model under ``torch.compile``.

The machine has 2 cores shared with other work: compare the ratios measured in the
same run. Each time is the best of ``--repeats`` after a warm-up call.

Prints a table and writes ``bench/results/model.json``.
Run: ``python bench/model.py [--threads N] [--repeats 3] [--compile] [--skip-ocf]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import matmul_gflops, time_call

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


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def matched_config() -> MetNetConfig:
    small = preset("small")
    return dataclasses.replace(small, model=dataclasses.replace(small.model, **MATCHED))


def ocf_request(config: MetNetConfig, threads: int, repeats: int) -> dict:
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
        "repeats": repeats,
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


def measure(model: torch.nn.Module, config: MetNetConfig, repeats: int, tile: bool) -> dict:
    """Times per call of forward / forward + backward per batch size, and the tile."""
    t = config.task
    gen = torch.Generator().manual_seed(0)
    out: dict = {}
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

        out[f"batch{batch}"] = {
            "forward": time_call(forward, repeats),
            "forward_backward": time_call(train_step, repeats),
            "forward_flops": count_flops(config, batch),
            "forward_backward_flops": count_flops(config, batch, backward=True),
        }
    if tile:
        x = torch.randn(1, t.num_frames, t.num_input_channels, t.packed_size, t.packed_size)
        all_leads = torch.tensor([t.lead_times])  # (1, L)

        def predict(leads: torch.Tensor) -> None:
            with torch.inference_mode():
                model.eval()(x, leads)

        def looped() -> None:
            for i in range(all_leads.shape[1]):
                predict(all_leads[:, i : i + 1])

        out["tile_batched"] = time_call(lambda: predict(all_leads), max(1, repeats - 1))
        out["tile_looped"] = time_call(looped, 1, warmup=lambda: predict(all_leads[:, :1]))
        out["tile_flops"] = count_flops(config, 1, t.num_lead_times)
        out["tile_looped_flops"] = t.num_lead_times * count_flops(config, 1, 1)
    return out


def run_ocf(config: MetNetConfig, threads: int, repeats: int) -> dict:
    """Time the openclimatefix model in its venv; ``{"error": why}`` if that is impossible."""
    if not OCF_PYTHON.exists():
        return {
            "error": f"{OCF_PYTHON} not found; create it with: python -m venv .venv-ocf && "
            ".venv-ocf/bin/pip install torch==2.13.0 && .venv-ocf/bin/pip install metnet"
        }
    request = json.dumps(ocf_request(config, threads, repeats))
    try:
        proc = subprocess.run(
            [str(OCF_PYTHON), str(OCF_WORKER), request],
            check=False,
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=OCF_WORKER.parent,
        )
    except subprocess.TimeoutExpired:
        return {"error": "openclimatefix worker timed out after 3600 s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "error": f"openclimatefix worker failed (exit {proc.returncode}): {' | '.join(tail)}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_rates(section: dict, matmul: float) -> None:
    """Add achieved GFLOP/s and its fraction of the matmul rate next to each timing."""
    for key, value in list(section.items()):
        if not isinstance(value, dict) or "forward" not in value:
            continue
        for kind in ("forward", "forward_backward"):
            flops = value.get(f"{kind}_flops")
            if flops:
                gflops = flops / value[kind]["best_s"] / 1e9
                value[f"{kind}_gflops"] = gflops
                value[f"{kind}_fraction_of_matmul"] = gflops / matmul
    for kind in ("tile_batched", "tile_looped"):
        flops = section.get("tile_flops" if kind == "tile_batched" else "tile_looped_flops")
        if kind in section and flops:
            section[f"{kind}_gflops"] = flops / section[kind]["best_s"] / 1e9


def rows(name: str, section: dict, matmul: float) -> list[str]:
    """Table rows: ms per sample, GFLOP/s and % of matmul for one model."""
    lines = []
    for batch in BATCHES:
        entry = section.get(f"batch{batch}")
        if not entry:
            continue
        for kind, label in (("forward", "forward"), ("forward_backward", "fwd+bwd")):
            ms = entry[kind]["best_s"] / batch * 1e3
            gflops = entry.get(f"{kind}_gflops")
            rate = (
                f"{gflops:8.1f} {100 * gflops / matmul:6.0f}%" if gflops else f"{'-':>8} {'-':>7}"
            )
            lines.append(f"{name:<22} {label:<9} B={batch}   {ms:10.1f} ms/sample {rate}")
    for kind, label in (("tile_batched", "tile, batched"), ("tile_looped", "tile, looped")):
        if kind in section:
            seconds = section[kind]["best_s"]
            gflops = section.get(f"{kind}_gflops")
            rate = (
                f"{gflops:8.1f} {100 * gflops / matmul:6.0f}%" if gflops else f"{'-':>8} {'-':>7}"
            )
            lines.append(f"{name:<22} {label:<18} {seconds:10.2f} s/tile      {rate}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip-ocf", action="store_true", help="skip the openclimatefix model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    result: dict = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average_start": os.getloadavg()[0],
        },
        "repeats": args.repeats,
    }
    # The matmul rate is sampled before and after every section and the best is the
    # yardstick: other processes on the machine can only make a sample slower.
    matmul_samples = [matmul_gflops()]
    print(f"matmul: {matmul_samples[0]:.1f} GFLOP/s ({args.threads} threads)", flush=True)

    small = preset("small")
    result["small"] = measure(MetNet(small), small, args.repeats, tile=True)
    matmul_samples.append(matmul_gflops())
    print("small: done", flush=True)
    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(MetNet(small))
        result["small_compiled"] = measure(compiled, small, args.repeats, tile=False)
        result["small_compiled"]["compile_and_measure_s"] = time.perf_counter() - start
        matmul_samples.append(matmul_gflops())
        print("small, compiled: done", flush=True)

    matched = matched_config()
    result["matched"] = {
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in MATCHED.items()}
    }
    result["matched"]["ours"] = measure(MetNet(matched), matched, args.repeats, tile=True)
    matmul_samples.append(matmul_gflops())
    print("matched, ours: done", flush=True)
    if args.skip_ocf:
        result["matched"]["openclimatefix"] = {"error": "skipped (--skip-ocf)"}
    else:
        result["matched"]["openclimatefix"] = run_ocf(matched, args.threads, args.repeats)
    matmul_samples.append(matmul_gflops())
    print("matched, openclimatefix: done", flush=True)
    matmul = max(matmul_samples)
    result["matmul_gflops"] = matmul
    result["matmul_gflops_samples"] = matmul_samples

    for key in ("small", "small_compiled"):
        if key in result:
            add_rates(result[key], matmul)
    add_rates(result["matched"]["ours"], matmul)
    ocf = result["matched"]["openclimatefix"]
    if "error" not in ocf:
        add_rates(ocf, matmul)
        ours = result["matched"]["ours"]
        result["matched"]["openclimatefix_time_over_ours"] = {
            f"{kind}_b{b}": ocf[f"batch{b}"][kind]["best_s"] / ours[f"batch{b}"][kind]["best_s"]
            for b in BATCHES
            for kind in ("forward", "forward_backward")
        } | {"tile": ocf["tile_looped"]["best_s"] / ours["tile_batched"]["best_s"]}
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    result["wall_s"] = time.time() - started

    load = result["machine"]
    samples = ", ".join(f"{v:.0f}" for v in matmul_samples)
    lines = [
        (
            f"model benchmark ({load['cpu']}, {args.threads} threads, torch {torch.__version__}, "
            f"load {load['load_average_start']:.1f} -> {load['load_average_end']:.1f}); "
            f"best of {args.repeats}"
        ),
        (
            f"matmul fp32 (best of 1024^2 and 2048^2 products, sampled {len(matmul_samples)}x): "
            f"{matmul:.1f} GFLOP/s (samples {samples})"
        ),
        f"{'model':<22} {'pass':<9} {'batch':<5} {'time':>21} {'GFLOP/s':>8} {'%matmul':>7}",
    ]
    lines += rows("small", result["small"], matmul)
    if "small_compiled" in result:
        lines += rows("small, torch.compile", result["small_compiled"], matmul)
    lines += rows("matched, ours", result["matched"]["ours"], matmul)
    if "error" in ocf:
        lines.append(f"matched, openclimatefix: not measured: {ocf['error']}")
    else:
        lines += rows("matched, openclimatefix", ocf, matmul)
        ratios = result["matched"]["openclimatefix_time_over_ours"]
        lines.append(
            "openclimatefix time / ours (goal >= 2): "
            + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
        )
    small_tile = result["small"]
    lines.append(
        f"small tile, looped / batched: "
        f"{small_tile['tile_looped']['best_s'] / small_tile['tile_batched']['best_s']:.2f}x"
    )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
