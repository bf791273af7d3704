"""3-axis rotary position embedding of the Wan DiT (official `rope_params` / `rope_apply` in model.py).

The head dim d is viewed as d/2 complex pairs (interleaved: (2k, 2k+1)), split over frame / height / width as
(c - 2*(c//3), c//3, c//3) pairs with c = d/2 — 22/21/21 for d = 128. Each axis uses its own sub-dimension in
the frequency exponent. The official code computes the angles in float64; we build the small per-axis cos/sin
tables on the host in float64 and round once to fp32, then only broadcast/concatenate them on device, so the
tables are exactly the fp32 rounding of the official float64 values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs given to (frame, height, width)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _axis_table(n: int, pairs: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [n, pairs] for positions 0..n-1 of one axis whose sub-dimension is 2*pairs (float64 -> fp32)."""
    inv = 1.0 / np.power(theta, np.arange(0, 2 * pairs, 2, dtype=np.float64) / (2 * pairs))
    ang = np.outer(np.arange(n, dtype=np.float64), inv)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [F*H*W, head_dim/2] for tokens in row-major (f, h, w) order.

    Only the per-axis tables ([F,22], [H,21], [W,21]) are constants; the full table is a broadcast.
    """
    f, h, w = grid
    pf, ph, pw = axis_pairs(head_dim)
    out = []
    for parts in zip(_axis_table(f, pf, theta), _axis_table(h, ph, theta), _axis_table(w, pw, theta)):
        tf, th, tw = (jnp.asarray(p) for p in parts)
        full = jnp.concatenate([
            jnp.broadcast_to(tf[:, None, None, :], (f, h, w, pf)),
            jnp.broadcast_to(th[None, :, None, :], (f, h, w, ph)),
            jnp.broadcast_to(tw[None, None, :, :], (f, h, w, pw)),
        ], axis=-1)
        out.append(full.reshape(f * h * w, pf + ph + pw))
    return out[0], out[1]


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates interleaved pairs of x [B, L, N, d] by the angles of token l; computed and returned in fp32."""
    b, l, n, d = x.shape
    xr = x.astype(jnp.float32).reshape(b, l, n, d // 2, 2)
    re, im = xr[..., 0], xr[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = jnp.stack([re * c - im * s, re * s + im * c], axis=-1)
    return out.reshape(b, l, n, d)
