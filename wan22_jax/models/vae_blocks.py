"""Building blocks shared by the Wan2.1 and Wan2.2 video VAEs (official `wan/modules/vae2_1.py`, `vae2_2.py`).

Layout: activations are channels-last `[B, T, H, W, C]` inside the model (XLA's fast convolution layout); the
public API in `vae_tiling.py` converts from and to the official channels-first tensors.

Causality and caches. The official code runs the encoder on frame 0 alone, then on chunks of 4 frames, and the
decoder on one latent frame at a time; every temporal convolution keeps the last input frames of the previous
chunk in a mutable `feat_cache` list. Here every block is a pure function `y, cache = block(x, cache)`:
`cache=None` means "first chunk" (what the official's empty cache slots mean) and the returned cache is a plain
pytree of arrays whose shapes no longer change, so chunks 1..n run under one `lax.scan` (see `CausalVAE`).

Cache rules (docs 6.2), with the official's 1-frame special cases folded into fixed-size caches:
* a causal conv with a (3, ., .) kernel keeps the last 2 frames of its padded input `cat(cache, x)`; the first
  chunk's cache is 2 zero frames, which is exactly the official's front zero padding.
* `upsample3d` skips the temporal doubling on the first chunk (the official 'Rep' marker) and starts the next
  chunk from 2 zero frames (the official runs `time_conv` with plain zero padding then).
* `downsample3d` passes the first chunk through and remembers its last (spatially downsampled) frame; later
  chunks run the stride-2 `time_conv` over `cat(last_frame, x)` without padding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from wan22_jax.errors import ConfigError
from wan22_jax.kernels import cpu_conv
from wan22_jax.models.attention import attention
from wan22_jax.models.layers import Linear, fan_in_init, ones_init, param, zeros_init

Cache = Any  # a pytree of arrays (or None on the first chunk)

# logical axis names of VAE parameters (sharding rules are chosen per component from these)
CONV_IN = "vae_conv_in"
CONV_OUT = "vae_conv_out"
CHANNELS = "vae_channels"

CACHE_T = 2  # frames of history a 3-tap causal conv needs (official CACHE_T)
ENCODE_CHUNK = 4  # frames per encoder chunk after the first one (official, hard-coded)


# ----------------------------------------------------------------------------------------------- config
# Per-channel latent statistics of the released VAEs (official Wan2_1_VAE / Wan2_2_VAE wrappers, docs 6.3).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

VERSIONS = ("2.1", "2.2")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """The WanVAE_ constructor arguments (the fields of `vae_config.json`) plus the latent statistics.

    version: "2.1" (z16, stride 4x8x8) or "2.2" (z48, 2x2 patchify, residual up/down shortcuts, stride 4x16x16).
    dim: encoder base width; dec_dim: decoder base width; None means the official default: `dim` for 2.1
      (whose WanVAE_ has no such argument), 256 for 2.2 (WanVAE_'s default, never overridden by Wan2_2_VAE).
    latents_mean / latents_std: the normalisation constants; None selects the release's values for `version`
      (a Diffusers config carries its own).
    dropout: accepted for compatibility with the checkpoint configs; inference never drops.
    """

    version: str = "2.1"
    dim: int = 96
    dec_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # sic, the official spelling
    dropout: float = 0.0
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ConfigError(f"VAE version {self.version!r} is not one of {VERSIONS}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(f"temperal_downsample {self.temperal_downsample} needs len(dim_mult) - 1 = "
                              f"{len(self.dim_mult) - 1} entries")
        if self.attn_scales:
            # No release uses them and 2.2 ignores them; refusing beats silently building a different graph.
            raise ConfigError(f"attn_scales={self.attn_scales} is not supported (every Wan VAE uses [])")
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ConfigError("give both latents_mean and latents_std, or neither")
        for name in ("latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise ConfigError(f"{name} has {len(v)} values, z_dim is {self.z_dim}")

    @property
    def decoder_dim(self) -> int:
        if self.dec_dim is not None:
            return self.dec_dim
        return self.dim if self.version == "2.1" else 256

    @property
    def patch_size(self) -> int:
        return 2 if self.version == "2.2" else 1

    @property
    def spatial_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    def latent_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) used to normalise latents."""
        if self.latents_mean is not None:
            return self.latents_mean, self.latents_std
        if self.z_dim != (16 if self.version == "2.1" else 48):
            raise ConfigError(f"no release latent statistics for a {self.version} VAE with z_dim={self.z_dim}; "
                              "set latents_mean/latents_std")
        return (WAN21_LATENT_MEAN, WAN21_LATENT_STD) if self.version == "2.1" else (WAN22_LATENT_MEAN,
                                                                                       WAN22_LATENT_STD)


def normalize_latent(mu: jax.Array, cfg: VAEConfig) -> jax.Array:
    """Official encode normalisation `(mu - mean) * (1 / std)`, the reciprocal rounded to fp32 first.

    mu: [..., z_dim] channels-last.
    """
    mean, std = (np.asarray(v, np.float32) for v in cfg.latent_stats())
    return (mu - mean) * (np.float32(1.0) / std)


def denormalize_latent(z: jax.Array, cfg: VAEConfig) -> jax.Array:
    """Official decode un-normalisation `z / (1 / std) + mean` (a division by the fp32 reciprocal).

    z: [..., z_dim] channels-last. XLA rewrites a division by a broadcast vector into a multiplication by its
    reciprocal, which is not the same fp32 number; the barrier keeps the true division.
    """
    mean, std = (np.asarray(v, np.float32) for v in cfg.latent_stats())
    inv = lax.optimization_barrier(jnp.broadcast_to(np.float32(1.0) / std, z.shape))
    return z / inv + mean


PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(version="2.1", dim=96, z_dim=16),
    "wan2.2": VAEConfig(version="2.2", dim=160, dec_dim=256, z_dim=48),
    # the widths of the reference cases: every code path, a few kB of weights
    "tiny2.1": VAEConfig(version="2.1", dim=4, z_dim=16),
    "tiny2.2": VAEConfig(version="2.2", dim=4, dec_dim=4, z_dim=48),
}


def preset(name: str) -> VAEConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown VAE preset {name!r} (known: {sorted(PRESETS)})") from None


# ----------------------------------------------------------------------------------------------- primitives
def _precision(dtype) -> lax.Precision:
    # fp32 runs are the parity mode: forbid TF32-style reduced-precision passes on accelerators.
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


# Frames of at least this many pixels use the per-tap 2-D formulation of conv3d on CPU (see conv3d).
_TAPS_MIN_PIXELS = 32 * 32

CONV_IMPLS = ("auto", "xla", "im2col")
_conv_impl = ["auto"]


@contextlib.contextmanager
def conv_impl(name: str):
    """Selects how the VAE's convolutions are lowered while tracing inside this block.

    "auto": oneDNN's convolutions on CPU in fp32 where its kernel loads (`wan22_jax.kernels.cpu_conv`), XLA's
    otherwise. "xla": XLA convolutions (per-tap 2-D on CPU for large frames, see conv3d). "im2col": the kernel's taps
    gathered into channels and one matmul. On CPU, for narrow layers (the mini-world VAE, width 16), the
    im2col form trains ~7x faster: XLA CPU's convolution gradients are far from its GEMM speed
    (experiments/mini_world/README.md). It holds taps x channels of activations, so keep it to narrow models.
    The choice is read at trace time: a function already jitted keeps the lowering it was traced with.
    """
    if name not in CONV_IMPLS:
        raise ConfigError(f"conv_impl {name!r} is not one of {CONV_IMPLS}")
    prev = _conv_impl[0]
    _conv_impl[0] = name
    try:
        yield
    finally:
        _conv_impl[0] = prev


def _im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], dtype) -> jax.Array:
    """Valid convolution as one matmul: x [B, *S, I] (already padded), kernel [*K, I, O], strides per axis."""
    spatial, taps = x.shape[1:-1], kernel.shape[:-2]
    out = [(n - k) // s + 1 for n, k, s in zip(spatial, taps, strides)]
    cols = [lax.slice(x, (0, *offs, 0), (x.shape[0], *(o + (n - 1) * s + 1 for o, n, s in zip(offs, out, strides)),
                                         x.shape[-1]), (1, *strides, 1))
            for offs in np.ndindex(*taps)]
    patches = jnp.concatenate(cols, axis=-1)  # [B, *out, taps * I], tap-major like the kernel's reshape
    return jnp.einsum("...k,ko->...o", patches, kernel.reshape(-1, kernel.shape[-1]), precision=_precision(dtype))


def conv3d(x: jax.Array, kernel: jax.Array, *, stride_t: int = 1, dtype=jnp.float32) -> jax.Array:
    """Convolution valid in time, 'same' in space (kernel sizes are odd), channels-last.

    On CPU in fp32 with the oneDNN kernel loaded, one oneDNN convolution (see conv_impl). Otherwise, on CPU, a
    3x3x3 kernel over frames of >= 32x32 pixels runs as the sum over its 3 temporal taps of 2-D convs on shifted
    frames (time folded into the batch): XLA CPU's 2-D convolutions are faster than its 3-D ones there
    (measured 1.2-1.4x at 32x32-64x64 frames, 256-512 channels, on 2 cores: experiments/vae_speed/conv_forms.py),
    while on small frames the single 3-D conv wins. Other backends keep the single 3-D conv (one cuDNN call).
    Both are the same sum; only the fp32 rounding order differs.

    Args:
      x: [B, T, H, W, I]; kernel: [kt, kh, kw, I, O].
    Returns:
      [B, (T - kt) // stride_t + 1, H, W, O] in `dtype`.
    """
    kt, kh, kw = kernel.shape[:3]
    b, t, h, w, c = x.shape
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if _conv_impl[0] == "auto" and cpu_conv.use_for(x, kernel):
        return cpu_conv.conv(x, kernel, (stride_t, 1, 1), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    if _conv_impl[0] == "im2col":
        x = jnp.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        return _im2col_conv(x, kernel, (stride_t, 1, 1), dtype)
    if (stride_t == 1 and kh > 1 and h * w >= _TAPS_MIN_PIXELS and jax.default_backend() == "cpu"):
        t_out = t - kt + 1
        out = None
        for i in range(kt):
            frames = x[:, i:i + t_out].reshape(b * t_out, h, w, c)
            y = conv2d(frames, kernel[i], padding=((kh // 2, kh // 2), (kw // 2, kw // 2)), dtype=dtype)
            out = y if out is None else out + y
        return out.reshape(b, t_out, h, w, -1)
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride_t, 1, 1), padding=((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=_precision(dtype))


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding, dtype=jnp.float32) -> jax.Array:
    """2-D convolution, channels-last: x [N, H, W, I], kernel [kh, kw, I, O] -> [N, H', W', O]."""
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if _conv_impl[0] == "auto" and cpu_conv.use_for(x, kernel):
        return cpu_conv.conv(x, kernel, (stride, stride), padding)
    if _conv_impl[0] == "im2col":
        x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
        return _im2col_conv(x, kernel, (stride, stride), dtype)
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_precision(dtype))


def first_chunk(cache: Cache) -> bool:
    return cache is None


def _sub(cache: Cache, key) -> Cache:
    return None if cache is None else cache[key]


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
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.kernel = param(rngs, fan_in_init, (*kernel, in_dim, out_dim), (None, None, None, CONV_IN, CONV_OUT),
                            param_dtype)
        self.bias = param(rngs, zeros_init, (out_dim,), (CONV_OUT,), param_dtype)
        self.stride_t = stride_t
        self.dtype = dtype

    @property
    def context(self) -> int:
        return self.kernel.shape[0] - 1

    def valid(self, x: jax.Array) -> jax.Array:
        """[B, T, H, W, I] -> [B, (T - kt) // stride + 1, H, W, O]."""
        y = conv3d(x, self.kernel[...], stride_t=self.stride_t, dtype=self.dtype)
        return y + self.bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """x [B, T, H, W, I], cache [B, kt-1, H, W, I] or None -> ([B, T, H, W, O], new cache)."""
        ctx = self.context
        if cache is None:
            cache = jnp.zeros((x.shape[0], ctx, *x.shape[2:]), x.dtype)
        full = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        return self.valid(full), full[:, full.shape[1] - ctx:]


class Conv2d(nnx.Module):
    """A per-frame 2-D conv (the spatial part of Resample): kernel [kh, kw, I, O]."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.kernel = param(rngs, fan_in_init, (3, 3, in_dim, out_dim), (None, None, CONV_IN, CONV_OUT),
                            param_dtype)
        self.bias = param(rngs, zeros_init, (out_dim,), (CONV_OUT,), param_dtype)
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, I] -> [N, H', W', O]
        if self.stride == 2:
            # official ZeroPad2d((0, 1, 0, 1)): one zero row/column at the bottom/right only, then a valid conv
            padding = ((0, 1), (0, 1))
        else:
            padding = ((1, 1), (1, 1))
        y = conv2d(x, self.kernel[...], stride=self.stride, padding=padding, dtype=self.dtype)
        return y + self.bias[...].astype(self.dtype)


RESAMPLE_MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")


class Resample(nnx.Module):
    """Official Resample: a per-frame 2-D up/down-sampling conv, plus a temporal conv for the 3d modes.

    Args:
      dim: input channels; out_dim: output channels of the upsampling conv (2.1 halves them, 2.2 keeps them;
        downsampling always keeps `dim`); mode: one of RESAMPLE_MODES.
    """

    def __init__(self, dim: int, mode: str, *, out_dim: int | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        if mode not in RESAMPLE_MODES:
            raise ConfigError(f"unknown resample mode {mode!r} (known: {RESAMPLE_MODES})")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
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

    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """x [B, T, H, W, C] -> ([B, T', H', W', C'], cache); T' = 2T (upsample3d after the first chunk),
        T/2 rounded up (downsample3d), T otherwise."""
        new_cache = None
        if self.mode == "upsample3d":
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
                 rngs: nnx.Rngs | None = None):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.residual = nnx.List([
            RMSNorm(in_dim, **kw), None, CausalConv3d(in_dim, out_dim, **kw),
            RMSNorm(out_dim, **kw), None, None, CausalConv3d(out_dim, out_dim, **kw)])
        self.shortcut = (Linear(in_dim, out_dim, axes=(CONV_IN, CONV_OUT), **kw)
                         if in_dim != out_dim else None)

    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        h = x if self.shortcut is None else self.shortcut(x)
        y, c0 = self.residual[2](jax.nn.silu(self.residual[0](x)), _sub(cache, 0))
        y, c1 = self.residual[6](jax.nn.silu(self.residual[3](y)), _sub(cache, 1))
        return y + h, (c0, c1)


class AttentionBlock(nnx.Module):
    """Official AttentionBlock: single-head self-attention over the H*W pixels of each frame (no temporal
    mixing, despite the official docstring), 1x1 convs as Linears, plus identity."""

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, attn_impl: str = "xla",
                 rngs: nnx.Rngs | None = None):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = RMSNorm(dim, **kw)
        self.to_qkv = Linear(dim, 3 * dim, axes=(CONV_IN, CONV_OUT), **kw)
        self.proj = Linear(dim, dim, axes=(CONV_IN, CONV_OUT), **kw)
        self.attn_impl = attn_impl

    def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # official: chunk(3) of the channel axis
        y = attention(q, k, v, impl=self.attn_impl).reshape(b, t, h, w, c)
        return self.proj(y) + x, None


def run_sequence(layers: Sequence[nnx.Module], x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    """Applies `y, c = layer(y, c)` in order; the cache is the tuple of the layers' caches."""
    new = []
    for i, layer in enumerate(layers):
        x, c = layer(x, _sub(cache, i))
        new.append(c)
    return x, tuple(new)


def middle_layers(dim: int, *, attn_impl: str = "xla", **kw) -> nnx.List:
    """Official `middle = [ResidualBlock, AttentionBlock, ResidualBlock]` at constant width."""
    return nnx.List([ResidualBlock(dim, dim, **kw), AttentionBlock(dim, attn_impl=attn_impl, **kw),
                     ResidualBlock(dim, dim, **kw)])


def head_layers(in_dim: int, out_dim: int, **kw) -> nnx.List:
    """Official `head = [RMS_norm, SiLU, CausalConv3d]` (index 1 has no parameters)."""
    return nnx.List([RMSNorm(in_dim, **kw), None, CausalConv3d(in_dim, out_dim, **kw)])


def apply_head(head: nnx.List, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    return head[2](jax.nn.silu(head[0](x)), cache)


# ----------------------------------------------------------------------------------------------- model
class _Coder(nnx.Module):
    """Official Encoder3d / Decoder3d forward for one chunk: `conv1`, the `BODY` layer lists in order, `head`.
    The version's subclass builds the layers; the cache is a dict with one entry per part."""

    BODY: tuple[str, ...]

    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        x, c_in = self.conv1(x, _sub(cache, "conv1"))
        new = {"conv1": c_in}
        for name in self.BODY:
            x, new[name] = run_sequence(getattr(self, name), x, _sub(cache, name))
        x, new["head"] = apply_head(self.head, x, _sub(cache, "head"))
        return x, new


class Encoder(_Coder):
    """`conv1 -> downsamples -> middle -> head`: one chunk [B, t, H, W, C] -> [B, t', H/8, W/8, 2z] (t' = 1 on
    the first chunk, t/4 after; cache None on the first chunk)."""

    BODY = ("downsamples", "middle")


class Decoder(_Coder):
    """`conv1 -> middle -> upsamples -> head`: one latent frame [B, 1, h, w, z] -> [B, 1 (first chunk) or 4,
    8h, 8w, C]."""

    BODY = ("middle", "upsamples")


class CausalVAE(nnx.Module):
    """Official WanVAE_: encoder, conv1 (1x1x1, 2z -> 2z), conv2 (1x1x1, z -> z), decoder, and the chunked
    causal encode/decode loops shared by both versions.

    Subclasses set ENCODER / DECODER (the version's Encoder / Decoder) and the pixel (un)patchify.

    Args:
      config: the VAEConfig of the subclass's version.
      dtype: compute dtype (fp32 for parity, like the official wrappers' fp32 autocast); param_dtype: storage.
      attn_impl: implementation of the middle attention blocks (see models/attention.py).
    """

    VERSION: str
    ENCODER: type
    DECODER: type

    def __init__(self, config: VAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, attn_impl: str = "xla",
                 rngs: nnx.Rngs | None = None):
        if config.version != self.VERSION:
            raise ConfigError(f"{type(self).__name__} builds Wan{self.VERSION} VAEs, config says {config.version}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = config
        self.encoder = self.ENCODER(config, attn_impl=attn_impl, **kw)
        z = config.z_dim
        self.conv1 = Linear(2 * z, 2 * z, axes=(CONV_IN, CONV_OUT), **kw)
        self.conv2 = Linear(z, z, axes=(CONV_IN, CONV_OUT), **kw)
        self.decoder = self.DECODER(config, attn_impl=attn_impl, **kw)

    def patchify(self, x: jax.Array) -> jax.Array:
        return x

    def unpatchify(self, x: jax.Array) -> jax.Array:
        return x

    def encode_frames(self, video: jax.Array) -> jax.Array:
        """Posterior mean of one video, un-normalised.

        Args:
          video: [B, T, H, W, 3] channels-last, T = 1 + 4n.
        Returns:
          mu [B, 1 + n, H / s, W / s, z_dim] (s the spatial stride).
        """
        x = self.patchify(video)
        b, t = x.shape[:2]
        n = (t - 1) // ENCODE_CHUNK
        out, cache = self.encoder(x[:, :1], None)
        if n:
            chunks = x[:, 1:].reshape(b, n, ENCODE_CHUNK, *x.shape[2:]).swapaxes(0, 1)

            def step(cache, chunk):
                y, cache = self.encoder(chunk, cache)
                return cache, y

            _, ys = lax.scan(step, cache, chunks)  # [n, B, t', h, w, 2z]
            ys = ys.swapaxes(0, 1).reshape(b, -1, *ys.shape[3:])
            out = jnp.concatenate([out, ys], axis=1)
        return self.conv1(out)[..., : self.config.z_dim]

    def decode_frames(self, z: jax.Array) -> jax.Array:
        """Decodes un-normalised latents, one latent frame per chunk.

        Args:
          z: [B, T', h, w, z_dim].
        Returns:
          [B, 1 + 4 (T' - 1), h * s, w * s, 3], not clamped.
        """
        x = self.conv2(z)
        out, cache = self.decoder(x[:, :1], None)
        if x.shape[1] > 1:
            def step(cache, frame):
                y, cache = self.decoder(frame[:, None], cache)
                return cache, y

            _, ys = lax.scan(step, cache, x[:, 1:].swapaxes(0, 1))  # [T'-1, B, 4, H, W, c]
            ys = ys.swapaxes(0, 1).reshape(out.shape[0], -1, *ys.shape[3:])
            out = jnp.concatenate([out, ys], axis=1)
        return self.unpatchify(out)
