"""Flow-matching samplers: official Wan UniPC / DPM-Solver++ (trajectory-exact), Euler, Heun, RK4, DDIM-eta.

    schedule = official_schedule("unipc", steps=40, shift=12.0)
    x0 = sample(get_sampler("unipc"), velocity_fn, x_T, schedule)   # one lax.scan over the steps
"""

from wan22_jax.samplers.base import Sampler
from wan22_jax.samplers.dpmpp import FlowDPMSolverPP
from wan22_jax.samplers.guidance import ClassifierFreeGuidance, at_or_above, cfg, expert_switch
from wan22_jax.samplers.loop import sample
from wan22_jax.samplers.registry import SAMPLERS, get_sampler, sampler_names
from wan22_jax.samplers.schedule import (
    SPACINGS,
    Schedule,
    make_schedule,
    official_schedule,
    shift_sigmas,
    train_sigma_max,
    unshift_sigmas,
)
from wan22_jax.samplers.simple import RK4, Euler, ExplicitRK, Heun, Tableau
from wan22_jax.samplers.stochastic import FlowDDIM
from wan22_jax.samplers.unipc import FlowUniPC

__all__ = [
    "SAMPLERS", "SPACINGS", "ClassifierFreeGuidance", "Euler", "ExplicitRK", "FlowDDIM", "FlowDPMSolverPP",
    "FlowUniPC", "Heun", "RK4", "Sampler", "Schedule", "Tableau", "at_or_above", "cfg", "expert_switch",
    "get_sampler", "make_schedule", "official_schedule", "sample", "sampler_names", "shift_sigmas",
    "train_sigma_max", "unshift_sigmas",
]
