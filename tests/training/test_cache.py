"""The latent cache: encodes once, resumes, refuses a cache of other models, reads back what it wrote."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_samples import BAD, TINY_BUCKETS, write_samples
from wan22_jax.cli import main
from wan22_jax.convert.vae import load_vae
from wan22_jax.data.videos import VideoDataset
from wan22_jax.errors import ConfigError, InputFileError
from wan22_jax.models.t5 import random_t5
from wan22_jax.models.vae import encode, random_vae
from wan22_jax.pipeline.files import default_checkpoint
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.training.cache import CachedDataset, CacheWriter, read_manifest
from wan22_jax.training.loader import Loader

TEXT_LEN = 48  # the embedded model's
# the embedded model's tokenizer knows only the mini-world's English words: the Japanese caption warns
pytestmark = pytest.mark.filterwarnings("ignore::wan22_jax.errors.UnknownTokenWarning")


@pytest.fixture(scope="module")
def models():
    ckpt = default_checkpoint()
    vae = nnx.split(load_vae(ckpt))
    text = TextEncoder.from_pretrained(ckpt, text_len=TEXT_LEN, dtype=jnp.float32, param_dtype=jnp.float32,
                                       cache_size=0)
    return vae, text


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("videos"))


def _writer(path, models, **kw):
    vae, text = models
    return CacheWriter(path, vae=kw.pop("vae", vae), tokenizer=text.tokenizer, text_encoder=text,
                       buckets=TINY_BUCKETS, **kw)


def test_cache_encodes_resumes_and_reads_back(tmp_path, folder, models):
    out = tmp_path / "cache"
    ds = VideoDataset(folder, TINY_BUCKETS)
    result = _writer(out, models).run(ds, shard_size=3)
    assert result["encoded"] == 4 and result["cached"] == 0 and result["total"] == 4
    assert result["skipped"]["counts"] == {r: 1 for r in BAD.values()}
    manifest = read_manifest(out)
    assert manifest["shards"] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert manifest["skipped"]["counts"] == result["skipped"]["counts"]

    data = CachedDataset(out)
    assert [r["key"] for r in data.records] == ["en.mp4", "ja.mp4", "still.png", "sub/wide.mp4"]
    vae, text = models
    for i, r in enumerate(data.records):
        s = data.load(i)
        f, h, w = r["bucket"]
        assert s["latents"].shape == (16, 1 + (f - 1) // 4, h // 8, w // 8)
        assert s["ids"].shape == s["mask"].shape == (TEXT_LEN,) and int(s["mask"].sum()) == r["tokens"]
        # exactly what the text encoder gives at inference (zero rows past the prompt)
        ctx, _ = text([r["caption"]])
        np.testing.assert_array_equal(s["context"], np.asarray(ctx[0]))
    # the latents are the VAE's, of the clip cut to its bucket
    clip = next(c for c in VideoDataset(folder, TINY_BUCKETS).clips() if c.sample.key == "en.mp4")
    np.testing.assert_array_equal(data.load(0)["latents"], np.asarray(encode(*vae, jnp.asarray(clip.video[None])))[0])
    assert data.null()["context"].shape == (TEXT_LEN, 32) and int(data.null()["mask"].sum()) == 1
    data.check(z_dim=16, text_dim=32, text_len=TEXT_LEN)
    with pytest.raises(ConfigError, match="in_dim is 48"):
        data.check(z_dim=48, text_dim=32, text_len=TEXT_LEN)
    # the loader serves them (one bucket per batch)
    batch = Loader(data, batch_size=1, process_index=0, process_count=1).batch(0)
    assert batch["latents"].shape[:3] == (1, 1, 16) and batch["context"].shape == (1, 1, TEXT_LEN, 32)

    # a second run encodes nothing and rewrites no shard
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    again = _writer(out, models).run(VideoDataset(folder, TINY_BUCKETS), shard_size=3)
    assert again["encoded"] == 0 and again["cached"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == stamps

    # a changed caption re-encodes that sample only
    (folder / "en.txt").write_text("a red circle moving right", encoding="utf-8")
    try:
        third = _writer(out, models).run(VideoDataset(folder, TINY_BUCKETS), shard_size=3)
    finally:
        (folder / "en.txt").write_text("a red circle moving left on a black background", encoding="utf-8")
    assert third["encoded"] == 1 and third["cached"] == 3 and third["total"] == 4
    assert CachedDataset(out).records[0]["caption"] == "a red circle moving right"


def test_interrupted_cache_resumes(tmp_path, folder, models):
    out = tmp_path / "cache"
    ds = VideoDataset(folder, TINY_BUCKETS)
    calls = []

    def stop_after_two(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _writer(out, models).run(ds, shard_size=1, progress=stop_after_two)
    assert len(read_manifest(out)["samples"]) == 1  # corrupt.mp4 then en.mp4: one shard written
    assert not list(out.glob(".*tmp"))  # no partial file left
    result = _writer(out, models).run(VideoDataset(folder, TINY_BUCKETS), shard_size=1)
    assert result["cached"] == 1 and result["encoded"] == 3 and result["total"] == 4


def test_changed_vae_invalidates_the_cache(tmp_path, folder, models):
    out = tmp_path / "cache"
    _writer(out, models).run(VideoDataset(folder, TINY_BUCKETS))
    vae, _ = models
    before = read_manifest(out)["vae"]
    other = random_vae(nnx.merge(*vae).config, seed=3)
    with pytest.raises(ConfigError, match="different VAE weights"):
        _writer(out, models, vae=other)
    rebuilt = _writer(out, models, vae=other, rebuild=True).run(VideoDataset(folder, TINY_BUCKETS))
    assert rebuilt["encoded"] == 4 and rebuilt["cached"] == 0
    assert read_manifest(out)["vae"] != before and len(CachedDataset(out)) == 4
    _, text = models
    other_text = TextEncoder(random_t5(text.model().cfg, seed=5), text.tokenizer)
    with pytest.raises(ConfigError, match="different text encoder weights"):
        CacheWriter(out, vae=other, tokenizer=text.tokenizer, text_encoder=other_text, buckets=TINY_BUCKETS)
    with pytest.raises(ConfigError, match="different bucket config"):
        CacheWriter(out, vae=other, tokenizer=text.tokenizer, text_encoder=text,
                    buckets=dataclasses.replace(TINY_BUCKETS, fps=8))


def test_missing_cache_is_one_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="no latent cache here"):
        CachedDataset(tmp_path)


def test_cache_command(tmp_path, folder, capsys):
    argv = ["cache", str(folder), "--out", str(tmp_path / "c"), "--area", str(32 * 48), "--frames", "5,9,17",
            "--text-dtype", "float32", "--no-progress"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "4 sample(s) encoded, 0 already cached, 3 file(s) skipped" in out
    assert "skipped short.mp4: too few frames" in err and "skipped corrupt.mp4: unreadable" in err
    # the stride came from the embedded model: its VAE's 8 x the DiT's patch 2
    assert read_manifest(tmp_path / "c")["buckets"]["stride"] == 16
    assert main(argv) == 0
    assert "0 sample(s) encoded, 4 already cached" in capsys.readouterr().out
    assert main(argv[:-3] + ["--text-dtype", "bfloat16", "--no-progress"]) == 2
    assert "different text encoder weights" in capsys.readouterr().err
    assert main(argv[:6] + ["--frames", "8"]) == 2
    assert "--frames=(8,)" in capsys.readouterr().err


def test_ids_only_cache_with_first_frame_images(tmp_path, folder, models):
    """No text encoder: token ids only (for an encoder trained with the DiT); a manifest's first-frame images
    become image latents the loader serves with images=True."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"path": str(folder / "en.mp4"), "caption": "a red circle", "image": str(folder / "still.png")},
        {"path": str(folder / "sub/wide.mp4"), "caption": "a blue bar"}]), encoding="utf-8")
    vae, text = models
    out = tmp_path / "ids"
    CacheWriter(out, vae=vae, tokenizer=text.tokenizer, text_encoder=None, buckets=TINY_BUCKETS).run(
        VideoDataset(manifest, TINY_BUCKETS))
    data = CachedDataset(out, require_images=True)
    assert len(data) == 1 and not data.has_context
    batch = Loader(data, batch_size=1, text="ids", images=True, process_index=0, process_count=1).batch(0)
    assert batch["image_latents"].shape == (1, 1, 16, 1, 4, 6) and batch["ids"].shape == (1, 1, TEXT_LEN)
    image = next(VideoDataset(manifest, TINY_BUCKETS).clips()).image
    np.testing.assert_array_equal(batch["image_latents"][0, 0], np.asarray(encode(*vae, jnp.asarray(image[None])))[0])
