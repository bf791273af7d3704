"""Pipelines with random weights at tiny sizes (`--preset tiny-random`): the whole generation path — tokenizer,
umT5, DiT expert(s), causal VAE, sampler, mp4 — in seconds on a CPU, for smoke tests and for hacking."""

from __future__ import annotations

import dataclasses
import tempfile

import jax.numpy as jnp
from flax import nnx

from wan22_jax.configs import get_task
from wan22_jax.models.dit import DiTConfig, random_dit
from wan22_jax.models.t5 import T5Config, random_t5
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.models.tokenizer_training import train_tokenizer
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.models.vae import random_vae
from wan22_jax.pipeline import EXPERTS, Wan22Pipeline
from wan22_jax.text_encoder import TextEncoder

PRESETS = ("tiny-random",)

_CORPUS = [
    "a red circle moving left on a blue background", "a green square bouncing on a white background",
    "a cat walking in the snow", "a small boat on a calm lake at sunset", "a city street at night in the rain",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量",
]


def random_pipeline(task: str = "ti2v-5B", *, seed: int = 0, text_len: int = 128) -> Wan22Pipeline:
    """A pipeline of `task`'s architecture (one or two experts, VAE 2.1 or 2.2) at tiny widths, random weights.

    The defaults are shrunk too: 17 frames, 64x64 pixels (ti2v) or 64x48 (A14B), 8 steps.
    """
    t = get_task(task)
    z_dim = 48 if t.vae_version == "2.2" else 16
    in_dim = {"t2v": 16, "i2v": 36, "ti2v": 48}[t.mode]
    t5_cfg = T5Config(vocab_size=160, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)
    dit_cfg = DiTConfig(model_type=t.mode, text_len=text_len, in_dim=in_dim, dim=64, ffn_dim=128, freq_dim=32,
                        text_dim=t5_cfg.dim, out_dim=z_dim, num_heads=4, num_layers=2)
    vae_cfg = VAEConfig(version=t.vae_version, dim=8, dec_dim=8 if t.vae_version == "2.2" else None, z_dim=z_dim)
    names = EXPERTS if t.two_experts else ("model",)
    experts = {n: nnx.split(random_dit(dit_cfg, seed + i)) for i, n in enumerate(names)}
    tok_dir = train_tokenizer(_CORPUS * 4, tempfile.mkdtemp(prefix="wan22_tiny_tok_"), vocab_size=t5_cfg.vocab_size)
    text = TextEncoder(random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=seed),
                       Tokenizer(tok_dir, text_len=text_len))
    small = dict(frame_num=17, sample_steps=8, size=(64, 64) if t.vae_version == "2.2" else (64, 48),
                 max_area=64 * 64 if t.vae_version == "2.2" else 64 * 48)
    t = dataclasses.replace(t, **small)
    return Wan22Pipeline(t, experts, dit_cfg, random_vae(vae_cfg, seed + 7), vae_cfg, text, dtype=jnp.float32)
