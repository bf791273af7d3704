"""Flow UniPC (Zhao et al. 2023), the official Wan sampler `FlowUniPCMultistepScheduler` with its defaults.

Data prediction (m = x - sigma * v), B(h) = expm1(-h) ("bh2") or -h ("bh1"), a UniC corrector after every model
evaluation but the first, predictor order min(solver_order, steps_done + 1) and order 1 on the last step (the
official `lower_order_final`; the step to sigma = 0 has lambda = inf, where the second-order term is undefined).
Notation: docs/architecture.md §7.

Every update is linear in the current sample, the previous corrected sample and the last three data predictions,
with coefficients that depend only on the schedule. They are computed on the host in float64 (the official code
does the same arithmetic in float32 scalars); a step is then two fused linear combinations:

    m_i  = x_i - sigma_i v_i
    xc_i = K_i x_i + C0_i xc_{i-1} + C1_i m_i + C2_i m_{i-1} + C3_i m_{i-2}    (corrector; K=1, C=0 at i=0)
    x_{i+1} = P0_i xc_i + P1_i m_i + P2_i m_{i-1}                               (predictor)

The corrector rebuilds x_i from xc_{i-1} and does not read the predicted x_i except through m_i, as officially.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.errors import InputError
from wan22_jax.samplers.base import combine, data_prediction
from wan22_jax.samplers.schedule import Schedule, lambdas


class UniPCState(NamedTuple):
    x: jax.Array          # [*S] current (predicted) sample
    last: jax.Array       # [*S] corrected sample of the previous step, the corrector's starting point
    m1: jax.Array         # [*S] data prediction of the previous step
    m2: jax.Array         # [*S] data prediction two steps back


def _predictor_orders(steps: int, solver_order: int) -> np.ndarray:
    # warm-up (one more past prediction each step) and order 1 on the final step
    i = np.arange(steps)
    return np.minimum(np.minimum(solver_order, steps - i), i + 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowUniPC:
    """UniPC multistep flow sampler (official defaults: order 2, bh2, corrector on).

    Attributes:
        solver_order: predictor order, 1 or 2 (the official pipelines use 2).
        solver_type: "bh2" (official default) or "bh1".
        use_corrector: apply UniC after each model evaluation (official: yes, `disable_corrector=[]`).
    """

    solver_order: int = 2
    solver_type: str = "bh2"
    use_corrector: bool = True

    def __post_init__(self):
        if self.solver_order not in (1, 2):
            raise InputError(f"FlowUniPC supports solver_order 1 or 2, got {self.solver_order}")
        if self.solver_type not in ("bh1", "bh2"):
            raise InputError(f"FlowUniPC solver_type must be 'bh1' or 'bh2', got {self.solver_type!r}")

    @property
    def stochastic(self) -> bool:
        return False

    def nfe(self, steps: int) -> int:
        return steps

    def _b_of_h(self, hh):
        return np.expm1(hh) if self.solver_type == "bh2" else hh

    def tables(self, schedule: Schedule) -> dict[str, np.ndarray]:
        """Per-step coefficients; see the module docstring. All [N] float64."""
        n = schedule.steps
        sig = schedule.sigmas64
        alpha = 1.0 - sig
        lam = lambdas(sig)
        order = _predictor_orders(n, self.solver_order)
        p = np.zeros((n, 3))
        c = np.zeros((n, 5))  # K, C0, C1, C2, C3
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(n):
                # predictor sigma_i -> sigma_{i+1}; at sigma_{i+1} = 0: hh = -inf, expm1 = -1, x_{i+1} = m_i
                hh = lam[i] - lam[i + 1]
                phi = np.expm1(hh)
                p[i] = (sig[i + 1] / sig[i], -alpha[i + 1] * phi, 0.0)
                if order[i] == 2:
                    r = (lam[i - 1] - lam[i]) / -hh
                    d = -alpha[i + 1] * self._b_of_h(hh) * 0.5 / r   # weight of (m_{i-1} - m_i)
                    p[i, 1] -= d
                    p[i, 2] += d
                c[i] = self._corrector(i, order, sig, alpha, lam)
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(c))):
            raise InputError(f"UniPC coefficients are not finite for sigmas {schedule.sigmas} (bh1 cannot start at "
                             "sigma = 1, where lambda = -inf and B(h) = -h is infinite)")
        return {"sigma": sig[:n], "t": schedule.node_times()[:n],
                "P0": p[:, 0], "P1": p[:, 1], "P2": p[:, 2],
                "K": c[:, 0], "C0": c[:, 1], "C1": c[:, 2], "C2": c[:, 3], "C3": c[:, 4]}

    def _corrector(self, i, order, sig, alpha, lam) -> tuple[float, ...]:
        """(K, C0, C1, C2, C3) of the UniC update at step i (sigma_{i-1} -> sigma_i, order of step i-1)."""
        if i == 0 or not self.use_corrector:
            return (1.0, 0.0, 0.0, 0.0, 0.0)
        hh = lam[i - 1] - lam[i]
        phi = np.expm1(hh)
        bh = self._b_of_h(hh)
        a = alpha[i]
        c0, c2 = sig[i] / sig[i - 1], -a * phi
        if order[i - 1] == 1:
            rho_m2, rho_t = 0.0, 0.5
        else:
            r = (lam[i - 2] - lam[i - 1]) / -hh
            # b_k = k! * phi_{k+1}(hh) / B(h) in the recursive form of the UniPC paper (eq. for rho_c)
            b1 = (phi / hh - 1.0) / bh
            b2 = 2.0 * ((phi / hh - 1.0) / hh - 0.5) / bh
            # solve [[1, 1], [r, 1]] rho = [b1, b2]
            rho0 = (b1 - b2) / (1.0 - r)
            rho_t = b1 - rho0
            rho_m2 = rho0 / r  # weight of (m_{i-2} - m_{i-1})
        # x = c0*last + c2*m_{i-1} - a*B*(rho_m2*(m_{i-2} - m_{i-1}) + rho_t*(m_i - m_{i-1}))
        return (0.0, c0, -a * bh * rho_t, c2 + a * bh * (rho_t + rho_m2), -a * bh * rho_m2)

    def init(self, x: jax.Array) -> UniPCState:
        """x: [*S] initial noise."""
        z = jnp.zeros_like(x)
        return UniPCState(x=x, last=z, m1=z, m2=z)

    def step(self, state: UniPCState, row, velocity, key=None) -> tuple[UniPCState, jax.Array]:
        del key
        x = state.x
        v = velocity(x, row["t"])
        m = data_prediction(x, row["sigma"], v)
        xc = combine([row["K"], row["C0"], row["C1"], row["C2"], row["C3"]], [x, state.last, m, state.m1, state.m2])
        x_next = combine([row["P0"], row["P1"], row["P2"]], [xc, m, state.m1])
        dt = x.dtype
        return UniPCState(x=x_next.astype(dt), last=xc.astype(dt), m1=m.astype(dt), m2=state.m1), v
