"""Mesh specs, rules -> PartitionSpecs, token padding, the sharding snapshot and the memory estimate: pure
functions, no devices needed (the 8-device tests are in _impl/)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.sharding import PartitionSpec as P

from wan22_jax.errors import ConfigError
from wan22_jax.sharding import RULES, frame_tokens, make_mesh, pad_frames, parse_mesh_spec, resolve_spec, unpad_frames
from wan22_jax.sharding.distributed import initialize_distributed
from wan22_jax.sharding.memory import (SNAPSHOT_PRESETS, abstract_dit_state, memory_estimate, param_bytes_per_device,
                                       snapshot)

SNAPSHOT = Path(__file__).parents[1] / "data" / "sharding_snapshot.json"


def test_mesh_spec_parsing():
    assert parse_mesh_spec("data=1,fsdp=4,seq=2,tensor=1", 8) == {"data": 1, "fsdp": 4, "seq": 2, "tensor": 1}
    assert parse_mesh_spec("seq=2, fsdp=-1", 8) == {"data": 1, "fsdp": 4, "seq": 2, "tensor": 1}
    assert parse_mesh_spec("tensor=2") == {"data": 1, "fsdp": 1, "seq": 1, "tensor": 2}


@pytest.mark.parametrize("spec,message", [
    ("fsdp=4,seq=4", "16 devices, but 8 are available"),
    ("pipeline=2", "unknown axis ['pipeline']"),
    ("fsdp=two", "'fsdp=two' is not axis=size"),
    ("fsdp=0", "sizes must be positive"),
    ("fsdp=2,fsdp=4", "axis 'fsdp' given twice"),
    ("fsdp=-1,seq=3", "cannot fill the -1 axis"),
])
def test_bad_mesh_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_mesh_spec(spec, 8)


def test_make_mesh_checks_the_device_count():
    n = jax.device_count()  # 1 in the full suite, 8 when tests/sharding runs alone
    with pytest.raises(ConfigError, match=f"devices, but {n} are available"):
        make_mesh(f"fsdp={n + 1}")
    mesh = make_mesh("fsdp=-1")
    assert mesh.axis_names == ("data", "fsdp", "seq", "tensor") and dict(mesh.shape)["fsdp"] == n


def test_resolve_spec_rules_and_fallbacks():
    rules = RULES["dit"]
    shape = {"data": 1, "fsdp": 4, "seq": 2, "tensor": 2}
    # DiT weights: ZeRO-3 over fsdp x seq
    assert resolve_spec(("layers", "embed", "heads"), (40, 5120, 5120), rules, shape)[0] == P(
        None, ("fsdp", "seq"), "tensor")
    spec, notes = resolve_spec(("embed", "mlp"), (6, 8), rules, shape, where="w")
    assert spec == P("seq", "tensor") and notes == ["w: embed (6) does not divide by fsdp=4: replicated over fsdp"]
    # a mesh axis is used once per array
    spec, notes = resolve_spec(("embed", "embed"), (8, 8), rules, shape, where="w")
    assert spec == P(("fsdp", "seq"), None) and "already used" in notes[0]
    with pytest.raises(ConfigError, match="no sharding rule for logical axis 'pixels'"):
        resolve_spec(("pixels",), (4,), rules, shape, where="w")


@given(frames=st.integers(1, 9), per_frame=st.integers(1, 40), multiple=st.sampled_from([1, 2, 4, 8, 16]))
def test_frame_tokens_is_the_least_divisible_padding(frames, per_frame, multiple):
    p = frame_tokens(frames, per_frame, multiple)
    assert p >= per_frame and frames * p % multiple == 0
    assert all(frames * q % multiple for q in range(per_frame, p))


def test_pad_unpad_round_trip_keeps_frames_contiguous():
    x = jnp.arange(2 * 3 * 5 * 2, dtype=jnp.float32).reshape(2, 15, 2)  # 3 frames of 5 tokens
    y = pad_frames(x, 3, 8)
    assert y.shape == (2, 24, 2)
    np.testing.assert_array_equal(y[:, 8:13], x[:, 5:10])  # frame 1 starts at 8
    np.testing.assert_array_equal(y[:, 13:16], 0)
    np.testing.assert_array_equal(unpad_frames(y, 3, 5), x)


def test_sharding_snapshot_is_current():
    """If the rules or a model's parameters change on purpose, regenerate with
    `python -m wan22_jax.sharding snapshot > tests/data/sharding_snapshot.json` and review the diff."""
    saved = json.loads(SNAPSHOT.read_text())
    assert snapshot() == saved
    assert set(saved["presets"]) == set(SNAPSHOT_PRESETS)
    for preset in saved["presets"].values():
        assert all(not notes for notes in preset["fallbacks"].values())  # every full-size axis divides
        # no large parameter stays whole on an fsdp=8 mesh
        for path, p in preset["params"].items():
            if np.prod(p["shape"]) > 1e6:
                assert "fsdp" in p["specs"]["fsdp=8"], path


@pytest.mark.parametrize("preset", SNAPSHOT_PRESETS)
def test_fsdp8_holds_an_eighth_of_the_full_size_params(preset):
    state = abstract_dit_state(preset)
    total = param_bytes_per_device(state, "dit", {"fsdp": 1})
    per_device = param_bytes_per_device(state, "dit", {"fsdp": 8})
    assert total / 8 <= per_device <= total / 8 * 1.005


def test_memory_estimate_shrinks_with_the_mesh():
    one = memory_estimate("t2v-A14B", "fsdp=1")
    assert 50 < one["params_gib"] < 56  # two 14B experts in bf16
    eight = memory_estimate("t2v-A14B", "fsdp=8")
    assert eight["params_gib"] == pytest.approx(one["params_gib"] / 8, rel=0.01)
    assert eight["activations_gib"] < one["activations_gib"]
    assert memory_estimate("ti2v-5B", "fsdp=4,seq=2")["tokens"] == 31 * 22 * 40


def test_initialize_distributed_from_env(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert initialize_distributed() is False  # nothing set: single process
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        initialize_distributed()
