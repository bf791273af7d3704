"""The face motion encoder of Animate-14B (official `Generator` in wan/modules/animate/motion_encoder.py, from LIA).

Only `get_motion` runs: a face crop [S, S] goes through a StyleGAN-style appearance encoder down to a style vector,
five Linears (no activation between them) give `motion_dim` coefficients, and those weight an orthonormal basis
of directions: Q of the QR factorisation of a learnt [out_dim, motion_dim] matrix (plus 1e-8, as officially).

The official layers scale their weights at run time ("equalised learning rate": EqualConv2d and EqualLinear multiply
by 1/sqrt(fan_in)), so the released tensors are unscaled; we keep them so and scale in the forward. Parameter paths
mirror the official names (`enc.net_app.convs.1.conv2.1.kernel` for `...convs.1.conv2.1.weight`), including the
fixed 4x4 blur filters, which the official model stores as buffers and the release file carries.

Images are channels-last [N, S, S, 3] inside.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.models.layers import param, zeros_init
from wan22_jax.ops import XLA, Kernels, conv2d, matmul

LEAKY_SLOPE = 0.2
_BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def _blur_init(key, shape, dtype):
    taps = jnp.asarray(_BLUR_TAPS, jnp.float32)
    k = taps[:, None] * taps[None, :]
    return (k / jnp.sum(k)).astype(dtype)


def _unit_normal(key, shape, dtype):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


class Blur(nnx.Module):
    """Zero padding (pad0 before, pad1 after, on both axes), then a 4x4 depthwise FIR filter (the official
    `upfirdn2d` with up = down = 1; the filter is flipped, as a true convolution)."""

    def __init__(self, pad: tuple[int, int], *, param_dtype):
        self.kernel = param(None, _blur_init, (4, 4), (None, None), param_dtype)
        self.pad = tuple(pad)

    def __call__(self, x):
        # x [N, H, W, C]; the sum of 16 shifted, weighted copies (a fixed filter: no convolution op needed)
        k = jnp.flip(self.kernel[...].astype(jnp.float32), (0, 1))
        p0, p1 = self.pad
        xp = jnp.pad(x, ((0, 0), (p0, p1), (p0, p1), (0, 0)))
        h, w = xp.shape[1] - 3, xp.shape[2] - 3
        out = None
        for i in range(4):
            for j in range(4):
                term = xp[:, i:i + h, j:j + w, :] * k[i, j]
                out = term if out is None else out + term
        return out.astype(x.dtype)


class EqualConv2d(nnx.Module):
    """Conv2d whose weight is multiplied by 1 / sqrt(in * k * k) at run time. kernel [k, k, in, out]."""

    def __init__(self, cin: int, cout: int, k: int, *, stride: int = 1, padding: int = 0, bias: bool = True,
                 dtype, param_dtype, kernels, rngs):
        self.kernel = param(rngs, _unit_normal, (k, k, cin, cout), (None, None, None, None), param_dtype)
        self.bias = param(rngs, zeros_init, (cout,), (None,), param_dtype) if bias else None
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.stride = stride
        self.padding = padding
        self.dtype = dtype
        self.kernels = kernels

    def __call__(self, x):
        w = self.kernel[...].astype(jnp.float32) * self.scale
        p = self.padding
        y = conv2d(x, w, stride=self.stride, padding=((p, p), (p, p)), dtype=self.dtype, impl=self.kernels.conv)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class FusedLeakyReLU(nnx.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2) (the official bias is [1, C, 1, 1]; ours [C])."""

    def __init__(self, channels: int, *, param_dtype, rngs):
        self.bias = param(rngs, zeros_init, (channels,), (None,), param_dtype)

    def __call__(self, x):
        return jax.nn.leaky_relu(x + self.bias[...].astype(x.dtype), LEAKY_SLOPE) * math.sqrt(2.0)


def conv_layer(cin: int, cout: int, k: int, *, downsample: bool = False, activate: bool = True, **kw) -> nnx.Dict:
    """Official `ConvLayer` (an nn.Sequential, hence numbered children): [Blur,] EqualConv2d[, FusedLeakyReLU].

    The convolution has a bias of its own only when no activation follows (the activation carries it); the skip
    path (activate=False) has none at all."""
    layers: list[nnx.Module] = []
    if downsample:
        p = (len(_BLUR_TAPS) - 2) + (k - 1)
        layers.append(Blur(((p + 1) // 2, p // 2), param_dtype=kw["param_dtype"]))
        layers.append(EqualConv2d(cin, cout, k, stride=2, padding=0, bias=False, **kw))
    else:
        layers.append(EqualConv2d(cin, cout, k, stride=1, padding=k // 2, bias=False, **kw))
    if activate:
        layers.append(FusedLeakyReLU(cout, param_dtype=kw["param_dtype"], rngs=kw["rngs"]))
    return nnx.Dict({str(i): m for i, m in enumerate(layers)})


def run_sequential(seq: nnx.Dict, x):
    """Runs the numbered children "0", "1", ... of an nn.Sequential twin in order (a child may be one too)."""
    for i in range(len(seq)):
        layer = seq[str(i)]
        x = run_sequential(layer, x) if isinstance(layer, nnx.Dict) else layer(x)
    return x


class ResBlock(nnx.Module):
    """conv3x3 + act, blur + strided conv3x3 + act; skip = blur + strided 1x1; (out + skip) / sqrt 2."""

    def __init__(self, cin: int, cout: int, **kw):
        self.conv1 = conv_layer(cin, cin, 3, **kw)
        self.conv2 = conv_layer(cin, cout, 3, downsample=True, **kw)
        self.skip = conv_layer(cin, cout, 1, downsample=True, activate=False, **kw)

    def __call__(self, x):
        out = run_sequential(self.conv2, run_sequential(self.conv1, x))
        return (out + run_sequential(self.skip, x)) / math.sqrt(2.0)


class EncoderApp(nnx.Module):
    """1x1 conv to channels[0], one ResBlock per halving down to 4 x 4, a 4x4 conv to the style vector.

    channels: the width at each resolution size, size / 2, ..., 4 (official table: 32 at 512 ... 512 at 4)."""

    def __init__(self, size: int, style_dim: int, channels: tuple[int, ...], **kw):
        convs: list[nnx.Module] = [conv_layer(3, channels[0], 1, **kw)]
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            convs.append(ResBlock(cin, cout, **kw))
        convs.append(EqualConv2d(channels[-1], style_dim, 4, padding=0, bias=False, **kw))
        self.convs = nnx.Dict({str(i): m for i, m in enumerate(convs)})

    def __call__(self, x):
        x = run_sequential(self.convs, x)  # [N, 1, 1, style_dim]
        return x.reshape(x.shape[0], -1)


class EqualLinear(nnx.Module):
    """Linear whose weight is multiplied by 1 / sqrt(in) at run time. kernel [in, out] (torch's transposed)."""

    def __init__(self, cin: int, cout: int, *, dtype, param_dtype, kernels, rngs):
        self.kernel = param(rngs, _unit_normal, (cin, cout), (None, None), param_dtype)
        self.bias = param(rngs, zeros_init, (cout,), (None,), param_dtype)
        self.scale = 1.0 / math.sqrt(cin)
        self.dtype = dtype
        self.kernels = kernels

    def __call__(self, x):
        w = (self.kernel[...].astype(jnp.float32) * self.scale).astype(self.dtype)
        return matmul(x.astype(self.dtype), w, impl=self.kernels.matmul) + self.bias[...].astype(self.dtype)


class Encoder(nnx.Module):
    """Official `Encoder`: the appearance network and the motion MLP (4 x style->style, 1 x style->motion)."""

    def __init__(self, size: int, style_dim: int, motion_dim: int, channels: tuple[int, ...], **kw):
        self.net_app = EncoderApp(size, style_dim, channels, **kw)
        fc = [EqualLinear(style_dim, style_dim, **kw) for _ in range(4)] + [EqualLinear(style_dim, motion_dim, **kw)]
        self.fc = nnx.Dict({str(i): m for i, m in enumerate(fc)})

    def enc_motion(self, x):
        return run_sequential(self.fc, self.net_app(x))


class Direction(nnx.Module):
    """out = sum_i a_i Q[:, i], Q = the reduced QR factor of (weight + 1e-8), weight [out_dim, motion_dim].

    QR runs in fp32 (LAPACK's Householder convention on CPU, as torch.linalg.qr: the same column signs)."""

    def __init__(self, out_dim: int, motion_dim: int, *, param_dtype, rngs):
        self.weight = param(rngs, _unit_normal, (out_dim, motion_dim), (None, None), param_dtype)

    def basis(self):
        q, _ = jnp.linalg.qr(self.weight[...].astype(jnp.float32) + 1e-8)
        return q  # [out_dim, motion_dim]

    def __call__(self, a):
        # a [N, motion_dim] fp32 -> [N, out_dim]
        return jnp.matmul(a.astype(jnp.float32), self.basis().T, precision=jax.lax.Precision.HIGHEST)


class Synthesis(nnx.Module):
    def __init__(self, out_dim: int, motion_dim: int, *, param_dtype, rngs):
        self.direction = Direction(out_dim, motion_dim, param_dtype=param_dtype, rngs=rngs)


class MotionEncoder(nnx.Module):
    """Official `Generator` (motion path only). `get_motion(images [N, 3, S, S] in [-1, 1]) -> [N, out_dim]` fp32."""

    def __init__(self, *, size: int, style_dim: int, motion_dim: int, out_dim: int, channels: tuple[int, ...],
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, kernels: Kernels = XLA,
                 rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.enc = Encoder(size, style_dim, motion_dim, channels, **kw)
        self.dec = Synthesis(out_dim, motion_dim, param_dtype=param_dtype, rngs=rngs)
        self.size = size
        self.dtype = dtype

    def get_motion(self, images):
        x = jnp.transpose(images, (0, 2, 3, 1)).astype(self.dtype)  # NCHW -> NHWC
        return self.dec.direction(self.enc.enc_motion(x).astype(jnp.float32))

