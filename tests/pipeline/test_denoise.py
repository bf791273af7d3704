"""The denoising stage: progress is reported from the host between compiled step calls (in order, and the result
is the progress-free one bit for bit), and the compiled loop holds no platform-bound host callback, so it lowers
for a GPU target on a CPU host."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wan22_jax.pipeline import EXPERTS, make_plan, run_steps, start_loop, validate_request
from wan22_jax.presets import random_pipeline
from wan22_jax.samplers import loop
from wan22_jax.samplers.loop import step_rows

CALL = dict(prompt="a cat", num_frames=5, num_inference_steps=4, output_type="latent")


@pytest.fixture(scope="module")
def t2v():
    return random_pipeline("t2v-A14B")


def _loop_args(pipe, **call):
    request = validate_request(pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=True,
                               **{**CALL, **call})
    plan = make_plan(request, pipe.task)
    inputs, _ = pipe.inputs(request)
    names = EXPERTS if pipe.task.two_experts else ("model",)
    graphdef, states = pipe.experts[names[0]][0], tuple(pipe.experts[n][1] for n in names)
    _, carry, kvs = start_loop(graphdef, plan, states, inputs)
    return graphdef, plan, (states, kvs, inputs, carry, step_rows(request.tables, jnp.float32), None)


def test_progress_is_reported_per_step_and_changes_nothing(t2v):
    calls = []
    with_progress = t2v(progress=lambda done, total: calls.append((done, total)), return_trajectory=True, **CALL)
    silent = t2v(progress=False, return_trajectory=True, **CALL)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    np.testing.assert_array_equal(with_progress.latents, silent.latents)
    for k in ("samples", "velocities"):
        np.testing.assert_array_equal(with_progress.trajectory[k], silent.trajectory[k])
    assert not hasattr(loop, "set_progress")  # no module-level hook left


@pytest.mark.parametrize("platforms", [("cpu",), ("cuda",)])
def test_the_loop_lowers_with_no_host_callback(t2v, platforms):
    # the pipeline's default kernels are XLA's: the program has no custom call at all, for any target
    graphdef, plan, args = _loop_args(t2v, step_cache=None)
    traced = run_steps.trace(graphdef, plan, *args)
    text = traced.lower(lowering_platforms=platforms).as_text()
    assert "stablehlo.while" in text  # the scanned steps are in the program
    assert "callback" not in text, sorted(set(re.findall(r"custom_call @(\w+)", text)))
    assert re.findall(r"custom_call @(\w+)", text) == []


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="only a CPU-only host lacks the cuda backend")
def test_a_tiny_loop_with_a_python_callback_would_not_lower_for_cuda():
    # why progress is not a callback inside the program: on this CPU host, lowering one for cuda fails
    def f(x):
        def body(c, i):
            jax.debug.callback(lambda i: None, i)
            return c + 1.0, None
        return jax.lax.scan(body, x, jnp.arange(3))[0]

    with pytest.raises(ValueError, match="lowering platform cuda"):
        jax.jit(f).trace(jnp.float32(0)).lower(lowering_platforms=("cuda",))
