"""The benchmarks' timer: variants run interleaved (a, b, c, a, b, c, ...) after a warm-up call, medians reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def interleaved_medians(variants: Mapping[str, Callable[[], object]], repeats: int, *,
                        warm_up: bool = True) -> dict[str, float]:
    """Median seconds of each variant over ``repeats`` interleaved rounds (one warm-up call each first)."""
    if warm_up:
        for fn in variants.values():
            fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
