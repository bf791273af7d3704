"""Channels-last convolutions of the VAEs, with explicit implementations (the `conv` field of `ops.Kernels`).

* "xla": one `lax.conv_general_dilated` (one cuDNN call on GPUs, one MXU convolution on TPUs). The parity suite
  runs this.
* "taps": a 3x3x3 kernel over frames of >= 32x32 pixels as the sum over its 3 temporal taps of 2-D convolutions
  on shifted frames (time folded into the batch): XLA:CPU's 2-D convolutions are faster than its 3-D ones there
  (1.2-1.4x at 32x32-64x64 frames, 256-512 channels, 2 cores); smaller frames take "xla". The same sum in another
  fp32 rounding order.
* "im2col": the kernel's taps gathered into channels and one matmul. On CPU, for narrow layers (the mini-world VAE,
  width 16) it trains ~7x faster: XLA:CPU's convolution gradients are far from its GEMM speed
  (experiments/mini_world/README.md). It holds taps x channels of activations: keep it to narrow models.
* "dots": each convolution as matmuls, for TPU compile time: the TPU compiler lowers every convolution
  instruction into machine code specialised for its shape and window (12-30 s each at the Wan2.2 decoder's 720p
  shapes, minutes per decode), a matmul in a few seconds (docs/aot.md, "VAE decode compile time"). One output
  frame at a time; the time taps a scan over single input frames; the width taps gathered into channels; the height
  taps a scan of one matmul each on row-shifted copies of the frame (static shifts: on a mesh that splits rows, a
  halo exchange). It reads each input frame ~3 x kt x kh times and the fp32 sum kt x kh times instead of once:
  near a convolution's speed for fp32 (HIGHEST: compute-bound) and wide layers, slower for narrow bf16 ones.
* "cpu": oneDNN's convolution (wan22_jax.cpu_kernels.conv) where it applies (fp32, CPU, one device, no mesh),
  "xla" elsewhere; if the kernel cannot load, one warning and "xla".

fp32 convolutions run at Precision.HIGHEST (no TF32 / bf16 passes on accelerators), bf16 ones at the default.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from wan22_jax.cpu_kernels import conv as cpu_conv
from wan22_jax.ops.kernels import CONVS
from wan22_jax.ops.matmul import precision_for
from wan22_jax.sharding.rules import shard

# The logical axes of frames [B, H, W, C] (the sharding rules' names): on a mesh the VAE splits rows, and the loops
# of the "dots" form would otherwise lose that split (a TPU compile then gathers whole frames onto every device).
FRAMES = ("batch", "height", None, None)

# Frames of at least this many pixels take the per-tap 2-D form under impl "taps".
TAPS_MIN_PIXELS = 32 * 32


def _check(impl: str) -> None:
    if impl not in CONVS:
        raise ValueError(f"unknown convolution implementation {impl!r}; choose one of {CONVS}")


def _im2col(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """Valid convolution as one matmul: x [B, *S, I] (already padded), kernel [*K, I, O], strides per axis."""
    spatial, taps = x.shape[1:-1], kernel.shape[:-2]
    out = [_out_len(n, k, s) for n, k, s in zip(spatial, taps, strides, strict=True)]
    cols = [lax.slice(x, (0, *offs, 0),
                      (x.shape[0], *(o + (n - 1) * s + 1 for o, n, s in zip(offs, out, strides, strict=True)),
                       x.shape[-1]), (1, *strides, 1))
            for offs in np.ndindex(*taps)]
    patches = jnp.concatenate(cols, axis=-1)  # [B, *out, taps * I], tap-major like the kernel's reshape
    return jnp.einsum("...k,ko->...o", patches, kernel.reshape(-1, kernel.shape[-1]),
                      precision=precision_for(patches, kernel))


def _out_len(n: int, k: int, s: int, pad: Sequence[int] = (0, 0)) -> int:
    """Output length of a convolution over n samples: kernel k, stride s, `pad` (before, after) zeros."""
    return (n + pad[0] + pad[1] - k) // s + 1


def _tap_dots(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding) -> jax.Array:
    """Convolution as matmuls: x [B, *S, I], kernel [*K, I, O] -> [B, *out, O]; valid in time (3-D), `padding`
    ((top, bottom), (left, right)) zeros in space.

    One output frame at a time (a 3-D kernel: its time taps a scan over single input frames) or one image at a time
    (2-D), so that the gathered copy of the input below is a frame's, not the whole chunk's.
    """
    if kernel.ndim == 4:  # 2-D: one image at a time
        def image(xi):
            return _frame_taps(xi[None], kernel, strides, padding)[0].astype(x.dtype)
        return shard(lax.map(image, x), FRAMES)
    kt, st = kernel.shape[0], strides[0]
    t_out = (x.shape[1] - kt) // st + 1

    def frame(t):
        def time_tap(acc, i):
            xi = lax.dynamic_slice_in_dim(x, t * st + i, 1, axis=1)[:, 0]
            k = lax.dynamic_index_in_dim(kernel, i, keepdims=False)
            return acc + _frame_taps(xi, k, strides[1:], padding), None
        size = [_out_len(n, k, s, p) for n, k, s, p in zip(x.shape[2:4], kernel.shape[1:3], strides[1:], padding,
                                                               strict=True)]
        zero = shard(jnp.zeros((x.shape[0], *size, kernel.shape[-1]), jnp.float32), FRAMES)
        return lax.scan(time_tap, zero, jnp.arange(kt))[0].astype(x.dtype)

    # [To, B, ...] -> [B, To, ...]
    return shard(jnp.moveaxis(lax.map(frame, jnp.arange(t_out)), 0, 1), ("batch", None, *FRAMES[1:]))


def _shift(x: jax.Array, d: int, axis: int) -> jax.Array:
    """y[..., r, ...] = x[..., r + d, ...] along `axis`, zeros past the ends; the same length as x."""
    if d == 0:
        return x
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, d) if d > 0 else (-d, 0)
    kept = lax.slice_in_dim(x, d, n, axis=axis) if d > 0 else lax.slice_in_dim(x, 0, n + d, axis=axis)
    return jnp.pad(kept, pad)


def _frame_taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding) -> jax.Array:
    """2-D convolution of frames x [B, H, W, I] with kernel [kh, kw, I, O] and zero `padding`, summed in fp32.

    The width taps are gathered into channels once (kw x the frame; slices along the minor axis are the costly ones
    on a TPU). The height taps are a scan, each step one matmul on the frame shifted by whole rows: a `lax.switch`
    over static shifts of the frame's length. On a mesh the VAE splits rows over devices, and XLA partitions a
    static shift as a halo exchange with the neighbour, where a dynamic row slice (or padding the frame to a length
    the devices no longer divide) would gather whole frames onto every device; one matmul per step keeps the
    compile as short as a single matmul's.
    """
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel.shape[:2], strides, padding
    if pt + pb > kh - 1:
        raise ValueError(f"padding {padding} wider than 'same' for a {kh}x{kw} kernel")
    oh, ow = _out_len(x.shape[1], kh, sh, (pt, pb)), _out_len(x.shape[2], kw, sw, (pl, pr))
    xp = jnp.pad(shard(x, FRAMES), ((0, 0), (0, 0), (pl, pr), (0, 0)))  # columns are never split
    cols = [xp[:, :, j:j + (ow - 1) * sw + 1:sw] for j in range(kw)]
    xg = shard(cols[0] if kw == 1 else jnp.concatenate(cols, axis=-1), FRAMES)  # [B, H, ow, kw I], tap-major
    kg = kernel.reshape(kh, kw * kernel.shape[2], kernel.shape[3])
    precision = precision_for(x, kernel)
    shifts = [functools.partial(_shift, d=i - pt, axis=1) for i in range(kh)]

    def row_tap(acc, i):
        rows = lax.switch(i, shifts, xg)[:, :(oh - 1) * sh + 1:sh]
        k = lax.dynamic_index_in_dim(kg, i, keepdims=False)
        return acc + jnp.einsum("...k,ko->...o", rows, k, precision=precision,
                                preferred_element_type=jnp.float32), None

    zero = shard(jnp.zeros((x.shape[0], oh, ow, kernel.shape[-1]), jnp.float32), FRAMES)
    if kh == 1:
        return row_tap(zero, 0)[0]
    return lax.scan(row_tap, zero, jnp.arange(kh))[0]


def conv3d(x: jax.Array, kernel: jax.Array, *, stride_t: int = 1, dtype=jnp.float32,
           impl: str = "xla") -> jax.Array:
    """Convolution valid in time, 'same' in space (kernel sizes are odd), channels-last.

    Args:
      x: [B, T, H, W, I]; kernel: [kt, kh, kw, I, O]; dtype: compute dtype; impl: one of CONVS.
    Returns:
      [B, (T - kt) // stride_t + 1, H, W, O] in `dtype`.
    """
    _check(impl)
    kt, kh, kw = kernel.shape[:3]
    b, t, h, w, c = x.shape
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    space = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    if impl == "cpu" and cpu_conv.applies(x, kernel) and cpu_conv.ready():
        return cpu_conv.conv(x, kernel, (stride_t, 1, 1), ((0, 0), *space))
    if impl == "im2col":
        x = jnp.pad(x, ((0, 0), (0, 0), *space, (0, 0)))
        return _im2col(x, kernel, (stride_t, 1, 1))
    if impl == "dots":
        return _tap_dots(x, kernel, (stride_t, 1, 1), space)
    if impl == "taps" and stride_t == 1 and kh > 1 and h * w >= TAPS_MIN_PIXELS:
        t_out = t - kt + 1
        out = None
        for i in range(kt):
            frames = x[:, i:i + t_out].reshape(b * t_out, h, w, c)
            y = conv2d(frames, kernel[i], padding=space, dtype=dtype)
            out = y if out is None else out + y
        return out.reshape(b, t_out, h, w, -1)
    return lax.conv_general_dilated(x, kernel, window_strides=(stride_t, 1, 1), padding=((0, 0), *space),
                                    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=precision_for(x))


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding, dtype=jnp.float32,
           impl: str = "xla") -> jax.Array:
    """2-D convolution, channels-last: x [N, H, W, I], kernel [kh, kw, I, O] -> [N, H', W', O] in `dtype`.

    padding: ((top, bottom), (left, right)) zeros. impl: one of CONVS ("taps" is "xla" here).
    """
    _check(impl)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if impl == "cpu" and cpu_conv.applies(x, kernel) and cpu_conv.ready():
        return cpu_conv.conv(x, kernel, (stride, stride), padding)
    if impl == "im2col":
        x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
        return _im2col(x, kernel, (stride, stride))
    if impl == "dots":
        return _tap_dots(x, kernel, (stride, stride), (tuple(padding[0]), tuple(padding[1])))
    return lax.conv_general_dilated(x, kernel, window_strides=(stride, stride), padding=padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision_for(x))
