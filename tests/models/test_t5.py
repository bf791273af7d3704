"""umT5 encoder: against transformers' UMT5EncoderModel on unseen random models, sizes, batches and masks.

The helpers at the top (a random transformers model in the Diffusers layout, the float64-drift tolerance) are
shared with tests/convert/test_t5_convert.py and tests/test_text_encoder.py.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from wan22_jax.config_utils import config_to_dict
from wan22_jax.convert.t5 import abstract_t5, load_t5
from wan22_jax.errors import ConfigError, InputError
from wan22_jax.ops import Kernels
from wan22_jax.models.t5 import (PRESETS, T5Config, T5Encoder, random_t5, relative_position_buckets, t5_config,
                                 t5_config_from_dict, t5_forward, validate_inputs)
from wan22_jax.verify import relative_error
from wan22_jax.state import fill_state, flat_state


# ----------------------------------------------------------------------------------------------- helpers
def hf_config(cfg: T5Config):
    """The transformers config of our T5Config (what a Diffusers text_encoder/config.json holds)."""
    return transformers.UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn, num_heads=cfg.num_heads,
        num_layers=cfg.num_layers, relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance, dropout_rate=0.0, feed_forward_proj="gated-gelu")


def make_hf_umt5(cfg: T5Config, seed: int = 0):
    """A transformers UMT5EncoderModel with the reference cases' random-weight scheme: matrices N(0, 1/fan_in),
    embedding and position tables N(0, 1), norm gains 1 + 0.1 N (transformers' own init is too small to make
    the position bias matter)."""
    torch.manual_seed(seed)
    model = transformers.UMT5EncoderModel(hf_config(cfg)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name:
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("relative_attention_bias.weight") or name == "shared.weight":
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model


def save_diffusers(model, root, **kwargs):
    """Writes `root/text_encoder/` as a Diffusers release does (kwargs go to save_pretrained)."""
    folder = root / "text_encoder"
    model.save_pretrained(folder, **kwargs)
    return folder


def hf_hidden(model, ids, mask, dtype=None) -> np.ndarray:
    if dtype is not None:
        model = model.to(dtype)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long)).last_hidden_state
    model.to(torch.float32)
    return out.numpy()


def drift_tolerance(model, ids, mask) -> float:
    """The reference cases' rule: max(20 * float64 drift of the fp32 run, 1e-5)."""
    f32 = hf_hidden(model, ids, mask)
    f64 = hf_hidden(model, ids, mask, dtype=torch.float64)
    return max(20 * relative_error(f32, f64), 1e-5)


def random_inputs(rng, batch: int, length: int, vocab: int, lengths=None):
    """Right-padded ids (pad 0, last real token `</s>` = 1) and mask; `lengths` per sample (default random)."""
    if lengths is None:
        lengths = rng.integers(1, length + 1, size=batch)
    ids = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids[np.arange(batch), np.asarray(lengths) - 1] = 1
    return np.where(mask > 0, ids, 0).astype(np.int32), mask


def run_ours(model, ids, mask) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(t5_forward(graphdef, state, jnp.asarray(ids), jnp.asarray(mask)))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """(transformers model, our fp32 model) of the tiny-wide-attn preset (dim_attn != dim, 3 layers)."""
    cfg = t5_config("tiny-wide-attn")
    hf = make_hf_umt5(cfg, seed=1)
    root = tmp_path_factory.mktemp("wide")
    save_diffusers(hf, root)
    return hf, load_t5(root, dtype=jnp.float32, param_dtype=jnp.float32)


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (8, 20)])
def test_buckets_match_transformers(num_buckets, max_distance):
    cfg = dataclasses.replace(t5_config("tiny"), num_buckets=num_buckets, max_distance=max_distance)
    attn = transformers.models.umt5.modeling_umt5.UMT5Attention(hf_config(cfg), has_relative_attention_bias=True)
    for lq, lk in [(1, 1), (7, 7), (3, 600), (600, 3), (700, 700)]:
        rel = torch.arange(lk)[None, :] - torch.arange(lq)[:, None]
        want = attn._relative_position_bucket(rel).numpy()
        np.testing.assert_array_equal(relative_position_buckets(lq, lk, num_buckets, max_distance), want)


@pytest.mark.parametrize("batch,length,lengths", [(1, 1, [1]), (3, 9, None), (2, 17, [17, 2]), (4, 5, [5, 5, 1, 3])])
def test_matches_transformers_on_unseen_shapes(wide, batch, length, lengths):
    hf, ours = wide
    ids, mask = random_inputs(np.random.default_rng(batch * 100 + length), batch, length, ours.cfg.vocab_size,
                              lengths)
    got = run_ours(ours, ids, mask)
    tol = drift_tolerance(hf, ids, mask)
    assert relative_error(got, hf_hidden(hf, ids, mask)) <= tol


def test_long_sequence_uses_log_buckets(tmp_path):
    """Distances past max_exact and past max_distance (L = 150 > 128) exercise every bucket kind."""
    cfg = dataclasses.replace(t5_config("tiny"), num_layers=1)
    hf = make_hf_umt5(cfg, seed=3)
    save_diffusers(hf, tmp_path)
    ours = load_t5(tmp_path, dtype=jnp.float32, param_dtype=jnp.float32)
    ids, mask = random_inputs(np.random.default_rng(0), 2, 150, cfg.vocab_size, [150, 131])
    assert relative_error(run_ours(ours, ids, mask), hf_hidden(hf, ids, mask)) <= drift_tolerance(hf, ids, mask)


def test_per_block_outputs_match_transformers(wide):
    """collect_hidden exposes each block's output for bisection; transformers' hidden_states are
    (embeddings, block 0, ..., block n-2, final-normed output)."""
    hf, ours = wide
    ids, mask = random_inputs(np.random.default_rng(7), 2, 6, ours.cfg.vocab_size, [6, 4])
    hidden, per_block = ours(jnp.asarray(ids), jnp.asarray(mask), collect_hidden=True)
    with torch.no_grad():
        states = hf(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long), output_hidden_states=True).hidden_states
    assert per_block.shape == (ours.cfg.num_layers, *hidden.shape)
    for i in range(ours.cfg.num_layers - 1):
        assert relative_error(np.asarray(per_block[i]), states[i + 1].numpy()) <= 1e-5, f"block {i}"
    # the last entry is the last block before the final norm, which gives the encoder's output
    np.testing.assert_array_equal(np.asarray(ours.norm(per_block[-1])), np.asarray(hidden))
    assert relative_error(np.asarray(hidden), states[-1].numpy()) <= 1e-5


def test_valid_rows_ignore_padding_and_batch(wide):
    """What makes trimming safe: a prompt's rows do not depend on how much padding follows or on its batch."""
    _, ours = wide
    rng = np.random.default_rng(11)
    ids, mask = random_inputs(rng, 1, 5, ours.cfg.vocab_size, [5])
    alone = run_ours(ours, ids, mask)[0]
    padded_ids = np.concatenate([ids, rng.integers(2, ours.cfg.vocab_size, size=(1, 11)).astype(np.int32)], 1)
    padded_mask = np.concatenate([mask, np.zeros((1, 11), np.int32)], 1)
    other_ids, other_mask = random_inputs(rng, 1, 16, ours.cfg.vocab_size, [16])
    both = run_ours(ours, np.concatenate([other_ids, padded_ids]), np.concatenate([other_mask, padded_mask]))
    assert relative_error(both[1, :5], alone) <= 1e-6


def test_bf16_tracks_fp32(wide):
    _, ours32 = wide
    graphdef, state = nnx.split(ours32)
    arrays = {k: np.asarray(v).astype(jnp.bfloat16) for k, v in flat_state(state).items()}
    g16, abstract16 = abstract_t5(ours32.cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    ours16 = nnx.merge(g16, fill_state(abstract16, arrays))
    ids, mask = random_inputs(np.random.default_rng(5), 2, 8, ours32.cfg.vocab_size, [8, 3])
    out16 = run_ours(ours16, ids, mask)
    assert out16.dtype == jnp.bfloat16
    err = relative_error(out16.astype(np.float32), run_ours(ours32, ids, mask))
    assert err < 5e-2, err  # bf16 has 8 mantissa bits: ~1e-2 after a few layers


def test_umt5_xxl_preset_builds_abstractly():
    _, abstract = abstract_t5(t5_config("umt5-xxl"))
    shapes = flat_state(abstract)
    assert shapes["blocks.attn.q.kernel"].shape == (24, 4096, 4096)
    assert shapes["blocks.pos_embedding.embedding.weight"].shape == (24, 32, 64)
    assert shapes["token_embedding.weight"].dtype == jnp.bfloat16
    # 242 official tensors: embedding + 10 per layer + final norm
    assert len(shapes) == 12 and sum(v.shape[0] for k, v in shapes.items() if k.startswith("blocks.")) == 240


def test_random_t5_is_seeded_and_finite():
    cfg = t5_config("tiny")
    a, b = random_t5(cfg, seed=4), random_t5(cfg, seed=4)
    ids, mask = random_inputs(np.random.default_rng(0), 2, 4, cfg.vocab_size)
    out = run_ours(a, ids, mask)
    np.testing.assert_array_equal(out, run_ours(b, ids, mask))
    assert np.isfinite(out.astype(np.float32)).all()


def test_config_from_reference_json_style():
    raw = {"vocab_size": 256, "dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 4, "num_layers": 2,
           "num_buckets": 32, "shared_pos": False, "dropout": 0.0}
    assert t5_config_from_dict(raw, source="t") == PRESETS["tiny"]
    assert t5_config_from_dict(json.loads(json.dumps(config_to_dict(PRESETS["umt5-xxl"]))), source="t") \
        == PRESETS["umt5-xxl"]


@pytest.mark.parametrize("raw,needle", [
    ({"dim": 32, "n_layers": 2}, "n_layers"),
    ({"shared_pos": True}, "shared_pos"),
    ({"dim_attn": 30, "num_heads": 4}, "dim_attn"),
    ({"num_layers": 0}, "num_layers"),
    ({"num_buckets": 7}, "num_buckets"),
])
def test_config_refuses_bad_fields(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        t5_config_from_dict(raw, source="cfg.json")


def test_unknown_preset_and_dtype_refused():
    with pytest.raises(ConfigError, match="umt5-xl"):
        t5_config("umt5-xl")
    with pytest.raises(ConfigError, match="float16"):
        T5Encoder(PRESETS["tiny"], dtype=jnp.float16, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="Kernels.attention='flash'"):
        T5Encoder(PRESETS["tiny"], kernels=Kernels(attention="flash"), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="must be a wan22_jax.ops.Kernels"):
        T5Encoder(PRESETS["tiny"], kernels="xla", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("ids,mask,needle", [
    (np.zeros((2, 3), np.int32), np.ones((2, 4), np.int32), "mask shape"),
    (np.zeros((3,), np.int32), np.ones((3,), np.int32), r"\[B, L\]"),
    (np.full((1, 3), 256, np.int32), np.ones((1, 3), np.int32), "256"),
    (np.full((1, 3), -1, np.int32), np.ones((1, 3), np.int32), "-1"),
    (np.zeros((1, 3), np.float32), np.ones((1, 3), np.int32), "integers"),
])
def test_validate_inputs_names_the_problem(ids, mask, needle):
    with pytest.raises(InputError, match=needle):
        validate_inputs(ids, mask, PRESETS["tiny"])
