"""Small NNX layers shared by the models, each parameter tagged with logical axis names.

Logical axes live in the `logical_axes` metadata of every `nnx.Param`; `wan22_jax.sharding` turns them into
mesh shardings through one rules table per component, so sharding is data, not code.

`stack=N` builds N copies of a layer as one parameter with a leading `layers` axis: the model then runs its
blocks with one `lax.scan` (one compiled block instead of N), and the converter stacks `blocks.{i}.*` tensors.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.ops import XLA, Kernels, matmul
from wan22_jax.ops.matmul import quantized_matmul

LAYERS = "layers"


def param(rngs: nnx.Rngs | None, init, shape: Sequence[int], axes: Sequence[str | None], dtype=jnp.float32,
          stack: int | None = None) -> nnx.Param:
    """A parameter of `shape` (with a leading `stack` axis if given) and its logical axis names."""
    shape = tuple(shape)
    axes = tuple(axes)
    assert len(axes) == len(shape), (shape, axes)
    key = rngs.params() if rngs is not None else jax.random.key(0)
    if stack is None:
        return nnx.Param(init(key, shape, dtype), logical_axes=axes)
    # each layer drawn on its own key, so fan-in based inits see the per-layer shape
    value = jax.vmap(lambda k: init(k, shape, dtype))(jax.random.split(key, stack))
    return nnx.Param(value, logical_axes=(LAYERS, *axes))


def zeros_init(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def ones_init(key, shape, dtype):
    return jnp.ones(shape, dtype)


def normal_init(std: float):
    def init(key, shape, dtype):
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    return init


def fan_in_init(key, shape, dtype):
    """N(0, 1/fan_in) with fan_in = the product of all axes but the last (the output axis)."""
    fan_in = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return (jax.random.normal(key, shape, jnp.float32) / jnp.sqrt(fan_in)).astype(dtype)


class Linear(nnx.Module):
    """y = x @ kernel + bias, kernel [in, out] (torch's weight transposed).

    The matmul runs in `dtype` (the compute dtype: bf16 for speed, fp32 for parity; fp32 at full precision on
    every backend) through `wan22_jax.ops.matmul` with `kernels.matmul` as its implementation; the output is in
    `dtype`. A quantised Linear (`ops.quant.quantize_module`) holds int8 / fp8 values in `kernel` and their
    scales in `weight_scale`, and multiplies through `ops.matmul.quantized_matmul`.

    An unmerged LoRA (`wan22_jax.lora.unmerged.attach`, on a model merged inside a jitted step) sets `lora_a`
    [.., in, R], `lora_b` [.., R, out] and `lora_scale` [.., 1, R] (scale times strength per rank column): the
    output then gains (x @ A) * scale @ B, computed like the main product, the kernel untouched.
    """

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
                 use_bias: bool = True, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 stack: int | None = None, kernel_init=fan_in_init, kernels: Kernels = XLA,
                 rngs: nnx.Rngs | None = None):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), axes, param_dtype, stack)
        self.bias = param(rngs, zeros_init, (out_features,), axes[1:], param_dtype, stack) if use_bias else None
        self.dtype = dtype
        self.kernels = kernels
        # per-output-channel scales [..., out] once `ops.quant.quantize_module` stored the kernel as int8 / fp8
        self.weight_scale = None
        self.lora_a = self.lora_b = self.lora_scale = None  # an unmerged LoRA's factors, set per jitted step

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.weight_scale is not None:
            y = quantized_matmul(x.astype(self.dtype), self.kernel[...], self.weight_scale[...],
                                 impl=self.kernels.matmul)
        else:
            y = matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype), impl=self.kernels.matmul)
        if self.lora_a is not None:
            low = matmul(x.astype(self.dtype), self.lora_a[...].astype(self.dtype), impl=self.kernels.matmul)
            low = low * self.lora_scale[...].astype(self.dtype)
            y = y + matmul(low, self.lora_b[...].astype(self.dtype), impl=self.kernels.matmul)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LoraFactor(nnx.Variable):
    """A LoRA factor or scale held by a Linear for one jitted step (not a trained Param)."""
