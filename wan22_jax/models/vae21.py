"""The Wan2.1 video VAE (official `wan/modules/vae2_1.py`, `WanVAE_`): z16, stride 4x8x8.

Parameter paths mirror the official state dict (`encoder.downsamples.3.residual.2.kernel` for
`encoder.downsamples.3.residual.2.weight`), so the official conversion table is close to the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.models.layers import Linear
from wan22_jax.models.vae_blocks import (
    CONV_IN, CONV_OUT, Cache, CausalConv3d, CausalVAE, Resample, ResidualBlock, VAEConfig, _sub, apply_head,
    head_layers, middle_layers, run_sequence)


class Encoder21(nnx.Module):
    """conv1 -> [ResidualBlock x num_res_blocks, Resample] per stage -> middle [RB, Attn, RB] -> head."""

    def __init__(self, cfg: VAEConfig, *, attn_impl: str = "xla", **kw):
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], **kw)
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, **kw))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                layers.append(Resample(out_dim, mode, **kw))
        self.downsamples = nnx.List(layers)
        c = dims[-1]
        self.middle = middle_layers(c, attn_impl=attn_impl, **kw)
        self.head = head_layers(c, 2 * cfg.z_dim, **kw)

    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """x [B, t, H, W, 3] (one chunk) -> ([B, t', H/8, W/8, 2z], cache)."""
        x, c_in = self.conv1(x, _sub(cache, "conv1"))
        x, c_down = run_sequence(self.downsamples, x, _sub(cache, "downsamples"))
        x, c_mid = run_sequence(self.middle, x, _sub(cache, "middle"))
        x, c_head = apply_head(self.head, x, _sub(cache, "head"))
        return x, {"conv1": c_in, "downsamples": c_down, "middle": c_mid, "head": c_head}


class Decoder21(nnx.Module):
    """conv1 -> middle -> [ResidualBlock x (num_res_blocks + 1), Resample] per stage -> head.

    Each upsampling Resample halves the width (`Conv2d(dim, dim // 2)`), so every stage after the first starts
    from half the previous width (official `in_dim // 2` for stages 1..3).
    """

    def __init__(self, cfg: VAEConfig, *, attn_impl: str = "xla", **kw):
        mult = cfg.dim_mult
        dims = [cfg.decoder_dim * u for u in (mult[-1], *mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], **kw)
        c = dims[0]
        self.middle = middle_layers(c, attn_impl=attn_impl, **kw)
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, **kw))
                in_dim = out_dim
            if i != len(mult) - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
                layers.append(Resample(out_dim, mode, out_dim=out_dim // 2, **kw))
        self.upsamples = nnx.List(layers)
        self.head = head_layers(dims[-1], 3, **kw)

    def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """x [B, 1, h, w, z] (one latent frame) -> ([B, 1 or 4, 8h, 8w, 3], cache)."""
        x, c_in = self.conv1(x, _sub(cache, "conv1"))
        x, c_mid = run_sequence(self.middle, x, _sub(cache, "middle"))
        x, c_up = run_sequence(self.upsamples, x, _sub(cache, "upsamples"))
        x, c_head = apply_head(self.head, x, _sub(cache, "head"))
        return x, {"conv1": c_in, "middle": c_mid, "upsamples": c_up, "head": c_head}


class WanVAE21(CausalVAE):
    """Official WanVAE_ of vae2_1.py: encoder, conv1 (1x1x1, 2z -> 2z), conv2 (1x1x1, z -> z), decoder.

    Args:
      config: a VAEConfig with version "2.1".
      dtype: compute dtype (fp32 for parity, as the official wrapper's fp32 autocast); param_dtype: storage.
    """

    def __init__(self, config: VAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, attn_impl: str = "xla",
                 rngs: nnx.Rngs | None = None):
        assert config.version == "2.1", config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = config
        self.encoder = Encoder21(config, attn_impl=attn_impl, **kw)
        z = config.z_dim
        self.conv1 = Linear(2 * z, 2 * z, axes=(CONV_IN, CONV_OUT), **kw)
        self.conv2 = Linear(z, z, axes=(CONV_IN, CONV_OUT), **kw)
        self.decoder = Decoder21(config, attn_impl=attn_impl, **kw)
