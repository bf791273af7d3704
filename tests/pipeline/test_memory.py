"""`memory.refuse_clip_loop`, the shape-only check of the clip-after-clip pipelines (S2V-14B, Animate-14B): one
clip on the devices, the whole video in host memory (the same RAM on the CPU backend)."""

import types

import pytest

from wan22_jax.errors import InsufficientMemoryError
from wan22_jax.pipeline import memory

SHAPE = (16, 2, 8, 8)  # one clip's latents; it decodes to 5 frames of 64x64, the whole video has 40
CLIP = 6 * 4 * 16 * 2 * 8 * 8 + 4 * 3 * 5 * 64 * 64
VIDEO = 4 * 3 * 40 * 64 * 64
GPU = types.SimpleNamespace(platform="gpu")


def _check(devices):
    return memory.refuse_clip_loop(devices, "a request", SHAPE, 5, 64, 64, 40, sharded=False,
                                   smaller=("fewer clips", "a smaller size"))


def test_on_an_accelerator_the_video_counts_against_host_memory(monkeypatch):
    free = {"gpu": CLIP, "cpu": VIDEO}  # each just enough for its own part
    monkeypatch.setattr(memory, "available_bytes", lambda devices: (free[devices[0].platform], "memory"))
    assert _check([GPU]) == CLIP
    free["cpu"] = VIDEO - 1
    with pytest.raises(InsufficientMemoryError, match="the video of a request needs .* try fewer clips, a smaller "
                                                      "size$"):
        _check([GPU])
    free.update(cpu=VIDEO, gpu=CLIP - 1)
    with pytest.raises(InsufficientMemoryError, match="^a request needs .* a mesh over more devices"):
        _check([GPU])


def test_on_the_cpu_clip_and_video_share_the_ram(monkeypatch):
    cpu = types.SimpleNamespace(platform="cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda devices: (CLIP + VIDEO, "RAM"))
    assert _check([cpu]) == CLIP + VIDEO
    monkeypatch.setattr(memory, "available_bytes", lambda devices: (CLIP + VIDEO - 1, "RAM"))
    with pytest.raises(InsufficientMemoryError, match="^a request needs"):
        _check([cpu])
