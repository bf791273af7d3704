"""Training a small umT5-style tokenizer (sentencepiece unigram, pad 0 / </s> 1 / unk 2) and saving it in the
layout the real one ships in, so that tiny models exercise the real tokenizer loading path (`Tokenizer`)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from wan22_jax.errors import ConfigError

MODEL_TYPES = ("unigram", "word")
WORD_START = "\u2581"  # sentencepiece's mark for a space (the start of a space-separated word)


def word_pieces(sentences: Sequence[str], words: Sequence[str]) -> list[str]:
    """The sentencepiece pieces that make each of `words` one token.

    A word that stands alone between spaces somewhere in `sentences` (English "red" in "a red bar") becomes
    "▁red", the form sentencepiece sees after a space; a word that never does (Japanese "赤い" inside
    "黒い背景の上を左へ動く赤い棒", a script written without spaces) stays as it is and is matched anywhere.

    Returns:
      one piece per word, in the order of `words`.
    """
    alone = {w for s in sentences for w in s.split()}
    pieces = []
    for w in words:
        if not w or any(c.isspace() for c in w):
            raise ConfigError(f"tokenizer word {w!r}: a word must be non-empty and hold no whitespace")
        pieces.append(WORD_START + w if w in alone else w)
    return list(dict.fromkeys(pieces))


def train_tokenizer(sentences: Iterable[str], folder: str | os.PathLike, *, vocab_size: int = 128,
                    model_type: str = "unigram", words: Sequence[str] = ()) -> Path:
    """Trains a sentencepiece model on `sentences` and writes a transformers T5 tokenizer to `folder`.

    model_type: "unigram" (what umT5 uses) or "word" (one piece per whitespace-separated word). On a corpus of a
      few template sentences the unigram trainer collapses to near-characters (the mini-world's 18 words gave 34
      pieces and 31-35 tokens per prompt, with every word's position shifted by the length of the words before
      it); "word" gives each word one token at a fixed place in the template. Both load through the same
      Unigram tokenizer (a word piece's score is its log frequency).
    words: (unigram only) words that are always one token each, in any language: sentencepiece user-defined
      symbols (`word_pieces` says how a word written between spaces and one inside a run of Japanese differ).
      "word" cannot do Japanese, which has no spaces: a whole caption would be one token.
    Deterministic for a given corpus (single-threaded training). Returns `folder`.
    """
    import sentencepiece as spm
    import transformers

    if model_type not in MODEL_TYPES:
        raise ConfigError(f"tokenizer model_type {model_type!r}: use one of {MODEL_TYPES}")
    sentences = list(sentences)
    if words and model_type != "unigram":
        raise ConfigError(f"tokenizer words need model_type 'unigram' (sentencepiece's {model_type!r} model "
                          "splits on spaces only)")
    extra = {"user_defined_symbols": word_pieces(sentences, words)} if words else {}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2, **extra)
    proto = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    (folder / "spiece.model").write_bytes(proto)
    return folder
