"""Sample videos of a training run: held-out captions generated with the current weights, decoded, written as
mp4; the same weights give the same video (fixed noise per sample)."""

import numpy as np
import pytest

from wan22_jax.training.previews import PreviewRenderer, batch_previews, pixel_decoder
from wan22_jax.training.step import full_params
from wan22_jax.video import read_video

from .conftest import make_batch


# slow (about 20 s): compiles a sampling loop of the DiT
@pytest.mark.slow
def test_previews_are_written_and_repeatable(tmp_path, tiny_dit):
    graphdef, params = tiny_dit
    batch = {k: v[0] for k, v in make_batch(1, 3, frames=2).items()}  # latents [3, 4, 2, 4, 4]
    batch["null_context"] = np.zeros_like(batch["context"])
    previews = batch_previews(batch, ["a red bar", "a blue dot", "unused"], 2)
    assert [p.caption for p in previews] == ["a red bar", "a blue dot"] and previews[0].shape == (4, 2, 4, 4)
    # the tiny DiT's 4 latent channels: show the first 3 as colours
    renderer = PreviewRenderer(graphdef, full_params, None, previews, steps=3,
                               decode=lambda lat: pixel_decoder(4)(np.tanh(lat[:, :3])))
    paths = renderer.render(params, None, 7, tmp_path)
    assert [p.name for p in paths] == ["step_000007_0.mp4", "step_000007_1.mp4"]
    assert (tmp_path / "samples" / "prompts.txt").read_text() == "0\ta red bar\n1\ta blue dot\n"
    first = read_video(paths[0])
    assert first.shape == (2, 16, 16, 3)
    again = renderer.render(params, None, 8, tmp_path)
    np.testing.assert_array_equal(read_video(again[0]), first)
    assert not np.array_equal(read_video(paths[1]), first)  # another caption and noise
