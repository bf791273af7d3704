"""The chunked causal encoder/decoder loops shared by the Wan2.1 and Wan2.2 VAEs (official `WanVAE_`,
`Encoder3d`, `Decoder3d`): frame 0 alone, then chunks (4 frames to encode, 1 latent frame to decode) under one
`lax.scan`, each chunk's caches handed to the next (vae_layers.py says what they hold)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from wan22_jax.errors import ConfigError
from wan22_jax.models.layers import Linear
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.models.vae_layers import CONV_IN, CONV_OUT, Cache, apply_head, run_sequence, sub_cache
from wan22_jax.ops import XLA, Kernels

ENCODE_CHUNK = 4  # frames per encoder chunk after the first one (official, hard-coded)


class _Coder(nnx.Module):
    """Official Encoder3d / Decoder3d forward for one chunk: `conv1`, the `BODY` layer lists in order, `head`.
    The version's subclass builds the layers; the cache is a dict with one entry per part."""

    BODY: tuple[str, ...]

    def __call__(self, x: jax.Array, cache: Cache, first: jax.Array | None = None) -> tuple[jax.Array, Cache]:
        x, c_in = self.conv1(x, sub_cache(cache, "conv1"), first)
        new = {"conv1": c_in}
        for name in self.BODY:
            x, new[name] = run_sequence(getattr(self, name), x, sub_cache(cache, name), first)
        x, new["head"] = apply_head(self.head, x, sub_cache(cache, "head"), first)
        return x, new


class Encoder(_Coder):
    """`conv1 -> downsamples -> middle -> head`: one chunk [B, t, H, W, C] -> [B, t', H/8, W/8, 2z] (t' = 1 on
    the first chunk, t/4 after; cache None on the first chunk)."""

    BODY = ("downsamples", "middle")


class Decoder(_Coder):
    """`conv1 -> middle -> upsamples -> head`: one latent frame [B, 1, h, w, z] -> [B, 1 (first chunk) or 4,
    8h, 8w, C]; with a traced `first` every chunk gives 4 frames (the first chunk's real one is the last)."""

    BODY = ("middle", "upsamples")


class CausalVAE(nnx.Module):
    """Official WanVAE_: encoder, conv1 (1x1x1, 2z -> 2z), conv2 (1x1x1, z -> z), decoder, and the chunked
    causal encode/decode loops shared by both versions.

    Subclasses set ENCODER / DECODER (the version's Encoder / Decoder) and the pixel (un)patchify.

    Args:
      config: the VAEConfig of the subclass's version.
      dtype: compute dtype (fp32 for parity, like the official wrappers' fp32 autocast); param_dtype: storage.
      kernels: the implementation of every convolution, matmul and attention (`wan22_jax.ops.Kernels`).
    """

    VERSION: str
    ENCODER: type
    DECODER: type

    def __init__(self, config: VAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, kernels: Kernels = XLA,
                 rngs: nnx.Rngs | None = None):
        if config.version != self.VERSION:
            raise ConfigError(f"{type(self).__name__} builds Wan{self.VERSION} VAEs, config says {config.version}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.config = config
        self.encoder = self.ENCODER(config, **kw)
        z = config.z_dim
        self.conv1 = Linear(2 * z, 2 * z, axes=(CONV_IN, CONV_OUT), **kw)
        self.conv2 = Linear(z, z, axes=(CONV_IN, CONV_OUT), **kw)
        self.decoder = self.DECODER(config, **kw)

    def patchify(self, x: jax.Array) -> jax.Array:
        return x

    def unpatchify(self, x: jax.Array) -> jax.Array:
        return x

    def encode_frames(self, video: jax.Array) -> jax.Array:
        """Posterior mean of one video, un-normalised.

        Args:
          video: [B, T, H, W, 3] channels-last, T = 1 + 4n.
        Returns:
          mu [B, 1 + n, H / s, W / s, z_dim] (s the spatial stride).
        """
        x = self.patchify(video)
        b, t = x.shape[:2]
        n = (t - 1) // ENCODE_CHUNK
        out, cache = self.encoder(x[:, :1], None)
        if n:
            chunks = x[:, 1:].reshape(b, n, ENCODE_CHUNK, *x.shape[2:]).swapaxes(0, 1)

            def step(cache, chunk):
                y, cache = self.encoder(chunk, cache)
                return cache, y

            _, ys = lax.scan(step, cache, chunks)  # [n, B, t', h, w, 2z]
            ys = ys.swapaxes(0, 1).reshape(b, -1, *ys.shape[3:])
            out = jnp.concatenate([out, ys], axis=1)
        return self.conv1(out)[..., : self.config.z_dim]

    def decode_frames(self, z: jax.Array) -> jax.Array:
        """Decodes un-normalised latents, one latent frame per chunk.

        Args:
          z: [B, T', h, w, z_dim].
        Returns:
          [B, 1 + 4 (T' - 1), h * s, w * s, 3], not clamped.
        """
        x = self.conv2(z)
        # every chunk, the first included, runs the same scanned body (vae_layers.py: "One body for every
        # decoder chunk"); the caches start at zero, which is what the official's empty caches mean
        shapes = jax.eval_shape(lambda f: self.decoder(f, None)[1], x[:, :1])
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def step(cache, item):
            frame, first = item
            y, cache = self.decoder(frame[:, None], cache, first)
            return cache, y

        firsts = jnp.arange(x.shape[1]) == 0
        _, ys = lax.scan(step, cache, (x.swapaxes(0, 1), firsts))  # [T', B, 4, H, W, c]
        out = jnp.concatenate([ys[0, :, -1:], ys[1:].swapaxes(0, 1).reshape(ys.shape[1], -1, *ys.shape[3:])],
                              axis=1)
        return self.unpatchify(out)
