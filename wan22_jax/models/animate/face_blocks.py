"""Face conditioning of Animate-14B (official wan/modules/animate/face_blocks.py): `FaceEncoder` and `FaceAdapter`.

FaceEncoder turns the per-face-frame motion vectors [B, T, C] into 4 tokens per latent frame: a causal 1-D conv
(replicate padding, kernel 3) to 4 heads of `hidden` channels, then per head two stride-2 causal convs (T -> T/4,
rounded up), each followed by a LayerNorm without affine (eps 1e-6) and SiLU, and a projection to the DiT width;
a learnt padding token is appended as a 5th token.

FaceAdapter holds one FaceBlock per 5 DiT blocks (stacked on a `layers` axis here). A FaceBlock lets the tokens of
each latent frame attend to that frame's 5 face tokens: q from LN(x), k and v from LN(motion tokens), RMSNorm over
the head dim on q and k (eps 1e-6), output through `linear2`; the DiT adds the result to its residual stream.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.models.dit import LayerNorm, RMSNorm
from wan22_jax.models.layers import Linear, fan_in_init, ones_init, param, zeros_init
from wan22_jax.ops import XLA, Kernels, attention, matmul

FACE_EPS = 1e-6


class CausalConv1d(nnx.Module):
    """Official `CausalConv1d`: replicate-pad kernel - 1 frames in front, then a Conv1d. x [N, T, I] channels-last.

    kernel [k, I, O] (torch's [O, I, k] transposed); applied as one matmul on the k taps gathered into channels."""

    def __init__(self, cin: int, cout: int, k: int = 3, *, stride: int = 1, dtype, param_dtype, kernels, rngs):
        self.kernel = param(rngs, fan_in_init, (k, cin, cout), (None, None, "mlp"), param_dtype)
        self.bias = param(rngs, zeros_init, (cout,), ("mlp",), param_dtype)
        self.stride = stride
        self.dtype = dtype
        self.kernels = kernels

    def __call__(self, x):
        k = self.kernel.shape[0]
        t = x.shape[1]
        xp = jnp.concatenate([jnp.repeat(x[:, :1], k - 1, axis=1), x], axis=1)
        t_out = (t - 1) // self.stride + 1
        span = self.stride * (t_out - 1) + 1
        taps = jnp.concatenate([xp[:, i:i + span:self.stride] for i in range(k)], axis=-1)  # [N, T', k*I]
        w = self.kernel[...].reshape(-1, self.kernel.shape[-1]).astype(self.dtype)
        return matmul(taps.astype(self.dtype), w, impl=self.kernels.matmul) + self.bias[...].astype(self.dtype)


class FaceEncoder(nnx.Module):
    """Motion vectors [B, T, in_dim] -> face tokens [B, ceil(ceil(T/2)/2), num_heads + 1, dim].

    Parameter paths as officially: conv1_local.conv.*, conv2.conv.*, conv3.conv.*, out_proj.*, padding_tokens."""

    def __init__(self, in_dim: int, hidden: int, dim: int, num_heads: int, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.conv1_local = nnx.Dict({"conv": CausalConv1d(in_dim, hidden * num_heads, 3, **kw)})
        self.conv2 = nnx.Dict({"conv": CausalConv1d(hidden, hidden, 3, stride=2, **kw)})
        self.conv3 = nnx.Dict({"conv": CausalConv1d(hidden, hidden, 3, stride=2, **kw)})
        self.norm = LayerNorm(hidden, FACE_EPS)
        self.out_proj = Linear(hidden, dim, axes=("mlp", "embed"), **kw)
        self.padding_tokens = param(rngs, zeros_init, (dim,), ("embed",), param_dtype)
        self.num_heads = num_heads

    def __call__(self, motion):
        b, t, _ = motion.shape
        x = self.conv1_local["conv"](motion)  # [B, T, heads * hidden], channels head-major
        x = x.reshape(b, t, self.num_heads, -1).transpose(0, 2, 1, 3).reshape(b * self.num_heads, t, -1)
        x = jax.nn.silu(self.norm(x))
        x = jax.nn.silu(self.norm(self.conv2["conv"](x)))
        x = jax.nn.silu(self.norm(self.conv3["conv"](x)))
        x = self.out_proj(x)  # [B * heads, T', dim]
        x = x.reshape(b, self.num_heads, x.shape[1], -1).transpose(0, 2, 1, 3)  # [B, T', heads, dim]
        pad = jnp.broadcast_to(self.padding_tokens[...].astype(x.dtype), (b, x.shape[1], 1, x.shape[-1]))
        return jnp.concatenate([x, pad], axis=2)


class HeadRMSNorm(RMSNorm):
    """RMSNorm over one head's channels (the weight is [head_dim], not split over devices)."""

    def __init__(self, dim: int, eps: float, *, param_dtype, stack, rngs):
        self.weight = param(rngs, ones_init, (dim,), (None,), param_dtype, stack)
        self.eps = eps


class FaceBlock(nnx.Module):
    """Per-frame cross-attention of the video tokens to the face tokens. Build with `stack` for the adapter."""

    def __init__(self, dim: int, num_heads: int, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 stack: int | None = None, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        lin = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.linear1_kv = Linear(dim, 2 * dim, axes=("embed", "heads"), **lin)
        self.linear1_q = Linear(dim, dim, axes=("embed", "heads"), **lin)
        self.linear2 = Linear(dim, dim, axes=("heads", "embed"), **lin)
        head_dim = dim // num_heads
        self.q_norm = HeadRMSNorm(head_dim, FACE_EPS, param_dtype=param_dtype, stack=stack, rngs=rngs)
        self.k_norm = HeadRMSNorm(head_dim, FACE_EPS, param_dtype=param_dtype, stack=stack, rngs=rngs)
        self.norm = LayerNorm(dim, FACE_EPS)  # pre_norm_feat and pre_norm_motion: both without affine
        self.num_heads = num_heads
        self.dtype = dtype
        self.kernels = kernels

    def __call__(self, x, motion_vec):
        """x [B, L, D] with L = F * (tokens per frame); motion_vec [B, F, N, D] -> [B, L, D] (to add to x)."""
        b, l, d = x.shape
        f, n = motion_vec.shape[1], motion_vec.shape[2]
        h, hd = self.num_heads, d // self.num_heads
        kv = self.linear1_kv(self.norm(motion_vec))  # [B, F, N, 2D]: k then v, each (heads, head_dim)
        k = self.k_norm(kv[..., :d].reshape(b * f, n, h, hd))
        v = kv[..., d:].reshape(b * f, n, h, hd)
        q = self.q_norm(self.linear1_q(self.norm(x)).reshape(b * f, l // f, h, hd))
        out = attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                        impl=self.kernels.attention)
        return self.linear2(out.astype(x.dtype).reshape(b, l, d))


__all__ = ["CausalConv1d", "FaceBlock", "FaceEncoder", "HeadRMSNorm"]
