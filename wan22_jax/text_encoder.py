"""Prompt -> text context for the DiT, as the official pipeline builds it, with a per-prompt cache.

Official flow (`T5EncoderModel.__call__` then `WanModel.forward`): tokenize to `text_len` tokens, run the encoder
over all of them with the padding mask, keep each prompt's first `mask.sum()` rows (`</s>` included), then the DiT
pads them back to `text_len` with zero rows. `TextEncoder.encode` returns the trimmed rows, `TextEncoder.__call__`
the zero-padded batch. Rows past a prompt's length are exactly zero, not the encoder's padded-row outputs.

Each distinct prompt string is encoded once and cached (the negative prompt of every generation, repeated
prompts in a batch); uncached prompts of one call share one encoder run.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.t5 import load_t5
from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.t5 import T5Encoder
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.ops import XLA, Kernels, with_kernels


@functools.partial(jax.jit, static_argnums=0)
def encode_zero_padded(graphdef, state, ids, mask):
    """[B, L] ids/mask -> [B, L, dim] encoder output with the rows past each prompt's length set to zero (the
    context the DiT sees; training an encoder with the DiT differentiates through this same function)."""
    hidden = nnx.merge(graphdef, state)(ids, mask)
    return jnp.where(mask[..., None] > 0, hidden, jnp.zeros((), hidden.dtype))


class TextEncoder:
    """Tokenizer + umT5 encoder + cache.

    Args:
      model: the encoder (e.g. from `load_t5`).
      tokenizer: its tokenizer; `tokenizer.text_len` is the context length.
      cache_size: how many prompts to keep (least recently used ones are dropped); 0 disables the cache.
    """

    def __init__(self, model: T5Encoder, tokenizer: Tokenizer, *, cache_size: int = 32):
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ConfigError(f"tokenizer at {tokenizer.path} has {tokenizer.vocab_size} tokens, more than the "
                              f"encoder's vocab_size {model.cfg.vocab_size}")
        if cache_size < 0:
            raise InputError(f"cache_size must be >= 0, got {cache_size}")
        self.tokenizer = tokenizer
        self.text_len = tokenizer.text_len
        self.dim = model.cfg.dim
        self._graphdef, self._state = nnx.split(model)
        self._cache: collections.OrderedDict[str, tuple[jax.Array, int]] = collections.OrderedDict()
        self.cache_size = cache_size
        self.encoder_runs = 0  # number of encoder forward passes (one per batch of uncached prompts)
        self.prompts_encoded = 0  # prompts that went through the encoder (cache misses)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, text_len: int = 512, dtype: Any = jnp.bfloat16,
                        param_dtype: Any = jnp.bfloat16, kernels: Kernels = XLA,
                        tokenizer_path: str | os.PathLike | None = None, cache_size: int = 32) -> "TextEncoder":
        """From a release folder (T5 .pth + `google/umt5-xxl/`) or a Diffusers folder (`text_encoder/` +
        `tokenizer/`); `tokenizer_path` overrides where the tokenizer is read."""
        tokenizer = Tokenizer(tokenizer_path if tokenizer_path is not None else path, text_len=text_len)
        model = with_kernels(load_t5(path, dtype=dtype, param_dtype=param_dtype), kernels)
        return cls(model, tokenizer, cache_size=cache_size)

    def with_kernels(self, kernels: Kernels) -> "TextEncoder":
        """A new encoder (empty cache, same tokenizer and weights) whose ops run with `kernels`."""
        model = with_kernels(self.model(), kernels)
        return type(self)(model, self.tokenizer, cache_size=self.cache_size)

    def model(self) -> T5Encoder:
        """The encoder module (sharing this encoder's weights)."""
        return nnx.merge(self._graphdef, self._state)

    def _lookup(self, prompts: list[str]) -> list[tuple[jax.Array, int]]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        fresh: dict[str, tuple[jax.Array, int]] = {}
        if missing:
            ids, mask = self.tokenizer(missing)
            rows = encode_zero_padded(self._graphdef, self._state, jnp.asarray(ids), jnp.asarray(mask))
            self.encoder_runs += 1
            self.prompts_encoded += len(missing)
            lengths = mask.sum(axis=1)
            fresh = {p: (rows[i], int(lengths[i])) for i, p in enumerate(missing)}
        out = []
        for p in prompts:
            if p in fresh:
                entry = fresh[p]
            else:
                entry = self._cache[p]
                self._cache.move_to_end(p)
            out.append(entry)
        for p, entry in fresh.items():
            if self.cache_size:
                self._cache[p] = entry
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def _as_list(self, prompts: str | Sequence[str]) -> list[str]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InputError("no prompts given")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InputError(f"prompt {i} is a {type(p).__name__}, not a str")
        return prompts

    def encode(self, prompts: str | Sequence[str]) -> list[jax.Array]:
        """Per-prompt encoder outputs trimmed to the prompt's token count (`</s>` included): [L_i, dim] each,
        in the encoder's compute dtype (what the official `T5EncoderModel.__call__` returns)."""
        return [row[:n] for row, n in self._lookup(self._as_list(prompts))]

    def __call__(self, prompts: str | Sequence[str]) -> tuple[jax.Array, np.ndarray]:
        """The DiT's context: trimmed outputs zero-padded to text_len.

        Returns:
          context [B, text_len, dim] (zeros past each prompt's length), lengths [B] int32.
        """
        entries = self._lookup(self._as_list(prompts))
        context = jnp.stack([row for row, _ in entries])
        return context, np.asarray([n for _, n in entries], dtype=np.int32)

    def clear_cache(self) -> None:
        self._cache.clear()
