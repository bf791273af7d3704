"""Samplers by name: `get_sampler("unipc")`, `get_sampler("ddim", eta=0.5)`, ..."""

from __future__ import annotations

import dataclasses
from typing import Callable

from wan22_jax.errors import InputError
from wan22_jax.samplers.base import Sampler
from wan22_jax.samplers.dpmpp import FlowDPMSolverPP
from wan22_jax.samplers.simple import RK4, Euler, Heun
from wan22_jax.samplers.stochastic import FlowDDIM
from wan22_jax.samplers.unipc import FlowUniPC

# name -> (sampler class, fixed keyword arguments the name implies)
SAMPLERS: dict[str, tuple[Callable[..., Sampler], dict]] = {
    "unipc": (FlowUniPC, {}),
    "dpm++": (FlowDPMSolverPP, {}),
    "dpm++-sde": (FlowDPMSolverPP, {"sde": True}),
    "euler": (Euler, {}),
    "heun": (Heun, {}),
    "rk4": (RK4, {}),
    "ddim": (FlowDDIM, {}),
}


def sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def get_sampler(name: str, **kwargs) -> Sampler:
    """The sampler registered as `name`, built with `kwargs` (its dataclass fields, e.g. `eta` for "ddim").

    Raises:
        InputError: unknown name, or a keyword the sampler does not have.
    """
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}; valid: {sampler_names()}")
    cls, fixed = SAMPLERS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise InputError(f"sampler {name!r} has no option(s) {unknown}; valid: {sorted(fields)}")
    return cls(**fixed, **kwargs)
