"""The umT5 tokenizer as the official pipeline uses it (wan/modules/tokenizers.py, clean='whitespace'; docs/architecture.md §5).

Text cleaning: `ftfy.fix_text`, `html.unescape` twice, strip, collapse runs of whitespace to one space. Then
transformers' tokenizer, loaded offline from a folder (a release keeps it at `<ckpt>/google/umt5-xxl/`, a
Diffusers release at `<ckpt>/tokenizer/`), with `</s>` appended, truncation and padding to `text_len`. A prompt
that does not fit is truncated (keeping `</s>` last) with a warning, where the official code is silent.
"""

from __future__ import annotations

import html
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from wan22_jax.errors import CheckpointFormatError, InputError, UnknownTokenWarning, Wan22Warning

# where releases keep the tokenizer, relative to the checkpoint folder (official, then Diffusers)
TOKENIZER_SUBFOLDERS = ("google/umt5-xxl", "tokenizer")

_WHITESPACE = re.compile(r"\s+")


class PromptTruncatedWarning(Wan22Warning):
    """A prompt had more tokens than text_len and was cut."""


def clean_text(text: str) -> str:
    """The official 'whitespace' cleaning: fix mojibake, unescape HTML entities (twice, for double-escaped
    text), collapse whitespace."""
    import ftfy  # imported lazily: only text encoding needs it

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()


def find_tokenizer(folder: str | os.PathLike) -> Path:
    """The tokenizer folder itself, or the one a checkpoint folder holds (see TOKENIZER_SUBFOLDERS)."""
    folder = Path(folder)
    for sub in ("", *TOKENIZER_SUBFOLDERS):
        cand = folder / sub
        if (cand / "tokenizer_config.json").is_file() or (cand / "tokenizer.json").is_file():
            return cand
    raise CheckpointFormatError(
        f"{folder}: no tokenizer found (looked for tokenizer.json / tokenizer_config.json in {folder} and in "
        f"{', '.join(str(folder / s) + '/' for s in TOKENIZER_SUBFOLDERS)})")


class Tokenizer:
    """Prompts -> (ids, mask) of fixed length `text_len`.

    Args:
      path: a tokenizer folder or a checkpoint folder containing one (see `find_tokenizer`). Read offline.
      text_len: padded length (512 for every Wan2.2 task).
    """

    def __init__(self, path: str | os.PathLike, *, text_len: int = 512):
        from transformers import AutoTokenizer  # heavy import, only when a tokenizer is built

        if not isinstance(text_len, int) or text_len < 1:
            raise InputError(f"text_len must be a positive integer, got {text_len!r}")
        self.path = find_tokenizer(path)
        try:
            self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointFormatError(f"{self.path}: cannot load the tokenizer ({e})") from e
        if self._tok.pad_token_id is None:
            raise CheckpointFormatError(f"{self.path}: the tokenizer defines no pad token")
        # trimming outputs to `mask.sum()` rows (official and ours) relies on text first, padding after
        self._tok.padding_side = "right"
        self._tok.truncation_side = "right"
        self.text_len = text_len

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return len(self._tok)

    @property
    def pad_id(self) -> int:
        return int(self._tok.pad_token_id)

    def __call__(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenizes prompts.

        Args:
          prompts: one string or a sequence of strings.
        Returns:
          ids [B, text_len] int32 (pad id after the text), mask [B, text_len] int32 (1 = token, `</s>`
          included).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InputError(f"prompt {i} is a {type(p).__name__}, not a str")
        texts = [clean_text(p) for p in prompts]
        full = self._tok(texts, add_special_tokens=True, truncation=False, padding=False, verbose=False)
        for i, row in enumerate(full["input_ids"]):
            if len(row) > self.text_len:
                warnings.warn(f"prompt {i} has {len(row)} tokens (with </s>), more than text_len="
                              f"{self.text_len}: truncated to {self.text_len}", PromptTruncatedWarning,
                              stacklevel=2)
        self._warn_unknown(texts)
        out = self._tok(texts, add_special_tokens=True, truncation=True, padding="max_length",
                        max_length=self.text_len, return_attention_mask=True)
        ids = np.asarray(out["input_ids"], dtype=np.int32).reshape(len(texts), self.text_len)
        mask = np.asarray(out["attention_mask"], dtype=np.int32).reshape(len(texts), self.text_len)
        return ids, mask

    def unknown_words(self, text: str) -> list[str]:
        """The pieces of an already cleaned `text` that the tokenizer maps to its unknown token (the model sees
        them all as the same <unk>), in order; [] for a tokenizer without an unknown token."""
        unk = self._tok.unk_token_id
        if unk is None:
            return []
        if not self._tok.is_fast:  # no offsets: the count alone
            return ["<unk>"] * self._tok(text, add_special_tokens=False)["input_ids"].count(unk)
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [text[a:b].strip() or "<unk>" for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                if i == unk]

    def _warn_unknown(self, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            words = self.unknown_words(text)
            if not words:
                continue
            hint = ""
            if text != text.lower() and len(self.unknown_words(text.lower())) < len(words):
                hint = f"; this tokenizer is lower-case: try {text.lower()!r}"
            warnings.warn(f"prompt {i} ({text!r}) has {len(words)} word(s) the tokenizer does not know, which the "
                          f"model cannot see: {', '.join(map(repr, words))}{hint}", UnknownTokenWarning,
                          stacklevel=3)
