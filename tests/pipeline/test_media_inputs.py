"""The image and video file readers the S2V and Animate inputs share: files decode to uint8 RGB, and a missing,
undecodable or empty file raises one InputFileError that starts with the caller's label."""

import numpy as np
import pytest
from PIL import Image

from wan22_jax.errors import InputFileError
from wan22_jax.pipeline.media_inputs import existing_file, read_image_file, read_video_file
from wan22_jax.video import Video


def test_image_file_reads_as_rgb(tmp_path):
    grey = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(grey).save(tmp_path / "g.png")  # one channel on disk: RGB after reading
    got = read_image_file(tmp_path / "g.png", "the image")
    assert got.shape == (6, 10, 3) and got.dtype == np.uint8
    assert np.array_equal(got[..., 1], grey)


def test_video_file_reads_every_frame(tmp_path):
    Video(np.full((5, 16, 16, 3), 128, np.uint8)).save(tmp_path / "v.mp4")
    got = read_video_file(str(tmp_path / "v.mp4"), "the video")
    assert got.shape == (5, 16, 16, 3) and got.dtype == np.uint8


def test_bad_files_are_named_by_their_label(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(InputFileError, match=r"^ref 'x': no such file$"):
        existing_file(tmp_path / "absent.png", "ref 'x'")
    with pytest.raises(InputFileError, match=r"^my image: no such file$"):
        read_image_file(tmp_path, "my image")  # a folder is not a file
    with pytest.raises(InputFileError, match=r"^my image: not a readable image \("):
        read_image_file(tmp_path / "junk.png", "my image")
    with pytest.raises(InputFileError, match=r"^my video: not a readable video \("):
        read_video_file(tmp_path / "junk.mp4", "my video")
    with pytest.raises(InputFileError, match=r"^my video: no such file$"):
        read_video_file(tmp_path / "absent.mp4", "my video")
