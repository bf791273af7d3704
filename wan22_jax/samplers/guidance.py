"""Per-step guidance and model selection as pure functions of the model timestep t (traced inside the scan).

Official rules (text2video.py / image2video.py, docs/architecture.md §7):
* classifier-free guidance: `uncond + g * (cond - uncond)`;
* A14B experts: the high-noise expert runs while `t >= boundary * num_train_timesteps`, the low-noise expert
  after, and the same test picks the guide scale from `guide_scale = (low_noise, high_noise)`.
The switch is a `lax.cond` on t so only one expert runs per evaluation and the loop compiles once.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.errors import InputError

Array = jax.Array
# velocity_fn(x [*S], t [] float, step_index [] int32) -> prediction (an array, or (cond, uncond) for CFG)
VelocityFn = Callable[[Array, Array, Array], object]


def cfg(cond: Array, uncond: Array, scale) -> Array:
    """Classifier-free guidance `uncond + scale * (cond - uncond)` (official operation order)."""
    return uncond + scale * (cond - uncond)


def at_or_above(t: Array, threshold: float) -> Array:
    """`t >= threshold` with the float64 threshold of the official comparison, exact for float32 t as well.

    Rounding `threshold` to float32 could flip the test for a t equal to the rounded value; comparing with the
    smallest float32 >= threshold gives exactly the set {t : t >= threshold}.
    """
    if jnp.dtype(t.dtype) == jnp.float64:
        return t >= threshold
    thr = np.float32(threshold)
    if float(thr) < threshold:
        thr = np.nextafter(thr, np.float32(np.inf))
    return t >= jnp.asarray(thr, t.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierFreeGuidance:
    """Combines a `(cond, uncond)` prediction into one velocity; callable as `guidance(prediction, t)`.

    Attributes:
        scale: one guide scale, or `(low_noise, high_noise)` scales chosen by `boundary` (official MoE order).
        boundary: fraction of `num_train_timesteps` at and above which the high-noise scale applies.
        num_train_timesteps: T.
    """

    scale: float | tuple[float, float] = 5.0
    boundary: float | None = None
    num_train_timesteps: int = 1000

    def __post_init__(self):
        if isinstance(self.scale, tuple) and (len(self.scale) != 2 or self.boundary is None):
            raise InputError(f"a (low_noise, high_noise) guide scale {self.scale} needs a boundary")

    def scale_at(self, t: Array) -> Array:
        """The guide scale at model timestep t."""
        if not isinstance(self.scale, tuple):
            return jnp.asarray(self.scale, t.dtype)
        low, high = self.scale
        return jnp.where(at_or_above(t, self.boundary * self.num_train_timesteps), high, low).astype(t.dtype)

    def __call__(self, prediction: tuple[Array, Array], t: Array) -> Array:
        cond, uncond = prediction
        return cfg(cond, uncond, self.scale_at(t).astype(cond.dtype))


def expert_switch(high_noise_fn: VelocityFn, low_noise_fn: VelocityFn, *, boundary: float,
                  num_train_timesteps: int = 1000) -> VelocityFn:
    """A velocity_fn running `high_noise_fn` while t >= boundary * T, else `low_noise_fn` (A14B MoE).

    Both functions take `(x, t, step_index)` and must return the same structure; under `lax.cond` only the
    selected one is evaluated (under `vmap` both would be, since cond becomes select).
    """
    threshold = boundary * num_train_timesteps

    def select(x, t, i, *state):  # a threaded model state (step caches) passes through to both
        return jax.lax.cond(at_or_above(t, threshold), high_noise_fn, low_noise_fn, x, t, i, *state)

    return select
