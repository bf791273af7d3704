"""Tiny models and configs shared by the training tests."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.models.dit import DiTConfig, WanModel

TINY_DIT = DiTConfig(model_type="ti2v", text_len=8, in_dim=4, dim=32, ffn_dim=64, freq_dim=16, text_dim=16,
                     out_dim=4, num_heads=2, num_layers=2)

# a whole `wan22 train` run in pooled-pixel space, small enough for a subprocess test
TINY_RUN = {
    "world": {"height": 32, "width": 32, "frames": 5, "clips": 16, "pixel_stride": 4},
    "vae": None,
    "text": {"vocab_size": 96, "t5": {"vocab_size": 96, "dim": 16, "dim_attn": 16, "dim_ffn": 32, "num_heads": 2,
                                      "num_layers": 1}},
    "dit": {"model_type": "ti2v", "text_len": 24, "in_dim": 3, "out_dim": 3, "dim": 32, "ffn_dim": 64,
            "freq_dim": 16, "text_dim": 16, "num_heads": 2, "num_layers": 1},
    "train": {"lr": 3e-3, "warmup_steps": 2, "total_steps": 8, "ema_decay": 0.9, "first_frame_prob": 0.5},
    "batch_size": 2, "steps": 8, "checkpoint": {"every": 2, "keep": 2}, "eval": {"every": 4, "batch": 2},
    "progress": False,
}


@pytest.fixture
def tiny_run(tmp_path):
    cfg = copy.deepcopy(TINY_RUN)
    cfg["out_dir"] = str(tmp_path / "run")
    return cfg


@pytest.fixture(scope="module")
def tiny_dit():
    """(graphdef, pure-dict params) of a 2-layer ti2v DiT."""
    graphdef, state = nnx.split(WanModel(TINY_DIT, rngs=nnx.Rngs(0)))
    return graphdef, nnx.to_pure_dict(state)


def make_batch(accum: int, batch: int, seed: int = 0, frames: int = 3):
    """{"latents": [A, B, 4, F, 4, 4], "context": [A, B, 8, 16]} of fixed random numbers."""
    rng = np.random.default_rng(seed)
    return {"latents": jnp.asarray(rng.standard_normal((accum, batch, 4, frames, 4, 4)), jnp.float32),
            "context": jnp.asarray(rng.standard_normal((accum, batch, 8, 16)), jnp.float32)}


def rel_err(a, b) -> float:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(leaves_a, leaves_b, strict=True))
    den = max(float(jnp.max(jnp.abs(y))) for y in leaves_b)
    return num / den
