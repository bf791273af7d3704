"""Trained components written in the release layouts come back identical through the real loaders."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.dit import load_dit
from wan22_jax.convert.t5 import load_t5
from wan22_jax.convert.vae import load_vae
from wan22_jax.models.dit import DIT_PRESETS, random_dit
from wan22_jax.models.t5 import PRESETS as T5_PRESETS, random_t5
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.models.vae import random_vae
from wan22_jax.state import flat_state
from wan22_jax.training.export import export_dit, export_t5, export_vae


def _same(a, b) -> None:
    fa, fb = flat_state(nnx.state(a)), flat_state(nnx.state(b))
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_dit_round_trips_through_the_official_layout(tmp_path):
    cfg = DIT_PRESETS["tiny-t2v"]
    model = random_dit(cfg, seed=3)
    export_dit(tmp_path, flat_state(nnx.state(model)), cfg)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    back = load_dit(tmp_path, dtype=jnp.float32, param_dtype=jnp.float32)
    assert back.cfg == cfg
    _same(model, back)


def test_vae_round_trips_with_its_config_and_latent_statistics(tmp_path):
    cfg = VAEConfig(version="2.1", dim=8, z_dim=16, dim_mult=(1, 2, 2), num_res_blocks=1,
                    temperal_downsample=(True, True), latents_mean=tuple(np.linspace(-1, 1, 16)),
                    latents_std=tuple(np.linspace(0.5, 2, 16)))
    graphdef, state = random_vae(cfg, seed=1)
    model = nnx.merge(graphdef, state)
    export_vae(tmp_path, flat_state(state), cfg)
    back = load_vae(tmp_path)
    assert back.config == cfg
    _same(model, back)


def test_t5_round_trips(tmp_path):
    cfg = T5_PRESETS["tiny"]
    model = random_t5(cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=2)
    export_t5(tmp_path, flat_state(nnx.state(model)), cfg)
    back = load_t5(tmp_path, dtype=jnp.float32, param_dtype=jnp.float32)
    _same(model, back)
