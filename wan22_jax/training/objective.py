"""The Wan flow-matching objective.

    x_t = (1 - s) x0 + s noise,   the model sees t = s * 1000,   target velocity = noise - x0,   loss = MSE.

s is drawn from a base distribution on [0, 1] (uniform or logit-normal) and warped with the samplers' shift
(`shift_sigmas`), so training spends its samples where sampling spends its steps. An expert restricted to a
t range draws from the same distribution conditioned on the range (inverse-CDF on the base variable).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from wan22_jax.samplers import shift_sigmas, unshift_sigmas
from wan22_jax.training.config import TrainConfig


def sample_sigmas(key, n: int, cfg: TrainConfig) -> jax.Array:
    """[n] shifted sigmas from `cfg.t_sampling`, conditioned on `cfg.t_range`."""
    lo, hi = (unshift_sigmas(jnp.float32(v), cfg.shift) for v in cfg.t_range)  # range of the base variable
    if cfg.t_sampling == "logit_normal":
        # CDF of a logit-normal at u is ndtr(logit(u)); clip so logit(0) / logit(1) stay finite
        cdf = lambda u: ndtr(jnp.log(jnp.clip(u, 1e-7, 1 - 1e-7)) - jnp.log1p(-jnp.clip(u, 1e-7, 1 - 1e-7)))
        p = jax.random.uniform(key, (n,), jnp.float32, cdf(lo), cdf(hi))
        base = jax.nn.sigmoid(ndtri(p))
    else:
        base = jax.random.uniform(key, (n,), jnp.float32, lo, hi)
    return jnp.clip(shift_sigmas(base, cfg.shift), cfg.t_range[0], cfg.t_range[1])


def per_sample_keys(key, n: int, offset: int | jax.Array = 0):
    """One key per sample, from the sample's index in the whole (accumulated) batch, so that splitting a batch
    into micro-batches draws the same noise and sigmas."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n) + offset)


def noisy_inputs(keys, x0: jax.Array, cfg: TrainConfig, sigma: jax.Array | None = None):
    """Draws (x_t, t, target, loss_mask) for clean latents x0 [B, z, F, h, w].

    Returns:
      x_t [B, z, F, h, w]; t [B, F] (per latent frame: 0 on an image-conditioned first frame);
      target [B, z, F, h, w] = noise - x0; frame_mask [B, F] (1 = in the loss).
    """
    b, _, f = x0.shape[:3]

    def one(key, x):
        k_s, k_n, k_c = jax.random.split(key, 3)
        s = sample_sigmas(k_s, 1, cfg)[0]
        noise = jax.random.normal(k_n, x.shape, jnp.float32)
        cond = jax.random.uniform(k_c) < cfg.first_frame_prob
        return s, noise, cond

    s, noise, cond = jax.vmap(one)(keys, x0)
    if sigma is not None:
        s = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (b,))
    clean0 = cond[:, None] & (jnp.arange(f) == 0)[None]  # [B, F]
    s_frames = jnp.where(clean0, 0.0, s[:, None])  # [B, F]
    sf = s_frames[:, None, :, None, None]
    x_t = (1.0 - sf) * x0 + sf * noise
    t = s_frames * cfg.num_train_timesteps
    return x_t, t, noise - x0, (~clean0).astype(jnp.float32)


def flow_matching_loss(velocity: Callable, x0, context, keys, cfg: TrainConfig, sigma=None):
    """Mean squared velocity error over the frames in the loss.

    Args:
      velocity: (x_t [B, z, F, h, w], t [B, F], context [B, L, D]) -> [B, z, F, h, w].
      x0: clean latents; context: text embeddings; keys: per-sample keys (`per_sample_keys`).
      sigma: a fixed sigma for every sample (evaluation at fixed t) instead of the sampled ones.
    Returns:
      (sum of squared errors, number of loss elements): divide for the mean; kept apart so micro-batches add.
    """
    x_t, t, target, frame_mask = noisy_inputs(keys, x0, cfg, sigma)
    pred = velocity(x_t, t, context)
    err = jnp.square(pred.astype(jnp.float32) - target) * frame_mask[:, None, :, None, None]
    count = jnp.sum(frame_mask) * x0.shape[1] * x0.shape[3] * x0.shape[4]
    return jnp.sum(err), count
