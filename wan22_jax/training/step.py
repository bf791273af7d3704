"""The pure training step: state -> state, compiled once.

The state is a plain pytree (a dict), which is what Orbax saves and what `jax.jit` donates:

    {"params": trainable params (a pure nested dict: the DiT's, or a LoRA's),
     "opt_state": optax state, "ema": EMA of params, "step": int32, "rng": uint32 key data,
     "data_position": int32 index of the next sample of the data stream}

Frozen inputs (the base DiT under a LoRA) travel as a separate argument, so they are never updated and never
saved with the training state.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wan22_jax.training.config import TrainConfig
from wan22_jax.training.objective import flow_matching_loss, per_sample_keys

# (trainable params, frozen) -> the DiT state to merge with the graphdef
ParamsFn = Callable[[Any, Any], Any]
# (trainable params, ids [B, L], mask [B, L]) -> context [B, L, D]: a text encoder trained with the DiT
TextFn = Callable[[Any, Any, Any], Any]


def full_params(params, frozen):
    """Full fine-tuning: the trainable params are the DiT's."""
    return params


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup and cosine decay, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1), end_value=cfg.lr * cfg.final_lr_ratio)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def init_state(params, cfg: TrainConfig, *, data_position: int = 0) -> dict:
    """A fresh training state for `params` (a pure dict; float32 master weights)."""
    # a copy: the step donates the state, and the caller may keep using `params`
    params = jax.tree.map(lambda p: jnp.array(p, jnp.float32), params)
    return {"params": params, "opt_state": make_optimizer(cfg).init(params),
            "ema": jax.tree.map(jnp.copy, params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(cfg.seed)),
            "data_position": jnp.asarray(data_position, jnp.int32)}


def ema_update(ema, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params (decay 0: a copy of params)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def dit_velocity(graphdef, dit_state, remat: bool = False):
    """(x_t, t, context) -> velocity of the DiT (graphdef, state); remat: recompute each block in backward."""
    def velocity(x_t, t, context):
        return nnx.merge(graphdef, dit_state)(x_t, t, context, remat=remat)
    return velocity


def batch_loss(graphdef, params, frozen, batch, key, cfg: TrainConfig, params_fn: ParamsFn = full_params,
               offset=0, sigma=None, text_fn: TextFn | None = None):
    """(sum of squared errors, element count) of one (micro-)batch: {"latents", "context"}, or with `text_fn`
    {"latents", "ids", "mask", "null_ids", "null_mask"} (the encoder runs here and is differentiated)."""
    velocity = dit_velocity(graphdef, params_fn(params, frozen), remat=cfg.remat)
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


def make_train_step(graphdef, cfg: TrainConfig, params_fn: ParamsFn = full_params, text_fn: TextFn | None = None):
    """Returns the jitted `train_step(state, batch, frozen=None) -> (state, metrics)`.

    batch: {"latents": [A, B, z, F, h, w], "context": [A, B, L, D], optional "null_context" [A, B, L, D] (what
      text dropout swaps in; zeros without it)} with A = cfg.grad_accum micro-batches; with `text_fn` (an
      encoder trained with the DiT, its params inside the trainable ones) token ids instead of contexts.
    metrics: {"loss": mean squared error over the step's samples, "grad_norm", "lr"}.
    The state's buffers are donated: do not reuse the state passed in.
    """
    tx = make_optimizer(cfg)
    schedule_lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps,
                                                     max(cfg.total_steps, cfg.warmup_steps + 1),
                                                     cfg.lr * cfg.final_lr_ratio)

    def step(state, batch, frozen):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        micro = batch["latents"].shape[1]

        def sse(params, mb, i):
            return batch_loss(graphdef, params, frozen, mb, key, cfg, params_fn, offset=i * micro, text_fn=text_fn)

        def accumulate(carry, xs):
            g_acc, s_acc, n_acc = carry
            mb, i = xs
            (s, n), g = jax.value_and_grad(lambda p: sse(p, mb, i), has_aux=True)(state["params"])
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        (g, s, n), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), jnp.float32(0)),
                                    (batch, jnp.arange(cfg.grad_accum)))
        grads = jax.tree.map(lambda x: x / n, g)  # d(mean error): the big batch's gradient
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = dict(state, params=params, opt_state=opt_state, ema=ema_update(state["ema"], params, cfg.ema_decay),
                   step=state["step"] + 1,
                   data_position=state["data_position"] + cfg.grad_accum * micro)
        metrics = {"loss": s / n, "grad_norm": optax.tree.norm(grads), "lr": schedule_lr(state["step"])}
        return new, metrics

    jitted = jax.jit(step, donate_argnums=(0,))

    def train_step(state, batch, frozen=None):
        return jitted(state, batch, frozen)

    train_step.jitted = jitted  # exposes the compile cache (tests check it compiles once)
    return train_step


def make_eval_loss(graphdef, cfg: TrainConfig, params_fn: ParamsFn = full_params, text_fn: TextFn | None = None):
    """Jitted `eval_loss(params, batch, sigma, frozen=None)`: the mean loss at a fixed sigma (t = sigma * 1000)
    on a fixed batch {"latents": [B, ...], "context"}, with fixed noise (key 0)."""
    @jax.jit
    def eval_loss(params, batch, sigma, frozen=None):
        s, n = batch_loss(graphdef, params, frozen, batch, jax.random.key(1234), cfg, params_fn, sigma=sigma,
                          text_fn=text_fn)
        return s / n
    return eval_loss
