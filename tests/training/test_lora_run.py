"""A LoRA `wan22 train` run writes its adapters in ComfyUI's naming (per expert for A14B), and that file, loaded by
`Wan22Pipeline.load_lora`, gives the trained merged weights."""

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from wan22_jax.convert.dit import save_dit
from wan22_jax.errors import ConfigError
from wan22_jax.lora.apply import flatten
from wan22_jax.models.dit import WanModel
from wan22_jax.presets import random_pipeline
from wan22_jax.state import flat_state
from wan22_jax.training.lora import LoraConfig, apply_lora
from wan22_jax.training.loop import train
from wan22_jax.training.run_config import parse_run_config

from .conftest import TINY_DIT
from .test_loader import write_cache

TARGETS = ["blocks.*.self_attn.q", "blocks.1.ffn.2", "head.head"]


@pytest.fixture(scope="module")
def a14b():
    return random_pipeline("t2v-A14B")


def test_lora_run_takes_its_dit_config_from_the_base(tmp_path):
    save_dit(WanModel(TINY_DIT, rngs=nnx.Rngs(0)), TINY_DIT, tmp_path / "low_noise_model")
    cfg = parse_run_config({"out_dir": str(tmp_path / "o"), "steps": 1, "batch_size": 1,
                            "lora": {"base": str(tmp_path / "low_noise_model"), "rank": 2}})
    assert cfg.dit == TINY_DIT and cfg.lora.expert_name == "low_noise_model"
    assert parse_run_config(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"lora.base='nowhere': cannot read its DiT config"):
        parse_run_config({"out_dir": "o", "steps": 1, "batch_size": 1, "lora": {"base": "nowhere"}})
    with pytest.raises(ConfigError, match=r"lora.expert='middle': \"high\", \"low\" or null"):
        parse_run_config({"out_dir": "o", "steps": 1, "batch_size": 1, "lora": {"base": "x", "expert": "middle"}})


# slow (about a minute): a LoRA training run on an A14B expert
@pytest.mark.slow
def test_comfyui_file_of_a_lora_run_loads_into_the_pipeline_as_trained(tmp_path, a14b):
    dit = a14b.dit_config
    _, base_state = a14b.experts["high_noise_model"]
    save_dit(base_state, dit, tmp_path / "high_noise_model")
    cache = write_cache(tmp_path / "cache", buckets={(5, 32, 32): 4}, z=dit.in_dim, text_len=dit.text_len,
                        dim=dit.text_dim, down=8)
    result = train({"out_dir": str(tmp_path / "run"), "data": {"kind": "cache", "dir": str(cache)},
                    "lora": {"base": str(tmp_path / "high_noise_model"), "rank": 2, "alpha": 3.0,
                             "targets": TARGETS},
                    "train": {"lr": 3e-2, "warmup_steps": 1, "total_steps": 3, "t_range": [0.5, 1.0]},
                    "steps": 3, "batch_size": 2, "eval": {"every": 100}, "progress": False})
    out = tmp_path / "run"
    comfy = out / "lora_comfyui.high_noise.safetensors"
    assert (out / "lora.safetensors").is_file() and comfy.is_file()
    with safe_open(str(comfy), framework="numpy") as f:
        keys = set(f.keys())
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.head.head.alpha" in keys and all(k.startswith("diffusion_model.") for k in keys)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in keys} == {"lora_A", "lora_B",
                                                                                          "alpha"}

    trained = jax.tree.map(np.asarray, result["state"].get("ema", result["state"]["params"]))
    base_params = nnx.to_pure_dict(base_state)
    want = flatten(apply_lora(base_params, trained, LoraConfig(rank=2, alpha=3.0, targets=tuple(TARGETS))))
    loaded = a14b.load_lora(comfy, expert="high")
    got = flat_state(loaded.experts["high_noise_model"][1])
    base = flatten(base_params)
    changed = 0
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5, atol=1e-6, err_msg=k)
        changed += not np.array_equal(np.asarray(want[k]), np.asarray(base[k]))
    assert changed >= 3  # the trained adapters moved q (both layers), ffn.2 of layer 1 and the head
    low_before = flat_state(a14b.experts["low_noise_model"][1])
    low_after = flat_state(loaded.experts["low_noise_model"][1])
    assert all(np.array_equal(np.asarray(low_before[k]), np.asarray(low_after[k])) for k in low_before)
