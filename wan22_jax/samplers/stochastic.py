"""Flow DDIM with eta: the deterministic flow DDIM / Euler path at eta = 0, ancestral sampling at eta = 1.

With alpha = 1 - sigma, the model's velocity gives the data and noise estimates x0 = x - sigma v and
eps = x + alpha v. DDIM (Song et al. 2021) moves to sigma_n (next sigma) re-injecting fresh noise z of std c:

    x_n = alpha_n x0 + sqrt(sigma_n^2 - c^2) eps + c z,
    c = eta * (sigma_n / sigma) * sqrt(sigma^2 - (alpha / alpha_n)^2 sigma_n^2)

c at eta = 1 is the std of the posterior q(x_n | x, x0) of the interpolant x_s = (1 - s) x0 + s noise, so the
marginals are kept for any eta in [0, 1]. At eta = 0 the update is x + (sigma_n - sigma) v: Euler exactly.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import numpy as np

from wan22_jax.errors import InputError
from wan22_jax.samplers.base import combine, compute_dtype
from wan22_jax.samplers.schedule import Schedule


class DDIMState(NamedTuple):
    x: jax.Array  # [*S] current sample


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowDDIM:
    """Flow DDIM sampler with stochasticity `eta` in [0, 1].

    Attributes:
        eta: 0 deterministic (= Euler), 1 ancestral (DDPM posterior). With eta > 0 the loop needs a PRNG key; the
            noise of step i is `normal(fold_in(key, i))`.
    """

    eta: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.eta <= 1.0:
            raise InputError(f"FlowDDIM eta must be in [0, 1], got {self.eta}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def nfe(self, steps: int) -> int:
        return steps

    def tables(self, schedule: Schedule) -> dict[str, np.ndarray]:
        """x_n = A x + B v + C z coefficients, all [N] float64."""
        sig = schedule.sigmas64
        s, sn = sig[:-1], sig[1:]
        a, an = 1.0 - s, 1.0 - sn
        # sigma^2 - (a/an)^2 sn^2 >= 0 because sigma/alpha increases with sigma; clip the rounding below 0
        c = self.eta * (sn / s) * np.sqrt(np.maximum(s**2 - (a / an * sn) ** 2, 0.0))
        keep = np.sqrt(np.maximum(sn**2 - c**2, 0.0))  # weight of the noise estimate
        return {"t": schedule.node_times()[:-1], "A": an + keep, "B": -an * s + keep * a, "C": c}

    def init(self, x: jax.Array) -> DDIMState:
        """x: [*S] initial noise."""
        return DDIMState(x=x)

    def step(self, state: DDIMState, row, velocity, key=None) -> tuple[DDIMState, jax.Array]:
        x = state.x
        v = velocity(x, row["t"])
        x_next = combine([row["A"], row["B"]], [x, v])
        if self.stochastic:
            x_next = x_next + row["C"] * jax.random.normal(key, x.shape, compute_dtype(x))
        return DDIMState(x=x_next.astype(x.dtype)), v
