"""Named sampler presets: a sampler, its schedule and the guidance that a model was distilled or tuned for.

The few-step distillation LoRAs of Wan2.2 (LightX2V's "Wan2.2-Lightning" 4-step LoRAs for T2V-A14B, I2V-A14B and
TI2V-5B, and LightX2V's step-distilled Wan models) are trained for one sampling recipe, which their authors
document as:

* Euler steps of the flow ODE, x_next = x + (sigma_next - sigma) v (LightX2V's `WanStepDistillScheduler` writes
  the same step as x0 = x - sigma v, x_next = x0 + sigma_next v);
* the denoising step list [1000, 750, 500, 250]: sigma = step / 1000 before the shift, i.e. the grid
  linspace(1, 0, N + 1) without its final 0, then the usual shift warp with shift 5, giving sigmas
  1, 0.9375, 0.8333, 0.625 and a final 0;
* the model sees t = sigma * 1000 as a float (1000, 937.5, 833.3, 625), not truncated to an integer;
* no classifier-free guidance (guide scale 1 for both experts), so the unconditional branch is not run;
* A14B: the experts switch at the task's boundary as usual (t2v 0.875: two high-noise steps, two low-noise).

That schedule equals diffusers' `FlowMatchEulerDiscreteScheduler(shift=5)` given the unshifted sigmas
`set_timesteps(sigmas=[1, 0.75, 0.5, 0.25])` (tests/samplers/test_presets.py checks it), and ComfyUI's usual
workflow for these LoRAs (sampler "euler", scheduler "simple", shift 5: "simple" takes every (1000 / N)-th of the
1000 shifted training sigmas from the top, the same four). diffusers' default `set_timesteps(4)` does not: it
spaces the timesteps from 1000 down to the smallest shifted training sigma and shifts again.

    pipe(prompt=..., solver="lightning-4step")      # steps, shift and guidance from the preset
    wan22 generate --sampler-preset lightning-4step ...

Explicit num_inference_steps / shift / guidance_scale override the preset's values.
"""

from __future__ import annotations

import dataclasses

from wan22_jax.samplers.schedule import Schedule, make_schedule


@dataclasses.dataclass(frozen=True)
class SamplerPreset:
    """A named recipe: the sampler (a registry name), its schedule settings and the guidance scale.

    Attributes:
        sampler: a `registry.SAMPLERS` name. steps, shift, guidance_scale: the defaults the preset sets.
        sigma_max: the first unshifted sigma (1.0: the first model timestep is 1000).
        timestep_mode: "exact" (the model sees float sigma * T) or "truncate" (see `schedule.Schedule`).
        source: where the recipe is documented.
    """

    sampler: str
    steps: int
    shift: float
    guidance_scale: float
    sigma_max: float = 1.0
    timestep_mode: str = "exact"
    source: str = ""

    def schedule(self, steps: int | None = None, shift: float | None = None, *,
                 num_train_timesteps: int = 1000) -> Schedule:
        """The preset's schedule (its steps and shift unless given)."""
        return make_schedule(self.steps if steps is None else steps, shift=self.shift if shift is None else shift,
                             sigma_max=self.sigma_max, num_train_timesteps=num_train_timesteps,
                             timestep_mode=self.timestep_mode)


SAMPLER_PRESETS: dict[str, SamplerPreset] = {
    "lightning-4step": SamplerPreset(
        sampler="euler", steps=4, shift=5.0, guidance_scale=1.0,
        source="Wan2.2-Lightning (LightX2V) 4-step LoRAs: wan/configs (sample_steps 4, sample_shift 5, "
               "sample_guide_scale 1) and wan/utils/fm_solvers_euler.py; LightX2V step-distill configs "
               "(denoising_step_list [1000, 750, 500, 250], sample_shift 5, cfg off)"),
}


def preset_names() -> list[str]:
    return sorted(SAMPLER_PRESETS)
