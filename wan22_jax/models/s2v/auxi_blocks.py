"""The audio feature compressor of S2V (official `auxi_blocks.py`: `CausalConv1d`, `MotionEncoder_tc`).

Audio features arrive at 4 frames per latent frame; two stride-2 causal convolutions bring them to one frame per
latent frame. The local path produces `num_token` tokens per frame (the first convolution's output channels are
split into `num_token` groups, each compressed on its own) plus one learned padding token; the global path (used
for the AdaLN conditioning) one token per frame. Both paths share the stride-2 convolutions and their norms.
Channels-last throughout: [B, T, C].
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.models.dit import LayerNorm
from wan22_jax.models.layers import Linear, fan_in_init, param, zeros_init
from wan22_jax.ops import XLA, Kernels, conv2d


class CausalConv1d(nnx.Module):
    """Conv1d (no padding of its own) on the input padded on the left by kernel - 1 copies of its first frame."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int = 3, stride: int = 1, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        self.conv = nnx.Dict({
            "kernel": param(rngs, fan_in_init, (kernel_size, chan_in, chan_out), (None, None, "embed"),
                            param_dtype),
            "bias": param(rngs, zeros_init, (chan_out,), ("embed",), param_dtype)})
        self.stride = stride
        self.dtype = dtype
        self.kernels = kernels

    def __call__(self, x):
        # x [B, T, I] -> [B, ceil(T / stride), O]
        k = self.conv["kernel"][...]
        x = jnp.concatenate([jnp.repeat(x[:, :1], k.shape[0] - 1, axis=1), x], axis=1)
        # a 1-D convolution as a 2-D one over a height-1 image (the ops layer's convolutions are 2-D/3-D)
        y = conv2d(x[:, None], k[None], stride=self.stride, padding=((0, 0), (0, 0)), dtype=self.dtype,
                   impl=self.kernels.conv)
        return y[:, 0] + self.conv["bias"][...].astype(self.dtype)


class MotionEncoder_tc(nnx.Module):  # noqa: N801 (the official name, so that parameter paths match)
    """Audio features [B, T, in_dim] -> local tokens [B, T', num_heads + 1, hidden] and, with `need_global`,
    a global token [B, T', 1, hidden]; T' = ceil(ceil(T / 2) / 2)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_heads: int, need_global: bool, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        conv = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        q = hidden_dim // 4
        self.num_heads = num_heads
        self.need_global = need_global
        self.conv1_local = CausalConv1d(in_dim, q * num_heads, 3, 1, **conv)
        self.conv1_global = CausalConv1d(in_dim, q, 3, 1, **conv) if need_global else None
        self.conv2 = CausalConv1d(q, hidden_dim // 2, 3, 2, **conv)
        self.conv3 = CausalConv1d(hidden_dim // 2, hidden_dim, 3, 2, **conv)
        self.final_linear = (Linear(hidden_dim, hidden_dim, axes=("embed", "embed_out"), **conv)
                             if need_global else None)
        # the three norms are parameter-free LayerNorms (eps 1e-6)
        self.norm1 = LayerNorm(q, 1e-6)
        self.norm2 = LayerNorm(hidden_dim // 2, 1e-6)
        self.norm3 = LayerNorm(hidden_dim, 1e-6)
        self.padding_tokens = param(rngs, zeros_init, (1, 1, 1, hidden_dim), (None, None, None, "embed"),
                                    param_dtype)

    def _compress(self, x):
        # [N, T, hidden/4] (already through conv1 + norm1 + SiLU) -> [N, T', hidden]
        x = jax.nn.silu(self.norm2(self.conv2(x)))
        return jax.nn.silu(self.norm3(self.conv3(x)))

    def __call__(self, x):
        b, t, _ = x.shape
        n = self.num_heads
        y = self.conv1_local(x)  # [B, T, n * hidden/4], channel = token * hidden/4 + c
        y = y.reshape(b, t, n, -1).transpose(0, 2, 1, 3).reshape(b * n, t, -1)
        y = self._compress(jax.nn.silu(self.norm1(y)))  # [(B n), T', hidden]
        y = y.reshape(b, n, *y.shape[1:]).transpose(0, 2, 1, 3)  # [B, T', n, hidden]
        pad = jnp.broadcast_to(self.padding_tokens[...].astype(y.dtype), (b, y.shape[1], 1, y.shape[-1]))
        local = jnp.concatenate([y, pad], axis=2)
        if not self.need_global:
            return local, None
        g = self._compress(jax.nn.silu(self.norm1(self.conv1_global(x))))
        return local, self.final_linear(g)[:, :, None, :]


def causal_frames(t: int) -> int:
    """Frames left after the two stride-2 causal convolutions: ceil(ceil(t / 2) / 2)."""
    return math.ceil(math.ceil(t / 2) / 2)
