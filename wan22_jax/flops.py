"""Analytic FLOP counts (multiply-add = 2 FLOPs) of what our implementation computes.

Used by `wan22 bench` for achieved FLOP/s and MFU, by `wan22 aot` for its roofline, and by experiments/ to compare
measured cost with the model. `jaxpr_flops` counts any traced program's matmuls and convolutions (scans
multiplied out), for the models without a closed form here (the VAEs). Elementwise work (norms, RoPE, softmax,
activations) is left out: it is a few percent at real sizes.
"""

from __future__ import annotations

import math

from wan22_jax.models.dit import DiTConfig
from wan22_jax.models.t5 import T5Config

# Dense peak FLOP/s of known devices, for MFU. Keys are matched against jax's `device_kind`.
PEAK_FLOPS = {
    ("bf16", "H100"): 989e12,
    ("bf16", "H200"): 989e12,
    ("bf16", "TPU v5 lite"): 197e12,
    ("bf16", "TPU v5p"): 459e12,
    ("bf16", "TPU v6 lite"): 918e12,
    ("fp32", "H100"): 67e12,
    ("fp32", "H200"): 67e12,
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    for (dt, kind), value in PEAK_FLOPS.items():
        if dt == dtype and kind.lower() in device_kind.lower():
            return value
    return None


def dit_forward_flops(cfg: DiTConfig, grid: tuple[int, int, int], *, batch: int = 1, text_len: int | None = None,
                      time_groups: int = 1, include_context: bool = True) -> int:
    """FLOPs of one DiT forward on a latent grid (F, H, W) before patching.

    time_groups: distinct timestep groups per sample (1 for a scalar t, F' for per-frame t).
    include_context: count the text embedding and cross-attention K/V (skip when they are cached per generation).
    """
    pt, ph, pw = cfg.patch_size
    f, h, w = grid[0] // pt, grid[1] // ph, grid[2] // pw
    L = f * h * w
    D, Fd = cfg.dim, cfg.ffn_dim
    Lc = cfg.text_len if text_len is None else text_len
    patch = math.prod(cfg.patch_size)
    per_layer = (
        4 * 2 * L * D * D          # self-attn q, k, v, o
        + 2 * 2 * L * L * D        # QK^T and PV
        + 2 * 2 * L * D * D        # cross-attn q, o
        + 2 * 2 * L * Lc * D       # cross QK^T and PV
        + 2 * 2 * L * D * Fd       # FFN
    )
    context = cfg.num_layers * 2 * 2 * Lc * D * D + 2 * Lc * (cfg.text_dim * D + D * D)
    total = (
        cfg.num_layers * per_layer
        + 2 * L * cfg.in_dim * patch * D                                           # patch embedding
        + 2 * time_groups * (cfg.freq_dim * D + D * D + 6 * D * D)                 # time MLPs
        + 2 * L * D * patch * cfg.out_dim                                          # head
        + (context if include_context else 0)
    )
    return batch * total


def t5_forward_flops(cfg: T5Config, length: int, *, batch: int = 1) -> int:
    """FLOPs of one umT5 encoder pass over `length` tokens (all positions, as the official encoder runs them):
    per layer the q/k/v/o projections, QK^T and PV, and the gated feed-forward (two input matrices, one output)."""
    L, D, Da, F = length, cfg.dim, cfg.dim_attn, cfg.dim_ffn
    per_layer = 4 * 2 * L * D * Da + 2 * 2 * L * L * Da + 3 * 2 * L * D * F
    return batch * cfg.num_layers * per_layer


def _eqn_flops(eqn) -> float:
    """FLOPs of one dot_general or convolution equation (2 per multiply-add), 0 for anything else."""
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), (lb, _) = eqn.params["dimension_numbers"]
        a = eqn.invars[0].aval.shape
        out = eqn.outvars[0].aval.shape
        return 2.0 * math.prod(out) * math.prod(a[i] for i in lc)
    if name == "conv_general_dilated":
        dn = eqn.params["dimension_numbers"]
        rhs = eqn.invars[1].aval.shape
        out = eqn.outvars[0].aval.shape
        # every output element sums over the kernel's spatial taps and input channels of its group
        taps = math.prod(rhs[i] for i in dn.rhs_spec[2:])
        in_per_group = rhs[dn.rhs_spec[1]]
        return 2.0 * math.prod(out) * taps * in_per_group
    return 0.0


def jaxpr_flops(jaxpr) -> float:
    """Matmul and convolution FLOPs of a (closed) jaxpr, counting each `scan` body `length` times and the
    larger branch of a `cond`; other loops (`while`) once. Custom kernels (Pallas, cuDNN) count zero: count a
    program traced with XLA attention. Unlike the compiler's cost analysis this multiplies scanned bodies."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        name = eqn.primitive.name
        if name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
            continue
        times = eqn.params.get("length", 1) if name == "scan" else 1
        for key, value in eqn.params.items():
            if key == "branches":
                continue
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    total += times * jaxpr_flops(sub)
    return total
