"""Stage 2 of a generation: the static `DenoisePlan` of a checked request (what the compiled loop is keyed on).

The plan holds only hashable settings that change the compiled program (sampler, guidance, expert switch,
per-frame timestep mask, step cache...). The schedule's tables, the noise and the conditioning are arrays passed
to the program, so a new seed, shift or prompt reuses it; progress reporting is not in the plan either (a new
progress bar per call would be a new jit key): it is an argument of `denoise`, run outside the program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wan22_jax import conditioning as cond
from wan22_jax.configs import TaskConfig
from wan22_jax.pipeline.request import Request
from wan22_jax.samplers import ClassifierFreeGuidance


@dataclasses.dataclass(frozen=True)
class DenoisePlan:
    """Everything static about one denoising run (hashable: a jit cache key).

    Attributes:
      sampler: a sampler (`wan22_jax.samplers.get_sampler`); guidance: the classifier-free guidance.
      two_experts / boundary / num_train_timesteps: the A14B expert switch (high-noise expert while
        t >= boundary * num_train_timesteps).
      frame_mask: per-latent-frame multiplier of t (ti2v image mode: 0 on the clean first frame), or None.
      reinject_first_frame: put the image latent back on latent frame 0 before the loop and after every step.
      batch_cfg: run the cond and uncond branches as one batch.
      return_trajectory: also return per-step samples and velocities.
      check_finite: track the first step whose sample holds a NaN or Inf.
      cfg: run the unconditional branch; False when every guide scale is 1 (guidance then returns the
        conditional prediction: the few-step distilled models run so, as the official code with scale 1).
      step_cache: a `models.step_cache.StepCache`, a resolved `models.mag_cache.MagCache` (or
        `MagCalibration`), or None.
    """

    sampler: Any
    guidance: ClassifierFreeGuidance
    two_experts: bool
    boundary: float | None
    num_train_timesteps: int
    frame_mask: tuple[float, ...] | None
    reinject_first_frame: bool
    batch_cfg: bool
    return_trajectory: bool
    check_finite: bool
    step_cache: Any = None
    cfg: bool = True


def make_plan(request: Request, task: TaskConfig) -> DenoisePlan:
    """The DenoisePlan of a checked request on a pipeline of `task`.

    Args:
      request: from `validate_request`. task: the pipeline's TaskConfig.
    Returns:
      The plan (hashable).
    """
    has_image = request.image is not None
    frame_mask = cond.frame_timestep_mask(task, request.latent_shape[1], has_image)
    scale = request.guidance_scale
    return DenoisePlan(
        sampler=request.sampler,
        guidance=ClassifierFreeGuidance(scale=scale if task.two_experts else scale[1],
                                        boundary=task.boundary if task.two_experts else None,
                                        num_train_timesteps=task.num_train_timesteps),
        two_experts=task.two_experts, boundary=task.boundary, num_train_timesteps=task.num_train_timesteps,
        frame_mask=None if frame_mask is None else tuple(float(v) for v in frame_mask),
        # ti2v with an image: latent frame 0 is the image's latent throughout (official textimage2video.i2v)
        reinject_first_frame=has_image and task.mode == "ti2v",
        batch_cfg=request.batch_cfg, return_trajectory=request.return_trajectory,
        check_finite=True, step_cache=request.step_cache,
        cfg=any(float(v) != 1.0 for v in (scale if task.two_experts else scale[1:])))
