"""Animate inputs from files: the official preprocessing folder layout, explicit paths overriding it, the official
padding_resize of the reference image, and one InputFileError per missing or unreadable file."""

import numpy as np
import pytest
from PIL import Image

from wan22_jax.errors import InputError, InputFileError
from wan22_jax.pipeline.animate_inputs import SRC_FILES, animate_inputs, padding_resize
from wan22_jax.video import Video

RNG = np.random.default_rng(0)


def _write_src(folder, frames=9, replace=True):
    folder.mkdir(exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (24, 40, 3), np.uint8)).save(folder / SRC_FILES["ref_image"])
    shapes = {"pose_video": (frames, 32, 48, 3), "face_video": (frames, 16, 16, 3)}
    if replace:
        shapes.update(bg_video=(frames, 32, 48, 3), mask_video=(frames, 32, 48, 3))
    for key, shape in shapes.items():
        Video(RNG.integers(0, 255, shape, np.uint8)).save(folder / SRC_FILES[key])
    return folder


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return _write_src(tmp_path_factory.mktemp("src"))


def test_src_root_layout_reads_every_video(src):
    inp = animate_inputs(src_root=src, mode="replace")
    assert inp["pose_video"].shape == (9, 32, 48, 3) and inp["face_video"].shape == (9, 16, 16, 3)
    assert inp["bg_video"].shape == inp["mask_video"].shape == (9, 32, 48, 3)
    assert inp["ref_image"].shape == (32, 48, 3) and inp["ref_image"].dtype == np.uint8  # padded to the pose size
    animated = animate_inputs(src_root=src, mode="animate")
    assert animated["bg_video"] is None and animated["mask_video"] is None


def test_explicit_arrays_override_the_folder(src):
    pose = np.zeros((5, 32, 48, 3), np.uint8)
    inp = animate_inputs(src_root=src, pose_video=pose)
    assert inp["pose_video"] is not None and inp["pose_video"].shape[0] == 5


def test_padding_resize_centres_on_black():
    img = np.full((10, 20, 3), 200, np.uint8)  # wider than 32 x 32: scaled to 32 x 16, bands above and below
    out = padding_resize(img, 32, 32)
    assert out.shape == (32, 32, 3)
    assert out[:8].max() == 0 and out[24:].max() == 0 and out[8:24].min() == 200
    same = np.arange(32 * 48 * 3, dtype=np.uint8).reshape(32, 48, 3)
    assert np.array_equal(padding_resize(same, 32, 48), same)  # the official keeps a same-size reference as is


def test_missing_reference_image(tmp_path, src):
    with pytest.raises(InputFileError, match=r"reference image .*nope\.png: no such file"):
        animate_inputs(ref_image=tmp_path / "nope.png", pose_video=src / "src_pose.mp4",
                       face_video=src / "src_face.mp4")
    with pytest.raises(InputError, match="animate mode needs reference image"):
        animate_inputs(pose_video=src / "src_pose.mp4", face_video=src / "src_face.mp4")


def test_unreadable_video_file(tmp_path, src):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(InputFileError, match=r"pose video .*bad\.mp4: not a readable video"):
        animate_inputs(src_root=src, pose_video=bad)
    with pytest.raises(InputFileError, match=r"face video .*missing\.mp4: no such file"):
        animate_inputs(src_root=src, face_video=tmp_path / "missing.mp4")


def test_replace_without_background_or_mask(tmp_path):
    folder = _write_src(tmp_path / "animate_only", frames=5, replace=False)
    with pytest.raises(InputError, match=r"replace mode needs background video, mask video"):
        animate_inputs(ref_image=folder / "src_ref.png", pose_video=folder / "src_pose.mp4",
                       face_video=folder / "src_face.mp4", mode="replace")
    with pytest.raises(InputFileError, match=r"background video .*src_bg\.mp4: no such file"):
        animate_inputs(src_root=folder, mode="replace")


def test_bad_mode_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"mode 'swap': expected one of \('animate', 'replace'\)"):
        animate_inputs(src_root=tmp_path, mode="swap")
    with pytest.raises(InputFileError, match="source folder .*absent: no such folder"):
        animate_inputs(src_root=tmp_path / "absent")
