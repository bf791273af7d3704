"""Analytic FLOP counts (multiply-add = 2 FLOPs) of what our implementation computes.

Used by `wan22 bench` for achieved FLOP/s and MFU, and by experiments/ to compare measured cost with the model.
Elementwise work (norms, RoPE, softmax, activations) is left out: it is a few percent at real sizes.
"""

from __future__ import annotations

import math

from wan22_jax.models.dit import DiTConfig

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
