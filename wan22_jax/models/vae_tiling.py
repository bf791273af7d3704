"""Spatial tiling of the VAEs' encode/decode: overlapping tiles, each run through the full causal loop, blended
with linear ramps across every overlap (weights of neighbouring tiles sum to one there, so there is no seam).

Tiling is not exact: convolutions near a tile border see zero padding instead of the neighbour's pixels and the
middle attention block sees one tile instead of the frame. The measured deviation from untiled runs is in
tests/models/test_vae_tiling.py. `models/vae.py` applies it when `tiling=Tiling(...)` is passed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from wan22_jax.errors import ConfigError


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
