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
* "dots": the kernel's last (width) taps gathered into channels, its other taps a `lax.scan` of matmuls summed in
  fp32. For TPU compile time: the TPU compiler lowers each convolution instruction into machine code specialised
  for its whole window and shape (4-25 s each for the Wan2.2 decoder's layers at 720p, several minutes for a
  decode), a matmul in 1.5-8 s (docs/aot.md, "VAE decode compile time"). It reads the input ~3 x taps times
  instead of once, so on a TPU it is memory-bound for narrow fp32-free layers (bf16, <= 512 channels) and about
  as fast as a convolution for wide or fp32 ones (HIGHEST precision makes the matmuls compute-bound).
* "cpu": oneDNN's convolution (wan22_jax.cpu_kernels.conv) where it applies (fp32, CPU, one device, no mesh),
  "xla" elsewhere; if the kernel cannot load, one warning and "xla".

fp32 convolutions run at Precision.HIGHEST (no TF32 / bf16 passes on accelerators), bf16 ones at the default.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from wan22_jax.cpu_kernels import conv as cpu_conv
from wan22_jax.ops.kernels import CONVS
from wan22_jax.ops.matmul import precision_for

# Frames of at least this many pixels take the per-tap 2-D form under impl "taps".
TAPS_MIN_PIXELS = 32 * 32


def _check(impl: str) -> None:
    if impl not in CONVS:
        raise ValueError(f"unknown convolution implementation {impl!r}; choose one of {CONVS}")


def _im2col(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """Valid convolution as one matmul: x [B, *S, I] (already padded), kernel [*K, I, O], strides per axis."""
    spatial, taps = x.shape[1:-1], kernel.shape[:-2]
    out = [(n - k) // s + 1 for n, k, s in zip(spatial, taps, strides, strict=True)]
    cols = [lax.slice(x, (0, *offs, 0),
                      (x.shape[0], *(o + (n - 1) * s + 1 for o, n, s in zip(offs, out, strides, strict=True)),
                       x.shape[-1]), (1, *strides, 1))
            for offs in np.ndindex(*taps)]
    patches = jnp.concatenate(cols, axis=-1)  # [B, *out, taps * I], tap-major like the kernel's reshape
    return jnp.einsum("...k,ko->...o", patches, kernel.reshape(-1, kernel.shape[-1]),
                      precision=precision_for(patches, kernel))


def _tap_dots(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """Valid convolution as loops of matmuls: x [B, *S, I] (already padded), kernel [*K, I, O] -> [B, *out, O].

    One output frame at a time (a 3-D kernel: its time taps a scan over single input frames) or one image at a time
    (2-D), so that the gathered copy of the input below is a frame's, not the whole chunk's.
    """
    out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], kernel.shape[:-2], strides, strict=True)]
    if kernel.ndim == 4:  # 2-D: one image at a time
        return lax.map(lambda xi: _frame_taps(xi[None], kernel, strides)[0], x).astype(x.dtype)
    kt, st = kernel.shape[0], strides[0]

    def frame(t):
        def time_tap(acc, i):
            xi = lax.dynamic_slice_in_dim(x, t * st + i, 1, axis=1)[:, 0]
            return acc + _frame_taps(xi, lax.dynamic_index_in_dim(kernel, i, keepdims=False), strides[1:]), None
        zero = jnp.zeros((x.shape[0], *out[1:], kernel.shape[-1]), jnp.float32)
        return lax.scan(time_tap, zero, jnp.arange(kt))[0].astype(x.dtype)

    return jnp.moveaxis(lax.map(frame, jnp.arange(out[0])), 0, 1)  # [To, B, ...] -> [B, To, ...]


def _frame_taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """Valid 2-D convolution of frames x [B, H, W, I] (padded) with kernel [kh, kw, I, O], summed in fp32.

    The width taps are gathered into channels (kw x the frames: slices along the minor spatial axis are the costly
    ones on a TPU, so they happen once); the height taps are a scan of dynamic slices along a major axis, each one
    matmul added to the fp32 sum.
    """
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    cols = [lax.slice_in_dim(x, j, j + (ow - 1) * sw + 1, sw, axis=2) for j in range(kw)]
    xg = cols[0] if kw == 1 else jnp.concatenate(cols, axis=-1)  # [B, H, ow, kw * I], tap-major
    kg = kernel.reshape(kh, kw * kernel.shape[2], kernel.shape[3])
    precision = precision_for(x, kernel)

    def row_tap(acc, i):
        rows = lax.dynamic_slice_in_dim(xg, i, (oh - 1) * sh + 1, axis=1)[:, ::sh]
        k = lax.dynamic_index_in_dim(kg, i, keepdims=False)
        return acc + jnp.einsum("...k,ko->...o", rows, k, precision=precision,
                                preferred_element_type=jnp.float32), None

    zero = jnp.zeros((x.shape[0], oh, ow, kernel.shape[-1]), jnp.float32)
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
        return _tap_dots(jnp.pad(x, ((0, 0), (0, 0), *space, (0, 0))), kernel, (stride_t, 1, 1))
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
        return _tap_dots(jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0))), kernel, (stride, stride))
    return lax.conv_general_dilated(x, kernel, window_strides=(stride, stride), padding=padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision_for(x))
