"""Sizes of the shipped mini-world model (wan22_jax/assets/mini_world/): a Wan2.2 ti2v-style pipeline small
enough to train from scratch on a laptop CPU."""

from __future__ import annotations

from wan22_jax.models.vae_blocks import VAEConfig

WORLD_SIZE = (64, 64)  # (height, width) of the clips, pixels
WORLD_FRAMES = 17  # 5 latent frames

# Wan2.2 VAE design (2x2 patchify, avg-down/dup-up shortcuts, stride 4x16x16) at a tiny width. The latent
# statistics are placeholders until measured after training (training/autoencoder.with_latent_stats).
VAE_CONFIG = VAEConfig(version="2.2", dim=8, dec_dim=12, z_dim=16, num_res_blocks=1,
                       latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)
