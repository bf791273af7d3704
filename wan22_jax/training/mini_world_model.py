"""Sizes of the shipped mini-world model (wan22_jax/assets/mini_world/): a Wan pipeline small enough to train
from scratch on a 2-core CPU in well under an hour."""

from __future__ import annotations

from wan22_jax.configs import TaskConfig
from wan22_jax.models.vae_config import VAEConfig

WORLD_SIZE = (64, 64)  # (height, width) of the clips, pixels
WORLD_FRAMES = 5  # 2 latent frames

# Wan2.2 VAE design (2x2 patchify, causal 3-D convs, avg-down / dup-up shortcuts, chunked encode/decode,
# temporal stride 4) with two down-sampling stages instead of three: stride 4x8x8, so a 64x64 clip is an 8x8
# latent. Its decoder's last stage draws 2x2-pixel patches, which keeps shape corners that the Wan2.1 design
# at the same cost (32x32 clips, width 16) blurred away (experiments/mini_world/README.md). The latent statistics
# are placeholders until measured after training (training/autoencoder.with_latent_stats).
VAE_CONFIG = VAEConfig(version="2.2", dim=16, dec_dim=16, z_dim=16, dim_mult=(1, 2, 2), num_res_blocks=1,
                       temperal_downsample=(True, True), latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)

# What `Wan22Pipeline.from_pretrained()` serves from the shipped folder (written there as task.json): a
# single-expert text-to-video task at the world's size, with the empty prompt as the negative prompt because
# that is the null condition text dropout trained.
MINI_WORLD_TASK = TaskConfig(
    name="mini-world", mode="t2v", dit_preset="mini-world", two_experts=False, vae_version="2.2",
    vae_stride=(4, 8, 8), patch_size=(1, 2, 2), t5_preset="mini-world", text_len=48, sample_shift=3.0,
    sample_steps=20, guide_scale=(4.0, 4.0), frame_num=WORLD_FRAMES, fps=4, size=(WORLD_SIZE[1], WORLD_SIZE[0]),
    supported_sizes=((WORLD_SIZE[1], WORLD_SIZE[0]),), max_area=WORLD_SIZE[0] * WORLD_SIZE[1], negative_prompt="",
    dtype="float32")
