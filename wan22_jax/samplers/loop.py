"""The sampling loop: one `jax.lax.scan` over the steps of any sampler (base.py contract).

The step index, the model timesteps and all solver coefficients are scanned-over arrays, so the body is traced
once whatever the schedule; anything that varies per step (guide scale, expert) is a pure function of t inside
the body. `sample` is traceable: call it inside your own `jax.jit` with the model weights as arguments (a
velocity_fn closing over concrete weights outside any jit would bake them into the program as constants).
"""

from __future__ import annotations

import functools
from typing import Callable

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


# The progress hook: a host function called with 1 after every step (tqdm's `update`), or None. It is read when a
# step finishes, not when the loop is traced, so one compiled loop serves every progress bar.
_PROGRESS: list[Callable[[int], object] | None] = [None]


def set_progress(update: Callable[[int], object] | None) -> None:
    """Installs (or removes, with None) the host callback advanced once per completed step."""
    _PROGRESS[0] = update


def _tick(_):
    update = _PROGRESS[0]
    if update is not None:
        update(1)


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
    """The loop itself, traceable inside a caller's jit (model weights stay arguments of that jit).

    Args:
        tables: `sampler.tables(schedule)` (host arrays, or traced arrays: they become scan inputs).
        post_step: optional pure `x -> x` applied to the sample after every step, before the next one (e.g. the
            ti2v first-frame re-injection); trajectories record the sample before it.
        check_finite: track the first step whose sample holds a NaN or Inf.
        model_state: a pytree the velocity function threads from evaluation to evaluation (a step cache):
            then `velocity_fn(x, t, i, state) -> (prediction, state)`; the final state is aux["model_state"].
        Other arguments as `sample`.

    Returns:
        x_0 and a dict with "samples" [N + 1, *S] and "velocities" [N, *S] if return_trajectory, and
        "first_nonfinite_step" (int32, -1 if none) if check_finite.
    """
    dtype = compute_dtype(x_T)
    xs = {k: jnp.asarray(v, dtype) for k, v in tables.items()}
    steps = next(iter(xs.values())).shape[0]
    xs["index"] = jnp.arange(steps, dtype=jnp.int32)

    def body(carry, row):
        state, bad, mstate = carry
        i = row["index"]
        box = [mstate]  # the sampler may evaluate several times per step: thread the state through each

        def velocity(x, t):
            if model_state is None:
                pred = velocity_fn(x, t, i)
            else:
                pred, box[0] = velocity_fn(x, t, i, box[0])
            return pred if guidance is None else guidance(pred, t)

        step_key = None if key is None else jax.random.fold_in(key, i)
        state, v = sampler.step(state, row, velocity, step_key)
        mstate = box[0]
        x_step = state.x
        if post_step is not None:
            state = state._replace(x=post_step(state.x))
        if check_finite:
            bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(x_step)), i, bad)
        jax.debug.callback(_tick, i)
        return (state, bad, mstate), ((x_step, v) if return_trajectory else None)

    (state, bad, mstate), ys = jax.lax.scan(body, (sampler.init(x_T), jnp.int32(-1), model_state), xs)
    aux = {} if model_state is None else {"model_state": mstate}
    if return_trajectory:
        samples, velocities = ys
        aux = {"samples": jnp.concatenate([x_T[None], samples]), "velocities": velocities}
    if check_finite:
        aux["first_nonfinite_step"] = bad
    return state.x, aux
