"""Weight-only quantisation (int8 and fp8 e4m3) with one scale per output channel.

`quantize_weight` turns a kernel [..., K, N] into stored values [..., K, N] (int8 or float8_e4m3fn) and fp32
scales [..., N] with w ~= q * scale: the scale is max|w| over the K inputs of each output channel divided by the
largest stored value (127 for int8, 448 for e4m3), so every channel uses the full range. Activations stay in the
model's compute dtype; `matmul.quantized_matmul` widens the stored values and applies the scale after the
product. The weights then take 1 byte per parameter instead of 2 (bf16) or 4 (fp32).

`quantize_module` applies it to every layer that declares a `weight_scale` slot (`models.layers.Linear`) and that
a path predicate selects; by default the Linears under `blocks` (the DiT's attention and FFN, umT5's blocks),
which hold nearly all the weights; the small embeddings, time MLPs and head keep their precision.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.errors import InputError

WEIGHT_MODES = ("int8", "fp8")
_STORAGE = {"int8": jnp.int8, "fp8": jnp.float8_e4m3fn}
_QMAX = {"int8": 127.0, "fp8": 448.0}  # largest stored magnitude: int8 symmetric, float8_e4m3fn's finite max


def check_mode(mode: str) -> str:
    if mode not in WEIGHT_MODES:
        raise InputError(f"weights={mode!r}: use one of {', '.join(WEIGHT_MODES)}")
    return mode


def quantize_weight(w, mode: str):
    """w [..., K, N] -> (q [..., K, N] int8 / float8_e4m3fn, scale [..., N] float32) with w ~= q * scale.

    An all-zero channel gets scale 1 (and zeros)."""
    check_mode(mode)
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=-2)
    scale = jnp.where(amax > 0, amax / _QMAX[mode], 1.0)
    x = w / scale[..., None, :]
    if mode == "int8":
        q = jnp.clip(jnp.round(x), -127, 127).astype(jnp.int8)
    else:
        q = jnp.clip(x, -_QMAX[mode], _QMAX[mode]).astype(jnp.float8_e4m3fn)  # round to nearest
    return q, scale


def dequantize_weight(q, scale, dtype=jnp.float32):
    """The inverse up to rounding: q [..., K, N] * scale [..., N] in `dtype`."""
    return (q.astype(jnp.float32) * scale[..., None, :]).astype(dtype)


def _in_blocks(path: tuple) -> bool:
    return "blocks" in tuple(str(p) for p in path)


def quantize_module(module: nnx.Module, mode: str,
                    where: Callable[[tuple], bool] = _in_blocks) -> nnx.Module:
    """A copy of `module` whose selected layers hold quantised kernels (the original is unchanged).

    Args:
        module: any NNX module; the layers considered are those with a `kernel` parameter and a `weight_scale`
            slot that is still None (already quantised layers are left alone).
        mode: "int8" or "fp8".
        where: predicate on a layer's graph path (a tuple of names); default: under `blocks`.
    Returns:
        The quantised copy: `kernel` holds the stored values, `weight_scale` the fp32 per-output scales, both with
        the kernel's logical axes (the scale without the input axis), so the sharding rules still apply.
    Raises:
        InputError: unknown mode, or no layer selected.
    """
    check_mode(mode)
    copy = nnx.merge(*nnx.split(module))
    count = 0
    for path, node in nnx.iter_graph(copy):
        if not (isinstance(node, nnx.Module) and hasattr(node, "weight_scale") and node.weight_scale is None
                and isinstance(getattr(node, "kernel", None), nnx.Param) and where(path)):
            continue
        axes = tuple(node.kernel.get_metadata().get("logical_axes", ()) or ())
        q, scale = quantize_weight(node.kernel[...], mode)
        node.kernel = nnx.Param(q, logical_axes=axes)
        # the slot held None, which NNX records as static: mark the parameter as data explicitly
        node.weight_scale = nnx.data(nnx.Param(scale, logical_axes=axes[:-2] + axes[-1:] if axes else ()))
        count += 1
    if count == 0:
        raise InputError(f"quantize_module: no quantisable layer selected in {type(module).__name__}")
    return copy


def is_quantized(state) -> bool:
    """Whether a module's state (any pytree of its parameters) holds a quantised layer (a `weight_scale`)."""
    paths = jax.tree_util.tree_flatten_with_path(state)[0]
    return any("weight_scale" in jax.tree_util.keystr(path) for path, _ in paths)


def weight_bytes(module: nnx.Module) -> int:
    """Bytes of every parameter of `module` (stored values and scales included)."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
