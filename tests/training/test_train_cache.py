"""`wan22 train` on a latent cache (data.kind "cache"): strict config, bucketed batches, per-bucket held-out loss,
and a run stopped midway resuming to the same state as an uninterrupted one."""

import copy
import csv
import json

import jax
import numpy as np
import pytest

from wan22_jax.errors import ConfigError
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.models.tokenizer_training import train_tokenizer
from wan22_jax.training.cache import MANIFEST, tokenizer_hash
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.loop import train
from wan22_jax.training.metrics import read_scalars
from wan22_jax.training.run_config import parse_run_config

from .test_loader import write_cache

# three buckets; latents [3, F', h, w] with h, w even (the DiT's 2x2 patches)
BUCKETS = {(5, 32, 48): 7, (9, 48, 32): 6, (1, 32, 32): 5}
CACHE_RUN = {
    "data": {"kind": "cache", "held_out": 4},
    "dit": {"model_type": "ti2v", "text_len": 6, "in_dim": 3, "out_dim": 3, "dim": 16, "ffn_dim": 32,
            "freq_dim": 16, "text_dim": 4, "num_heads": 2, "num_layers": 1},
    "train": {"lr": 3e-3, "warmup_steps": 1, "total_steps": 6, "text_dropout": 0.2},
    "batch_size": 2, "steps": 6, "checkpoint": {"every": 2, "keep": 3}, "eval": {"every": 3, "batch": 2},
    "progress": False,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cache"), buckets=BUCKETS, down=8)


def _config(tmp_path, cache_dir, **kw):
    cfg = copy.deepcopy(CACHE_RUN)
    cfg["data"]["dir"] = str(cache_dir)
    cfg["out_dir"] = str(tmp_path / "run")
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("data, words", [
    ({"kind": "cache"}, "data.dir: data.kind \"cache\" needs the cache folder"),
    ({"kind": "world", "held_out": 3}, "data.dir / data.held_out belong to data.kind \"cache\""),
    ({"kind": "cache", "dir": "x", "shuffle": True}, r"unknown training config field\(s\) \['data.shuffle'\]"),
    ({"kind": "cache", "dir": "x", "held_out": -1}, "data.held_out=-1: must be a whole number >= 0"),
    ({"kind": "files"}, "data.kind='files'"),
])
def test_data_section_is_strict(tmp_path, data, words):
    with pytest.raises(ConfigError, match=words):
        parse_run_config({**CACHE_RUN, "out_dir": str(tmp_path), "data": data})


def test_training_the_encoder_on_a_cache_needs_its_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="text.tokenizer_dir: training the text encoder on a cache"):
        parse_run_config({**CACHE_RUN, "out_dir": str(tmp_path), "data": {"kind": "cache", "dir": "x"},
                          "text": {"train": True}})


def test_a_cache_that_does_not_fit_the_dit_is_refused_before_any_output(tmp_path, cache_dir):
    cfg = _config(tmp_path, cache_dir)
    cfg["dit"] = dict(cfg["dit"], in_dim=4, out_dim=4)
    with pytest.raises(ConfigError, match="cached latents have 3 channels, the DiT's in_dim is 4"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def _state(result):
    return jax.tree.map(np.asarray, result["state"])


# slow (about a minute): compiles the step and the held-out loss for three bucket shapes, three runs
@pytest.mark.slow
def test_cache_run_trains_evaluates_per_bucket_and_resumes_exactly(tmp_path, cache_dir):
    full = train(_config(tmp_path / "a", cache_dir))
    assert full["step"] == 6 and not full["interrupted"]
    out = tmp_path / "a" / "run"
    assert (out / "dit").is_dir()
    with open(out / "eval_buckets.csv") as f:
        rows = list(csv.DictReader(f))
    # the 4 held-out samples, every eval step (0, 3, 6), bucket by bucket
    for step in ("0", "3", "6"):
        at = [r for r in rows if r["step"] == step]
        assert sum(int(r["samples"]) for r in at) == 4 and len({r["bucket"] for r in at}) == len(at)
        assert all(np.isfinite(float(r["t500"])) for r in at)
    with open(out / "eval.csv") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["0", "3", "6"]
    # metrics: CSV and TensorBoard (train scalars every step, held-out losses overall and per bucket)
    with open(out / "metrics.csv") as f:
        m = list(csv.DictReader(f))
    assert [int(r["step"]) for r in m] == list(range(1, 7)) and all(float(r["samples_per_s"]) > 0 for r in m)
    scalars = read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 7))
    assert [s for s, _ in scalars["eval/t500"]] == [0, 3, 6]
    assert sum(tag.startswith("eval/") and tag.endswith("/t500") and tag != "eval/t500" for tag in scalars) == \
        len({r["bucket"] for r in rows})

    # stopped after step 3, between checkpoints (every 2): stop_after writes one at 3; then the same config
    # without stop_after resumes at 3
    cfg = _config(tmp_path / "b", cache_dir)
    stopped = train(dict(cfg, stop_after=3))
    assert stopped["step"] == 3 and TrainCheckpointer(stopped["checkpoint_dir"]).latest_step() == 3
    resumed = train(cfg)
    assert resumed["step"] == 6
    a, b = _state(full), _state(resumed)
    assert int(b["data_position"]) == 6 * 2
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    with open(tmp_path / "b" / "run" / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 7))


@pytest.fixture(scope="module")
def ids_cache(tmp_path_factory):
    """A cache of token ids only (made without a text encoder) and the tokenizer it names."""
    root = tmp_path_factory.mktemp("ids")
    tok = train_tokenizer(["a red bar moves left", "a blue dot moves up", "green square"] * 4, root / "tok",
                          vocab_size=16, model_type="word")
    cache = write_cache(root / "cache", buckets={(5, 32, 32): 6}, context=False, down=8)
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["tokenizer"] = tokenizer_hash(Tokenizer(tok, text_len=6))
    (cache / MANIFEST).write_text(json.dumps(manifest))
    return cache, tok


def _ids_config(tmp_path, ids_cache, tokenizer_dir):
    cache, _ = ids_cache
    return _config(tmp_path, cache, data={"kind": "cache", "dir": str(cache), "held_out": 2},
                   text={"train": True, "tokenizer_dir": str(tokenizer_dir), "t5": TINY_T5}, steps=2,
                   train={"lr": 1e-3, "warmup_steps": 1, "total_steps": 2})


TINY_T5 = {"vocab_size": 64, "dim": 4, "dim_attn": 8, "dim_ffn": 16, "num_heads": 2, "num_layers": 1}


def test_an_encoder_trained_on_a_cache_needs_the_cache_tokenizer(tmp_path, ids_cache):
    other = train_tokenizer(["a b c d", "e f g"] * 4, tmp_path / "other", vocab_size=12, model_type="word")
    with pytest.raises(ConfigError, match="not the tokenizer the cache .* was made with"):
        train(_ids_config(tmp_path, ids_cache, other))


# slow (about 40 s): compiles a DiT + umT5 step
@pytest.mark.slow
def test_cache_run_trains_the_text_encoder_on_token_ids(tmp_path, ids_cache):
    cfg = _ids_config(tmp_path, ids_cache, ids_cache[1])
    result = train(cfg)
    assert result["step"] == 2 and np.isfinite(result["last_loss"])
    out = tmp_path / "run"
    assert (out / "t5").is_dir() and (out / "dit").is_dir()
    # the run's tokenizer is the cache's (what the exported encoder must be used with)
    assert tokenizer_hash(Tokenizer(out / "tokenizer", text_len=6)) == tokenizer_hash(
        Tokenizer(ids_cache[1], text_len=6))
