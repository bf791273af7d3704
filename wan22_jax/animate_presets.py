"""`--preset tiny-random --task animate-14B`: an AnimatePipeline of random weights at tiny widths, for smoke tests
on a CPU. The text encoder (tokenizer + umT5) and the Wan2.1 VAE are those of the tiny-random A14B preset; the DiT
has the widths of the reference case animate_dit (5 layers, face crops of 16 x 16); the CLIP tower has 2 blocks and
257 tokens."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from wan22_jax.models.animate.clip import CLIPVisionConfig, CLIPVisionEncoder
from wan22_jax.models.animate.model_animate import ANIMATE_PRESETS, random_animate
from wan22_jax.pipeline.animate_pipeline import AnimateDefaults, AnimatePipeline
from wan22_jax.presets import random_pipeline

TINY_CLIP = CLIPVisionConfig(image_size=32, patch_size=2, vision_dim=32, vision_heads=2, vision_layers=3)


def random_animate_pipeline(*, seed: int = 0, text_len: int = 64) -> AnimatePipeline:
    """A tiny Animate pipeline with random weights: 16 x 16 face crops, frames multiples of 16, defaults of clip_len 5,
    4 dpm++ steps and 16 fps (the defaults of the release stay in `AnimateDefaults`)."""
    base = random_pipeline("i2v-A14B", seed=seed, text_len=text_len)  # its tokenizer, umT5 and Wan2.1 VAE
    cfg = dataclasses.replace(ANIMATE_PRESETS["tiny-animate"], text_len=text_len,
                              text_dim=base.text_encoder.dim, image_dim=TINY_CLIP.vision_dim)
    dit = nnx.split(random_animate(cfg, seed + 11))
    clip = nnx.split(CLIPVisionEncoder(TINY_CLIP, rngs=nnx.Rngs(seed + 13)))
    defaults = AnimateDefaults(clip_len=5, steps=4, fps=16)
    return AnimatePipeline(dit, cfg, clip, base.vae, base.vae_config, base.text_encoder, defaults=defaults,
                           dtype=jnp.float32)


__all__ = ["TINY_CLIP", "random_animate_pipeline"]
