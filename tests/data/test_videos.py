"""Real-file training samples: listing (folder and manifests), buckets, frame sampling, captions, skip report."""

import dataclasses
import json

import numpy as np
import pytest

from video_samples import BAD, TINY_BUCKETS, write_samples
from wan22_jax.data.buckets import (Bucket, BucketConfig, cover_crop, frame_bucket, nearest_resolution,
                                    resolutions, source_indices)
from wan22_jax.data.videos import VideoDataset
from wan22_jax.errors import ConfigError, InputFileError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("videos"))


def test_resolutions_are_stride_multiples_within_area_and_aspect():
    cfg = BucketConfig(area=480 * 832, stride=32, max_aspect=2.0)
    res = resolutions(cfg)
    assert (480, 832) in res and (832, 480) in res
    for h, w in res:
        assert h % 32 == 0 and w % 32 == 0 and h * w <= 480 * 832 and max(h, w) <= 2 * min(h, w)
    assert nearest_resolution(720, 1280, res) == (480, 832)  # 16:9 -> the 480p landscape bucket
    assert nearest_resolution(1280, 720, res) == (832, 480)


def test_frame_buckets_and_sampling():
    cfg = BucketConfig(frames=[17, 5, 9], fps=8)
    assert cfg.frames == (5, 9, 17)
    assert frame_bucket(16, cfg) == 9 and frame_bucket(17, cfg) == 17 and frame_bucket(4, cfg) is None
    # a 16 fps source sampled at 8 fps: every other frame
    np.testing.assert_array_equal(source_indices(5, 16, 8), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(source_indices(4, 30, None), [0, 1, 2, 3])  # fps=None: every frame
    np.testing.assert_array_equal(source_indices(5, 8, 16), [0, 0, 1, 1, 2])  # above the source's rate
    (rh, rw), box = cover_crop(720, 1280, 480, 832)
    assert rh == 480 and rw >= 832 and box == (0, (rw - 832) // 2, 480, (rw - 832) // 2 + 832)


@pytest.mark.parametrize("field, value, match", [
    ("frames", (8,), "1 \\+ 4k"), ("stride", 0, "stride"), ("area", 10, "area"), ("fps", -1, "fps")])
def test_bucket_config_errors_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        BucketConfig(**{field: value})


def test_folder_buckets_captions_and_skip_report(folder):
    ds = VideoDataset(folder, TINY_BUCKETS)
    clips = {c.sample.key: c for c in ds.clips()}
    assert sorted(clips) == ["en.mp4", "ja.mp4", "still.png", "sub/wide.mp4"]
    assert clips["en.mp4"].bucket == Bucket(17, 32, 48)
    assert clips["ja.mp4"].bucket == Bucket(9, 48, 32)
    assert clips["sub/wide.mp4"].bucket == Bucket(9, 32, 48)  # 12 frames -> the 9-frame bucket, 32x64 cropped
    assert clips["still.png"].bucket.frames == 1
    for c in clips.values():
        b = c.bucket
        assert c.video.shape == (3, b.frames, b.height, b.width) and c.video.dtype == np.float32
        assert -1.0 <= c.video.min() and c.video.max() <= 1.0 and c.video.std() > 0.05
    assert clips["ja.mp4"].sample.caption == "黒い背景の上を左に動く赤い円"  # UTF-8 kept
    assert clips["still.png"].sample.caption == "a yellow & white square"  # the tokenizer's cleaning
    assert ds.report.counts == {reason: 1 for reason in BAD.values()}
    assert {k for k, _, _ in ds.report.items} == set(BAD)
    assert "3 file(s) skipped" in ds.report.summary()


def test_frame_rate_changes_the_clip(folder):
    ds = VideoDataset(folder, dataclasses.replace(TINY_BUCKETS, fps=8))
    clips = {c.sample.key: c for c in ds.clips()}
    full = {c.sample.key: c for c in VideoDataset(folder, TINY_BUCKETS).clips()}
    # 17 frames at 16 fps -> 9 frames at 8 fps: the source's frames 0, 2, ..., 16
    assert clips["en.mp4"].bucket.frames == 9
    np.testing.assert_array_equal(clips["en.mp4"].video, full["en.mp4"].video[:, ::2])
    assert clips["ja.mp4"].bucket.frames == 5 and clips["sub/wide.mp4"].bucket.frames == 5
    assert ds.report.counts["too few frames"] == 1


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_manifest_with_first_frame_images(folder, kind):
    rows = [{"path": "en.mp4", "caption": "ein roter Kreis", "image": "still.png"},
            {"path": "ja.mp4", "caption": "赤い円"},
            {"path": "en.mp4", "caption": "the same file, another caption"},
            {"path": "gone.mp4", "caption": "x"},
            {"path": "corrupt.mp4", "caption": "y"},
            {"path": "en.txt", "caption": "z"},
            {"path": "sub/wide.mp4", "caption": "   "}]
    path = folder / f"manifest.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    else:
        lines = ["path,caption,image"] + [f'{r["path"]},"{r["caption"]}",{r.get("image", "")}' for r in rows]
        path.write_text("\n".join(lines), encoding="utf-8")
    ds = VideoDataset(path, TINY_BUCKETS)
    assert [s.key for s in ds.samples] == ["en.mp4", "ja.mp4", "en.mp4#2", "corrupt.mp4"]
    assert ds.samples[1].caption == "赤い円" and ds.samples[0].image == folder / "still.png"
    clips = list(ds.clips())
    assert len(clips) == 3
    assert clips[0].image.shape == (3, 1, 32, 48)  # the image cut to the video's bucket
    assert clips[1].image is None
    assert ds.report.counts == {"missing file": 1, "unsupported file type": 1, "missing caption": 1,
                                "unreadable": 1}


def test_missing_source_is_one_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="not a folder of videos"):
        VideoDataset(tmp_path / "nothing", TINY_BUCKETS)
