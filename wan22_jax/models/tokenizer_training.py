"""Training a small umT5-style tokenizer (sentencepiece unigram, pad 0 / </s> 1 / unk 2) and saving it in the
layout the real one ships in, so that tiny models exercise the real tokenizer loading path (`Tokenizer`)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable


def train_tokenizer(sentences: Iterable[str], folder: str | os.PathLike, *, vocab_size: int = 128) -> Path:
    """Trains a sentencepiece unigram model on `sentences` and writes a transformers T5 tokenizer to `folder`.

    Deterministic for a given corpus (single-threaded training). Returns `folder`.
    """
    import sentencepiece as spm
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    proto = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    (folder / "spiece.model").write_bytes(proto)
    return folder
