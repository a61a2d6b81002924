"""Timing helper shared by the benchmark scripts: medians after warm-up, device work included."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one call that compiles and warms
    up; each call waits for its device results (`jax.block_until_ready`)."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)
