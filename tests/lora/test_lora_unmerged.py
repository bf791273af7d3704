"""`lora.unmerged`: the LoRA factors set on the Linears of a jitted forward (x @ W + s * (x @ A) @ B, full-size
differences added per step) give the merged model's output; the per-step strength table picks each step's
strengths; bad schedules are refused by name. The loop-level checks are in tests/pipeline/test_denoise.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.errors import InputError, WeightMappingError
from wan22_jax.lora.apply import apply_deltas
from wan22_jax.lora.load import read_lora
from wan22_jax.lora.unmerged import attach, build_expert_loras, check_strength, strength_table, touches_text
from wan22_jax.models.dit import WanModel
from wan22_jax.state import flat_state

from .conftest import CFG, write

TOL = 1e-5  # the DiT parity tolerance (fp32)


def _file(path, seed, modules, extra=None, rank=2):
    rng = np.random.default_rng(seed)
    tensors = dict(extra or {})
    for m in modules:
        tensors[f"diffusion_model.{m}.lora_down.weight"] = rng.standard_normal((rank, CFG.dim)).astype(np.float32)
        tensors[f"diffusion_model.{m}.lora_up.weight"] = 0.3 * rng.standard_normal((CFG.dim, rank)).astype(np.float32)
        tensors[f"diffusion_model.{m}.alpha"] = np.asarray(1.0, np.float32)
    return write(path, tensors)


@pytest.fixture(scope="module")
def model():
    return nnx.split(WanModel(CFG, rngs=nnx.Rngs(0)))


def test_attached_factors_equal_merged_weights(tmp_path, model):
    graphdef, state = model
    params = nnx.to_pure_dict(state)
    one = read_lora(_file(tmp_path / "a.safetensors", 0, ("blocks.0.self_attn.q", "blocks.1.cross_attn.k"),
                          {"diffusion_model.blocks.0.self_attn.o.diff_b": np.ones(CFG.dim, np.float32)}), CFG)
    two = read_lora(_file(tmp_path / "b.safetensors", 1, ("blocks.1.self_attn.q", "head.head"), rank=3), CFG)
    strengths = np.asarray([[0.5, 0.0, 1.0], [2.0, 1.0, 0.0]], np.float32)  # [loras, steps]
    loras = build_expert_loras([(one.deltas, strengths[0]), (two.deltas, strengths[1])], flat_state(state))
    assert loras.lowrank["blocks.self_attn.q.kernel"]["a"].shape == (CFG.num_layers, CFG.dim, 5)  # ranks 2 + 3
    assert touches_text(loras)  # cross_attn.k: the text K/V change
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 4, 1, 4, 4)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((1, 3, CFG.text_dim)), jnp.float32)

    @jax.jit
    def unmerged(st, lo, step):
        return attach(graphdef, st, lo, step)(x, jnp.array([500.0]), ctx)

    merged = jax.jit(lambda p: nnx.merge(graphdef, p)(x, jnp.array([500.0]), ctx))
    base = merged(params)
    for step in range(3):
        want = merged(apply_deltas(params, [(one.deltas, strengths[0, step]), (two.deltas, strengths[1, step])]))
        got = unmerged(state, loras, jnp.int32(step))
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) <= TOL, step
        assert float(jnp.max(jnp.abs(want - base))) > 1e-3 * float(jnp.max(jnp.abs(base)))
    # the state passed in is untouched: no factors left on the base model
    assert "lora_a" not in str(jax.tree_util.tree_structure(state))


def test_strength_tables_and_refusals(tmp_path, model):
    np.testing.assert_array_equal(strength_table(check_strength(0.5), 3, "x"), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(strength_table(check_strength([1, 0, 2]), 3, "x"), [1, 0, 2])
    np.testing.assert_array_equal(strength_table(check_strength(lambda i: 0.5 * i), 3, "x"), [0, 0.5, 1])
    with pytest.raises(InputError, match=r"LoRA x: 2 per-step strengths for a generation of 3 steps"):
        strength_table(check_strength([1.0, 2.0]), 3, "x")
    with pytest.raises(InputError, match=r"LoRA x: its strength function returned True at step 0"):
        strength_table(check_strength(lambda i: True), 3, "x")
    with pytest.raises(InputError, match=r"strength=inf: expected a finite number"):
        check_strength(float("inf"))
    with pytest.raises(InputError, match=r"strength='high': expected a number"):
        check_strength("high")
    graphdef, state = model
    bad = {"blocks.norm3.weight": {"a": np.zeros((2, CFG.dim, 1)), "b": np.zeros((2, 1, CFG.dim))}}
    with pytest.raises(WeightMappingError, match=r"low-rank LoRA update of 'blocks.norm3.weight', which is not a "
                                                 r"Linear's kernel"):
        build_expert_loras([(bad, np.ones(2, np.float32))], flat_state(state))
