"""Sharded VAE decode and a tiny end-to-end pipeline on 8 simulated devices equal their single-device runs."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from flax import nnx

from wan22_jax.models.vae import decode, random_vae
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.ops import Kernels, with_kernels
from wan22_jax.presets import random_pipeline
from wan22_jax.sharding import make_mesh
from wan22_jax.sharding.loading import vae_decode
from wan22_jax.verify import default_reference_dir, relative_error, run_case


@pytest.mark.parametrize("version,mesh_spec", [("2.1", "data=2,fsdp=4"),
                                               pytest.param("2.2", "fsdp=2,seq=2,tensor=2", marks=pytest.mark.slow)])
def test_vae_decode_spatially_sharded(version, mesh_spec):
    z = 16 if version == "2.1" else 48
    cfg = VAEConfig(version=version, dim=8, dec_dim=8 if version == "2.2" else None, z_dim=z)
    graphdef, state = random_vae(cfg, seed=1)
    latent = np.random.default_rng(0).standard_normal((2, z, 2, 8, 8)).astype(np.float32)
    single = np.asarray(decode(graphdef, state, latent))
    mesh = make_mesh(mesh_spec)
    sharded = vae_decode(graphdef, state, latent, mesh)
    assert relative_error(np.asarray(sharded), single) <= 1e-5


def test_dots_decode_keeps_the_row_split():
    # conv="dots" on a mesh: the same video as the one-device XLA decode, and rows stay split (its row shifts are
    # halo exchanges): no more all-gathers than the XLA-convolution program (whose only ones are the middle
    # attention's, over whole latent frames)
    cfg = VAEConfig(version="2.1", dim=8, z_dim=16)
    graphdef, state = random_vae(cfg, seed=1)
    latent = np.random.default_rng(0).standard_normal((1, 16, 2, 16, 8)).astype(np.float32)
    single = np.asarray(decode(graphdef, state, latent))
    dots = nnx.split(with_kernels(nnx.merge(graphdef, state), Kernels(conv="dots")))[0]
    mesh = make_mesh("fsdp=4,seq=2")
    assert relative_error(np.asarray(vae_decode(dots, state, latent, mesh)), single) <= 1e-5

    def gathers(g):
        rows = NamedSharding(mesh, PartitionSpec(None, None, None, ("fsdp", "seq")))
        with jax.set_mesh(mesh):
            compiled = jax.jit(lambda s, z: decode(g, s, z)).lower(
                jax.device_put(state, NamedSharding(mesh, PartitionSpec())), jax.device_put(latent, rows)).compile()
        return compiled.as_text().count("all-gather(")

    assert gathers(dots) <= gathers(graphdef)


@pytest.mark.slow  # ~100 s on 2 cores: two compiles of the whole sampling loop
def test_tiny_pipeline_sharded_end_to_end():
    pipe = random_pipeline("t2v-A14B", text_len=16)
    kwargs = dict(prompt="a cat walking in the snow", num_frames=5, num_inference_steps=3, seed=0,
                  progress=False)
    single = pipe(**kwargs)
    pipe = pipe.sharded("data=2,fsdp=2,seq=2")  # CFG halves over data, tokens over fsdp x seq
    state = pipe.experts["high_noise_model"][1]
    assert len(jax.tree.leaves(state)[0].sharding.device_set) == 8
    sharded = pipe(**kwargs)
    assert relative_error(sharded.latents, single.latents) <= 1e-4
    assert relative_error(sharded.video, single.video) <= 1e-4


@pytest.mark.slow
def test_verify_pipeline_case_under_a_mesh():
    case = default_reference_dir() / "pipe_ti2v"
    if not (case / "case.json").is_file():
        pytest.skip(f"no reference case at {case}")
    result = run_case(case, mesh="fsdp=4,tensor=2")
    assert result.passed, result.outputs
