"""Animate pipeline: the official clip bookkeeping (frame extension, masks) and input errors before any compute.
The numbers of whole runs are checked by the reference cases pipe_animate / pipe_animate_replace."""

import numpy as np
import pytest

from wan22_jax.errors import InputError
from wan22_jax.models.animate.model_animate import ANIMATE_PRESETS, random_animate
from wan22_jax.pipeline.animate import generate_animate, i2v_mask, ping_pong, valid_length


def test_valid_length_tiles_the_clips():
    assert valid_length(9, 5, 1) == 9  # clips [0, 5), [4, 9)
    assert valid_length(10, 5, 1) == 13  # one more clip, 3 frames of padding
    assert valid_length(77, 77, 5) == 77


def test_ping_pong_walks_back_and_forth():
    assert ping_pong(np.arange(4), 10).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert ping_pong(np.arange(4), 3).tolist() == [0, 1, 2]


def test_i2v_mask_layout():
    m = i2v_mask(np.zeros((5, 2, 3)), keep=1)  # frame 0 kept: 4 copies fill latent frame 0
    assert m.shape == (4, 2, 2, 3)
    assert m[:, 0].min() == 1.0 and m[:, 1].max() == 0.0
    m = i2v_mask(np.zeros((9, 1, 1)), keep=5)  # refert_num 5: latent frames 0 and 1 fully kept, 2 not
    assert m[:, :2].min() == 1.0 and m[:, 2].max() == 0.0


@pytest.fixture(scope="module")
def tiny_dit():
    return random_animate(ANIMATE_PRESETS["tiny-animate"])


def _args(**over):
    args = dict(context=np.zeros((3, 24), np.float32), context_null=np.zeros((3, 24), np.float32),
                ref_image=np.zeros((32, 48, 3), np.uint8), pose_video=np.zeros((9, 32, 48, 3), np.uint8),
                face_video=np.zeros((9, 16, 16, 3), np.uint8), noise=np.zeros((2, 16, 3, 4, 6), np.float32),
                clip_len=5, refert_num=1, steps=2)
    args.update(over)
    return args


@pytest.mark.parametrize("over,match", [
    (dict(clip_len=6), "clip_len must be 4k"),
    (dict(refert_num=2), "refert_num must be 1 or 5"),
    (dict(noise=np.zeros((1, 16, 3, 4, 6), np.float32)), r"noise has shape \(1, 16, 3, 4, 6\); expected \(2, "),
    (dict(face_video=np.zeros((9, 32, 32, 3), np.uint8)), r"face video has shape \(9, 32, 32, 3\)"),
    (dict(ref_image=np.zeros((48, 32, 3), np.uint8)), r"reference image has shape \(48, 32, 3\)"),
    (dict(pose_video=np.zeros((9, 40, 48, 3), np.uint8)), "multiples of 16"),
    (dict(replace=True), "background video has shape None"),
])
def test_bad_inputs_are_named_before_compute(tiny_dit, over, match):
    with pytest.raises(InputError, match=match):
        generate_animate(tiny_dit, None, None, **_args(**over))  # no VAE / CLIP: nothing may run


# the mismatched and missing inputs of issue #23: each one InputError naming it, before any compute
@pytest.mark.parametrize("over,match", [
    (dict(replace=True, bg_video=np.zeros((9, 32, 48, 3), np.uint8), mask_video=np.zeros((8, 32, 48), np.uint8)),
     "mask video has 8 frames but the pose video has 9"),
    (dict(replace=True, bg_video=np.zeros((9, 32, 48, 3), np.uint8), mask_video=np.zeros((9, 16, 48), np.uint8)),
     r"mask video frames are 16x48 \(HxW\) but the pose frames are 32x48"),
    (dict(replace=True, bg_video=np.zeros((7, 32, 48, 3), np.uint8), mask_video=np.zeros((9, 32, 48), np.uint8)),
     "background video has 7 frames but the pose video has 9"),
    (dict(replace=True, mask_video=np.zeros((9, 32, 48), np.uint8)), "background video has shape None"),
    (dict(replace=True, bg_video=np.zeros((9, 32, 48, 3), np.uint8)), "mask video has shape None"),
    (dict(face_video=np.zeros((10, 16, 16, 3), np.uint8)), "face video has 10 frames but the pose video has 9"),
    (dict(pose_video=np.zeros((4, 32, 48, 3), np.uint8), face_video=np.zeros((4, 16, 16, 3), np.uint8)),
     "pose video has 4 frames, fewer than one clip of 5"),
    (dict(refert_num=5), "refert_num 5 must be smaller than clip_len 5"),
])
def test_mismatched_videos_are_named_before_compute(tiny_dit, over, match):
    with pytest.raises(InputError, match=match):
        generate_animate(tiny_dit, None, None, **_args(**over))
