"""The Wan VAEs' public API: build a model, and `encode` / `decode` whole videos, jitted, in bounded memory.

Memory is bounded three ways, each optional and independent:
* time: the causal chunk loop (`CausalVAE.encode_frames/decode_frames`, one `lax.scan`, vae_model.py) only ever
  holds one chunk's activations plus the 2-frame caches;
* batch slicing (`slice_batch=True`, the default, as the official wrappers loop over samples): `lax.map` over
  the batch, one sample's activations at a time;
* space (`tiling=Tiling(...)`, vae_tiling.py): overlapping tiles blended across every overlap (approximate).

Public tensors are channels-first like the official API: video `[B, 3, T, H, W]` in [-1, 1], latent
`[B, z, T', h, w]`. Parameters travel as `(graphdef, state)` from one `nnx.split`.

Files: vae_config.py (VAEConfig, latent statistics), vae_layers.py (convolutions, resampling, residual and
attention blocks, caches), vae_model.py (the chunked causal loops), vae21.py / vae22.py (the two versions),
vae_tiling.py (spatial tiles), and this module.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from wan22_jax.errors import InputError
from wan22_jax.models.vae21 import WanVAE21
from wan22_jax.models.vae22 import WanVAE22
from wan22_jax.models.vae_config import VAEConfig, denormalize_latent, normalize_latent
from wan22_jax.models.vae_model import ENCODE_CHUNK
from wan22_jax.models.vae_tiling import Tiling, tiled
from wan22_jax.ops import XLA, Kernels
from wan22_jax.state import fill_state, flat_state

WanVAE = WanVAE21 | WanVAE22


def build_vae(config: VAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, kernels: Kernels = XLA,
              rngs: nnx.Rngs | None = None) -> WanVAE:
    """The model of `config.version` (random weights; wrap in nnx.eval_shape to get shapes only)."""
    cls = WanVAE21 if config.version == "2.1" else WanVAE22
    return cls(config, dtype=dtype, param_dtype=param_dtype, kernels=kernels,
               rngs=rngs if rngs is not None else nnx.Rngs(0))


def abstract_vae(config: VAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, kernels: Kernels = XLA
                 ) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state) of the model of `config`: shapes and dtypes only, no memory used."""
    return nnx.split(nnx.eval_shape(lambda: build_vae(config, dtype=dtype, param_dtype=param_dtype,
                                                      kernels=kernels)))


def random_vae(config: VAEConfig, seed: int = 0, *, dtype=jnp.float32, param_dtype=jnp.float32,
               kernels: Kernels = XLA) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) with random weights drawn like the reference cases' (kernels N(0, 1/fan_in), biases
    0.1 N, norm gammas 1 + 0.1 N), on the host with numpy: building with `nnx.Rngs` would run (and compile) one
    random op per parameter shape, which dominates the cost of small test models. For tests and benchmarks."""
    graphdef, abstract = abstract_vae(config, dtype=dtype, param_dtype=param_dtype, kernels=kernels)
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, leaf in flat_state(abstract).items():
        shape = tuple(leaf.shape)
        if path.endswith("bias"):
            v = 0.1 * rng.standard_normal(shape, np.float32)
        elif path.endswith("gamma"):
            v = 1.0 + 0.1 * rng.standard_normal(shape, np.float32)
        else:  # kernels [..., in, out]
            v = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
        arrays[path] = jnp.asarray(v, leaf.dtype)
    return graphdef, fill_state(abstract, arrays)


# ----------------------------------------------------------------------------------------------- checks
def _check_video(video, cfg: VAEConfig) -> None:
    s = cfg.spatial_stride
    if video.ndim != 5 or video.shape[1] != 3:
        raise InputError(f"video must be [B, 3, T, H, W], got shape {tuple(video.shape)}")
    b, _, t, h, w = video.shape
    if b < 1 or t < 1 or (t - 1) % ENCODE_CHUNK:
        raise InputError(f"video has {t} frames; the Wan VAE encodes 1 + 4k frames (1, 5, 9, ..., 81, 121)")
    if h % s or w % s or h == 0 or w == 0:
        raise InputError(f"video size {h}x{w} (HxW) is not a positive multiple of the Wan{cfg.version} VAE's "
                         f"spatial stride {s}")


def _check_latent(latent, cfg: VAEConfig) -> None:
    if latent.ndim != 5 or latent.shape[1] != cfg.z_dim:
        raise InputError(f"latent must be [B, {cfg.z_dim}, T, h, w] for this Wan{cfg.version} VAE, "
                         f"got shape {tuple(latent.shape)}")
    if min(latent.shape) < 1:
        raise InputError(f"latent shape {tuple(latent.shape)} has an empty axis")


# ----------------------------------------------------------------------------------------------- entry points
def _per_sample(fn: Callable[[jax.Array], jax.Array], x: jax.Array, slice_batch: bool) -> jax.Array:
    """fn over [B, ...]; with slice_batch one sample at a time (lax.map), so peak memory is one sample's."""
    if not slice_batch or x.shape[0] == 1:
        return fn(x)
    return lax.map(lambda xb: fn(xb[None])[0], x)


@functools.partial(jax.jit, static_argnames=("graphdef", "normalize", "tiling", "slice_batch"))
def _encode(graphdef, state, video, *, normalize: bool, tiling: Tiling | None, slice_batch: bool):
    vae = nnx.merge(graphdef, state)
    cfg = vae.config
    _check_video(video, cfg)  # shapes are static: this raises while tracing, before any compute
    x = jnp.moveaxis(video, 1, -1).astype(vae.encoder.conv1.dtype)  # [B, T, H, W, 3]
    fn = vae.encode_frames
    if tiling is not None:
        tile, overlap = tiling.in_units(cfg.spatial_stride, "encode")
        fn = functools.partial(tiled, vae.encode_frames, tile=tile, overlap=overlap,
                               ratio=(1, cfg.spatial_stride))
    mu = _per_sample(fn, x, slice_batch).astype(jnp.float32)  # [B, T', h, w, z]
    if normalize:
        mu = normalize_latent(mu, cfg)
    return jnp.moveaxis(mu, -1, 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "normalize", "tiling", "slice_batch", "clamp"))
def _decode(graphdef, state, latent, *, normalize: bool, tiling: Tiling | None, slice_batch: bool, clamp: bool):
    vae = nnx.merge(graphdef, state)
    cfg = vae.config
    _check_latent(latent, cfg)
    z = jnp.moveaxis(latent, 1, -1).astype(jnp.float32)  # [B, T', h, w, z]
    if normalize:
        z = denormalize_latent(z, cfg)
    z = z.astype(vae.decoder.conv1.dtype)
    fn = vae.decode_frames
    if tiling is not None:
        tile, overlap = tiling.in_units(cfg.spatial_stride, "decode")
        s = cfg.spatial_stride
        fn = functools.partial(tiled, vae.decode_frames, tile=tile // s, overlap=overlap // s, ratio=(s, 1))
    video = _per_sample(fn, z, slice_batch).astype(jnp.float32)
    if clamp:
        video = jnp.clip(video, -1.0, 1.0)
    return jnp.moveaxis(video, -1, 1)


def encode(graphdef: nnx.GraphDef, state: nnx.State, video: Any, *, normalize: bool = True,
           tiling: Tiling | None = None, slice_batch: bool = True) -> jax.Array:
    """Official `Wan2_x_VAE.encode`: causal chunked encoder, posterior mean, (normalised).

    Args:
      graphdef, state: from `nnx.split(vae)`.
      video: [B, 3, T, H, W] in [-1, 1], T = 1 + 4k, H and W multiples of the spatial stride (8 or 16).
      normalize: apply `(mu - mean) * (1/std)` (official wrappers); False returns the raw mean (Diffusers'
        `latent_dist.mean`).
      tiling: spatial tiling (approximate, bounded memory); None for the exact untiled encoder.
      slice_batch: encode one sample at a time.
    Returns:
      latent [B, z, 1 + (T-1)/4, H/s, W/s] float32.
    """
    return _encode(graphdef, state, video, normalize=normalize, tiling=tiling, slice_batch=slice_batch)


def decode(graphdef: nnx.GraphDef, state: nnx.State, latent: Any, *, normalize: bool = True,
           tiling: Tiling | None = None, slice_batch: bool = True, clamp: bool = True) -> jax.Array:
    """Official `Wan2_x_VAE.decode`: (un-normalise), causal decoder one latent frame at a time, clamp.

    Args:
      graphdef, state: from `nnx.split(vae)`.
      latent: [B, z, T', h, w]; normalised unless `normalize=False` (raw, as Diffusers' `decode`).
      tiling: spatial tiling (approximate, bounded memory); None for the exact untiled decoder.
      slice_batch: decode one sample at a time. clamp: clip the video to [-1, 1] (official and Diffusers do).
    Returns:
      video [B, 3, 1 + 4 (T'-1), h*s, w*s] float32.
    """
    return _decode(graphdef, state, latent, normalize=normalize, tiling=tiling, slice_batch=slice_batch,
                   clamp=clamp)
