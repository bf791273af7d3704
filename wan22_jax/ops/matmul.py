"""`matmul`: every Linear's product (and the DiT's patch embedding) goes through here.

Precision follows the operands' dtype, never the backend's default: fp32 operands multiply at
`Precision.HIGHEST` (true fp32; without it XLA's fp32 dot is TF32 on NVIDIA GPUs and bf16 passes on TPUs, which
misses the parity tolerance of 1e-5), bf16 operands at the default (what bf16 runs want). Accumulation is fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from wan22_jax.cpu_kernels import sgemm
from wan22_jax.ops.kernels import MATMULS


def precision_for(*arrays: jax.Array) -> lax.Precision:
    """HIGHEST when any operand is fp32 (the parity mode), DEFAULT otherwise (bf16/fp16 runs)."""
    return lax.Precision.HIGHEST if any(jnp.dtype(a.dtype) == jnp.float32 for a in arrays) else lax.Precision.DEFAULT


def matmul(a: jax.Array, w: jax.Array, *, impl: str = "xla") -> jax.Array:
    """a [..., K] @ w [K, N] -> [..., N] in the operands' common dtype.

    impl "xla": XLA's dot. "cpu": MKL's sgemm (wan22_jax.cpu_kernels.sgemm) where it applies (fp32, one device,
    no mesh, at least sgemm.MIN_ROWS rows), XLA's dot elsewhere; if the kernel cannot load, one warning and XLA.
    """
    if impl not in MATMULS:
        raise ValueError(f"unknown matmul implementation {impl!r}; choose one of {MATMULS}")
    if impl == "cpu" and sgemm.applies(a, w) and sgemm.ready():
        return sgemm.matmul(a, w)
    return jnp.matmul(a, w, precision=precision_for(a, w))


def quantized_matmul(a: jax.Array, q: jax.Array, scale: jax.Array, *, impl: str = "xla") -> jax.Array:
    """a [..., K] @ (q [K, N] * scale [N]) -> [..., N] in a's dtype, for weight-only quantised weights.

    The per-output-channel scale factors out of the product, so the stored integers (int8) or fp8 values are
    widened to a's dtype exactly (|q| <= 127 and fp8 e4m3 values are representable in bf16 and fp32), multiplied
    through `matmul` with `impl`, and the fp32 scale is applied to the fp32-widened product.
    """
    y = matmul(a, q.astype(a.dtype), impl=impl)
    return (y.astype(jnp.float32) * scale.astype(jnp.float32)).astype(a.dtype)
