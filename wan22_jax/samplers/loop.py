"""The sampling loop: one `jax.lax.scan` over the steps of any sampler (base.py contract).

The step index, the model timesteps and all solver coefficients are scanned-over arrays, so the body is traced
once whatever the schedule; anything that varies per step (guide scale, expert) is a pure function of t inside
the body. `sample` is traceable: call it inside your own `jax.jit` with the model weights as arguments (a
velocity_fn closing over concrete weights outside any jit would bake them into the program as constants).

The loop holds no host callback: a Python callback lowers to a custom call bound to the platform it is compiled
for (`xla_ffi_python_cpu_callback` on a CPU), so a program holding one cannot be compiled for another target.
Progress is reported by the caller between calls instead: `scan_steps` runs any contiguous slice of the steps
from an explicit `LoopCarry`, so a caller can run one step per call and report each (pipeline/denoise.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from wan22_jax.errors import InputError
from wan22_jax.samplers.base import Sampler, compute_dtype
from wan22_jax.samplers.guidance import VelocityFn
from wan22_jax.samplers.schedule import Schedule

Array = jax.Array


def sample(
    sampler: Sampler,
    velocity_fn: VelocityFn,
    x_T: Array,
    schedule: Schedule,
    *,
    guidance: Callable[[object, Array], Array] | None = None,
    key: Array | None = None,
    return_trajectory: bool = False,
):
    """Integrates from x_T at sigmas[0] to sigma = 0.

    Args:
        sampler: any sampler (see `get_sampler`).
        velocity_fn: pure `(x [*S], t [], step_index [] int32) -> prediction`; t is a float scalar holding the
            model timestep (an integer value in the official "truncate" mode; `Schedule.model_time` for
            intermediate stages). Without guidance the prediction is the velocity [*S].
        x_T: [*S] initial noise, e.g. [B, C, F, H, W] latents.
        schedule: the `Schedule` (host arrays; changing it retraces).
        guidance: optional pure `(prediction, t) -> velocity [*S]`, e.g. `ClassifierFreeGuidance`.
        key: PRNG key, required by stochastic samplers; step i uses `fold_in(key, i)`.
        return_trajectory: also return the per-step samples and node velocities.

    Returns:
        x_0 [*S] (dtype of x_T), or `(x_0, {"samples": [N + 1, *S] (samples[0] = x_T),
        "velocities": [N, *S] (the velocity of each step's first evaluation, after guidance)})`.
    """
    if sampler.stochastic and key is None:
        raise InputError(f"{type(sampler).__name__} is stochastic: pass a PRNG key")
    x, aux = _scan(sampler, velocity_fn, guidance, return_trajectory, jnp.asarray(x_T), sampler.tables(schedule), key)
    return (x, aux) if return_trajectory else x


# jit so that repeated calls with the same sampler / velocity_fn / guidance objects and step count reuse one
# compiled program (the tables are arguments, so a new shift does not recompile); inside a caller's jit it inlines.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _scan(sampler, velocity_fn, guidance, return_trajectory, x_T, tables, key):
    return run_scan(sampler, velocity_fn, x_T, tables, guidance=guidance, key=key,
                    return_trajectory=return_trajectory)


class LoopCarry(NamedTuple):
    """What one step hands to the next (a pytree).

    state: the sampler's state (the sample `x` and any multistep history).
    first_bad: int32 [], the first step whose sample held a NaN or Inf, -1 if none (tracked with check_finite).
    model_state: the state threaded through the velocity function (step caches), or None.
    """

    state: Any
    first_bad: Array
    model_state: Any = None


def init_carry(sampler: Sampler, x_T: Array, model_state=None) -> LoopCarry:
    """The carry before step 0: `sampler.init(x_T)`, no non-finite step seen, the given model state."""
    return LoopCarry(sampler.init(x_T), jnp.int32(-1), model_state)


def step_rows(tables: dict, dtype, start: int = 0, stop: int | None = None) -> dict:
    """Steps [start, stop) of `tables` as scan inputs: each table cast to `dtype`, plus the global step index.

    Args:
        tables: `sampler.tables(schedule)`: {name: [N, ...]} (host or traced arrays).
        dtype: the compute dtype (`compute_dtype(x_T)`).
    Returns:
        {name: [stop - start, ...] dtype, "index": [stop - start] int32 (start, start + 1, ...)}.
    """
    rows = {k: jnp.asarray(v[start:stop], dtype) for k, v in tables.items()}
    count = next(iter(rows.values())).shape[0]
    rows["index"] = jnp.arange(start, start + count, dtype=jnp.int32)
    return rows


def scan_steps(
    sampler: Sampler,
    velocity_fn: VelocityFn,
    carry: LoopCarry,
    rows: dict,
    *,
    guidance: Callable[[object, Array], Array] | None = None,
    key: Array | None = None,
    return_trajectory: bool = False,
    post_step: Callable[[Array], Array] | None = None,
    check_finite: bool = False,
) -> tuple[LoopCarry, tuple[Array, Array] | None]:
    """Runs the steps of `rows` (from `step_rows`) from `carry`: one `lax.scan`, traceable inside a caller's jit.

    Running steps [0, k) and then [k, N) from the returned carry gives the same result as [0, N) at once.

    Args:
        velocity_fn: `(x, t, i) -> prediction`, or with a model state in the carry
            `(x, t, i, state) -> (prediction, state)`.
        post_step: optional pure `x -> x` applied to the sample after every step, before the next one (e.g. the
            ti2v first-frame re-injection); trajectories record the sample before it.
        check_finite: track the first step whose sample holds a NaN or Inf in `carry.first_bad`.
        Other arguments as `sample`.

    Returns:
        (the carry after the last row, (samples [n, *S], velocities [n, *S]) if return_trajectory else None).
    """
    threaded = carry.model_state is not None

    def body(carry, row):
        state, bad, mstate = carry
        i = row["index"]
        box = [mstate]  # the sampler may evaluate several times per step: thread the state through each

        def velocity(x, t):
            if threaded:
                pred, box[0] = velocity_fn(x, t, i, box[0])
            else:
                pred = velocity_fn(x, t, i)
            return pred if guidance is None else guidance(pred, t)

        step_key = None if key is None else jax.random.fold_in(key, i)
        state, v = sampler.step(state, row, velocity, step_key)
        x_step = state.x
        if post_step is not None:
            state = state._replace(x=post_step(state.x))
        if check_finite:
            bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(x_step)), i, bad)
        return LoopCarry(state, bad, box[0]), ((x_step, v) if return_trajectory else None)

    return jax.lax.scan(body, carry, rows)


def run_scan(
    sampler: Sampler,
    velocity_fn: VelocityFn,
    x_T: Array,
    tables: dict,
    *,
    guidance: Callable[[object, Array], Array] | None = None,
    key: Array | None = None,
    return_trajectory: bool = False,
    post_step: Callable[[Array], Array] | None = None,
    check_finite: bool = False,
    model_state=None,
) -> tuple[Array, dict]:
    """The whole loop (`init_carry` + `scan_steps` over every row), traceable inside a caller's jit.

    Args:
        tables: `sampler.tables(schedule)` (host arrays, or traced arrays: they become scan inputs).
        model_state: a pytree the velocity function threads from evaluation to evaluation (a step cache):
            then `velocity_fn(x, t, i, state) -> (prediction, state)`.
        Other arguments as `scan_steps` and `sample`.

    Returns:
        x_0 and a dict with "samples" [N + 1, *S] and "velocities" [N, *S] if return_trajectory,
        "first_nonfinite_step" (int32, -1 if none) if check_finite, and "model_state" (the final threaded state)
        if a model_state was given.
    """
    carry, ys = scan_steps(sampler, velocity_fn, init_carry(sampler, x_T, model_state),
                           step_rows(tables, compute_dtype(x_T)), guidance=guidance, key=key,
                           return_trajectory=return_trajectory, post_step=post_step, check_finite=check_finite)
    return carry.state.x, loop_aux(x_T, carry, ys, check_finite=check_finite)


def loop_aux(x_T: Array, carry: LoopCarry, ys, *, check_finite: bool) -> dict:
    """The aux dict of a finished loop: the trajectory (ys not None), first_nonfinite_step, model_state.

    Every entry is added to the same dict, so a trajectory never hides the model state (a step cache's counts).
    """
    aux = {}
    if ys is not None:
        samples, velocities = ys
        aux["samples"] = jnp.concatenate([x_T[None], samples])
        aux["velocities"] = velocities
    if check_finite:
        aux["first_nonfinite_step"] = carry.first_bad
    if carry.model_state is not None:
        aux["model_state"] = carry.model_state
    return aux
