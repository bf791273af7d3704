"""Flow DPM-Solver++ (Lu et al. 2022), the official `FlowDPMSolverMultistepScheduler` with its defaults.

2M multistep in data prediction (m = x - sigma * v), midpoint second-order term, first order on the first step
(no history) and on the last (the official `final_sigmas_type='zero'` forces it), and its SDE variant
"sde-dpmsolver++". Notation: docs/architecture.md §7; with h = lambda_{i+1} - lambda_i and
r = (lambda_i - lambda_{i-1}) / h:

    ODE: x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} (e^-h - 1) (m_i + (m_i - m_{i-1}) / (2r))
    SDE: x_{i+1} = (s_{i+1}/s_i) e^-h x_i + a_{i+1} (1 - e^-2h) (m_i + (m_i - m_{i-1}) / (2r))
                   + s_{i+1} sqrt(1 - e^-2h) z

so a step is P0 x_i + P1 m_i + P2 m_{i-1} + Pz z with host float64 coefficients. The official grid starts at
sigma = 1 (lambda = -inf): the first step then gives s_1 x + a_1 m_0 and the second has 1/r = 0, which the host
formulas reach as limits (h / inf = 0).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.errors import InputError
from wan22_jax.samplers.base import combine, compute_dtype, data_prediction
from wan22_jax.samplers.schedule import Schedule, lambdas


class DPMState(NamedTuple):
    x: jax.Array    # [*S] current sample
    m1: jax.Array   # [*S] data prediction of the previous step


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowDPMSolverPP:
    """DPM-Solver++ multistep flow sampler.

    Attributes:
        solver_order: 1 or 2 (official 2).
        sde: False for "dpmsolver++" (official default), True for "sde-dpmsolver++" (needs a PRNG key; the noise
            of step i is `normal(fold_in(key, i))`, so a key reproduces a trajectory exactly).
    """

    solver_order: int = 2
    sde: bool = False

    def __post_init__(self):
        if self.solver_order not in (1, 2):
            raise InputError(f"FlowDPMSolverPP supports solver_order 1 or 2, got {self.solver_order}")

    @property
    def stochastic(self) -> bool:
        return self.sde

    def nfe(self, steps: int) -> int:
        return steps

    def tables(self, schedule: Schedule) -> dict[str, np.ndarray]:
        """Per-step coefficients P0, P1, P2, Pz; all [N] float64."""
        n = schedule.steps
        sig = schedule.sigmas64
        alpha = 1.0 - sig
        lam = lambdas(sig)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = lam[1:] - lam[:-1]                                   # [N], +inf at both ends of a sigma=1 grid
            inv_r = np.zeros(n)
            inv_r[1:] = h[1:] / (lam[1:n] - lam[:n - 1])            # 1/r, 0 where lambda_{i-1} = -inf
            second = (np.arange(n) > 0) & (np.arange(n) < n - 1) & (self.solver_order == 2)
            inv_r = np.where(second, inv_r, 0.0)
            ratio = sig[1:] / sig[:-1]
            if self.sde:
                g = -np.expm1(-2.0 * h)                              # 1 - e^-2h
                p0 = ratio * np.exp(-h)
                base = alpha[1:] * g
                pz = sig[1:] * np.sqrt(g)
            else:
                p0 = ratio
                base = -alpha[1:] * np.expm1(-h)                    # -a (e^-h - 1)
                pz = np.zeros(n)
        p1 = base * (1.0 + 0.5 * inv_r)
        p2 = -base * 0.5 * inv_r
        out = {"sigma": sig[:n], "t": schedule.node_times()[:n], "P0": p0, "P1": p1, "P2": p2, "Pz": pz}
        if not all(np.all(np.isfinite(v)) for v in out.values()):
            raise InputError(f"DPM-Solver++ coefficients are not finite for sigmas {schedule.sigmas}")
        return out

    def init(self, x: jax.Array) -> DPMState:
        """x: [*S] initial noise."""
        return DPMState(x=x, m1=jnp.zeros_like(x))

    def step(self, state: DPMState, row, velocity, key=None) -> tuple[DPMState, jax.Array]:
        x = state.x
        v = velocity(x, row["t"])
        m = data_prediction(x, row["sigma"], v).astype(x.dtype)
        # the official step upcasts the sample to float32 and casts the result to the model output's dtype; we cast
        # to the sample's dtype (the same in the pipelines), as the scan carry must keep one dtype
        ct = compute_dtype(x)
        x_next = combine([row["P0"], row["P1"], row["P2"]], [x.astype(ct), m, state.m1])
        if self.sde:
            x_next = x_next + row["Pz"] * jax.random.normal(key, x.shape, ct)
        return DPMState(x=x_next.astype(x.dtype), m1=m), v
