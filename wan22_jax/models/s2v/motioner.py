"""Frame-pack motion tokens of the S2V DiT (official `motioner.py`: `FramePackMotioner`).

The latents of the previous clip's last frames (19 latent frames for 73 pixel frames) are packed into few tokens:
the most recent frame at full token resolution (`proj`, patch (1, 2, 2)), the two before it at half resolution
(`proj_2x`, (2, 4, 4)) and the 16 oldest at quarter resolution (`proj_4x`, (4, 8, 8)). Fewer frames than 19 are
zero-padded in front. Their RoPE positions are negative frame times (-1, -3 and -19, -14, -9, -4) on rows and
columns sampled over the full-resolution token grid.

`add_last_motion` < 2 hides the most recent parts: in "padd" mode their latents are zeroed (the tokens stay),
in "drop" mode their tokens are left out.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.errors import InputError
from wan22_jax.models.layers import normal_init, param, zeros_init
from wan22_jax.models.s2v.s2v_utils import conv_patches, grid_positions, sampled
from wan22_jax.ops import XLA, Kernels

BUCKETS = (1, 2, 16)  # frames packed by proj, proj_2x, proj_4x (most recent first)
_KERNELS = {"proj": (1, 2, 2), "proj_2x": (2, 4, 4), "proj_4x": (4, 8, 8)}


class FramePackMotioner(nnx.Module):
    """Motion latents [B, 16, Tm, H, W] -> (tokens [B, Lm, dim], positions [Lm, 3] int numpy)."""

    def __init__(self, dim: int, drop_mode: str = "padd", *, latent_channels: int = 16, dtype=jnp.float32,
                 param_dtype=jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        for name, k in _KERNELS.items():
            setattr(self, name, nnx.Dict({
                "kernel": param(rngs, normal_init(0.02), (*k, latent_channels, dim), (None, None, None, None, "embed"),
                                param_dtype),
                "bias": param(rngs, zeros_init, (dim,), ("embed",), param_dtype)}))
        self.drop_mode = drop_mode
        self.latent_channels = latent_channels
        self.dtype = dtype
        self.kernels = kernels

    def _kept(self, add_last_motion: int) -> tuple[bool, bool]:
        """Whether the (post, 2x) tokens are present."""
        if self.drop_mode == "drop":
            return add_last_motion >= 2, add_last_motion >= 1
        return True, True

    def positions(self, lat_h: int, lat_w: int, add_last_motion: int = 2) -> np.ndarray:
        """[Lm, 3] RoPE positions of the motion tokens, in token order (post, 2x, 4x)."""
        keep_post, keep_2x = self._kept(add_last_motion)
        rows = lambda n: sampled(0, lat_h // 2 - 1, n)  # noqa: E731
        cols = lambda n: sampled(0, lat_w // 2 - 1, n)  # noqa: E731
        parts = []
        if keep_post:
            parts.append(grid_positions([-1], rows(lat_h // 2), cols(lat_w // 2)))
        if keep_2x:
            parts.append(grid_positions([-3], rows(lat_h // 4), cols(lat_w // 4)))
        total = sum(BUCKETS)
        # official: np.linspace(19, 19 - 16 + 1, 4) on |f|, then conj: frames -19, -14, -9, -4
        frames = [-f for f in sampled(total, total - BUCKETS[2] + 1, BUCKETS[2] // 4)]
        parts.append(grid_positions(frames, rows(lat_h // 8), cols(lat_w // 8)))
        return np.concatenate(parts, axis=0)

    def __call__(self, motion_latents, add_last_motion: int = 2):
        b, c, tm, h, w = motion_latents.shape
        if c != self.latent_channels:
            raise InputError(f"motion_latents has shape {motion_latents.shape}; expected "
                             f"[B, {self.latent_channels}, T, H, W]")
        total = sum(BUCKETS)
        keep = min(total, tm)
        lat = jnp.zeros((b, c, total, h, w), motion_latents.dtype)
        if keep:
            lat = lat.at[:, :, total - keep:].set(motion_latents[:, :, tm - keep:])
        if add_last_motion < 2 and self.drop_mode != "drop":
            zero_end = sum(BUCKETS[:len(BUCKETS) - add_last_motion - 1])
            lat = lat.at[:, :, total - zero_end:].set(0)
        # oldest first: 16 frames (4x), 2 frames (2x), 1 frame (post)
        lat_4x, lat_2x, lat_post = lat[:, :, :BUCKETS[2]], lat[:, :, BUCKETS[2]:BUCKETS[2] + BUCKETS[1]], lat[:, :, -1:]
        conv = dict(dtype=self.dtype, impl=self.kernels.matmul)
        keep_post, keep_2x = self._kept(add_last_motion)
        tokens = []
        if keep_post:
            tokens.append(conv_patches(lat_post, self.proj["kernel"][...], self.proj["bias"][...], **conv)[0])
        if keep_2x:
            tokens.append(conv_patches(lat_2x, self.proj_2x["kernel"][...], self.proj_2x["bias"][...], **conv)[0])
        tokens.append(conv_patches(lat_4x, self.proj_4x["kernel"][...], self.proj_4x["bias"][...], **conv)[0])
        return jnp.concatenate(tokens, axis=1), self.positions(h, w, add_last_motion)
