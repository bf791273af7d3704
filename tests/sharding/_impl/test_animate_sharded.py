"""Animate-14B loaded onto a mesh of 8 simulated devices (`load_animate(mesh=...)`, `AnimatePipeline.from_pretrained(
mesh=...)`) equals the single-device model and run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from wan22_jax.convert.animate import load_animate
from wan22_jax.pipeline import AnimatePipeline
from wan22_jax.sharding import make_mesh, mesh_context
from wan22_jax.verify import default_reference_dir, load_case, relative_error

REF = default_reference_dir()
TOL = 1e-5


@jax.jit
def _forward(graphdef, state, x, t, clip_fea, context, y, pose, face):
    return nnx.merge(graphdef, state)(x, t, clip_fea, context, y=y, pose_latents=pose, face_pixel_values=face)


def _case(name):
    if not (REF / name / "case.json").is_file():
        pytest.skip(f"no reference case {name} under {REF}")
    return load_case(REF / name)


@pytest.mark.parametrize("mesh_spec", ["fsdp=8", pytest.param("fsdp=2,seq=2,tensor=2", marks=pytest.mark.slow)])
def test_animate_dit_loaded_sharded_matches_single_device(mesh_spec):
    case = _case("animate_dit")
    mesh = make_mesh(mesh_spec)
    inp = {k: jnp.asarray(v) for k, v in case.inputs.items()}
    args = [inp[k] for k in ("x", "t", "clip_fea", "context", "y", "pose_latents", "face_pixel_values")]
    single = np.asarray(_forward(*nnx.split(load_animate(case.checkpoint)), *args))
    graphdef, state = nnx.split(load_animate(case.checkpoint, mesh=mesh))
    kernel = state["blocks"]["ffn"]["0"]["kernel"][...]
    assert kernel.sharding.mesh == mesh and len(kernel.sharding.device_set) == 8
    assert any(s is not None for s in kernel.sharding.spec)  # split, not only replicated
    with mesh_context(mesh):
        sharded = np.asarray(_forward(graphdef, state, *args))
    assert relative_error(sharded, single) <= TOL
    assert relative_error(sharded, case.outputs["out"]) <= case.tolerance


@pytest.mark.slow  # 75 s on 2 cores: run with `pytest tests/sharding -m slow`
def test_animate_pipeline_on_a_mesh_matches_one_device():
    case = _case("pipe_animate")
    inp = load_file(case.dir / "inputs.safetensors")
    call = dict(ref_image=inp["ref_image_uint8"], pose_video=inp["pose_video_uint8"],
                face_video=inp["face_video_uint8"], prompt_embeds=np.full((3, 24), 0.1, np.float32),
                negative_prompt_embeds=np.zeros((2, 24), np.float32), clip_len=5, num_inference_steps=2,
                guidance_scale=1.5, seed=3, progress=False)
    one = AnimatePipeline.from_pretrained(case.checkpoint, dtype="fp32", progress=False)(**call)
    pipe = AnimatePipeline.from_pretrained(case.checkpoint, dtype="fp32", mesh="fsdp=4,tensor=2", progress=False)
    assert pipe.mesh is not None and len(pipe.dit[1]["blocks"]["ffn"]["0"]["kernel"][...].sharding.device_set) == 8
    out = pipe(**call)
    assert relative_error(out.video, one.video) <= 1e-4
