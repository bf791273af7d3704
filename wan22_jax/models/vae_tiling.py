"""Running a Wan VAE on whole videos: the public, jitted `encode` / `decode`, in bounded memory.

Memory is bounded three ways, each optional and independent:
* time: the causal chunk loop (`CausalVAE.encode_frames/decode_frames`, one `lax.scan`) only ever holds one
  chunk's activations plus the 2-frame caches;
* batch slicing (`slice_batch=True`, the default, as the official wrappers loop over samples): `lax.map` over
  the batch, one sample's activations at a time;
* space (`tiling=Tiling(...)`): the frame is cut into overlapping tiles, each run through the full causal
  loop, and the outputs are blended with linear ramps across every overlap (weights of neighbouring tiles sum
  to one there, so there is no seam). Tiling is not exact: convolutions near a tile border see zero padding
  instead of the neighbour's pixels and the middle attention block sees one tile instead of the frame. The
  measured deviation from untiled runs is in tests/models/test_vae_tiling.py.

Public tensors are channels-first like the official API: video `[B, 3, T, H, W]` in [-1, 1], latent
`[B, z, T', h, w]`. Parameters travel as `(graphdef, state)` from one `nnx.split`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.vae_blocks import ENCODE_CHUNK, VAEConfig, denormalize_latent, normalize_latent
from wan22_jax.models.vae21 import WanVAE21
from wan22_jax.models.vae22 import WanVAE22

WanVAE = WanVAE21 | WanVAE22


def build_vae(config: VAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, attn_impl: str = "xla",
              rngs: nnx.Rngs | None = None) -> WanVAE:
    """The model of `config.version` (random weights; wrap in nnx.eval_shape to get shapes only)."""
    cls = WanVAE21 if config.version == "2.1" else WanVAE22
    return cls(config, dtype=dtype, param_dtype=param_dtype, attn_impl=attn_impl,
               rngs=rngs if rngs is not None else nnx.Rngs(0))


def random_vae(config: VAEConfig, seed: int = 0, *, dtype=jnp.float32, param_dtype=jnp.float32,
               attn_impl: str = "xla") -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) with random weights drawn like the reference cases' (kernels N(0, 1/fan_in), biases
    0.1 N, norm gammas 1 + 0.1 N), on the host with numpy: building with `nnx.Rngs` would run (and compile) one
    random op per parameter shape, which dominates the cost of small test models. For tests and benchmarks."""
    from wan22_jax.convert.mapping import fill_state, flat_state

    model = nnx.eval_shape(lambda: build_vae(config, dtype=dtype, param_dtype=param_dtype, attn_impl=attn_impl))
    graphdef, abstract = nnx.split(model)
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tiling:
    """Spatial tiling, in output-video pixels (multiples of the VAE's spatial stride).

    tile: tile edge (a smaller frame uses one tile of its own size along that axis).
    overlap: pixels shared by neighbouring tiles (blended linearly); the last tile of a row or column is moved
      back to end at the border, so its overlap may be larger.
    The defaults (256 / 64) are those of Diffusers' AutoencoderKLWan tiling.
    """

    tile: int = 256
    overlap: int = 64

    def in_units(self, stride: int, what: str) -> tuple[int, int]:
        if self.tile % stride or self.overlap % stride:
            raise ConfigError(f"tiling tile={self.tile} and overlap={self.overlap} must be multiples of the "
                              f"VAE's spatial stride {stride} ({what})")
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"tiling overlap={self.overlap} must be in [0, tile={self.tile})")
        return self.tile, self.overlap


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


# ----------------------------------------------------------------------------------------------- tiling
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` (clipped to `length`) overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def blend_weights(starts: list[int], tile: int, ratio: tuple[int, int]) -> np.ndarray:
    """Per-tile 1-D weights over the output pixels of each tile: linear ramps across each actual overlap with
    the previous/next tile, complementary so that two overlapping tiles' weights sum to 1.

    ratio: (up, down), output pixels = input pixels * up / down.
    Returns [len(starts), tile * up / down] float32.
    """
    up, down = ratio
    size = tile * up // down
    u = np.arange(size, dtype=np.float64) + 0.5
    out = []
    for i, s in enumerate(starts):
        w = np.ones(size)
        if i > 0:
            lead = (starts[i - 1] + tile - s) * up // down
            w *= np.clip(u / lead, 0.0, 1.0) if lead > 0 else 1.0
        if i + 1 < len(starts):
            trail = (s + tile - starts[i + 1]) * up // down
            w *= np.clip((size - u) / trail, 0.0, 1.0) if trail > 0 else 1.0
        out.append(w)
    return np.stack(out).astype(np.float32)


def tiled(fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, tile: int, overlap: int,
          ratio: tuple[int, int]) -> jax.Array:
    """Applies `fn` to overlapping spatial tiles of `x` and blends the results.

    Args:
      fn: [B, T, th, tw, C] -> [B, T', th*up/down, tw*up/down, C'] (the same function at every tile).
      x: [B, T, H, W, C]; tile, overlap: in x's pixels, multiples of `down`.
      ratio: (up, down), output pixels per input pixel as a fraction.
    Returns:
      [B, T', H*up/down, W*up/down, C'] float32-blended, in fn's output dtype.
    """
    up, down = ratio
    b, t, h, w, c = x.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wy, wx = blend_weights(ys, th, ratio), blend_weights(xs, tw, ratio)
    # all (row, column) tiles in one scan: `fn` is traced and compiled once
    grid = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    oy = np.array([ys[i] * up // down for i, _ in grid], np.int32)
    ox = np.array([xs[j] * up // down for _, j in grid], np.int32)
    norm = np.zeros((h * up // down, w * up // down), np.float32)
    for (i, j), y0, x0 in zip(grid, oy, ox):
        norm[y0:y0 + wy.shape[1], x0:x0 + wx.shape[1]] += wy[i][:, None] * wx[j][None, :]
    items = (jnp.asarray([ys[i] for i, _ in grid], jnp.int32), jnp.asarray([xs[j] for _, j in grid], jnp.int32),
             jnp.asarray(oy), jnp.asarray(ox),
             jnp.asarray(np.stack([wy[i] for i, _ in grid])), jnp.asarray(np.stack([wx[j] for _, j in grid])))

    out = jax.eval_shape(fn, jax.ShapeDtypeStruct((b, t, th, tw, c), x.dtype))
    acc = jnp.zeros((b, out.shape[1], *norm.shape, out.shape[-1]), jnp.float32)

    def step(acc, item):
        iy, ix, y0, x0, wyi, wxi = item
        part = fn(lax.dynamic_slice(x, (0, 0, iy, ix, 0), (b, t, th, tw, c))).astype(jnp.float32)
        part = part * wyi[None, None, :, None, None] * wxi[None, None, None, :, None]
        at = (0, 0, y0, x0, 0)
        return lax.dynamic_update_slice(acc, lax.dynamic_slice(acc, at, part.shape) + part, at), None

    acc, _ = lax.scan(step, acc, items)
    return (acc / jnp.asarray(norm)[None, None, :, :, None]).astype(out.dtype)


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
