"""S2V-14B on a mesh of 8 simulated devices: `S2VPipeline.from_pretrained(mesh=...)` loads the DiT onto its shards,
and a sharded tiny-random generation (clip after clip) equals the one-device run."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from refcases import REFERENCE_DIR
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.pipeline.s2v import S2VPipeline
from wan22_jax.presets_s2v import random_s2v_pipeline
from wan22_jax.verify import relative_error

TOL = 1e-5  # measured: video 4.0e-6, latents 8.2e-7 (data=2,fsdp=2,seq=2); video 5.0e-6 (fsdp=4,seq=2)


def test_from_pretrained_on_a_mesh_places_every_component():
    ckpt = REFERENCE_DIR / "pipe_s2v" / "checkpoint"
    if not (ckpt / "config.json").is_file():
        pytest.skip(f"no reference checkpoint at {ckpt}")
    pipe = Wan22Pipeline.from_pretrained(ckpt, dtype="fp32", mesh="fsdp=4,seq=2", progress=False)
    assert isinstance(pipe, S2VPipeline) and pipe.mesh is not None
    dit = pipe.dit[1]
    kernel = dit["blocks"]["ffn"]["0"]["kernel"][...]
    assert len(kernel.sharding.device_set) == 8 and any(s is not None for s in kernel.sharding.spec)
    # the S2V-only modules are split by the same DiT rules
    audio_proj = jax.tree.leaves(dit["casual_audio_encoder"])
    assert any(any(s is not None for s in a.sharding.spec) for a in audio_proj)
    for leaf in jax.tree.leaves(pipe.vae[1]) + jax.tree.leaves(pipe.audio_encoder):
        assert len(leaf.sharding.device_set) == 8
    wav2vec = jax.tree.leaves(pipe.audio_encoder)
    assert all(a.sharding.spec == PartitionSpec() for a in wav2vec)  # replicated


@pytest.mark.slow  # 166 s on 2 cores: the clip loop compiled twice (one device, then sharded)
def test_tiny_random_generation_sharded_equals_one_device():
    pipe = random_s2v_pipeline()
    wave = (0.2 * np.sin(np.arange(24000) * 2 * np.pi * 300 / 16000)).astype(np.float32)
    img = np.random.default_rng(0).integers(0, 256, (72, 100, 3), dtype=np.uint8)
    pose = np.random.default_rng(1).integers(0, 256, (10, 80, 80, 3), dtype=np.uint8)
    call = dict(prompt="a woman singing", image=img, audio=wave, pose_video=pose, num_clips=2, seed=3,
                progress=False)
    one = pipe(**call)
    sharded = pipe.sharded("data=2,fsdp=2,seq=2")
    kernel = sharded.dit[1]["blocks"]["ffn"]["0"]["kernel"][...]
    assert len(kernel.sharding.device_set) == 8 and pipe.mesh is None  # the original pipeline is unchanged
    out = sharded(**call)
    assert out.video.shape == one.video.shape == (1, 3, 13, 64, 64)
    assert relative_error(out.video, one.video) <= TOL
    assert relative_error(out.latents, one.latents) <= TOL
