"""Sampler presets: the few-step distillation recipe equals diffusers' flow-matching Euler scheduler with the
same settings (sigmas, timesteps and the whole trajectory), and the pipeline runs it without the unconditional
branch."""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from wan22_jax import generate_cli
from wan22_jax.errors import InputError
from wan22_jax.models.step_cache import StepCache
from wan22_jax.pipeline.plan import make_plan
from wan22_jax.pipeline.request import validate_request
from wan22_jax.presets import random_pipeline
from wan22_jax.samplers import get_sampler, sample
from wan22_jax.samplers.presets import SAMPLER_PRESETS


def _diffusers(steps: int, shift: float) -> FlowMatchEulerDiscreteScheduler:
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # the distillation's denoising step list 1000, 750, ... as unshifted sigmas; diffusers applies the shift
    sched.set_timesteps(sigmas=list(np.linspace(1.0, 0.0, steps + 1)[:-1]))
    return sched


@pytest.mark.parametrize("steps", [4, 8])
def test_lightning_schedule_equals_diffusers(steps):
    preset = SAMPLER_PRESETS["lightning-4step"]
    ours = preset.schedule(steps)
    ref = _diffusers(steps, preset.shift)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    # the model's float timesteps, as the float32 the loop hands it
    np.testing.assert_array_equal(np.float32(ours.node_times()[:-1]), ref.timesteps.numpy())
    if steps == 4:
        np.testing.assert_allclose(ours.node_times()[:-1], [1000.0, 937.5, 2500 / 3, 625.0], rtol=1e-7)


def test_lightning_trajectory_equals_diffusers_euler():
    preset = SAMPLER_PRESETS["lightning-4step"]
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((2, 3, 4)).astype(np.float32)
    w = rng.standard_normal((4,)).astype(np.float32)

    def v_np(x, t):  # a velocity field that depends on x and t in a non-trivial way
        return np.tanh(x * w) * (t / 1000.0) - 0.3 * x

    ours = sample(get_sampler(preset.sampler), lambda x, t, i: jnp.tanh(x * w) * (t / 1000.0) - 0.3 * x,
                  jnp.asarray(x_T), preset.schedule())
    ref = _diffusers(preset.steps, preset.shift)
    x = torch.from_numpy(x_T)
    for t in ref.timesteps:
        v = torch.from_numpy(v_np(x.numpy(), np.float32(t.item())).astype(np.float32))
        x = ref.step(v, t, x, return_dict=False)[0]
    np.testing.assert_allclose(np.asarray(ours), x.numpy(), rtol=0, atol=2e-6)


def test_pipeline_preset_runs_without_the_unconditional_branch():
    pipe = random_pipeline("t2v-A14B")
    kw = dict(prompt="a red circle", seed=0, output_type="latent", progress=False)
    request = validate_request(pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=True,
                               solver="lightning-4step", **kw)
    assert (request.steps, request.shift, request.guidance_scale) == (4, 5.0, (1.0, 1.0))
    assert not make_plan(request, pipe.task).cfg
    fast = pipe(solver="lightning-4step", **kw)
    np.testing.assert_array_equal(fast.timesteps, [1000, 937, 833, 625])
    # with CFG at scale 1.001 the unconditional branch runs and changes the result by ~0.1 % of the gap only
    guided = pipe(solver="lightning-4step", guidance_scale=1.001, **kw)
    assert make_plan(validate_request(pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=True,
                                      solver="lightning-4step", guidance_scale=1.001, **kw), pipe.task).cfg
    gap = float(np.max(np.abs(fast.latents - guided.latents)))
    assert 0 < gap < 1e-2 * float(np.max(np.abs(fast.latents)))
    # explicit arguments override the preset
    eight = validate_request(pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=True,
                             solver="lightning-4step", num_inference_steps=8, **kw)
    assert eight.steps == 8 and eight.guidance_scale == (1.0, 1.0)
    # a step cache on the single (unguided) batch: per expert, step 0 runs and step 1 reuses its residual
    cached = pipe(solver="lightning-4step", step_cache=StepCache(threshold=1e9, max_skips=1, warmup=1), **kw)
    assert cached.skipped_steps == 2
    never = pipe(solver="lightning-4step", step_cache=StepCache(threshold=0.0), **kw)
    np.testing.assert_array_equal(never.latents, fast.latents)


def test_cli_preset_flag():
    p = argparse.ArgumentParser()
    generate_cli.add_arguments(p)
    args = p.parse_args(["--prompt", "x", "--sampler-preset", "lightning-4step"])
    assert generate_cli.check_arguments(args)["solver"] == "lightning-4step"
    assert generate_cli.check_arguments(p.parse_args(["--prompt", "x"]))["solver"] == "unipc"
    both = p.parse_args(["--prompt", "x", "--sampler-preset", "lightning-4step", "--solver", "euler"])
    with pytest.raises(InputError, match="give one"):
        generate_cli.check_arguments(both)
