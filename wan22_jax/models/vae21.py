"""The Wan2.1 video VAE (official `wan/modules/vae2_1.py`, `WanVAE_`): z16, stride 4x8x8.

Parameter paths mirror the official state dict (`encoder.downsamples.3.residual.2.kernel` for
`encoder.downsamples.3.residual.2.weight`), so the official conversion table is close to the identity.
"""

from __future__ import annotations

from flax import nnx

from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.models.vae_layers import (
    CausalConv3d, Resample, ResidualBlock, head_layers, middle_layers)
from wan22_jax.models.vae_model import CausalVAE, Decoder, Encoder


class Encoder21(Encoder):
    """conv1 -> [ResidualBlock x num_res_blocks, Resample] per stage -> middle [RB, Attn, RB] -> head."""

    def __init__(self, cfg: VAEConfig, **kw):
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
        self.middle = middle_layers(c, **kw)
        self.head = head_layers(c, 2 * cfg.z_dim, **kw)


class Decoder21(Decoder):
    """conv1 -> middle -> [ResidualBlock x (num_res_blocks + 1), Resample] per stage -> head.

    Each upsampling Resample halves the width (`Conv2d(dim, dim // 2)`), so every stage after the first starts
    from half the previous width (official `in_dim // 2` for stages 1..3).
    """

    def __init__(self, cfg: VAEConfig, **kw):
        mult = cfg.dim_mult
        dims = [cfg.decoder_dim * u for u in (mult[-1], *mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], **kw)
        c = dims[0]
        self.middle = middle_layers(c, **kw)
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


class WanVAE21(CausalVAE):
    """Official WanVAE_ of vae2_1.py (see CausalVAE for the arguments)."""

    VERSION = "2.1"
    ENCODER = Encoder21
    DECODER = Decoder21
