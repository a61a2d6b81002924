"""The one timing helper of the benchmarks: medians of functions called in turn, round by round."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds of each function, the functions called in turn, round after round.

    Alternating keeps the comparison fair when the machine's speed drifts. Each call's result
    is waited for (`jax.block_until_ready`, a no-op for values that are not JAX arrays), so a
    function that returns JAX arrays is timed with its device work; a PyTorch function must
    synchronise its own device before it returns.

    Args:
      fns: name -> function of no arguments.
      warmup: untimed rounds first (compilation, caches).
      repeats: timed rounds.

    Returns:
      name -> median seconds.
    """
    import jax

    for _ in range(warmup):
        for fn in fns.values():
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
