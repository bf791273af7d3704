"""fp32 2-D/3-D convolutions on the CPU through oneDNN: an XLA FFI custom call (`conv.cc`).

Why: the VAE decode is almost all 3x3(x3) convolutions, and oneDNN's brgemm convolution (the one torch, so the
official code, runs on x86) reaches 160-215 GFLOP/s where XLA:CPU's reach 145-170 (2-core AMD EPYC Zen 4,
AVX-512; experiments/official/cpu_backends.py). oneDNN comes from PyPI's `onednn-cpu-gomp` and
`onednn-devel-cpu-gomp` wheels (the `cpu` extra): the GNU-OpenMP build, whose threads are the process's
libgomp team.

Opt-in only: used by the ops layer's convolutions (wan22_jax/ops/conv.py) where a model's `Kernels.conv` is
"cpu" and `applies` holds (fp32, the CPU backend, one device, no mesh: a custom call has no sharding rule). A
missing oneDNN or compiler leaves XLA's convolutions, `status()` says why and the ops layer logs it once. The
kernel is compiled on first use and cached like the sgemm kernel (build.py). Gradients (custom_vjp) are XLA's.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from wan22_jax.cpu_kernels import build

TARGET = "wan22_cpu_conv"
_SOURCE = Path(__file__).with_name("conv.cc")


def _onednn_root() -> Path:
    """The prefix holding lib/libdnnl.so.3 and include/oneapi/dnnl/dnnl.hpp ($WAN22_ONEDNN_ROOT or Python's)."""
    explicit = os.environ.get("WAN22_ONEDNN_ROOT")
    for prefix in [explicit] if explicit else dict.fromkeys([sys.prefix, sys.base_prefix, "/usr/local", "/usr"]):
        if os.path.exists(os.path.join(prefix, "lib", "libdnnl.so.3")) and \
                os.path.isfile(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp")):
            return Path(prefix)
    raise FileNotFoundError("oneDNN is not installed (no lib/libdnnl.so.3 with include/oneapi/dnnl/dnnl.hpp "
                            "under the Python prefix; `pip install onednn-cpu-gomp onednn-devel-cpu-gomp`)")


def _load():
    root = _onednn_root()
    lib = root / "lib"
    so = build.compile_library(
        _SOURCE, include_dirs=[str(root / "include")],
        link_args=[f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"],
        key_extra=os.path.realpath(lib / "libdnnl.so.3").encode())
    kernel = ctypes.CDLL(str(so))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(kernel.Wan22CpuConv), platform="cpu")
    return kernel


_kernel = build.Lazy("convolution", _load, library="onednn")
available = _kernel.ok  # whether the oneDNN kernel is loaded (loading it on the first call)
ready = _kernel.ready  # `available()`, logging once why not (the ops layer then runs XLA)
status = _kernel.status  # 'onednn', or 'unavailable (<why>)'


def applies(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether a convolution of these channels-last operands (2 or 3 spatial axes) can run on oneDNN."""
    return (x.ndim in (4, 5) and kernel.ndim == x.ndim
            and all(a.dtype == jnp.float32 and a.size > 0 and max(a.shape) < 2**31 for a in (x, kernel))
            and jax.default_backend() == "cpu" and jax.device_count() == 1
            and jax.sharding.get_abstract_mesh().empty)


def _dimension_numbers(rank: int):
    return ("NDHWC", "DHWIO", "NDHWC") if rank == 3 else ("NHWC", "HWIO", "NHWC")


def _reference(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_dimension_numbers(len(strides)),
                                    precision=lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
    rank = len(strides)
    pads = dict(strides=np.asarray(strides, np.int64), padding_lo=np.asarray([p[0] for p in padding], np.int64),
                padding_hi=np.asarray([p[1] for p in padding], np.int64))
    out = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(x.shape[1:-1], kernel.shape[:rank], strides,
                                                                     padding)]
    shape = jax.ShapeDtypeStruct((x.shape[0], *out, kernel.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(TARGET, shape, vmap_method="sequential")(
        x, kernel, **pads)


def _conv_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, res, g):
    _, vjp = jax.vjp(lambda x, k: _reference(x, k, strides, padding), *res)
    return vjp(g)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
         padding: Sequence[tuple[int, int]]) -> jax.Array:
    """x [N, *S, C] (S: 2 or 3 axes) conv kernel [*K, C, O] -> [N, *S', O], fp32, no dilation or groups.

    strides and padding ((low, high) zeros) per spatial axis, as in `lax.conv_general_dilated`. Call only where
    `use_for(x, kernel)` holds.
    """
    if not available():
        raise RuntimeError(f"the CPU convolution kernel is not loaded: {status()}")
    rank = x.ndim - 2
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(strides) != rank or len(padding) != rank or kernel.shape[rank] != x.shape[-1]:
        raise ValueError(f"cpu_conv.conv: x {x.shape}, kernel {kernel.shape}, strides {strides}, padding {padding} "
                         "do not describe one convolution")
    return _conv(x, kernel, strides, padding)
