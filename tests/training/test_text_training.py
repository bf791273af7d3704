"""Training the umT5 encoder together with the DiT, and the word-level tokenizer of the mini-world."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.data.mini_world import prompt_corpus
from wan22_jax.errors import ConfigError
from wan22_jax.models.t5 import T5Config, random_t5
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.models.tokenizer_training import train_tokenizer
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.training.loop import train
from wan22_jax.training.text import make_text_fn

from .conftest import rel_err


def test_word_tokenizer_gives_each_word_one_token_at_a_fixed_place(tmp_path):
    tok = Tokenizer(train_tokenizer(prompt_corpus(), tmp_path / "tok", vocab_size=96, model_type="word"),
                    text_len=16)
    prompts = ["a yellow circle moving down on a black background", "a red pillar moving left on a gray background"]
    ids, mask = tok(prompts)
    assert mask.sum(axis=1).tolist() == [10, 10]  # 9 words + </s>
    # the template's shared words get the same ids at the same places; the attribute words differ
    same = ids[0] == ids[1]
    assert same[[0, 3, 5, 6, 8, 9]].all() and not same[[1, 2, 4, 7]].any()
    with pytest.raises(ConfigError, match="model_type"):
        train_tokenizer(prompt_corpus(), tmp_path / "bad", model_type="bpe")


@pytest.fixture
def text_run(tiny_run):
    cfg = copy.deepcopy(tiny_run)
    cfg["text"].update(train=True, tokenizer="word")
    return cfg


def test_trained_encoder_learns_and_exports_what_the_dit_saw(text_run):
    out = train(text_run)
    t5_dir = out["out_dir"] / "t5"
    t5_cfg = T5Config(**text_run["text"]["t5"])
    init = nnx.to_pure_dict(nnx.state(random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=0)))
    ema_t5 = out["state"]["ema"]["t5"]
    # the flow-matching gradient reached the encoder
    moved = max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(ema_t5), jax.tree.leaves(init), strict=True))
    assert moved > 1e-4
    # the exported encoder, loaded as a pipeline loads it, gives the context the training loss computed
    enc = TextEncoder.from_pretrained(t5_dir, text_len=text_run["dit"]["text_len"], dtype=jnp.float32,
                                      param_dtype=jnp.float32, tokenizer_path=out["out_dir"] / "tokenizer")
    prompts = ["a red circle moving left on a black background", ""]
    ids, mask = enc.tokenizer(prompts)
    graphdef = nnx.graphdef(random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32))
    seen = make_text_fn(graphdef)({"t5": ema_t5}, jnp.asarray(ids), jnp.asarray(mask))
    got, _ = enc(prompts)
    assert rel_err(got, seen) < 1e-6
    assert np.all(np.asarray(got)[1, 1:] == 0)  # past the empty prompt's </s>: zero rows, as the DiT saw


def test_text_training_is_refused_with_lora_and_bad_tokenizers(text_run, tmp_path):
    with pytest.raises(ConfigError, match="LoRA"):
        train(dict(text_run, lora={"base": str(tmp_path)}))
    bad = copy.deepcopy(text_run)
    bad["text"]["tokenizer"] = "bpe"
    with pytest.raises(ConfigError, match="text.tokenizer"):
        train(bad)
