"""Prompt -> context: tiny tokenizer + tiny umT5 in the Diffusers layout, against transformers' model run the
official way (encode all text_len positions, trim to the mask length, zero-pad for the DiT), and the cache."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from models.test_t5 import drift_tolerance, hf_hidden, make_hf_umt5, save_diffusers
from models.test_tokenizer import make_tiny_tokenizer
from wan22_jax.convert.t5 import load_t5
from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.t5 import PRESETS, T5Config
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.verify import relative_error

TEXT_LEN = 40
PROMPTS = ["a cat sits on the mat", "a red car"]
NEGATIVE = "blurry, static, low quality"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A Diffusers-style folder: text_encoder/ (tiny-wide-attn umT5) + tokenizer/. Returns (root, hf model)."""
    root = tmp_path_factory.mktemp("ckpt")
    hf = make_hf_umt5(PRESETS["tiny-wide-attn"], seed=5)
    save_diffusers(hf, root)
    make_tiny_tokenizer(root / "tokenizer")
    return root, hf


def fresh_encoder(root, **kwargs) -> TextEncoder:
    return TextEncoder.from_pretrained(root, text_len=TEXT_LEN, dtype=jnp.float32, param_dtype=jnp.float32,
                                       **kwargs)


def test_context_matches_official_flow(ckpt):
    root, hf = ckpt
    enc = fresh_encoder(root)
    ids, mask = Tokenizer(root, text_len=TEXT_LEN)(PROMPTS)
    full = hf_hidden(hf, ids, mask)  # the encoder over all text_len positions
    tol = drift_tolerance(hf, ids, mask)
    lengths = mask.sum(1)
    assert 1 < lengths[1] < lengths[0] < TEXT_LEN, "the test needs padded prompts of different lengths"

    trimmed = enc.encode(PROMPTS)
    context, got_lengths = enc(PROMPTS)
    np.testing.assert_array_equal(got_lengths, lengths)
    assert context.shape == (2, TEXT_LEN, PRESETS["tiny-wide-attn"].dim)
    for b, n in enumerate(lengths):
        assert trimmed[b].shape == (n, context.shape[-1])
        assert relative_error(np.asarray(trimmed[b]), full[b, :n]) <= tol
        np.testing.assert_array_equal(np.asarray(context[b, :n]), np.asarray(trimmed[b]))
        assert not np.asarray(context[b, n:]).any(), "rows past the prompt must be exactly zero"


def test_negative_prompt_is_encoded_once(ckpt):
    root, _ = ckpt
    enc = fresh_encoder(root)
    first, _ = enc([PROMPTS[0], NEGATIVE])
    assert (enc.encoder_runs, enc.prompts_encoded) == (1, 2)
    again, _ = enc([PROMPTS[1], NEGATIVE])
    assert (enc.encoder_runs, enc.prompts_encoded) == (2, 3)  # only PROMPTS[1] went through the encoder
    neg = enc.encode(NEGATIVE)[0]
    assert (enc.encoder_runs, enc.prompts_encoded) == (2, 3)
    np.testing.assert_array_equal(np.asarray(first[1]), np.asarray(again[1]))
    np.testing.assert_array_equal(np.asarray(first[1, :neg.shape[0]]), np.asarray(neg))


def test_repeated_prompts_in_one_call_share_one_encoding(ckpt):
    root, _ = ckpt
    enc = fresh_encoder(root)
    context, lengths = enc([PROMPTS[0], PROMPTS[0], NEGATIVE, PROMPTS[0]])
    assert (enc.encoder_runs, enc.prompts_encoded) == (1, 2)
    assert context.shape[0] == 4 and lengths[0] == lengths[1] == lengths[3]
    np.testing.assert_array_equal(np.asarray(context[0]), np.asarray(context[3]))


def test_cache_is_bounded_and_can_be_disabled(ckpt):
    root, _ = ckpt
    enc = fresh_encoder(root, cache_size=1)
    enc.encode([PROMPTS[0]])
    enc.encode([PROMPTS[1]])  # evicts PROMPTS[0]
    enc.encode([PROMPTS[0]])
    assert enc.prompts_encoded == 3
    off = fresh_encoder(root, cache_size=0)
    off.encode(NEGATIVE)
    off.encode(NEGATIVE)
    assert off.prompts_encoded == 2


def test_long_prompt_is_truncated_with_a_warning(ckpt):
    root, _ = ckpt
    enc = fresh_encoder(root)
    with pytest.warns(UserWarning, match="truncated"):
        context, lengths = enc("ein Hund läuft im Park, a red car drives along the coast")
    assert lengths[0] == TEXT_LEN and np.asarray(context[0, -1]).any()


def test_bad_arguments(ckpt, tmp_path):
    root, _ = ckpt
    enc = fresh_encoder(root)
    with pytest.raises(InputError, match="no prompts"):
        enc([])
    with pytest.raises(InputError, match="prompt 0 is a bytes"):
        enc.encode([b"cat"])
    small = make_hf_umt5(T5Config(vocab_size=8, dim=8, dim_attn=8, dim_ffn=8, num_heads=2, num_layers=1))
    save_diffusers(small, tmp_path)
    with pytest.raises(ConfigError, match="vocab_size 8"):
        TextEncoder(load_t5(tmp_path), Tokenizer(root, text_len=TEXT_LEN))
