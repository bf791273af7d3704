"""The calibration run of MagCache (`models/mag_cache.py`): one generation that records the block residual's
per-step magnitude ratio, the curve a `MagCache` then decides from.

    ratios = calibrate_mag_cache(pipe, prompt="a red ball", num_inference_steps=50, seed=0)
    out = pipe(prompt=..., num_inference_steps=50, step_cache=MagCache(ratios, threshold=0.06))

The curve is nearly the same for every prompt and seed (the method's premise), so one run per model, sampler,
step count and shift is enough; it is resampled when a run has another step count.
"""

from __future__ import annotations

import jax
import numpy as np

from wan22_jax.models.mag_cache import MagCalibration
from wan22_jax.pipeline.denoise import denoise
from wan22_jax.pipeline.files import EXPERTS
from wan22_jax.pipeline.plan import make_plan
from wan22_jax.pipeline.request import validate_request
from wan22_jax.sharding import mesh_context


def calibrate_mag_cache(pipe, **call) -> tuple[float, ...]:
    """Runs the denoising loop of `pipe(**call)` with a `MagCalibration` cache and returns its curve.

    Args:
        pipe: a `Wan22Pipeline`.
        call: the keyword arguments of a pipeline call (prompt, num_inference_steps, solver, shift, seed, ...);
            step_cache, output_type and progress are set here (check_memory is ignored).
    Returns:
        One ratio per step (1.0 at each expert's first step), for `MagCache(ratios=...)`.
    """
    call = {**call, "output_type": "latent", "progress": False}  # only the loop runs: no decode, no bar
    call.pop("check_memory", None)
    steps = call.get("num_inference_steps") or pipe.task.sample_steps
    request = validate_request(
        pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=pipe.text_encoder is not None,
        no_text_encoder_reason=pipe.no_text_encoder_reason, step_cache=MagCalibration(int(steps)), **call)
    plan = make_plan(request, pipe.task)
    inputs, _ = pipe.inputs(request)
    names = EXPERTS if pipe.task.two_experts else ("model",)
    states = tuple(pipe.experts[n][1] for n in names)
    key = jax.random.fold_in(request.key, 1) if plan.sampler.stochastic else None  # as the pipeline's run
    with mesh_context(pipe.mesh):
        _, aux = denoise(pipe.experts[names[0]][0], plan, states, inputs, request.tables, key,
                         loras=pipe.unmerged_for(request.steps))  # calibrate what the generation will run
    # each step ran on exactly one expert, and the other's entry stayed 0
    ratios = sum(np.asarray(c["ratios"], np.float64) for c in aux["model_state"])
    return tuple(float(v) for v in ratios)
