"""Flow-matching sigma schedules: the shift warp, sigma spacings, and the host-side `Schedule` a sampler runs on.

Conventions (official `FlowUniPCMultistepScheduler.set_timesteps` / `get_sampling_sigmas`, see
docs/architecture.md §7):

* sigma runs from ~1 (noise) to 0 (data); the interpolant is x_sigma = (1 - sigma) x0 + sigma * noise and the model
  predicts the velocity v = dx/dsigma = noise - x0.
* a schedule of N steps has N + 1 sigmas, the last exactly 0, stored in float32 because the official update reads
  its float32 `scheduler.sigmas`; every coefficient a sampler derives from them is computed on the host in float64.
* the model is handed a timestep derived from the *float64* sigma before that cast: `int64(sigma * 1000)`
  (truncation), so the model sees t = 999 while the update uses sigma = 0.99991...

Everything here is numpy on the host: a schedule is data-independent and is computed once per sampling run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import scipy.stats

from wan22_jax.errors import InputError

TIMESTEP_MODES = ("truncate", "exact")


def shift_sigmas(sigma, shift: float):
    """The resolution shift warp `shift * sigma / (1 + (shift - 1) * sigma)` (identity at shift 1).

    Evaluated with the official operation order so that the truncated timesteps match it bit for bit.

    Args:
        sigma: sigmas in [0, 1] (scalar or array, float64 recommended).
        shift: the warp factor (> 0); > 1 spends more steps at high noise.

    Returns:
        The shifted sigmas, same shape.
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def unshift_sigmas(shifted, shift: float):
    """Inverse of `shift_sigmas`: the sigma that `shift_sigmas(., shift)` maps to `shifted`."""
    return shifted / (shift - (shift - 1) * shifted)


def train_sigma_max(num_train_timesteps: int = 1000) -> float:
    """The largest training sigma of the official schedulers, float32(1 - 1/T) = 0.9990000128746033 for T = 1000.

    The constructors build sigma = 1 - linspace(1, 1/T, T) reversed in float32; `set_timesteps` starts its linspace
    from that first value, so the UniPC schedule never reaches sigma = 1.
    """
    return float(np.float32(1.0 - 1.0 / num_train_timesteps))


# --- spacings: (steps, sigma_max, sigma_min) -> [steps] decreasing float64 sigmas, before the shift -------------

def _linear(steps: int, sigma_max: float, sigma_min: float) -> np.ndarray:
    # The official grid: N + 1 points down to 0 with the 0 dropped; sigma_min is not used.
    del sigma_min
    return np.linspace(sigma_max, 0.0, steps + 1)[:-1]


def _karras(steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _exponential(steps: int, sigma_max: float, sigma_min: float) -> np.ndarray:
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), steps))


def _beta(steps: int, sigma_max: float, sigma_min: float, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    # Beta(0.6, 0.6) quantiles put more steps at both ends ("Beta Sampling is All You Need", Lee et al. 2024).
    q = scipy.stats.beta.ppf(1.0 - np.linspace(0.0, 1.0, steps), a, b)
    return sigma_min + q * (sigma_max - sigma_min)


SPACINGS: dict[str, Callable[[int, float, float], np.ndarray]] = {
    "linear": _linear,
    "karras": _karras,
    "exponential": _exponential,
    "beta": _beta,
}


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Schedule:
    """The sigmas of one sampling run and the timesteps the model sees at them (host numpy arrays).

    Attributes:
        sigmas: [N + 1] float32, strictly decreasing, sigmas[N] = 0. The update grid.
        timesteps: [N] int64, `int64(sigma64 * T)` of the float64 sigma before the float32 cast (official).
        num_train_timesteps: T, the scale between sigma and the model's timestep.
        timestep_mode: "truncate" (official; the model sees integer timesteps everywhere, intermediate stages
            included) or "exact" (the model sees sigma * T unrounded; used for convergence studies, where the
            O(1/T) truncation would otherwise dominate the error).
    """

    sigmas: np.ndarray
    timesteps: np.ndarray
    num_train_timesteps: int = 1000
    timestep_mode: str = "truncate"

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def sigmas64(self) -> np.ndarray:
        """[N + 1] the float32 update sigmas widened to float64, the input of every host coefficient."""
        return self.sigmas.astype(np.float64)

    def node_times(self) -> np.ndarray:
        """[N + 1] float64 model timestep at each sigma of the grid (0 at the final sigma = 0)."""
        if self.timestep_mode == "truncate":
            return np.concatenate([self.timesteps.astype(np.float64), [0.0]])
        return self.sigmas64 * self.num_train_timesteps

    def model_time(self, sigma) -> np.ndarray:
        """float64 model timestep for sigmas off the grid (intermediate stages of Heun, RK4...)."""
        t = np.asarray(sigma, np.float64) * self.num_train_timesteps
        return np.trunc(t) if self.timestep_mode == "truncate" else t


def make_schedule(
    steps: int,
    *,
    shift: float = 1.0,
    spacing: str = "linear",
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    num_train_timesteps: int = 1000,
    timestep_mode: str = "truncate",
) -> Schedule:
    """Builds a shifted flow schedule: spacing in the unshifted sigma, then the shift warp, then a final 0.

    The spacing is applied before the shift so that `shift` keeps its meaning (the resolution-dependent warp the
    model was trained with) and the spacing only redistributes steps along it.

    Args:
        steps: number of sampling steps N (>= 1).
        shift: the shift warp factor (> 0).
        spacing: one of `SPACINGS` ("linear" is the official grid).
        sigma_max: first unshifted sigma; default `train_sigma_max(T)` (official UniPC). 1.0 gives the official
            DPM++ `get_sampling_sigmas` grid.
        sigma_min: last unshifted nonzero sigma for the non-linear spacings; default sigma_max / steps, the last
            nonzero sigma of the linear grid, so that all spacings share its endpoints.
        num_train_timesteps: T.
        timestep_mode: "truncate" (official) or "exact"; see `Schedule`.

    Returns:
        The `Schedule`.
    """
    if spacing not in SPACINGS:
        raise InputError(f"unknown sigma spacing {spacing!r}; valid: {sorted(SPACINGS)}")
    if timestep_mode not in TIMESTEP_MODES:
        raise InputError(f"unknown timestep_mode {timestep_mode!r}; valid: {list(TIMESTEP_MODES)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise InputError(f"shift must be > 0, got {shift!r}")
    sigma_max = train_sigma_max(num_train_timesteps) if sigma_max is None else float(sigma_max)
    sigma_min = sigma_max / steps if sigma_min is None else float(sigma_min)
    if not 0 < sigma_min <= sigma_max <= 1:
        raise InputError(f"need 0 < sigma_min <= sigma_max <= 1, got {sigma_min}, {sigma_max}")
    base = SPACINGS[spacing](int(steps), sigma_max, sigma_min)
    sig = shift_sigmas(base, shift)
    sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
    if not np.all(np.diff(sigmas) < 0):
        raise InputError(f"spacing {spacing!r} with {steps} steps gives non-decreasing float32 sigmas {sigmas}")
    return Schedule(sigmas=sigmas, timesteps=(sig * num_train_timesteps).astype(np.int64),
                    num_train_timesteps=num_train_timesteps, timestep_mode=timestep_mode)


OFFICIAL_SOLVERS = ("unipc", "dpm++")


def official_schedule(solver: str, steps: int, shift: float, *, num_train_timesteps: int = 1000) -> Schedule:
    """The schedule the official pipelines build for `sample_solver` = solver.

    "unipc": `set_timesteps(steps, shift=shift)`, linspace from float32(0.999). "dpm++": `get_sampling_sigmas`,
    linspace from 1.0 (so the first timestep is 1000), passed through an unshifted `set_timesteps`.

    Our samplers always start at step 0. The official `step()` instead finds its first index by looking the
    timestep up and takes the second match when there are two: when timesteps[0] == timesteps[1] (e.g. UniPC with
    100 steps at shift 12: 999, 999, ...) it would skip sigma_0 and index past the end on its last step. The
    pipelines' settings (40-50 steps) never hit this.
    """
    if solver not in OFFICIAL_SOLVERS:
        raise InputError(f"unknown official solver {solver!r}; valid: {list(OFFICIAL_SOLVERS)}")
    sigma_max = 1.0 if solver == "dpm++" else None
    return make_schedule(steps, shift=shift, sigma_max=sigma_max, num_train_timesteps=num_train_timesteps)


def lambdas(sigmas: np.ndarray) -> np.ndarray:
    """log-SNR lambda = log(1 - sigma) - log(sigma) in float64: -inf at sigma = 1, +inf at sigma = 0.

    The infinities are intended; the samplers' coefficient formulas are arranged to take their limits.
    """
    s = np.asarray(sigmas, np.float64)
    with np.errstate(divide="ignore"):
        return np.log1p(-s) - np.log(s)
