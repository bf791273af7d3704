"""Stage 3 of a generation: the denoising loop, compiled, with progress reported from outside the program.

Two jitted programs, both keyed on (graphdef, DenoisePlan, shapes):
* `start_loop`: the text K/V of every expert (once per generation; cond and uncond stacked on the batch), the
  empty step caches, the sampler's initial state.
* `run_steps`: a slice of the steps as one `lax.scan`: classifier-free guidance and the A14B expert switch are
  pure functions of t inside the body (samplers/guidance.py).

Without progress, `run_steps` gets every step at once: the whole loop is one program. With progress it gets one
step per call (one program whatever the step count); all steps are dispatched first and the host then waits for
each in turn and reports it, so the device never idles for the report. Neither program holds a host callback:
a Python callback lowers to a custom call bound to one platform, and the program could then not be compiled for
another target (e.g. a GPU program built on a CPU host).

Unmerged LoRAs (`lora/unmerged.py`) come in as `loras`, one `ExpertLoras` pytree (or None) per expert: each
step applies them to its expert at that step's strengths, on top of the untouched base weights.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.lora.unmerged import attach, touches_text
from wan22_jax.pipeline.plan import DenoisePlan
from wan22_jax.samplers import expert_switch
from wan22_jax.samplers.base import compute_dtype
from wan22_jax.samplers.loop import LoopCarry, init_carry, loop_aux, scan_steps, step_rows


class DenoiseInputs(NamedTuple):
    """The arrays of one generation (a pytree).

    x_T: [B, z, F', h, w] initial latents. context / context_null: [B, text_len, text_dim] zero-padded text
    embeddings. y: [B, C_y, F', h, w] channel conditioning (i2v-A14B) or None. first_latent: [B, z, 1, h, w] the
    image latent put back on frame 0 (ti2v image mode) or None.
    """

    x_T: jax.Array
    context: jax.Array
    context_null: jax.Array
    y: jax.Array | None = None
    first_latent: jax.Array | None = None


def _model_time(t, plan: DenoisePlan, batch: int):
    """The timestep layout the DiT gets: [B] for scalar t, [B, F'] when some frames are clean (ti2v)."""
    if plan.frame_mask is None:
        return jnp.broadcast_to(t, (batch,))
    return jnp.broadcast_to(t * jnp.asarray(plan.frame_mask, jnp.float32), (batch, len(plan.frame_mask)))


def _reinject(plan: DenoisePlan, inputs: DenoiseInputs):
    """post_step of ti2v image mode (official: latent = (1 - mask) * z + mask * latent): frame 0 becomes the image
    latent again; None when the plan does not re-inject."""
    if not plan.reinject_first_frame:
        return None
    return lambda x: x.at[:, :, :1].set(inputs.first_latent.astype(x.dtype))


def _doubled(a):
    return None if a is None else jnp.concatenate([a, a])


@functools.partial(jax.jit, static_argnums=(0, 1))
def start_loop(graphdef, plan: DenoisePlan, states, inputs: DenoiseInputs):
    """The loop's starting point.

    Args:
      graphdef: the DiT graphdef shared by the experts; states: one DiT state per expert, (high, low) or (one,).
      inputs: the DenoiseInputs.
    Returns:
      (x_0: [B, z, F', h, w] the first sample (frame 0 re-injected if planned), carry: the LoopCarry before step 0,
      kvs: per expert, the text K/V of every layer for [context; context_null] ([2B, ...]); for context alone
      ([B, ...]) when the plan has no guidance).
    """
    # without guidance (every scale 1) the negative prompt is never used: only the prompt's K/V
    text = jnp.concatenate([inputs.context, inputs.context_null]) if plan.cfg else inputs.context
    kvs = tuple(nnx.merge(graphdef, s).encode_context(text) for s in states)
    model_state = None
    if plan.step_cache is not None:
        twice = _doubled if plan.cfg else (lambda a: a)
        b = inputs.x_T.shape[0] * (2 if plan.cfg else 1)
        # shapes only: init traces prepare under eval_shape, nothing runs
        empty = plan.step_cache.init(nnx.merge(graphdef, states[0]), twice(inputs.x_T).astype(jnp.float32),
                                     _model_time(jnp.float32(0), plan, b), context=text, y=twice(inputs.y))
        model_state = (empty,) * len(states)  # each expert keeps its own cache
    post_step = _reinject(plan, inputs)
    x0 = inputs.x_T if post_step is None else post_step(inputs.x_T)
    return x0, init_carry(plan.sampler, x0, model_state), kvs


def _velocity_fn(graphdef, plan: DenoisePlan, states, kvs, inputs: DenoiseInputs, loras=None):
    """The loop's velocity function: `(x, t, i) -> (cond, uncond)` (with a step cache `(x, t, i, caches) ->
    ((cond, uncond), caches)`), switching experts on t for two-expert plans. Without guidance (plan.cfg False)
    the pair is (cond, cond), so that the guidance of scale 1 returns cond unchanged. loras: None, or per expert
    an ExpertLoras or None, applied at step i's strengths."""
    b = inputs.x_T.shape[0]
    y = inputs.y
    loras = (None,) * len(states) if loras is None else loras

    def expert(state, base_kv, slot):
        lora = loras[slot]
        text = jnp.concatenate([inputs.context, inputs.context_null]) if plan.cfg else inputs.context

        def at_step(i):
            """(model, text K/V) of step i: the base model, or its LoRAs at their strengths for step i."""
            if lora is None:
                return nnx.merge(graphdef, state), base_kv
            model = attach(graphdef, state, lora, i)
            return model, (model.encode_context(text) if touches_text(lora) else base_kv)

        def cached_velocity(x, t, i, caches):
            model, kv = at_step(i)
            # both CFG branches in one batch, so one skip decision covers them; each expert has its own slot
            tt = _model_time(t, plan, b)
            xm = x.astype(jnp.float32)
            twice = _doubled if plan.cfg else (lambda a: a)
            out, c = plan.step_cache.forward(model, caches[slot], twice(xm), twice(tt), step=i,
                                             context_kv=kv, y=twice(y))
            caches = tuple(c if k == slot else old for k, old in enumerate(caches))
            return ((out[:b], out[b:]) if plan.cfg else (out, out)), caches

        def velocity(x, t, i):
            model, kv = at_step(i)
            tt = _model_time(t, plan, b)
            xm = x.astype(jnp.float32)
            if not plan.cfg:
                # guidance of scale 1 on (cond, cond) is cond exactly: the unconditional branch is not run
                out = model(xm, tt, context_kv=kv, y=y)
                return out, out
            if plan.batch_cfg:
                out = model(_doubled(xm), _doubled(tt), context_kv=kv, y=_doubled(y))
                return out[:b], out[b:]
            kv_c = tuple(a[:, :b] for a in kv)
            kv_u = tuple(a[:, b:] for a in kv)
            return (model(xm, tt, context_kv=kv_c, y=y),
                    model(xm, tt, context_kv=kv_u, y=y))

        return cached_velocity if plan.step_cache is not None else velocity

    if plan.two_experts:
        return expert_switch(expert(states[0], kvs[0], 0), expert(states[1], kvs[1], 1), boundary=plan.boundary,
                             num_train_timesteps=plan.num_train_timesteps)
    return expert(states[0], kvs[0], 0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def run_steps(graphdef, plan: DenoisePlan, states, kvs, inputs: DenoiseInputs, carry: LoopCarry, rows: dict, key,
              loras=None):
    """Steps `rows` of the loop (one lax.scan) from `carry`.

    Args:
      graphdef, plan, states, inputs: as `start_loop`; kvs: its text K/V; carry: its carry or a previous
        run_steps's. rows: `samplers.loop.step_rows(tables, dtype, start, stop)`. key: the PRNG key of a
        stochastic sampler, else None. loras: None, or per expert an ExpertLoras (`lora.unmerged`) or None:
        unmerged LoRAs applied at each step's strengths.
    Returns:
      (the carry after the last row, (samples [n, B, ...], velocities [n, B, ...]) with return_trajectory else
      None).
    """
    return scan_steps(plan.sampler, _velocity_fn(graphdef, plan, states, kvs, inputs, loras), carry, rows,
                      guidance=plan.guidance, key=key, return_trajectory=plan.return_trajectory,
                      post_step=_reinject(plan, inputs), check_finite=plan.check_finite)


def program_memory(graphdef, plan: DenoisePlan, states, inputs: DenoiseInputs, tables: dict, key=None, *,
                   per_step: bool, loras=None) -> int:
    """Compiles the loop's two programs for these inputs (abstract shapes suffice) and returns the bytes the larger
    one needs beyond its weights: temporaries, outputs and the non-weight arguments (`memory_analysis`).

    The compiled programs stay in jit's cache, so the run that follows does not compile again.

    Args:
      graphdef, plan, states, tables, key: as `denoise`; inputs: DenoiseInputs of arrays or jax.ShapeDtypeStruct.
      per_step: compile the one-step program (progress or a step callback) instead of the whole loop.
      loras: as `run_steps` (their factors count as weights).
    Returns:
      bytes, or 0 where the backend reports no memory analysis.
    """
    weights = sum(a.nbytes for a in jax.tree.leaves((states, loras)))
    start = start_loop.lower(graphdef, plan, states, inputs).compile()
    x0, carry, kvs = jax.eval_shape(start_loop, graphdef, plan, states, inputs)
    total = next(iter(tables.values())).shape[0]
    rows = step_rows(tables, compute_dtype(x0), 0, 1 if per_step else total)
    steps = run_steps.lower(graphdef, plan, states, kvs, inputs, carry, rows, key, loras).compile()
    need = 0
    for compiled in (start, steps):
        m = compiled.memory_analysis()
        if m is None:
            return 0
        need = max(need, m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                   + max(m.argument_size_in_bytes - weights, 0))
    return int(need)


def denoise(graphdef, plan: DenoisePlan, states, inputs: DenoiseInputs, tables: dict, key=None,
            progress: Callable[[int, int], Any] | None = None,
            on_step: Callable[[int, jax.Array], Any] | None = None, loras=None) -> tuple[jax.Array, dict]:
    """Runs the whole loop.

    Args:
      graphdef, plan, states, inputs: as `start_loop`. tables: `plan.sampler.tables(schedule)` (host arrays).
      key: PRNG key for a stochastic sampler. progress: None, or called as progress(done, total) on the host
        after each step has finished (in order). on_step: None, or called as on_step(step, latents) on the host
        after each step (step from 0; latents [B, z, F', h, w], the sample after that step). loras: None, or
        per expert an ExpertLoras (`lora.unmerged.build_expert_loras`, strengths for every step) or None.
    Returns:
      (final latents [B, z, F', h, w], aux): aux has "first_nonfinite_step" (with check_finite), "samples"
      [N + 1, B, ...] and "velocities" [N, B, ...] (with return_trajectory), "model_state" (the step caches).
    """
    x0, carry, kvs = start_loop(graphdef, plan, states, inputs)
    total = next(iter(tables.values())).shape[0]
    dtype = compute_dtype(x0)
    per_step = progress is not None or on_step is not None
    bounds = [(i, i + 1) for i in range(total)] if per_step else [(0, total)]
    # Steps are dispatched ahead of the reports so that the device never waits for the host. Progress alone
    # waits on a scalar per step (all steps in flight); a step callback needs each step's latents, so at most
    # one step runs ahead of the report (two samples alive, not one per step).
    ahead = 1 if on_step is not None else total
    parts, pending = [], collections.deque()

    def report(i, marker):
        marker.block_until_ready()
        if progress is not None:
            progress(i + 1, total)
        if on_step is not None:
            on_step(i, marker)

    for i, (start, stop) in enumerate(bounds):
        carry, ys = run_steps(graphdef, plan, states, kvs, inputs, carry, step_rows(tables, dtype, start, stop), key,
                              loras)
        parts.append(ys)
        if per_step:
            pending.append((i, carry.state.x if on_step is not None else carry.first_bad))
            while len(pending) > ahead:
                report(*pending.popleft())
    while pending:
        report(*pending.popleft())
    ys = None
    if plan.return_trajectory:
        ys = parts[0] if len(parts) == 1 else tuple(jnp.concatenate(a) for a in zip(*parts))
    return carry.state.x, loop_aux(x0, carry, ys, check_finite=plan.check_finite)
