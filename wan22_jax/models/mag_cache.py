"""MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache", arXiv:2506.09045):
skip the DiT's blocks at a step and reuse the last computed block residual, deciding from a calibrated curve of
how much the residual's magnitude changes from step to step.

The observation behind it: the ratio of the block residual's norm between consecutive steps,
gamma_i = mean over tokens of ||r_i|| / ||r_{i-1}||, follows nearly the same curve for every prompt and seed (close
to 1 for most of the run, falling off in the last steps). One calibration run (`MagCalibration`, then
`pipeline.mag_calibration.calibrate_mag_cache`) records it; `MagCache` then uses it as the error model:
reusing the residual of step j at steps j+1..i is off by about |1 - prod gamma| at each, so the skip errors are
accumulated and a step is skipped while that sum stays under `threshold` and at most `max_skips` steps in a row
were skipped; otherwise the blocks run and the accumulators reset. The first `retention` share of each expert's
steps always runs.

The decision depends only on the step index and the calibrated curve, not on the data, so it is the same for
every prompt of a run. As `step_cache.StepCache`: a plain pytree carried through the sampling `lax.scan`, a
`lax.cond` so a skipped step does not run the blocks, one decision for the whole batch (both CFG branches, which
the official code decides separately), and per expert a cache of its own: the accumulators reset at the switch and
the low-noise expert's first steps (its retention share) run.

Use it with samplers that evaluate the model once per step (the curve is indexed by the step).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from wan22_jax.errors import InputError
from wan22_jax.models.step_cache import reuse_or_run_blocks, token_shape


def nearest_ratios(ratios, steps: int) -> tuple[float, ...]:
    """A calibrated curve of any length resampled to `steps` entries by nearest index (as the official code does
    when the step count differs from the calibration's).

    Args:
        ratios: [n] per-step magnitude ratios (entry 0 unused: the first step always runs).
        steps: the run's step count.
    Returns:
        `steps` floats.
    """
    src = np.asarray(ratios, np.float64)
    if steps == src.shape[0]:
        return tuple(float(v) for v in src)
    if steps == 1:
        return (float(src[-1]),)
    idx = np.round(np.arange(steps) * (src.shape[0] - 1) / (steps - 1)).astype(int)
    return tuple(float(v) for v in src[idx])


def _token_norms(residual):
    """[B, L, D] -> [B, L] fp32 L2 norm of each token's residual."""
    r = residual.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(r * r, axis=-1))


@dataclasses.dataclass(frozen=True)
class MagCache:
    """Magnitude-aware step skipping from a calibrated ratio curve.

    Attributes:
        ratios: the calibrated magnitude ratio of each step (`calibrate_mag_cache`); resampled to the run's step
            count when it differs.
        threshold: skip while the accumulated skip error sum |1 - prod gamma| stays below this (paper: 0.06 to
            0.12 on Wan).
        max_skips: at most this many skipped steps in a row (paper's K: 2 to 4).
        retention: share of each expert's steps, from its first, that always run (paper: 0.2; at least one).
        expert_starts: the first step of each expert's run of steps, (0,) for one DiT; filled in by the pipeline
            (`resolved`) from the schedule and the expert boundary.
    """

    ratios: tuple[float, ...]
    threshold: float = 0.06
    max_skips: int = 2
    retention: float = 0.2
    expert_starts: tuple[int, ...] = (0,)

    def __post_init__(self):
        try:
            ratios = tuple(float(v) for v in self.ratios)
        except (TypeError, ValueError):
            raise InputError(f"MagCache(ratios={self.ratios!r}): give a sequence of per-step ratios") from None
        object.__setattr__(self, "ratios", ratios)
        if not ratios or not all(math.isfinite(v) and v > 0 for v in ratios):
            raise InputError(f"MagCache(ratios=...): need at least one ratio, all finite and > 0; got {ratios}")
        if (not self.threshold >= 0 or isinstance(self.max_skips, bool) or self.max_skips < 0
                or not 0 <= self.retention <= 1):
            raise InputError(f"MagCache(threshold={self.threshold}, max_skips={self.max_skips}, "
                             f"retention={self.retention}): need threshold >= 0, max_skips >= 0, "
                             "0 <= retention <= 1")

    def resolved(self, steps: int, expert_starts: tuple[int, ...] = (0,)) -> "MagCache":
        """This cache for a run of `steps` steps whose experts start at `expert_starts` (ratios resampled)."""
        return dataclasses.replace(self, ratios=nearest_ratios(self.ratios, steps),
                                   expert_starts=tuple(int(s) for s in expert_starts))

    def always_run(self) -> np.ndarray:
        """[N] bool: the retained steps (the first max(1, int(retention * n)) of each expert's n steps)."""
        n = len(self.ratios)
        keep = np.zeros(n, bool)
        bounds = [*self.expert_starts, n]
        for a, b in zip(bounds[:-1], bounds[1:]):
            keep[a:a + max(1, int(self.retention * (b - a)))] = True
        return keep

    def init(self, model, x, t, **prepare_kwargs) -> dict:
        """An empty cache for `model` on inputs shaped like (x, t) (shapes only: nothing is computed)."""
        z = jnp.zeros(token_shape(model, x, t, **prepare_kwargs), jnp.float32)
        return {"residual": z, "ratio": jnp.float32(1), "err": jnp.float32(0), "run": jnp.int32(0),
                "skipped": jnp.int32(0)}

    def forward(self, model, cache: dict, x, t, *, step, **prepare_kwargs):
        """The model's forward with magnitude-aware skipping: -> (output [B, out_dim, F, H, W], new cache).

        Args:
            step: int32 [] the global step index (picks the ratio and the retention).
            prepare_kwargs: context / context_kv / y / kv_mask, as `WanModel.__call__`.
        """
        inp = model.prepare(x, t, **prepare_kwargs)
        gamma = jnp.asarray(self.ratios, jnp.float32)[step]
        forced = jnp.asarray(self.always_run())[step]
        ratio = cache["ratio"] * gamma  # residual magnitude now vs the cached one
        err = cache["err"] + jnp.abs(1.0 - ratio)
        run = cache["run"] + 1
        skip = ~forced & (err < self.threshold) & (run <= self.max_skips)

        h, residual = reuse_or_run_blocks(model, inp, skip, cache["residual"])
        new = {"residual": residual, "ratio": jnp.where(skip, ratio, 1.0), "err": jnp.where(skip, err, 0.0),
               "run": jnp.where(skip, run, 0), "skipped": cache["skipped"] + skip.astype(jnp.int32)}
        return model.finish(inp, h), new


@dataclasses.dataclass(frozen=True)
class MagCalibration:
    """The calibration run of `MagCache`: never skips; records at each step the magnitude ratio
    mean over tokens (and the batch) of ||r_i|| / ||r_prev|| of the block residual against the same expert's
    previous step (1 at each expert's first step) into `cache["ratios"][step]`.

    Attributes:
        steps: the run's step count (the length of the recorded curve).
    """

    steps: int

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"MagCalibration(steps={self.steps!r}): need a whole number >= 1")

    def init(self, model, x, t, **prepare_kwargs) -> dict:
        shape = token_shape(model, x, t, **prepare_kwargs)
        return {"norms": jnp.zeros(shape[:2], jnp.float32), "ratios": jnp.zeros((self.steps,), jnp.float32),
                "seen": jnp.int32(0), "skipped": jnp.int32(0)}

    def forward(self, model, cache: dict, x, t, *, step, **prepare_kwargs):
        """The plain forward, recording this step's ratio: -> (output, new cache)."""
        inp = model.prepare(x, t, **prepare_kwargs)
        out, _ = model.run_blocks(inp, inp.tokens)
        norms = _token_norms(out - inp.tokens)
        ratio = jnp.where(cache["seen"] > 0, jnp.mean(norms / jnp.maximum(cache["norms"], 1e-12)), 1.0)
        new = {"norms": norms, "ratios": cache["ratios"].at[step].set(ratio), "seen": cache["seen"] + 1,
               "skipped": cache["skipped"]}
        return model.finish(inp, out), new
