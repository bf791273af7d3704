"""The mini-world as files: mp4 clips with English and Japanese captions in a manifest that the video dataset
reads back as the same clips (decoded within about one level of 255, read right by the detector)."""

import json

import numpy as np
import pytest

from wan22_jax.data.buckets import BucketConfig
from wan22_jax.data.detector import detect
from wan22_jax.data.mini_world import MiniWorld, scene_of_prompt, to_uint8_frames
from wan22_jax.data.mini_world_files import write_mp4, write_split
from wan22_jax.data.videos import VideoDataset
from wan22_jax.errors import InputError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("files")
    return out, write_split(out, "held_out", 4, seed=3)


def test_files_round_trip_through_the_video_dataset(files):
    out, report = files
    assert report == {"clips": 4, "checked": 4, "detector_ok": 4, "max_abs_error": report["max_abs_error"]}
    assert report["max_abs_error"] < 3.0
    data = VideoDataset(out / "held_out.jsonl", BucketConfig(area=64 * 64, stride=16, frames=(5,), fps=None,
                                                             images=False))
    assert len(data) == 8 and len(data.report) == 0  # each clip once per language
    world = MiniWorld(height=64, width=64, frames=5, split="held_out", seed=3)
    clips = list(data.clips())
    for i, clip in enumerate(clips):
        want = world.clip(i // 2)
        assert clip.sample.caption == want.scene.caption(("en", "ja")[i % 2])
        assert scene_of_prompt(clip.sample.caption) == want.scene
        assert clip.video.shape == (3, 5, 64, 64)
        # the file decodes to the render, whichever caption it is listed under
        assert np.abs(clip.video - want.video).mean() < 3.0 / 127.5
        assert all(detect(to_uint8_frames(clip.video)).matches(want.scene).values())


def test_manifest_is_utf8_with_both_languages(files):
    out, _ = files
    rows = [json.loads(line) for line in (out / "held_out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["language"] for r in rows] == ["en", "ja"] * 4
    assert rows[0]["path"] == rows[1]["path"] == "held_out/00000.mp4"
    assert all("背景の上を" in r["caption"] for r in rows[1::2])


def test_rewriting_keeps_the_files(files):
    out, _ = files
    before = (out / "held_out" / "00001.mp4").stat().st_mtime_ns
    write_split(out, "held_out", 4, seed=3, check_every=0)
    assert (out / "held_out" / "00001.mp4").stat().st_mtime_ns == before


def test_odd_sides_are_refused(tmp_path):
    with pytest.raises(InputError, match="yuv420p needs even sides"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 15, 16, 3), np.uint8))
