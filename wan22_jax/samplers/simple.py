"""Explicit Runge-Kutta flow samplers: Euler (order 1), Heun (2), RK4 (4), integrating dx/dsigma = v(x, sigma).

All three are one code path over a Butcher tableau whose stage k reads only stage k-1 (a "diagonal" tableau,
which covers Euler, Heun, midpoint, classic RK4 and Ralston's third-order method):

    k_0 = v(x, t(sigma_i)),  k_j = v(x + a_j h k_{j-1}, t(sigma_i + c_j h)),  x_{i+1} = x + h sum_j b_j k_j

with h = sigma_{i+1} - sigma_i < 0. The tableau of each step is a row of host tables, so the last step may use a
different one without a Python branch.

Timesteps handed to the model at intermediate stages: `Schedule.model_time(sigma)`, i.e. the truncated integer
int(sigma * T) in the official "truncate" mode (the DiT was trained on, and the official pipelines only ever feed,
integer timesteps; the update still uses the exact sigma, as UniPC/DPM++ do at their nodes) and the exact sigma * T
in "exact" mode. A stage that lands on a grid sigma gets that node's timestep, so Heun's second stage sees the
same t as the next step's first.

Never at sigma = 0 (default): the official pipelines never evaluate the model at t = 0 (and the analytic oracle
of the reference cases is singular there), so by default the final step (to sigma = 0) switches to a tableau
without that node: Euler for Heun (Karras et al. 2022) and Ralston's third-order method (nodes 0, 1/2, 3/4) for
RK4. One step of a method of order p adds a local error O(h^(p+1)), so a single Euler step keeps Heun's global
order 2 and a single Ralston step keeps RK4's global order 4 (measured in tests/samplers), one evaluation cheaper.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.samplers.base import compute_dtype
from wan22_jax.samplers.schedule import Schedule


class Tableau(NamedTuple):
    """Diagonal explicit RK tableau: c (nodes), a (a_j multiplies k_{j-1} in stage j; a[0] unused), b (weights)."""

    c: tuple[float, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]


EULER = Tableau(c=(0.0,), a=(0.0,), b=(1.0,))
HEUN = Tableau(c=(0.0, 1.0), a=(0.0, 1.0), b=(0.5, 0.5))
RK4_CLASSIC = Tableau(c=(0.0, 0.5, 0.5, 1.0), a=(0.0, 0.5, 0.5, 1.0), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6))
RALSTON3 = Tableau(c=(0.0, 0.5, 0.75), a=(0.0, 0.5, 0.75), b=(2 / 9, 3 / 9, 4 / 9))


class RKState(NamedTuple):
    x: jax.Array  # [*S] current sample


def _padded(tab: Tableau, stages: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """c, a, b, active of `tab` padded with inactive stages to `stages`."""
    pad = stages - len(tab.c)
    z = np.zeros(pad)
    active = np.concatenate([np.ones(len(tab.c)), z])
    return (np.concatenate([tab.c, z]), np.concatenate([tab.a, z]), np.concatenate([tab.b, z]), active)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExplicitRK:
    """Explicit RK flow sampler over `tableau`, using `final_tableau` on the last step unless `eval_at_zero`.

    Attributes:
        tableau: the main tableau.
        final_tableau: tableau of the step to sigma = 0 when `eval_at_zero` is False; must not have the node c = 1.
        eval_at_zero: allow a model evaluation at sigma = 0 (then the last step uses `tableau` too).
    """

    tableau: Tableau = EULER
    final_tableau: Tableau = EULER
    eval_at_zero: bool = False

    @property
    def stochastic(self) -> bool:
        return False

    @property
    def stages(self) -> int:
        return max(len(self.tableau.c), len(self.final_tableau.c))

    def _last(self) -> Tableau:
        return self.tableau if self.eval_at_zero else self.final_tableau

    def nfe(self, steps: int) -> int:
        return (steps - 1) * len(self.tableau.c) + len(self._last().c)

    def tables(self, schedule: Schedule) -> dict[str, np.ndarray]:
        """Per-step stage tables, [N, stages] float64: model time `t`, `A` = a_j h, `B` = b_j h, `active`."""
        n, s = schedule.steps, self.stages
        sig = schedule.sigmas64
        node_t = schedule.node_times()
        rows = [_padded(self.tableau, s)] * (n - 1) + [_padded(self._last(), s)]
        c, a, b, active = (np.stack(col) for col in zip(*rows))
        h = (sig[1:] - sig[:-1])[:, None]
        t = schedule.model_time(sig[:-1, None] + c * h)
        # stages on a grid sigma take that node's timestep (the truncation of the float64 sigma, officially)
        t = np.where(c == 0.0, node_t[:-1, None], np.where(c == 1.0, node_t[1:, None], t))
        return {"t": t, "A": a * h, "B": b * h, "active": active}

    def init(self, x: jax.Array) -> RKState:
        """x: [*S] initial noise."""
        return RKState(x=x)

    def step(self, state: RKState, row, velocity, key=None) -> tuple[RKState, jax.Array]:
        del key
        x = state.x
        ct = compute_dtype(x)
        k0 = velocity(x, row["t"][0])
        k = k0
        acc = row["B"][0] * k0.astype(ct)
        for j in range(1, self.stages):
            xj = (x + row["A"][j] * k).astype(x.dtype)
            # an inactive stage (padding of the final tableau) skips its model evaluation entirely
            k = jax.lax.cond(row["active"][j] > 0, velocity, lambda xj, tj: jnp.zeros_like(k0), xj, row["t"][j])
            acc = acc + row["B"][j] * k.astype(ct)
        return RKState(x=(x + acc).astype(x.dtype)), k0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Euler(ExplicitRK):
    """Flow Euler, one evaluation per step, order 1 (deterministic flow DDIM is the same update)."""

    tableau: Tableau = EULER
    final_tableau: Tableau = EULER


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heun(ExplicitRK):
    """Heun's second-order method; Euler on the last step unless `eval_at_zero` (2N - 1 evaluations)."""

    tableau: Tableau = HEUN
    final_tableau: Tableau = EULER


@dataclasses.dataclass(frozen=True, kw_only=True)
class RK4(ExplicitRK):
    """Classic RK4; Ralston's third-order method on the last step unless `eval_at_zero` (4N - 1 evaluations)."""

    tableau: Tableau = RK4_CLASSIC
    final_tableau: Tableau = RALSTON3
