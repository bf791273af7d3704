"""The text side of a training run: the tokenizer trained on the world's prompts and the umT5 encoder, either
frozen (its contexts are computed once) or trained together with the DiT.

Trained jointly, the trainable params are `{"dit": ..., "t5": ...}` and batches carry token ids instead of
contexts; the encoder runs inside the loss, so the flow-matching gradient reaches it. Its context is built the
way the pipeline builds it (`TextEncoder`: rows past a prompt's length are zero), so the exported encoder gives
the DiT at inference exactly what it saw in training (tests/training/test_text_training.py).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.data.mini_world import prompt_corpus
from wan22_jax.errors import ConfigError
from wan22_jax.models.t5 import T5Config, abstract_t5, random_t5
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.models.tokenizer_training import MODEL_TYPES, train_tokenizer
from wan22_jax.state import flat_state
from wan22_jax.text_encoder import TextEncoder, encode_zero_padded
from wan22_jax.training.export import export_t5


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig:
    """t5: T5Config fields of the encoder (random init from `seed`); vocab_size / tokenizer: size and
    sentencepiece model type of the tokenizer (`train_tokenizer`); tokenizer_dir: a tokenizer folder to use
    instead of training one on the mini-world prompts (with a latent cache: the one the cache was made with);
    train: train the encoder with the DiT (else it stays frozen at its random init: any prompt still gets a
    distinct, fixed embedding)."""

    t5: dict = dataclasses.field(default_factory=lambda: dict(vocab_size=96, dim=32, dim_attn=32, dim_ffn=64,
                                                              num_heads=4, num_layers=2))
    seed: int = 0
    vocab_size: int = 96
    tokenizer: str = "unigram"
    tokenizer_dir: str | None = None
    train: bool = False

    def __post_init__(self):
        if self.tokenizer not in MODEL_TYPES:
            raise ConfigError(f"text.tokenizer {self.tokenizer!r}: use one of {MODEL_TYPES}")


def build_text_encoder(text: TextConfig, text_len: int, tokenizer_dir: Path):
    """(TextEncoder, T5Config, T5Encoder): the tokenizer (text.tokenizer_dir copied into `tokenizer_dir`, or one
    trained there on the mini-world corpus, unless it is there) and the encoder at its random init."""
    t5_cfg = config_from_dict(T5Config, text.t5, source="config text.t5")
    if text.tokenizer_dir is not None:
        source = Path(text.tokenizer_dir)
        if not source.is_dir():
            raise ConfigError(f"text.tokenizer_dir {source}: no such folder")
        if source.resolve() != tokenizer_dir.resolve():  # a copy beside the run's weights, like a trained one
            shutil.copytree(source, tokenizer_dir, dirs_exist_ok=True)
    elif not (tokenizer_dir / "spiece.model").is_file():
        train_tokenizer(prompt_corpus() * 4, tokenizer_dir, vocab_size=text.vocab_size, model_type=text.tokenizer)
    tokenizer = Tokenizer(tokenizer_dir, text_len=text_len)
    if tokenizer.vocab_size > t5_cfg.vocab_size:
        raise ConfigError(f"text.t5.vocab_size={t5_cfg.vocab_size} is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size} ids ({tokenizer_dir})")
    model = random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=text.seed)
    return TextEncoder(model, tokenizer, cache_size=0), t5_cfg, model


def joint_params_fn(params, frozen):
    """The DiT's part of joint {"dit", "t5"} params (what `make_train_step` merges into the DiT)."""
    return params["dit"]


def make_text_fn(t5_graphdef):
    """(params, ids [B, L], mask [B, L]) -> context [B, L, dim]: the encoder of params["t5"], rows past each
    prompt's length zeroed, by the function `TextEncoder` runs."""
    return lambda params, ids, mask: encode_zero_padded(t5_graphdef, params["t5"], ids, mask)


def export_trained_t5(folder: Path, t5_params: dict, t5_cfg) -> Path:
    """Writes trained encoder weights in the release layout (`export_t5`), for `load_t5` / the pipeline."""
    _, abstract = abstract_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32)
    nnx.replace_by_pure_dict(abstract, jax.tree.map(np.asarray, t5_params))
    return export_t5(folder, flat_state(abstract), t5_cfg)
