"""The Wan2.2 video VAE (official `wan/modules/vae2_2.py`, `WanVAE_`): z48, stride 4x16x16.

Differences from 2.1 (docs/architecture.md §6): the video is first patchified 2x2 into 12 channels; each encoder stage
is a `Down_ResidualBlock` whose parameter-free shortcut `AvgDown3D` averages space-time blocks, each decoder
stage an `Up_ResidualBlock` whose shortcut `DupUp3D` duplicates them; the decoder has its own width `dec_dim`
and its upsampling convs keep the width. Parameter paths mirror the official names
(`encoder.downsamples.{stage}.downsamples.{j}`, `decoder.upsamples.{stage}.upsamples.{j}`).
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.models.vae_layers import (
    Cache, CausalConv3d, Resample, ResidualBlock, first_chunk, head_layers, middle_layers, run_sequence)
from wan22_jax.models.vae_model import CausalVAE, Decoder, Encoder

PATCH = 2


def patchify(x: jax.Array, p: int = PATCH) -> jax.Array:
    """[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p]; channel index c*p*p + r*p + q for row offset q and column
    offset r (official `b c f (h q) (w r) -> b (c r q) f h w`)."""
    return einops.rearrange(x, "b f (h q) (w r) c -> b f h w (c r q)", q=p, r=p)


def unpatchify(x: jax.Array, p: int = PATCH) -> jax.Array:
    """Inverse of `patchify`: [B, T, h, w, C*p*p] -> [B, T, h*p, w*p, C]."""
    return einops.rearrange(x, "b f h w (c r q) -> b f (h q) (w r) c", q=p, r=p)


def avg_down(x: jax.Array, out_dim: int, ft: int, fs: int) -> jax.Array:
    """Official AvgDown3D: space-time blocks (ft, fs, fs) stacked into channels, then group means.

    The chunk is zero-padded at the front to a multiple of `ft` frames (per chunk, as the official; with the
    1, 4, 4, ... chunking this equals padding the whole sequence). Stacked channel order is (C, ft, fs_h, fs_w),
    and consecutive groups of `C*ft*fs*fs / out_dim` channels are averaged.

    Args:
      x: [B, T, H, W, C]. Returns: [B, ceil(T/ft), H/fs, W/fs, out_dim].
    """
    pad_t = (ft - x.shape[1] % ft) % ft
    if pad_t:
        x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    x = einops.rearrange(x, "b (t a) (h i) (w j) c -> b t h w (c a i j)", a=ft, i=fs, j=fs)
    x = x.reshape(*x.shape[:4], out_dim, -1)
    return jnp.mean(x, axis=-1)


def dup_up(x: jax.Array, out_dim: int, ft: int, fs: int, first: bool) -> jax.Array:
    """Official DupUp3D: channels repeated (repeat_interleave) to out_dim*ft*fs*fs, then unstacked into
    (ft, fs, fs) space-time blocks; on the first chunk the first ft-1 frames are dropped (frame 0 is not
    temporally upsampled, like `upsample3d`).

    Args:
      x: [B, T, H, W, C]. Returns: [B, T*ft (- (ft-1) if first), H*fs, W*fs, out_dim].
    """
    repeats = out_dim * ft * fs * fs // x.shape[-1]
    x = jnp.repeat(x, repeats, axis=-1)
    x = einops.rearrange(x, "b t h w (c a i j) -> b (t a) (h i) (w j) c", a=ft, i=fs, j=fs)
    return x[:, ft - 1:] if first else x


def _stage(in_dim: int, out_dim: int, mult: int, resample: str | None, **kw) -> nnx.List:
    """`mult` ResidualBlocks (the first changes the width) and an optional width-keeping Resample."""
    layers = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw) for i in range(mult)]
    if resample is not None:
        layers.append(Resample(out_dim, resample, out_dim=out_dim, **kw))
    return nnx.List(layers)


class DownResidualBlock(nnx.Module):
    """Official Down_ResidualBlock: `[ResidualBlock x mult, (Resample)]` + avg_down shortcut of the input."""

    def __init__(self, in_dim: int, out_dim: int, *, mult: int, temporal: bool, down: bool, **kw):
        mode = ("downsample3d" if temporal else "downsample2d") if down else None
        self.downsamples = _stage(in_dim, out_dim, mult, mode, **kw)
        self.out_dim = out_dim
        self.ft = 2 if temporal else 1
        self.fs = 2 if down else 1

    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        y, cache = run_sequence(self.downsamples, x, cache)
        return y + avg_down(x, self.out_dim, self.ft, self.fs), cache


class UpResidualBlock(nnx.Module):
    """Official Up_ResidualBlock: `[ResidualBlock x mult, (Resample)]` + dup_up shortcut when upsampling."""

    def __init__(self, in_dim: int, out_dim: int, *, mult: int, temporal: bool, up: bool, **kw):
        mode = ("upsample3d" if temporal else "upsample2d") if up else None
        self.upsamples = _stage(in_dim, out_dim, mult, mode, **kw)
        self.up = up
        self.out_dim = out_dim
        self.ft = 2 if temporal else 1

    def __call__(self, x: jax.Array, cache: Cache, first: jax.Array | None = None) -> tuple[jax.Array, Cache]:
        y, new_cache = run_sequence(self.upsamples, x, cache, first)
        if self.up:
            # unified chunks keep every frame: the first chunk's real frame is the last one either way
            y = y + dup_up(x, self.out_dim, self.ft, 2, first is None and first_chunk(cache))
        return y, new_cache


class Encoder22(Encoder):
    """conv1 (12 -> dim) -> DownResidualBlock per stage -> middle [RB, Attn, RB] -> head."""

    def __init__(self, cfg: VAEConfig, **kw):
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], **kw)
        self.downsamples = nnx.List([
            DownResidualBlock(a, b, mult=cfg.num_res_blocks,
                              temporal=bool(i < len(cfg.temperal_downsample) and cfg.temperal_downsample[i]),
                              down=i != last, **kw)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.middle = middle_layers(dims[-1], **kw)
        self.head = head_layers(dims[-1], 2 * cfg.z_dim, **kw)


class Decoder22(Decoder):
    """conv1 (z -> 4 dec_dim) -> middle -> UpResidualBlock per stage -> head (-> 12 = 3 x 2x2 patch)."""

    def __init__(self, cfg: VAEConfig, **kw):
        mult = cfg.dim_mult
        dims = [cfg.decoder_dim * u for u in (mult[-1], *mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        last = len(mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], **kw)
        self.middle = middle_layers(dims[0], **kw)
        self.upsamples = nnx.List([
            UpResidualBlock(a, b, mult=cfg.num_res_blocks + 1,
                            temporal=bool(i < len(temperal_upsample) and temperal_upsample[i]),
                            up=i != last, **kw)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.head = head_layers(dims[-1], 3 * PATCH * PATCH, **kw)


class WanVAE22(CausalVAE):
    """Official WanVAE_ of vae2_2.py: patchify, encoder, conv1, conv2, decoder, unpatchify (see CausalVAE)."""

    VERSION = "2.2"
    ENCODER = Encoder22
    DECODER = Decoder22

    def patchify(self, x: jax.Array) -> jax.Array:
        return patchify(x)

    def unpatchify(self, x: jax.Array) -> jax.Array:
        return unpatchify(x)
