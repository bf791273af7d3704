"""RoPE at explicit token positions and strided patch convolutions, for the S2V DiT (official `s2v_utils.py`).

The S2V model places tokens of several kinds in one sequence: video tokens at their grid positions, the
reference-image tokens at frame 30, and the frame-pack motion tokens at negative frame positions on
subsampled row/column grids. Each token's 3-axis position is computed on the host (numpy, with the official
`np.linspace(...).astype(int)` arithmetic) and turned into cos/sin tables once: the angles are formed in float64
and rounded to fp32, exactly as for the plain DiT (models/rope.py). A negative frame position stands for the
official `conj(freqs[|f|])`: the same cosine, the sine negated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from wan22_jax.models.rope import axis_pairs
from wan22_jax.ops import matmul


def grid_positions(frames, rows, cols) -> np.ndarray:
    """[len(frames) * len(rows) * len(cols), 3] int positions of a token block in row-major (f, h, w) order."""
    f, h, w = np.meshgrid(np.asarray(frames, np.int64), np.asarray(rows, np.int64), np.asarray(cols, np.int64),
                          indexing="ij")
    return np.stack([f.reshape(-1), h.reshape(-1), w.reshape(-1)], axis=-1)


def sampled(start: int, stop: int, n: int) -> list[int]:
    """The official sample positions: `np.linspace(start, stop, n).astype(int)`."""
    return np.linspace(start, stop, n).astype(int).tolist()


def rope_tables_at(positions: np.ndarray, head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos, sin [L, head_dim / 2] (fp32) for tokens at `positions` [L, 3] (frame, row, column; frames may be
    negative). The head's complex pairs are split over the three axes as in the plain DiT."""
    positions = np.asarray(positions, np.int64)
    cos_parts, sin_parts = [], []
    for axis, pairs in enumerate(axis_pairs(head_dim)):
        inv = 1.0 / np.power(theta, np.arange(0, 2 * pairs, 2, dtype=np.float64) / (2 * pairs))
        p = positions[:, axis]
        ang = np.outer(np.abs(p).astype(np.float64), inv)
        sign = np.where(p < 0, -1.0, 1.0)[:, None]
        cos_parts.append(np.cos(ang))
        sin_parts.append(sign * np.sin(ang))
    cos = np.concatenate(cos_parts, axis=-1).astype(np.float32)
    sin = np.concatenate(sin_parts, axis=-1).astype(np.float32)
    return jnp.asarray(cos), jnp.asarray(sin)


def conv_patches(x, kernel, bias, *, dtype, impl: str = "xla"):
    """A Conv3d whose stride equals its kernel, as one matmul on patches (torch's floor semantics: a remainder
    that does not fill a patch is dropped).

    Args:
      x: [B, C, F, H, W] channels-first latents.
      kernel: [pt, ph, pw, C, D] channels-last kernel; bias: [D].
      dtype: compute dtype; impl: the matmul implementation (ops.Kernels.matmul).
    Returns:
      (tokens [B, F/pt * H/ph * W/pw, D] in row-major (f, h, w) order, grid (F/pt, H/ph, W/pw)).
    """
    pt, ph, pw = kernel.shape[:3]
    _, _, f, h, w = x.shape
    grid = (f // pt, h // ph, w // pw)
    x = x[:, :, :grid[0] * pt, :grid[1] * ph, :grid[2] * pw]
    tokens = rearrange(x, "b c (f p) (h q) (w r) -> b (f h w) (p q r c)", p=pt, q=ph, r=pw)
    k = kernel.reshape(-1, kernel.shape[-1]).astype(dtype)
    return matmul(tokens.astype(dtype), k, impl=impl) + bias.astype(dtype), grid
