"""Timing helpers shared by the benchmarks (stdlib + torch only, so any venv can import it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_call(
    fn: Callable[[], object], repeats: int, warmup: Callable[[], object] | None = None
) -> dict[str, float]:
    """Seconds per call of ``fn``: best and median of ``repeats`` after a warm-up call.

    ``warmup`` (default ``fn``) runs once first, untimed. The best time is the one to
    compare: on a shared machine other processes only ever add time.
    """
    (warmup or fn)()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times)}


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Achieved fp32 GFLOP/s of one ``size x size`` matrix product (2 n^3 FLOPs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = time_call(lambda: a @ b, repeats)["best_s"]
    return 2 * size**3 / seconds / 1e9
