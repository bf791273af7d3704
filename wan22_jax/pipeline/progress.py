"""What the user sees during a long wait: a tqdm bar per denoising run, a status line per stage (loading,
compiling, decoding). tqdm.auto picks a notebook widget in Jupyter and a text bar elsewhere; every piece is off
with `progress=False` (the CLI's --quiet)."""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any, Callable

import jax
from tqdm.auto import tqdm

# progress: True (a tqdm bar), False / None (silent), or a callable (steps_done, steps_total) -> None
Progress = bool | None | Callable[[int, int], Any]


# persistent compilation cache events (recorded by JAX when the cache is on, e.g. by the CLI): a "compiling"
# stage that only hit the cache says "cached"
_CACHE_EVENTS: collections.Counter = collections.Counter()
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def _count_cache_events(event: str, **kwargs) -> None:
    if event in (_HIT, _MISS):
        _CACHE_EVENTS[event] += 1


jax.monitoring.register_event_listener(_count_cache_events)


@contextlib.contextmanager
def step_reporter(progress: Progress, total: int):
    """The `denoise` progress callable for a call's `progress` argument: a tqdm bar for True, None for off, the
    callable itself otherwise."""
    if progress is True:
        bar = tqdm(total=total, desc="denoising", unit="step")
        try:
            yield lambda done, total: bar.update(done - bar.n)
        finally:
            bar.close()
    else:
        yield progress or None


@contextlib.contextmanager
def stage(desc: str, enabled: bool, total: int | None = None):
    """A status bar for one stage ("loading", "compiling", "decoding (VAE)"): it shows the elapsed time and,
    with `total`, the parts done (`bar.update(1)` per part); on exit it reads "done" with the time taken.

    Yields:
      the tqdm bar (disabled when not `enabled`: every call on it is then a no-op).
    """
    bar = tqdm(total=total if total is not None else 1, desc=desc, disable=not enabled, leave=enabled,
               bar_format="{desc}: {n_fmt}/{total_fmt}{postfix} [{elapsed}]" if total else
               "{desc}{postfix} [{elapsed}]")
    t0 = time.perf_counter()
    before = dict(_CACHE_EVENTS)
    try:
        yield bar
        hits, misses = (_CACHE_EVENTS[k] - before.get(k, 0) for k in (_HIT, _MISS))
        cached = " (cached)" if hits and not misses else ""
        bar.set_postfix_str(f"done in {time.perf_counter() - t0:.1f}s{cached}")
        if total is None:
            bar.update(1)
    finally:
        bar.close()
