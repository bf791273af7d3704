"""Tokenizer: official text cleaning, padding, `</s>`, truncation warning; on a tiny sentencepiece model
trained at test time (no tokenizer files can be downloaded). A tokenizer trained with words of English and
Japanese (tokenizer_training.py) keeps each word one token through the same path. `make_tiny_tokenizer` is shared with
tests/test_text_encoder.py."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import transformers

from wan22_jax.errors import CheckpointFormatError, ConfigError, InputError
from wan22_jax.models.tokenizer import PromptTruncatedWarning, Tokenizer, clean_text
from wan22_jax.models.tokenizer_training import train_tokenizer, word_pieces

SENTENCES = [
    "a cat sits on the mat", "the quick brown fox jumps over the lazy dog", "un chat noir dort sur le canapé",
    "ein Hund läuft im Park", "a red car drives along the coast at sunset", "两只猫在草地上玩",
]


def train_sentencepiece() -> bytes:
    """A tiny unigram model with T5's special ids: pad 0, </s> 1, unk 2."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10), model_writer=buf, vocab_size=64, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


def make_tiny_tokenizer(folder: Path) -> Path:
    """Writes a transformers T5 tokenizer (tokenizer.json + tokenizer_config.json) to `folder`."""
    proto = train_sentencepiece()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    (folder / "spiece.model").write_bytes(proto)
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def sp(tok_dir):
    return spm.SentencePieceProcessor(model_file=str(tok_dir / "spiece.model"))


@pytest.mark.parametrize("raw,clean", [
    ("  a \n\t cat   sits ", "a cat sits"),
    ("fish &amp;amp; chips", "fish & chips"),  # double-escaped: unescaped twice
    ("&lt;b&gt;", "<b>"),
    ("caf\u00c3\u00a9", "caf\u00e9"),  # mojibake fixed by ftfy
    ("", ""),
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_padding_eos_and_mask_match_sentencepiece(tok_dir, sp):
    tok = Tokenizer(tok_dir, text_len=24)
    prompts = ["a cat sits on the mat", "  ein   Hund\n", "两只猫"]
    ids, mask = tok(prompts)
    assert ids.shape == mask.shape == (3, 24) and ids.dtype == mask.dtype == np.int32
    for row, m, p in zip(ids, mask, prompts, strict=True):
        want = sp.encode(clean_text(p)) + [1]
        n = len(want)
        assert m.tolist() == [1] * n + [0] * (24 - n)
        assert row[:n].tolist() == want
        assert (row[n:] == tok.pad_id).all() and tok.pad_id == 0


def test_single_string_is_a_batch_of_one(tok_dir):
    tok = Tokenizer(tok_dir, text_len=8)
    ids, mask = tok("a cat")
    np.testing.assert_array_equal(ids, tok(["a cat"])[0])
    assert ids.shape == (1, 8) and mask[0].sum() >= 2


def test_long_prompt_warns_and_keeps_eos(tok_dir, sp):
    tok = Tokenizer(tok_dir, text_len=6)
    long = "the quick brown fox jumps over the lazy dog"
    with pytest.warns(PromptTruncatedWarning, match="prompt 1 has"):
        ids, mask = tok(["cat", long])
    assert mask[1].sum() == 6 and ids[1, -1] == 1
    assert ids[1, :5].tolist() == sp.encode(long)[:5]


def test_prompt_that_fits_exactly_does_not_warn(tok_dir, sp):
    prompt = "a cat"
    n = len(sp.encode(prompt)) + 1
    tok = Tokenizer(tok_dir, text_len=n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, mask = tok(prompt)
    assert mask.sum() == n


def test_found_inside_a_release_folder(tmp_path):
    folder = make_tiny_tokenizer(tmp_path / "google" / "umt5-xxl")
    tok = Tokenizer(tmp_path, text_len=4)
    assert tok.path == folder


def test_missing_tokenizer_and_bad_arguments(tmp_path, tok_dir):
    with pytest.raises(CheckpointFormatError, match="no tokenizer found"):
        Tokenizer(tmp_path)
    with pytest.raises(InputError, match="text_len"):
        Tokenizer(tok_dir, text_len=0)
    with pytest.raises(InputError, match="prompt 1 is a int"):
        Tokenizer(tok_dir, text_len=4)(["ok", 3])


# ------------------------------------------------------------------ a tokenizer trained with words of two languages
BILINGUAL = ["a red bar moving left on a black background", "黒い背景の上を左へ動く赤い棒",
             "a blue circle moving up on a white background", "白い背景の上を上へ動く青い丸"]
BILINGUAL_WORDS = ["a", "moving", "on", "background", "red", "blue", "bar", "circle", "left", "up", "black", "white",
                   "背景の上を", "動く", "赤い", "青い", "棒", "丸", "左へ", "上へ", "黒い", "白い"]


@pytest.fixture(scope="module")
def bilingual_dir(tmp_path_factory):
    return train_tokenizer(BILINGUAL * 4, tmp_path_factory.mktemp("bi"), vocab_size=64, words=BILINGUAL_WORDS)


def test_word_pieces_mark_words_between_spaces_only():
    assert word_pieces(BILINGUAL, ["red", "赤い", "上へ"]) == ["\u2581red", "赤い", "上へ"]
    with pytest.raises(ConfigError, match="hold no whitespace"):
        word_pieces(BILINGUAL, ["red bar"])


def test_every_word_of_either_language_is_one_token(bilingual_dir):
    tok = Tokenizer(bilingual_dir, text_len=16)
    sp = spm.SentencePieceProcessor(model_file=str(bilingual_dir / "spiece.model"))
    # the same captions with the words recombined (a held-out-like combination), through the inference path
    for text, words in [("a blue bar moving up on a white background", 9), ("白い背景の上を上へ動く青い棒", 6),
                        ("黒い背景の上を左へ動く赤い丸", 6)]:
        ids, mask = tok(text)
        n = int(mask.sum())
        pieces = tok._tok.convert_ids_to_tokens(ids[0, :n].tolist())
        assert ids[0, :n].tolist() == sp.encode(text) + [1]  # transformers' files agree with sentencepiece
        assert pieces[-1] == "</s>" and tok._tok.unk_token not in pieces
        # English: one piece per word; Japanese: sentencepiece's leading space mark, then one piece per word
        assert len([p for p in pieces[:-1] if p != "\u2581"]) == words, pieces
    ids, _ = tok("黒い背景の上を上へ動く赤い棒")
    assert tok._tok.convert_ids_to_tokens(ids[0, :8].tolist()) == [
        "\u2581", "黒い", "背景の上を", "上へ", "動く", "赤い", "棒", "</s>"]


def test_words_need_the_unigram_model(tmp_path):
    with pytest.raises(ConfigError, match="need model_type 'unigram'"):
        train_tokenizer(BILINGUAL, tmp_path, model_type="word", words=["red"])
