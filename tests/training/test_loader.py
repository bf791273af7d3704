"""The Grain loader over a latent cache: one bucket per batch, deterministic order, resume by data position,
disjoint and covering per-process parts."""

import json

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from wan22_jax.errors import ConfigError
from wan22_jax.models.dit import WanModel
from wan22_jax.training.cache import FORMAT, MANIFEST, NULL, VERSION, CachedDataset
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.loader import Loader
from wan22_jax.training.step import init_state, make_train_step

from .conftest import TINY_DIT

TEXT_LEN, DIM, Z = 6, 4, 3
# bucket (frames, height, width) -> samples in it
BUCKETS = {(5, 32, 48): 9, (9, 48, 32): 7, (1, 32, 32): 5}


def write_cache(root, buckets=BUCKETS, context=True, z=Z, text_len=TEXT_LEN, dim=DIM, down=16):
    """A cache in the format CacheWriter writes, with latents filled with the sample's number (fast: no model);
    latents are [z, 1 + (frames - 1) / 4, height / down, width / down]."""
    root.mkdir(parents=True, exist_ok=True)
    samples, tensors, n = [], {}, 0
    for (f, h, w), count in buckets.items():
        for _ in range(count):
            lat = np.full((z, 1 + (f - 1) // 4, h // down, w // down), n, np.float32)
            tensors[f"{n}.latents"] = lat
            tensors[f"{n}.ids"] = np.full(text_len, n, np.int32)
            tensors[f"{n}.mask"] = (np.arange(text_len) < 3).astype(np.int32)
            if context:
                tensors[f"{n}.context"] = np.full((3, dim), n, np.float32)
            samples.append({"key": f"clip{n:03d}.mp4", "shard": "shard-00000.safetensors", "index": n,
                            "bucket": [f, h, w], "latent_shape": list(lat.shape), "caption": f"c{n}",
                            "caption_hash": "", "bytes": 0, "tokens": 3, "image": False})
            n += 1
    save_file(tensors, root / "shard-00000.safetensors")
    null = {"ids": np.zeros(text_len, np.int32), "mask": np.eye(1, text_len, dtype=np.int32)[0]}
    if context:
        null["context"] = np.full((1, dim), -1, np.float32)
    save_file(null, root / NULL)
    (root / MANIFEST).write_text(json.dumps({
        "format": FORMAT, "version": VERSION, "vae": "v", "text_encoder": "t" if context else None,
        "tokenizer": "k", "buckets": {}, "text_len": text_len, "shards": ["shard-00000.safetensors"],
        "samples": samples, "skipped": {}}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return CachedDataset(write_cache(tmp_path_factory.mktemp("cache")))


def test_batches_hold_one_bucket_and_match_their_indices(data):
    loader = Loader(data, batch_size=2, grad_accum=2, seed=0, process_count=1, process_index=0)
    assert loader.samples_per_batch == 4
    assert loader.schedule.batches_per_epoch == 9 // 4 + 7 // 4 + 5 // 4
    for pos in range(0, 4 * 12, 4):
        idx = loader.indices(pos)
        b = loader.batch(pos, 2, 2)
        assert idx.shape == (2, 2) and len({data.buckets[i] for i in idx.reshape(-1)}) == 1
        assert b["latents"].shape[:2] == (2, 2)
        np.testing.assert_array_equal(b["latents"][:, :, 0, 0, 0, 0], idx)  # each sample's own latents
        np.testing.assert_array_equal(b["context"][:, :, 0, 0], idx)
        assert b["context"].shape == (2, 2, TEXT_LEN, DIM) and not b["context"][:, :, 3:].any()  # zero-padded
        assert b["null_context"].shape == b["context"].shape and (b["null_context"][:, :, 0] == -1).all()
    # one epoch uses each sample at most once; the leftovers differ between epochs
    bpe = loader.schedule.batches_per_epoch
    epochs = [np.concatenate([loader.indices(4 * k).reshape(-1) for k in range(e * bpe, (e + 1) * bpe)])
              for e in range(2)]
    assert all(len(set(e)) == len(e) for e in epochs) and set(epochs[0]) != set(epochs[1])


def test_order_is_deterministic_and_resumes_from_the_position(data):
    a = Loader(data, batch_size=2, seed=3, process_count=1, process_index=0)
    b = Loader(data, batch_size=2, seed=3, process_count=1, process_index=0)
    other = Loader(data, batch_size=2, seed=4, process_count=1, process_index=0)
    first = [a.indices(2 * k) for k in range(20)]
    assert all((x == y).all() for x, y in zip(first, [b.indices(2 * k) for k in range(20)]))
    assert any((x != y).any() for x, y in zip(first, [other.indices(2 * k) for k in range(20)]))
    # Grain's iterator from position 0, and a fresh one resumed at position 14 (batch 7), agree with batch()
    run = [(p, batch) for _, (p, batch) in zip(range(10), a.iterator(0))]
    assert [p for p, _ in run] == list(range(2, 21, 2))
    resumed = [(p, batch) for _, (p, batch) in zip(range(3), b.iterator(14))]
    for (p, x), (q, y) in zip(run[7:], resumed):
        assert p == q
        np.testing.assert_array_equal(x["latents"], y["latents"])
        np.testing.assert_array_equal(x["latents"], a.batch(p - 2)["latents"])
    with pytest.raises(ConfigError, match="not at a batch boundary"):
        a.batch(3)
    with pytest.raises(ConfigError, match="built for batch size 2"):
        a.batch(0, 4)


def test_processes_read_disjoint_parts_covering_the_batch(data):
    loaders = [Loader(data, batch_size=4, seed=1, process_index=p, process_count=4) for p in range(4)]
    single = Loader(data, batch_size=4, seed=1, process_index=0, process_count=1)
    for pos in range(0, 4 * 10, 4):
        parts = [l.indices(pos) for l in loaders]
        assert all(p.shape == (1, 1) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), single.indices(pos))
        assert len({int(p[0, 0]) for p in parts}) == 4
        shapes = {l.batch(pos)["latents"].shape for l in loaders}
        assert len(shapes) == 1  # one bucket for the whole step
    with pytest.raises(ConfigError, match="does not split over 3 processes"):
        Loader(data, batch_size=4, process_index=0, process_count=3)


def test_token_ids_mode_and_bad_settings(tmp_path, data):
    loader = Loader(data, batch_size=2, text="ids", process_index=0, process_count=1)
    b = loader.batch(0)
    assert set(b) == {"latents", "ids", "mask", "null_ids", "null_mask"}
    assert b["ids"].shape == (1, 2, TEXT_LEN) and b["ids"].dtype == np.int32
    ids_only = CachedDataset(write_cache(tmp_path / "ids", context=False))
    with pytest.raises(ConfigError, match="token ids only"):
        Loader(ids_only, batch_size=2, process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="no bucket has 12 samples"):
        Loader(data, batch_size=12, process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="first-frame image"):
        Loader(data, batch_size=2, images=True, process_index=0, process_count=1)


@pytest.mark.slow
def test_batches_feed_the_train_step(tmp_path):
    """The loader's batches are what `make_train_step` takes (as LatentData's), and the step moves the data
    position by the loader's samples_per_batch."""
    data = CachedDataset(write_cache(tmp_path / "c", {(5, 32, 48): 2}, z=TINY_DIT.in_dim,
                                     text_len=TINY_DIT.text_len, dim=TINY_DIT.text_dim, down=8))
    data.check(z_dim=TINY_DIT.in_dim, text_dim=TINY_DIT.text_dim, text_len=TINY_DIT.text_len)
    cfg = TrainConfig(lr=1e-3, warmup_steps=1, total_steps=4, text_dropout=0.5)
    loader = Loader(data, batch_size=2, seed=0, process_index=0, process_count=1)
    graphdef, state = nnx.split(WanModel(TINY_DIT, rngs=nnx.Rngs(0)))
    train_step = make_train_step(graphdef, cfg)
    state = init_state(nnx.to_pure_dict(state), cfg)
    batch = loader.batch(int(state["data_position"]), 2, cfg.grad_accum)
    assert batch["latents"].shape == (1, 2, TINY_DIT.in_dim, 2, 4, 6)
    state, metrics = train_step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert int(state["data_position"]) == loader.samples_per_batch


def test_held_out_split_is_fixed_and_disjoint(data):
    held = CachedDataset(data.dir, held_out=4, split="held_out")
    train = CachedDataset(data.dir, held_out=4)
    keys = {r["key"] for r in held.records}
    assert len(keys) == 4 and len(train) == len(data) - 4
    assert keys.isdisjoint(r["key"] for r in train.records)
    assert {r["key"] for r in CachedDataset(data.dir, held_out=4, split="held_out").records} == keys  # fixed
    # chosen by key hash, not by order: not simply the first or last keys
    ordered = [r["key"] for r in data.records]
    assert keys != set(ordered[:4]) and keys != set(ordered[-4:])
    with pytest.raises(ConfigError, match="held_out=21"):
        CachedDataset(data.dir, held_out=21)
