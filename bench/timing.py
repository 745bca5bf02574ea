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


def matmul_gflops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """Best achieved fp32 GFLOP/s of ``n x n`` matrix products over ``sizes`` (2 n^3 FLOPs)."""
    rates = []
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates.append(2 * n**3 / time_call(lambda a=a, b=b: a @ b, repeats)["best_s"] / 1e9)
    return max(rates)
