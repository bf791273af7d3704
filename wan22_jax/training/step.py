"""The pure training step: state -> state, compiled once.

The state is a plain pytree (a dict), which is what Orbax saves and what `jax.jit` donates:

    {"params": trainable params (a pure nested dict: the DiT's, or a LoRA's; float32 master weights),
     "opt_state": optax state (Adam moments in `moment_dtype`), "ema": EMA of params (only when ema_decay > 0),
     "step": int32, "rng": uint32 key data, "data_position": int32 index of the next sample of the data stream}

Frozen inputs (the base DiT under a LoRA) travel as a separate argument, so they are never updated and never
saved with the training state.

On a mesh (`make_train_step(..., mesh=, state_sharding=...)`, shardings from `placement.py`) the same step is
jitted with those in/out shardings and traced under the mesh, so the models' activation constraints and the
shard_map attention kernels apply: one program, the same arithmetic as on one device.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wan22_jax.sharding.rules import mesh_context
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.objective import flow_matching_loss, per_sample_keys

REMAT_POLICIES = {"full": True, "dots": jax.checkpoint_policies.checkpoint_dots,
                  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}

# (trainable params, frozen) -> the DiT state to merge with the graphdef
ParamsFn = Callable[[Any, Any], Any]
# (trainable params, ids [B, L], mask [B, L]) -> context [B, L, D]: a text encoder trained with the DiT
TextFn = Callable[[Any, Any, Any], Any]


def full_params(params, frozen):
    """Full fine-tuning: the trainable params are the DiT's."""
    return params


def learning_rate(cfg: TrainConfig):
    """The schedule: linear warmup to cfg.lr, then cosine decay to lr * final_lr_ratio."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1), end_value=cfg.lr * cfg.final_lr_ratio)


def scale_by_adam_stored_as(b1: float, b2: float, dtype, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam's moment scaling with both moments stored in `dtype` (e.g. bfloat16) and updated in float32.

    optax's `mu_dtype` covers the first moment only; the state keeps optax's ScaleByAdamState layout."""
    f32 = jnp.float32

    def init(params):
        zeros = lambda p: jnp.zeros(jnp.shape(p), dtype)  # noqa: E731
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
                                      nu=jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda g, m: b1 * m.astype(f32) + (1 - b1) * g.astype(f32), updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v.astype(f32) + (1 - b2) * jnp.square(g.astype(f32)), updates, state.nu)
        c1, c2 = 1 - b1 ** count.astype(f32), 1 - b2 ** count.astype(f32)
        out = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        cast = lambda t: jax.tree.map(lambda x: x.astype(dtype), t)  # noqa: E731
        return out, optax.ScaleByAdamState(count=count, mu=cast(mu), nu=cast(nu))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup and cosine decay, after global-norm clipping; moments in cfg.moment_dtype."""
    schedule = learning_rate(cfg)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    if cfg.moment_dtype == "float32":
        parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    else:  # optax.adamw's own chain with the low-precision moments (the same state layout: opt_state[-1][0])
        parts.append(optax.chain(scale_by_adam_stored_as(cfg.b1, cfg.b2, jnp.dtype(cfg.moment_dtype)),
                                 optax.add_decayed_weights(cfg.weight_decay), optax.scale_by_learning_rate(schedule)))
    return optax.chain(*parts)


def init_state(params, cfg: TrainConfig, *, data_position: int = 0) -> dict:
    """A fresh training state for `params` (a pure dict; float32 master weights). It holds an EMA copy only
    when cfg.ema_decay > 0. Works under `jax.eval_shape` (abstract states for `wan22 aot`)."""
    # a copy: the step donates the state, and the caller may keep using `params`
    params = jax.tree.map(lambda p: jnp.array(p, jnp.float32), params)
    state = {"params": params, "opt_state": make_optimizer(cfg).init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.key_data(jax.random.key(cfg.seed)),
             "data_position": jnp.asarray(data_position, jnp.int32)}
    if cfg.ema_decay > 0:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def ema_update(ema, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params (decay 0: a copy of params)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def remat_arg(cfg: TrainConfig):
    """What the DiT's `remat` argument gets: False, True (save block inputs only) or a checkpoint policy."""
    return REMAT_POLICIES[cfg.remat_policy] if cfg.remat else False


def dit_velocity(graphdef, dit_state, remat: Any = False):
    """(x_t, t, context) -> velocity of the DiT (graphdef, state); remat: `remat_arg` (recompute blocks)."""
    def velocity(x_t, t, context):
        return nnx.merge(graphdef, dit_state)(x_t, t, context, remat=remat)
    return velocity


def batch_loss(graphdef, params, frozen, batch, key, cfg: TrainConfig, params_fn: ParamsFn = full_params,
               offset=0, sigma=None, text_fn: TextFn | None = None):
    """(sum of squared errors, element count) of one (micro-)batch: {"latents", "context"}, or with `text_fn`
    {"latents", "ids", "mask", "null_ids", "null_mask"} (the encoder runs here and is differentiated)."""
    velocity = dit_velocity(graphdef, params_fn(params, frozen), remat=remat_arg(cfg))
    keys = per_sample_keys(key, batch["latents"].shape[0], offset)
    drop = None
    if cfg.text_dropout > 0 and sigma is None:
        drop = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 7)) < cfg.text_dropout)(keys)
    if text_fn is not None:
        ids, mask = batch["ids"], batch["mask"]
        if drop is not None:  # the empty prompt's tokens: what a pipeline encodes for negative_prompt=""
            ids = jnp.where(drop[:, None], batch["null_ids"], ids)
            mask = jnp.where(drop[:, None], batch["null_mask"], mask)
        context = text_fn(params, ids, mask)
    else:
        context = batch["context"]
        if drop is not None:
            # the null condition: the empty prompt's context when the data gives it (what a pipeline encodes
            # for negative_prompt=""), else all zeros
            null = batch.get("null_context", jnp.zeros_like(context))
            context = jnp.where(drop[:, None, None], null, context)
    return flow_matching_loss(velocity, batch["latents"], context, keys, cfg, sigma)


class Placement(NamedTuple):
    """Where a sharded step's inputs live: a Mesh and NamedSharding pytrees (`placement.py`); frozen may be
    None (no frozen params)."""

    mesh: Any
    state: Any
    batch: Any
    frozen: Any = None


def make_train_step(graphdef, cfg: TrainConfig, params_fn: ParamsFn = full_params, text_fn: TextFn | None = None,
                    placement: Placement | None = None):
    """Returns the jitted `train_step(state, batch, frozen=None) -> (state, metrics)`.

    batch: {"latents": [A, B, z, F, h, w], "context": [A, B, L, D], optional "null_context" [A, B, L, D] (what
      text dropout swaps in; zeros without it)} with A = cfg.grad_accum micro-batches; with `text_fn` (an
      encoder trained with the DiT, its params inside the trainable ones) token ids instead of contexts.
    placement: shard the step over placement.mesh: the state, batch and frozen params must already be placed
      there (`placement.put`); the new state comes back with the same shardings.
    metrics: {"loss": mean squared error over the step's samples, "grad_norm", "lr"}.
    The state's buffers are donated: do not reuse the state passed in.
    """
    step = train_step_fn(graphdef, cfg, params_fn, text_fn, placement)
    if placement is None:
        jitted = jax.jit(step, donate_argnums=(0,))
    else:
        jitted = jax.jit(step, donate_argnums=(0,), in_shardings=(placement.state, placement.batch, placement.frozen),
                         out_shardings=(placement.state, None))
    mesh = None if placement is None else placement.mesh

    def train_step(state, batch, frozen=None):
        with mesh_context(mesh):  # the models' sharding constraints and kernels read the mesh while tracing
            return jitted(state, batch, frozen)

    train_step.jitted = jitted  # exposes the compile cache (tests check it compiles once)
    return train_step


def train_step_fn(graphdef, cfg: TrainConfig, params_fn: ParamsFn = full_params, text_fn: TextFn | None = None,
                  placement: Placement | None = None):
    """The un-jitted `step(state, batch, frozen) -> (state, metrics)` of `make_train_step` (what `wan22 aot`
    compiles with abstract inputs)."""
    tx = make_optimizer(cfg)
    schedule_lr = learning_rate(cfg)
    grad_sharding = None if placement is None else placement.state["params"]

    def step(state, batch, frozen):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        micro = batch["latents"].shape[1]

        def sse(params, mb, i):
            return batch_loss(graphdef, params, frozen, mb, key, cfg, params_fn, offset=i * micro, text_fn=text_fn)

        def accumulate(carry, xs):
            g_acc, s_acc, n_acc = carry
            mb, i = xs
            (s, n), g = jax.value_and_grad(lambda p: sse(p, mb, i), has_aux=True)(state["params"])
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            if grad_sharding is not None:  # keep the summed gradients split like the params (reduce-scatter)
                g_acc = jax.lax.with_sharding_constraint(g_acc, grad_sharding)
            return (g_acc, s_acc + s, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        (g, s, n), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), jnp.float32(0)),
                                    (batch, jnp.arange(cfg.grad_accum)))
        grads = jax.tree.map(lambda x: x / n, g)  # d(mean error): the big batch's gradient
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1,
                   data_position=state["data_position"] + cfg.grad_accum * micro)
        if "ema" in state:
            new["ema"] = ema_update(state["ema"], params, cfg.ema_decay)
        metrics = {"loss": s / n, "grad_norm": optax.tree.norm(grads), "lr": schedule_lr(state["step"])}
        return new, metrics

    return step


def make_eval_loss(graphdef, cfg: TrainConfig, params_fn: ParamsFn = full_params, text_fn: TextFn | None = None,
                   mesh=None):
    """Jitted `eval_loss(params, batch, sigma, frozen=None)`: the mean loss at a fixed sigma (t = sigma * 1000)
    on a fixed batch {"latents": [B, ...], "context"}, with fixed noise (key 0); traced under `mesh` if given
    (the inputs then live on it)."""
    @jax.jit
    def jitted(params, batch, sigma, frozen):
        s, n = batch_loss(graphdef, params, frozen, batch, jax.random.key(1234), cfg, params_fn, sigma=sigma,
                          text_fn=text_fn)
        return s / n

    def eval_loss(params, batch, sigma, frozen=None):
        with mesh_context(mesh):
            return jitted(params, batch, sigma, frozen)
    return eval_loss
