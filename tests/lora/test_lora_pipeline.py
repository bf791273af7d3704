"""`Wan22Pipeline.load_lora` and `wan22 generate --lora`: new pipelines, per-expert files and strengths, several
LoRAs summed, merged == unmerged, and the refusals (before any weight changes)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.errors import InputError, InputFileError
from wan22_jax.generate_cli import load_loras, parse_lora
from wan22_jax.lora.apply import apply_deltas
from wan22_jax.lora.load import read_lora
from wan22_jax.models.dit import WanModel
from wan22_jax.state import flat_state

from .conftest import CFG, write

Q = "blocks.self_attn.q.kernel"


def comfy_file(path, dim, seed=0, modules=("blocks.0.self_attn.q", "blocks.1.self_attn.q"), rank=2):
    rng = np.random.default_rng(seed)
    tensors = {}
    for m in modules:
        tensors[f"diffusion_model.{m}.lora_down.weight"] = rng.standard_normal((rank, dim)).astype(np.float32)
        tensors[f"diffusion_model.{m}.lora_up.weight"] = rng.standard_normal((dim, rank)).astype(np.float32) * .1
    return write(path, tensors)


def _kernel(pipe, expert):
    return np.asarray(flat_state(pipe.experts[expert][1])[Q])


def test_load_lora_returns_a_new_pipeline(tmp_path, ti2v):
    path = comfy_file(tmp_path / "a.safetensors", ti2v.dit_config.dim)
    before = _kernel(ti2v, "model")
    new = ti2v.load_lora(path, strength=0.5)
    assert new is not ti2v and new.experts is not ti2v.experts
    np.testing.assert_array_equal(_kernel(ti2v, "model"), before)  # the original is unchanged
    w = read_lora(path, ti2v.dit_config).deltas[Q]
    want = before + 0.5 * np.asarray(w["scale"]) * (w["a"] @ w["b"])
    np.testing.assert_allclose(_kernel(new, "model"), want, rtol=1e-6, atol=1e-6)
    # the untouched parameters are the same arrays
    assert flat_state(new.experts["model"][1])["head.head.kernel"] is flat_state(ti2v.experts["model"][1])[
        "head.head.kernel"]
    np.testing.assert_array_equal(_kernel(ti2v.load_lora(path, strength=0.0), "model"), before)


def test_per_expert_files_and_several_loras(tmp_path, t2v):
    dim = t2v.dit_config.dim
    high, low = comfy_file(tmp_path / "h.safetensors", dim, 1), comfy_file(tmp_path / "l.safetensors", dim, 2)
    base_h, base_l = _kernel(t2v, "high_noise_model"), _kernel(t2v, "low_noise_model")
    pipe = t2v.load_lora(high, strength=1.0, expert="high").load_lora(low, strength=0.3, expert="low")
    dh, dl = (read_lora(p, t2v.dit_config).deltas[Q] for p in (high, low))
    np.testing.assert_allclose(_kernel(pipe, "high_noise_model"), base_h + dh["a"] @ dh["b"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_kernel(pipe, "low_noise_model"), base_l + 0.3 * dl["a"] @ dl["b"], rtol=1e-6,
                               atol=1e-6)
    both = t2v.load_lora(high).load_lora(low, strength=2.0)  # expert=None: every expert, LoRAs add up
    for name, base in (("high_noise_model", base_h), ("low_noise_model", base_l)):
        want = base + dh["a"] @ dh["b"] + 2.0 * dl["a"] @ dl["b"]
        np.testing.assert_allclose(_kernel(both, name), want, rtol=1e-6, atol=1e-6)


def test_merged_equals_unmerged(tmp_path):
    """The same deltas added once to the weights, or inside the jitted forward on the base weights."""
    graphdef, state = nnx.split(WanModel(CFG, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    weights = read_lora(comfy_file(tmp_path / "u.safetensors", CFG.dim, 3), CFG)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 4, 1, 4, 4)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((1, 3, CFG.text_dim)), jnp.float32)

    def forward(p):
        return nnx.merge(graphdef, p)(x, jnp.array([500.0]), ctx)

    merged = jax.jit(forward)(apply_deltas(params, [(weights.deltas, 0.8)]))
    unmerged = jax.jit(lambda p, d, s: forward(apply_deltas(p, [(d, s)])))(params, weights.deltas, 0.8)
    base = jax.jit(forward)(params)
    scale = float(jnp.max(jnp.abs(merged)))
    assert float(jnp.max(jnp.abs(merged - unmerged))) <= 1e-6 * scale
    assert float(jnp.max(jnp.abs(merged - base))) > 1e-3 * scale


def test_refusals_before_any_change(tmp_path, ti2v, t2v):
    path = comfy_file(tmp_path / "a.safetensors", ti2v.dit_config.dim)
    with pytest.raises(InputError, match=r"expert='high': this pipeline has one DiT \(\['model'\]\)"):
        ti2v.load_lora(path, expert="high")
    with pytest.raises(InputError, match=r"expert='middle': expected None, 'high' or 'low'"):
        t2v.load_lora(path, expert="middle")
    with pytest.raises(InputError, match=r"strength=nan: expected a finite number"):
        ti2v.load_lora(path, strength=float("nan"))
    with pytest.raises(InputError, match=r"a per-step schedule needs merge=False"):
        ti2v.load_lora(path, strength=[1.0, 0.5])
    other = read_lora(path, dataclasses.replace(ti2v.dit_config, text_len=7))
    with pytest.raises(InputError, match=r"read for another DiT config"):
        ti2v.load_lora(other)


def test_cli_lora_specs(tmp_path, ti2v, t2v):
    path = comfy_file(tmp_path / "a.safetensors", ti2v.dit_config.dim)
    assert parse_lora(str(path)) == (path, 1.0, None)
    assert parse_lora(f"{path}:0.25") == (path, 0.25, None)
    assert parse_lora(f"{path}:-1@low") == (path, -1.0, "low")
    assert parse_lora(f"{path}@high") == (path, 1.0, "high")
    with pytest.raises(InputError, match=r"strength 'strong' is not a number"):
        parse_lora(f"{path}:strong")
    with pytest.raises(InputFileError, match=r"--lora .*none\.safetensors: no such file"):
        parse_lora(str(tmp_path / "none.safetensors") + ":0.5")
    # every --lora is checked before the first is merged
    with pytest.raises(InputError, match=r"expert='high': this pipeline has one DiT"):
        load_loras(ti2v, [(path, 1.0, None), (path, 1.0, "high")])
    pipe = load_loras(t2v, [(path, 1.0, "high"), (path, 0.5, None)])
    d = read_lora(path, t2v.dit_config).deltas[Q]
    np.testing.assert_allclose(_kernel(pipe, "high_noise_model"), _kernel(t2v, "high_noise_model")
                               + 1.5 * d["a"] @ d["b"], rtol=1e-5, atol=1e-5)
