"""Shared timing helpers for the benchmarks: compile time, median run time, peak memory, JSON line."""

from __future__ import annotations

import json
import resource
import statistics
import time
from typing import Any, Callable

import jax


def peak_bytes() -> int:
    """Peak memory: the accelerator allocator's peak when it reports one, else this process's peak RSS."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # CPU backends may not implement memory_stats
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_compiled(fn: Callable, *args, repeats: int = 3) -> dict[str, Any]:
    """Compiles `fn` (a jitted function) for `args`, then times `repeats` runs. Returns compile_s, median_s."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up (first run allocates)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "median_s": statistics.median(times), "times_s": times}


def device_description() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}"


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Prints a human summary; with --json the last line is one JSON object."""
    for k, v in result.items():
        if isinstance(v, float):
            print(f"{k}: {v:.6g}")
        elif not isinstance(v, (list, dict)):
            print(f"{k}: {v}")
    if as_json:
        print(json.dumps(result))
