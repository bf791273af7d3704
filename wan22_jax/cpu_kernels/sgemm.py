"""fp32 matmuls and a fused attention on the CPU through MKL's sgemm: XLA FFI custom calls (`sgemm.cc`), split
over XLA's own intra-op threads, each piece a single-threaded MKL call.

Opt-in only: the ops layer calls this module where a model's `Kernels` says "cpu" (`wan22_jax.ops`); nothing here
decides on its own to run. Why it exists: on Intel CPUs MKL's sgemm is 1.25-1.3x faster than XLA:CPU's dot at the
DiT's shapes (on an AMD EPYC Zen 4 it is the other way round: XLA's dot 154-178 GFLOP/s, MKL 100-150, so pick
`Kernels.cpu(("attention", "conv"))` there), and the fused attention, whose logits never leave the cache, is 1.5x
XLA's blocked attention on both. A BLAS with a thread pool of its own spins against XLA's threads (both slow down
by a third when they alternate); single-threaded MKL on XLA's threads does not.

Where it applies (`applies`, `applies_attention`): fp32 operands, the CPU backend, one device and no mesh (a
custom call has no sharding rule); elsewhere the ops layer runs XLA. MKL comes from the `cpu` extra
(`pip install mkl`). The kernel is compiled with the system's C++ compiler against jaxlib's FFI headers on first
use and cached (`$WAN22_KERNEL_CACHE`, default ~/.cache/wan22_jax/kernels); if MKL or the compiler is missing,
`status()` says why and the ops layer logs it once. Gradients (custom_vjp) are XLA dots.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.cpu_kernels import build

TARGET = "wan22_cpu_sgemm"
ATTENTION_TARGET = "wan22_cpu_attention"
# Products of fewer rows (the time-embedding MLP's one row per timestep) stay on XLA's dot: nothing to gain, and
# MKL's small-M paths round differently for 1 and 3 rows, which would make a scalar t and an equal per-frame t
# give different last bits.
MIN_ROWS = 16
MKL_THREADING_SEQUENTIAL = 1  # mkl_service.h: MKL_THREADING_INTEL 0, SEQUENTIAL 1, PGI 2, GNU 3, TBB 4
_SOURCE = Path(__file__).with_name("sgemm.cc")


def _mkl_library() -> Path:
    explicit = os.environ.get("WAN22_MKL_LIBRARY")
    if explicit:
        return Path(explicit)
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, "/usr", "/usr/local"]):
        found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
        if found:
            return Path(found[0])
    raise FileNotFoundError("MKL is not installed (no libmkl_rt.so under the Python prefix; `pip install mkl`)")


def _load():
    mkl = ctypes.CDLL(str(_mkl_library()))
    mkl.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    mkl.MKL_Set_Threading_Layer(MKL_THREADING_SEQUENTIAL)  # before any other MKL call in this library
    kernel = ctypes.CDLL(str(build.compile_library(_SOURCE)))
    kernel.wan22_set_sgemm.argtypes = [ctypes.c_void_p]
    kernel.wan22_set_sgemm(ctypes.cast(mkl.sgemm_, ctypes.c_void_p).value)
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(kernel.Wan22CpuSgemm), platform="cpu")
    jax.ffi.register_ffi_target(ATTENTION_TARGET, jax.ffi.pycapsule(kernel.Wan22CpuAttention), platform="cpu")
    return (mkl, kernel)


_kernel = build.Lazy("sgemm", _load, library="mkl")
available = _kernel.ok  # whether the MKL kernel is loaded (loading it on the first call)
ready = _kernel.ready  # `available()`, logging once why not (the ops layer then runs XLA)
status = _kernel.status  # 'mkl', or 'unavailable (<why>)'


def _eligible(arrays, rows: int) -> bool:
    return (all(x.dtype == jnp.float32 and x.size > 0 and max(x.shape) < 2**31 for x in arrays)
            and rows >= MIN_ROWS and jax.default_backend() == "cpu" and jax.device_count() == 1
            and jax.sharding.get_abstract_mesh().empty)


def applies(a: jax.Array, w: jax.Array) -> bool:
    """Whether a Linear's product a [..., K] @ w [K, N] can run here (decided from shapes and dtypes)."""
    return w.ndim == 2 and _eligible((a, w), math.prod(a.shape[:-1]))


def applies_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether `attention` can run for these [B, L, N, d] operands (each head's products have Lq rows)."""
    return _eligible((q, k, v), q.shape[1])


def _call(a, w, transpose_w: bool):
    n = w.shape[-2] if transpose_w else w.shape[-1]
    out = jax.ShapeDtypeStruct(a.shape[:-1] + (n,), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="broadcast_all")(a, w, transpose_w=transpose_w)


def _xla_matmul(a, w, transpose_w: bool):
    return jnp.matmul(a, jnp.swapaxes(w, -1, -2) if transpose_w else w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _sgemm(a, w, transpose_w):
    return _call(a, w, transpose_w)


def _sgemm_fwd(a, w, transpose_w):
    return _call(a, w, transpose_w), (a, w)


def _sgemm_bwd(transpose_w, res, g):
    _, vjp = jax.vjp(lambda a, w: _xla_matmul(a, w, transpose_w), *res)
    return vjp(g)


_sgemm.defvjp(_sgemm_fwd, _sgemm_bwd)


def matmul(a: jax.Array, w: jax.Array, *, transpose_w: bool = False) -> jax.Array:
    """a [..., M, K] @ w [K, N] or [..., K, N] (w [..., N, K] with transpose_w) on MKL, fp32.

    With a 2-D w every leading axis of a counts as rows of one product. Call where the kernel is loaded.
    """
    if not available():
        raise RuntimeError(f"the CPU sgemm kernel is not loaded: {status()}")
    if w.ndim == 2 and a.ndim > 2:  # a Linear: all leading axes are rows of one product
        return _sgemm(a.reshape(-1, a.shape[-1]), w, transpose_w).reshape(*a.shape[:-1], -1)
    if w.ndim != 2 and w.shape[:-2] != a.shape[:-2]:
        raise ValueError(f"sgemm.matmul: batch axes of a {a.shape} and w {w.shape} differ")
    return _sgemm(a, w, transpose_w)


# --------------------------------------------------------------------------------------- fused attention
def attention_block(lk: int) -> int:
    """Query rows per piece of the fused attention: one head's [rows, Lk] fp32 logits in ~1 MB (a core's L2),
    at most 160 (measured on a 2-core Xeon: 160-400 rows run alike at 1,600 keys, 160 is best at 301)."""
    return int(min(160, max(32, (2**20 // 4) // max(lk, 1) // 16 * 16)))


def _attention_reference(q, k, v, bias, scale):
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) * scale
    b = bias[:, None, None, :]
    logits = jnp.where(b == -jnp.inf, jnp.finfo(jnp.float32).min, logits + jnp.where(b == -jnp.inf, 0.0, b))
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    out = jnp.einsum("bnqk,bknd->bqnd", p, v, preferred_element_type=jnp.float32)
    return out / jnp.swapaxes(jnp.sum(p, axis=-1), 1, 2)[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, bias, scale):
    return jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct(q.shape, jnp.float32),
                            vmap_method="broadcast_all")(q, k, v, bias, scale=np.float32(scale),
                                                         block=np.int64(attention_block(k.shape[1])))


def _attention_fwd(q, k, v, bias, scale):
    return _attention(q, k, v, bias, scale), (q, k, v, bias)


def _attention_bwd(scale, res, g):
    _, vjp = jax.vjp(lambda q, k, v, b: _attention_reference(q, k, v, b, scale), *res)
    return vjp(g)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float) -> jax.Array:
    """softmax(scale * q k^T + bias) v per head, fused so that the logits stay in cache (fp32, on MKL).

    q [B, Lq, N, d], k and v [B, Lk, N, d], bias [B or 1, Lk] fp32 per key, -inf for a masked key.
    Call only where `applies_attention(q, k, v)` holds (see wan22_jax/ops/attention.py).
    """
    if not available():
        raise RuntimeError(f"the CPU attention kernel is not loaded: {status()}")
    return _attention(q, k, v, bias, float(scale))
