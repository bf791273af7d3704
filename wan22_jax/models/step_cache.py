"""Step caching (TeaCache-style): skip the DiT's blocks at a denoising step when their input has barely changed
since the last step that ran them, and reuse that step's block residual instead.

The signal is block 0's time-modulated input, LN(tokens)(1 + scale) + shift: it moves with both the sample and
the timestep, and is cheap (patch embedding + time MLP, no block). Its relative L1 change per step is
accumulated; while the sum stays under `threshold` (and fewer than `max_skips` steps in a row were skipped),
the step is skipped: tokens + cached residual goes to the head. Otherwise the blocks run, the residual
(output - input) is cached and the sum resets. The first `warmup` steps always run.

The cache is a plain pytree carried through the sampling `lax.scan`, and the choice is a `lax.cond`, so a
skipped step really does not run the blocks (on every backend). One decision covers the whole batch (CFG's
two branches included). For two-expert models each expert keeps its own cache (`pipeline/denoise.py`): the first
step after the switch always runs.

Quality cost: measure it (experiments/step_cache/run.py: PSNR of the decoded video against the uncached run).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from wan22_jax.errors import InputError


def token_shape(model, x, t, **prepare_kwargs) -> tuple[int, ...]:
    """The shape [B, L, D] of the tokens `model.prepare` makes of (x, t) (shapes only: nothing is computed)."""
    return jax.eval_shape(lambda: model.prepare(x, t, **prepare_kwargs)).tokens.shape


def reuse_or_run_blocks(model, inp, skip, residual):
    """The blocks' output on the prepared input `inp`, as a `lax.cond` so that a skipped step does not run them.

    Args:
      model: the DiT (`run_blocks`). inp: `model.prepare`'s output (tokens [B, L, D]).
      skip: bool [] reuse the cached residual instead of running the blocks.
      residual: [B, L, D] the cached block residual (output - input of the last step that ran them).
    Returns:
      (output tokens [B, L, D], the residual to cache: the same one when skipped, else output - input).
    """

    def reuse(h):
        return h + residual, residual

    def compute(h):
        out, _ = model.run_blocks(inp, h)
        return out, out - h

    return jax.lax.cond(skip, reuse, compute, inp.tokens)


@dataclasses.dataclass(frozen=True)
class StepCache:
    """threshold: accumulated relative L1 change of the modulated input below which a step is skipped.
    max_skips: at most this many skipped steps in a row. warmup: the first steps always run."""

    threshold: float = 0.1
    max_skips: int = 2
    warmup: int = 2

    def __post_init__(self):
        if not self.threshold >= 0 or self.max_skips < 0 or self.warmup < 1:
            raise InputError(f"StepCache(threshold={self.threshold}, max_skips={self.max_skips}, "
                             f"warmup={self.warmup}): need threshold >= 0, max_skips >= 0, warmup >= 1")

    def init(self, model, x, t, **prepare_kwargs) -> dict:
        """An empty cache for `model` on inputs shaped like (x, t) (shapes only: nothing is computed)."""
        z = jnp.zeros(token_shape(model, x, t, **prepare_kwargs), jnp.float32)
        return {"signal": z, "residual": z, "acc": jnp.float32(0), "run": jnp.int32(0), "seen": jnp.int32(0),
                "skipped": jnp.int32(0)}

    def forward(self, model, cache: dict, x, t, *, step=None, **prepare_kwargs):
        """The model's forward with step skipping: -> (output [B, out_dim, F, H, W], new cache).

        step: the step index (unused: this cache decides from the input alone; `mag_cache.MagCache` reads it).
        prepare_kwargs: context / context_kv / y / kv_mask, as `WanModel.__call__`.
        """
        del step
        inp = model.prepare(x, t, **prepare_kwargs)
        signal = model.modulated_input(inp)
        prev = cache["signal"]
        change = jnp.mean(jnp.abs(signal - prev)) / jnp.maximum(jnp.mean(jnp.abs(prev)), 1e-12)
        acc = cache["acc"] + change
        skip = ((cache["seen"] >= self.warmup) & (acc < self.threshold) & (cache["run"] < self.max_skips))

        h, residual = reuse_or_run_blocks(model, inp, skip, cache["residual"])
        new = {"signal": signal, "residual": residual, "acc": jnp.where(skip, acc, 0.0),
               "run": jnp.where(skip, cache["run"] + 1, 0), "seen": cache["seen"] + 1,
               "skipped": cache["skipped"] + skip.astype(jnp.int32)}
        return model.finish(inp, h), new
