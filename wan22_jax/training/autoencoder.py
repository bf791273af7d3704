"""Training a small Wan VAE as a plain autoencoder on mini-world clips (the posterior mean, no sampling).

The mini-world model needs a latent space whose decoder inverts its encoder; a random VAE has none. A few
hundred steps of reconstruction loss on the causal chunked encoder/decoder (the exact modules the pipeline
runs) give one. A small penalty on the latent's magnitude keeps it from drifting; the per-channel latent mean
and std measured afterwards become the config's `latents_mean` / `latents_std`, so the DiT sees unit-scale
latents exactly as the released models do.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wan22_jax.data.mini_world import MiniWorld
from wan22_jax.models.vae import build_vae, encode
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.ops import Kernels, with_kernels


def _loss(graphdef, params, video, latent_weight: float, l1_weight: float, fg_weight: float, conv: str):
    # video [B, 3, T, H, W] in [-1, 1]; `conv` picks the convolutions' implementation for this step's trace
    vae = with_kernels(nnx.merge(graphdef, params), Kernels(conv=conv))
    x = jnp.moveaxis(video, 1, -1)  # channels-last, as the modules run
    mu = vae.encode_frames(x)
    rec = vae.decode_frames(mu)
    err = rec - x
    mse = jnp.mean(jnp.square(err))
    # Mini-world shapes cover ~10% of a frame: a plain mean error sits for hundreds of steps on the "background
    # everywhere" plateau. Pixels unlike the clip's first top-left pixel (always background in the mini-world)
    # weigh 1 + fg_weight.
    fg = jnp.sum(jnp.square(x - x[:, :1, :1, :1]), axis=-1, keepdims=True) > 0.05
    w = 1.0 + fg_weight * fg
    w = w / jnp.mean(w)
    # L1 keeps pushing on the small errors at shape edges that MSE stops caring about
    rec_loss = jnp.mean(w * jnp.square(err)) + l1_weight * jnp.mean(w * jnp.abs(err))
    return rec_loss + latent_weight * jnp.mean(jnp.square(mu)), mse


def make_vae_step(graphdef, *, steps: int, lr: float = 2e-3, latent_weight: float = 1e-4, l1_weight: float = 0.0,
                  fg_weight: float = 0.0, conv: str = "xla"):
    """(jitted step(params, opt_state, video) -> (params, opt_state, mse), optax transform) for AE training.

    conv: the convolutions' implementation (`wan22_jax.ops.Kernels.conv`); "im2col" for narrow VAEs on CPU.
    """
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10 + 1), steps, lr * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))

    @jax.jit
    def step(params, opt, video):
        (_, mse), g = jax.value_and_grad(_loss, argnums=1, has_aux=True)(graphdef, params, video, latent_weight,
                                                                        l1_weight, fg_weight, conv)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, mse

    return step, tx


def train_vae(cfg: VAEConfig, world: MiniWorld, *, steps: int, batch: int = 4, lr: float = 2e-3, seed: int = 0,
              latent_weight: float = 1e-4, log: Callable[[int, float], None] | None = None):
    """Trains a VAE of `cfg` on `world`'s clips. Returns ((graphdef, state), config with the measured latent
    statistics, last reconstruction MSE)."""
    graphdef, params = nnx.split(build_vae(cfg, rngs=nnx.Rngs(seed)))
    step, tx = make_vae_step(graphdef, steps=steps, lr=lr, latent_weight=latent_weight)
    opt = tx.init(params)
    mse = float("nan")
    for i, (_, b) in zip(range(steps), world.batches(batch)):
        params, opt, mse = step(params, opt, jnp.asarray(b["video"]))
        if log is not None:
            log(i, float(mse))
    cfg = with_latent_stats(cfg, (graphdef, params), world)
    return (graphdef, params), cfg, float(mse)


def with_latent_stats(cfg: VAEConfig, vae, world: MiniWorld, clips: int = 32) -> VAEConfig:
    """cfg with latents_mean / latents_std measured on `clips` clips of `world` (per channel)."""
    video = world.batch(10_000_000, clips)["video"]  # positions far from the training ones
    mu = np.asarray(encode(*vae, jnp.asarray(video), normalize=False))  # [B, z, T', h, w]
    mean = mu.mean(axis=(0, 2, 3, 4))
    std = mu.std(axis=(0, 2, 3, 4)) + 1e-3
    return dataclasses.replace(cfg, latents_mean=tuple(float(v) for v in mean),
                               latents_std=tuple(float(v) for v in std))
