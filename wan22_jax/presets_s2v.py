"""A tiny S2V pipeline with random weights (`wan22 generate --task s2v-14B --preset tiny-random`): tokenizer,
umT5, the S2V DiT, the Wan2.1 VAE and a 24-layer wav2vec2, all at toy widths, so that the whole speech-to-video
path (audio features, clip after clip, mp4 with the audio muxed in) runs in seconds on a CPU."""

from __future__ import annotations

import dataclasses
import math
import tempfile

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.wav2vec2 import abstract_wav2vec2
from wan22_jax.models.s2v.model_s2v import S2V_PRESETS, abstract_s2v
from wan22_jax.models.s2v.wav2vec2 import Wav2Vec2Config
from wan22_jax.models.t5 import T5Config, random_t5
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.models.tokenizer_training import train_tokenizer
from wan22_jax.models.vae import random_vae
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.pipeline.s2v import S2V_NEGATIVE_PROMPT, S2VDefaults, S2VPipeline
from wan22_jax.state import fill_state, flat_state
from wan22_jax.text_encoder import TextEncoder

_CORPUS = [
    "a woman singing on a stage", "a man talking to the camera in an office", "a child laughing in a garden",
    S2V_NEGATIVE_PROMPT,
]

# 8 frames a clip (2 latent frames), 4 steps, 64x64 (the smallest size the frame packer takes)
TINY_DEFAULTS = S2VDefaults(infer_frames=8, sample_steps=4, max_area=64 * 64)


def random_state(graphdef, abstract, seed: int):
    """A module with every parameter drawn on the host with numpy (the reference cases' scheme: kernels
    N(0, 1/fan_in), norm weights 1 + 0.1 N, the audio layer mix 1 + 0.3 N, everything else 0.1 N). Building
    with `nnx.Rngs` would compile one random op per parameter shape, which dominates the cost of toy models."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, leaf in flat_state(abstract).items():
        shape, name = tuple(leaf.shape), path.rsplit(".", 1)[-1]
        x = rng.standard_normal(shape, dtype=np.float32)
        if name in ("kernel", "weight_v"):  # convolutions: all but the output axis; stacked linears: [L, in, out]
            fan_in = math.prod(shape[:-1]) if ("conv" in path or len(shape) == 5) else shape[-2]
            x *= np.float32(1.0 / math.sqrt(fan_in))
        elif name in ("weight", "weight_g"):
            x = 1.0 + np.float32(0.1) * x
        elif name == "weights":
            x = 1.0 + np.float32(0.3) * x
        else:
            x *= np.float32(0.1)
        arrays[path] = jnp.asarray(x.astype(leaf.dtype))
    return nnx.merge(graphdef, fill_state(abstract, arrays))


def random_s2v_pipeline(*, seed: int = 0) -> S2VPipeline:
    """An S2V pipeline of the S2V-14B architecture at toy widths (models.s2v `tiny-s2v`), random weights, fp32.

    Every parameter is random (`random_state`; none zero-initialised as the official constructor does), so that
    audio, pose and motion all change the output; the defaults are TINY_DEFAULTS.
    """
    cfg = S2V_PRESETS["tiny-s2v"]
    dit = random_state(*abstract_s2v(cfg), seed)
    audio_cfg = Wav2Vec2Config(hidden_size=cfg.audio_dim, num_hidden_layers=24, num_attention_heads=2,
                               intermediate_size=32, conv_dim=(8,) * 7, num_conv_pos_embeddings=4,
                               num_conv_pos_embedding_groups=2)
    audio = random_state(*abstract_wav2vec2(audio_cfg), seed + 2)
    vae_cfg = VAEConfig(version="2.1", dim=8, z_dim=16)
    t5_cfg = T5Config(vocab_size=160, dim=cfg.text_dim, dim_attn=cfg.text_dim, dim_ffn=48, num_heads=4,
                      num_layers=2)
    tok_dir = train_tokenizer(_CORPUS * 4, tempfile.mkdtemp(prefix="wan22_tiny_s2v_tok_"),
                              vocab_size=t5_cfg.vocab_size)
    text = TextEncoder(random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=seed),
                       Tokenizer(tok_dir, text_len=cfg.text_len))
    return S2VPipeline(nnx.split(dit), cfg, random_vae(vae_cfg, seed + 7), vae_cfg, audio, text,
                       defaults=dataclasses.replace(TINY_DEFAULTS), dtype=jnp.float32)
