"""Layers shared by the Wan2.1 and Wan2.2 video VAEs (official `wan/modules/vae2_1.py`, `vae2_2.py`).

Layout: activations are channels-last `[B, T, H, W, C]` inside the model (XLA's fast convolution layout); the
public API (`models/vae.py`) converts from and to the official channels-first tensors. Every convolution goes
through `wan22_jax.ops.conv3d/conv2d` with the module's `kernels.conv` implementation (XLA by default).

Causality and caches. The official code runs the encoder on frame 0 alone, then on chunks of 4 frames, and the
decoder on one latent frame at a time; every temporal convolution keeps the last input frames of the previous
chunk in a mutable `feat_cache` list. Here every block is a pure function `y, cache = block(x, cache)`:
`cache=None` means "first chunk" (what the official's empty cache slots mean) and the returned cache is a plain
pytree of arrays whose shapes no longer change, so chunks 1..n run under one `lax.scan` (see vae_model.py).

Cache rules (docs/architecture.md §6), with the official's 1-frame special cases folded into fixed-size
caches:
* a causal conv with a (3, ., .) kernel keeps the last 2 frames of its padded input `cat(cache, x)`; the first
  chunk's cache is 2 zero frames, which is exactly the official's front zero padding.
* `upsample3d` skips the temporal doubling on the first chunk (the official 'Rep' marker) and starts the next
  chunk from 2 zero frames (the official runs `time_conv` with plain zero padding then).
* `downsample3d` passes the first chunk through and remembers its last (spatially downsampled) frame; later
  chunks run the stride-2 `time_conv` over `cat(last_frame, x)` without padding.

One body for every decoder chunk (`first`, a traced bool). A TPU compiler builds every convolution instruction
on its own (5-40 s of CPU each for the decoder's shapes): a separate first chunk doubles the decoder's compile.
So the decoder runs chunk 0 through the same body as the others, with zero caches and `first=True`: the first
chunk's 1 frame then travels as the LAST frame of each layer's T frames, the other T-1 are dummies that every
causal conv zeroes at its input (so the real frame sees exactly the official `cat(zeros, x)`), upsample3d
repeats frames instead of running `time_conv` and hands on zero caches (the official 'Rep' rule), and the
caller keeps only the last output frame. `first=None` is the static form above (the encoder, and the tests'
reference path).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.errors import ConfigError
from wan22_jax.models.layers import Linear, fan_in_init, ones_init, param, zeros_init
from wan22_jax.ops import XLA, Kernels, attention, conv2d, conv3d

Cache = Any  # a pytree of arrays (or None on the first chunk)

# logical axis names of VAE parameters (sharding rules are chosen per component from these)
CONV_IN = "vae_conv_in"
CONV_OUT = "vae_conv_out"
CHANNELS = "vae_channels"

CACHE_T = 2  # frames of history a 3-tap causal conv needs (official CACHE_T)


def first_chunk(cache: Cache) -> bool:
    return cache is None


def sub_cache(cache: Cache, key) -> Cache:
    return None if cache is None else cache[key]


def zero_dummies(x: jax.Array, first: jax.Array | None) -> jax.Array:
    """x [B, T, ...] with frames 0..T-2 zeroed when `first` (the dummies of a unified first chunk)."""
    if first is None or x.shape[1] == 1:
        return x
    dummy = jnp.logical_and(first, jnp.arange(x.shape[1]) < x.shape[1] - 1)
    return jnp.where(dummy.reshape(1, -1, *(1,) * (x.ndim - 2)), jnp.zeros((), x.dtype), x)


# ----------------------------------------------------------------------------------------------- layers
class RMSNorm(nnx.Module):
    """Official RMS_norm: `F.normalize(x, dim=channels) * sqrt(C) * gamma` (no learned bias).

    F.normalize divides by max(||x||_2, 1e-12), which is not the usual mean-square RMS norm with an eps.
    """

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.gamma = param(rngs, ones_init, (dim,), (CHANNELS,), param_dtype)
        self.scale = math.sqrt(dim)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # [..., C] -> [..., C]
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32)
        return y.astype(self.dtype)


class CausalConv3d(nnx.Module):
    """Official CausalConv3d: spatial 'same' padding, time padded with `kt - 1` frames at the front only.

    `__call__(x, cache)` prepends the cached frames (zeros on the first chunk) and returns the new cache, the last
    `kt - 1` frames of the padded input. `valid(x)` is the bare convolution (no temporal padding), used by the
    stride-2 `time_conv` of `downsample3d`.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: Sequence[int] = (3, 3, 3), *, stride_t: int = 1,
                 dtype=jnp.float32, param_dtype=jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        self.kernel = param(rngs, fan_in_init, (*kernel, in_dim, out_dim), (None, None, None, CONV_IN, CONV_OUT),
                            param_dtype)
        self.bias = param(rngs, zeros_init, (out_dim,), (CONV_OUT,), param_dtype)
        self.stride_t = stride_t
        self.dtype = dtype
        self.kernels = kernels

    @property
    def context(self) -> int:
        return self.kernel.shape[0] - 1

    def valid(self, x: jax.Array) -> jax.Array:
        """[B, T, H, W, I] -> [B, (T - kt) // stride + 1, H, W, O]."""
        y = conv3d(x, self.kernel[...], stride_t=self.stride_t, dtype=self.dtype, impl=self.kernels.conv)
        return y + self.bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array, cache: Cache, first: jax.Array | None = None) -> tuple[jax.Array, Cache]:
        """x [B, T, H, W, I], cache [B, kt-1, H, W, I] or None -> ([B, T, H, W, O], new cache).
        `first` (unified decoder chunks): zero the first chunk's dummy frames before convolving."""
        ctx = self.context
        x = zero_dummies(x, first)
        if cache is None:
            cache = jnp.zeros((x.shape[0], ctx, *x.shape[2:]), x.dtype)
        full = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        return self.valid(full), full[:, full.shape[1] - ctx:]


class Conv2d(nnx.Module):
    """A per-frame 2-D conv (the spatial part of Resample): kernel [kh, kw, I, O]."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1, dtype=jnp.float32,
                 param_dtype=jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        self.kernel = param(rngs, fan_in_init, (3, 3, in_dim, out_dim), (None, None, CONV_IN, CONV_OUT),
                            param_dtype)
        self.bias = param(rngs, zeros_init, (out_dim,), (CONV_OUT,), param_dtype)
        self.stride = stride
        self.dtype = dtype
        self.kernels = kernels

    def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, I] -> [N, H', W', O]
        if self.stride == 2:
            # official ZeroPad2d((0, 1, 0, 1)): one zero row/column at the bottom/right only, then a valid conv
            padding = ((0, 1), (0, 1))
        else:
            padding = ((1, 1), (1, 1))
        y = conv2d(x, self.kernel[...], stride=self.stride, padding=padding, dtype=self.dtype,
                   impl=self.kernels.conv)
        return y + self.bias[...].astype(self.dtype)


RESAMPLE_MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")


class Resample(nnx.Module):
    """Official Resample: a per-frame 2-D up/down-sampling conv, plus a temporal conv for the 3d modes.

    Args:
      dim: input channels; out_dim: output channels of the upsampling conv (2.1 halves them, 2.2 keeps them;
        downsampling always keeps `dim`); mode: one of RESAMPLE_MODES.
    """

    def __init__(self, dim: int, mode: str, *, out_dim: int | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        if mode not in RESAMPLE_MODES:
            raise ConfigError(f"unknown resample mode {mode!r} (known: {RESAMPLE_MODES})")
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.mode = mode
        down = mode.startswith("down")
        conv = Conv2d(dim, dim if down else (out_dim or dim), stride=2 if down else 1, **kw)
        # index 0 is the official parameter-free ZeroPad2d / Upsample, so that the conv keeps its name resample.1
        self.resample = nnx.List([None, conv])
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), **kw)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride_t=2, **kw)
        else:
            self.time_conv = None

    def _spatial(self, x: jax.Array) -> jax.Array:
        b, t = x.shape[:2]
        x = x.reshape(b * t, *x.shape[2:])
        if self.mode.startswith("up"):
            # 'nearest-exact' at scale 2 is plain pixel repetition
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        x = self.resample[1](x)
        return x.reshape(b, t, *x.shape[1:])

    def __call__(self, x: jax.Array, cache: Cache, first: jax.Array | None = None) -> tuple[jax.Array, Cache]:
        """x [B, T, H, W, C] -> ([B, T', H', W', C'], cache); T' = 2T (upsample3d after the first chunk, and on
        every unified chunk), T/2 rounded up (downsample3d), T otherwise."""
        new_cache = None
        if self.mode == "upsample3d" and first is not None:
            y, c = self.time_conv(x, cache, first)
            b, t, h, w, _ = y.shape
            y = y.reshape(b, t, h, w, 2, -1).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, -1)
            # first chunk: no temporal doubling (the real frame stays last) and zero caches for the next one
            x = jnp.where(first, jnp.repeat(x, 2, axis=1), y)
            new_cache = jnp.where(first, jnp.zeros((), c.dtype), c)
        elif self.mode == "upsample3d":
            if first_chunk(cache):
                # official 'Rep': no temporal doubling now; the next chunk starts from zero padding
                new_cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
            else:
                y, new_cache = self.time_conv(x, cache)  # [B, T, H, W, 2C]
                b, t, h, w, _ = y.shape
                # channels [0, C) give frame 2i, [C, 2C) frame 2i+1 (official reshape(b, 2, c, ...) + stack)
                y = y.reshape(b, t, h, w, 2, -1).transpose(0, 1, 4, 2, 3, 5)
                x = y.reshape(b, 2 * t, h, w, -1)
        x = self._spatial(x)
        if self.mode == "downsample3d":
            new_cache = x[:, -1:]
            if not first_chunk(cache):
                x = self.time_conv.valid(jnp.concatenate([cache.astype(x.dtype), x], axis=1))
        return x, new_cache


class ResidualBlock(nnx.Module):
    """Official ResidualBlock: `residual = [RMS, SiLU, conv3, RMS, SiLU, Dropout, conv3]` + a 1x1x1 shortcut
    when the width changes. List indices follow the official nn.Sequential (parameter-free slots are None)."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        norm = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.residual = nnx.List([
            RMSNorm(in_dim, **norm), None, CausalConv3d(in_dim, out_dim, **kw),
            RMSNorm(out_dim, **norm), None, None, CausalConv3d(out_dim, out_dim, **kw)])
        self.shortcut = (Linear(in_dim, out_dim, axes=(CONV_IN, CONV_OUT), **kw)
                         if in_dim != out_dim else None)

    def __call__(self, x: jax.Array, cache: Cache, first: jax.Array | None = None) -> tuple[jax.Array, Cache]:
        h = x if self.shortcut is None else self.shortcut(x)
        y, c0 = self.residual[2](jax.nn.silu(self.residual[0](x)), sub_cache(cache, 0), first)
        y, c1 = self.residual[6](jax.nn.silu(self.residual[3](y)), sub_cache(cache, 1), first)
        return y + h, (c0, c1)


class AttentionBlock(nnx.Module):
    """Official AttentionBlock: single-head self-attention over the H*W pixels of each frame (no temporal
    mixing, despite the official docstring), 1x1 convs as Linears, plus identity."""

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, kernels: Kernels = XLA,
                 rngs: nnx.Rngs | None = None):
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.norm = RMSNorm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.to_qkv = Linear(dim, 3 * dim, axes=(CONV_IN, CONV_OUT), **kw)
        self.proj = Linear(dim, dim, axes=(CONV_IN, CONV_OUT), **kw)
        self.kernels = kernels

    def __call__(self, x: jax.Array, cache: Cache = None, first: jax.Array | None = None
                 ) -> tuple[jax.Array, Cache]:
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # official: chunk(3) of the channel axis
        y = attention(q, k, v, impl=self.kernels.attention).reshape(b, t, h, w, c)
        return self.proj(y) + x, None


def _same_blocks(a: nnx.Module, b: nnx.Module) -> bool:
    """Two ResidualBlocks of one structure and parameter shapes (one compiled body can run both)."""
    if not (isinstance(a, ResidualBlock) and isinstance(b, ResidualBlock)):
        return False
    (ga, sa), (gb, sb) = nnx.split(a), nnx.split(b)
    shapes = lambda s: jax.tree.map(lambda v: (v.shape, v.dtype), s)  # noqa: E731
    return ga == gb and shapes(sa) == shapes(sb)


def layer_groups(layers: Sequence[nnx.Module]) -> list[list[nnx.Module]]:
    """`layers` cut into runs of consecutive identical ResidualBlocks (each other layer alone)."""
    groups: list[list[nnx.Module]] = []
    for layer in layers:
        if groups and _same_blocks(groups[-1][-1], layer):
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups


def scan_blocks(blocks: Sequence[nnx.Module], x: jax.Array, cache: Cache, first: jax.Array | None
                ) -> tuple[jax.Array, Cache]:
    """Identical ResidualBlocks in order as one `lax.scan` over their stacked parameters: a TPU compiler builds
    each convolution instruction on its own (seconds each), a scan's body once. The cache is stacked too."""
    graphdef = nnx.split(blocks[0])[0]
    params = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.split(b)[1] for b in blocks])

    def body(x, item):
        state, c = item
        return nnx.merge(graphdef, state)(x, c, first)

    return jax.lax.scan(body, x, (params, cache))


def run_sequence(layers: Sequence[nnx.Module], x: jax.Array, cache: Cache, first: jax.Array | None = None
                 ) -> tuple[jax.Array, Cache]:
    """Applies `y, c = layer(y, c)` in order, runs of identical ResidualBlocks scanned (`scan_blocks`); the
    cache is the tuple of the groups' caches (a run's cache stacked over its blocks)."""
    new = []
    for i, group in enumerate(layer_groups(layers)):
        if len(group) > 1:
            x, c = scan_blocks(group, x, sub_cache(cache, i), first)
        elif first is None:
            x, c = group[0](x, sub_cache(cache, i))
        else:
            x, c = group[0](x, sub_cache(cache, i), first)
        new.append(c)
    return x, tuple(new)


def middle_layers(dim: int, **kw) -> nnx.List:
    """Official `middle = [ResidualBlock, AttentionBlock, ResidualBlock]` at constant width."""
    return nnx.List([ResidualBlock(dim, dim, **kw), AttentionBlock(dim, **kw), ResidualBlock(dim, dim, **kw)])


def head_layers(in_dim: int, out_dim: int, *, kernels: Kernels = XLA, **kw) -> nnx.List:
    """Official `head = [RMS_norm, SiLU, CausalConv3d]` (index 1 has no parameters)."""
    return nnx.List([RMSNorm(in_dim, **kw), None, CausalConv3d(in_dim, out_dim, kernels=kernels, **kw)])


def apply_head(head: nnx.List, x: jax.Array, cache: Cache, first: jax.Array | None = None
               ) -> tuple[jax.Array, Cache]:
    return head[2](jax.nn.silu(head[0](x)), cache, first)
