"""Every deterministic sampler converges to the exact solution of a linear flow ODE at its theoretical order.

Run in float64 (x64) with the "exact" timestep mode, so that neither float32 rounding nor the official O(1/T)
timestep truncation hides the discretisation error. The order is the least-squares log-log slope of the error
against the number of steps.

DPM-Solver++(2M) approaches order 2 only slowly: near sigma = 0 the log-SNR steps stay O(1) whatever N (lambda
goes to infinity), which costs it a log N factor (error ~ log(N) / N^2, local slopes 1.71, 1.77, 1.81 at
N = 64..512); UniPC's corrector removes it (slopes 2.0-2.1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wan22_jax.samplers import get_sampler, make_schedule, sample

from .problems import GaussianFlow

# (registry name, options, theoretical order, step counts)
CASES = [
    ("euler", {}, 1, (16, 32, 64)),
    ("ddim", {"eta": 0.0}, 1, (16, 32, 64)),
    ("heun", {}, 2, (16, 32, 64)),
    ("heun", {"eval_at_zero": True}, 2, (16, 32, 64)),
    ("rk4", {}, 4, (32, 64, 128)),
    ("rk4", {"eval_at_zero": True}, 4, (32, 64, 128)),
    ("unipc", {}, 2, (64, 128, 256)),
    ("unipc", {"solver_type": "bh1"}, 2, (64, 128, 256)),
    ("dpm++", {}, 2, (128, 256, 512)),
]


def measured_order(name, options, steps, shift=1.0, sigma_max=None):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        prob = GaussianFlow(mu=0.5 * rng.standard_normal(16), s=0.2 + 0.5 * rng.random(16))
        x_T = jnp.asarray(rng.standard_normal(16))
        errs = []
        for n in steps:
            sched = make_schedule(n, shift=shift, sigma_max=sigma_max, timestep_mode="exact")
            x = sample(get_sampler(name, **options), prob.velocity, x_T, sched)
            exact = prob.solution(x_T, float(sched.sigmas64[0]))
            errs.append(float(jnp.max(jnp.abs(x - exact))))
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("name,options,order,steps", CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
def test_convergence_order(name, options, order, steps):
    slope, errs = measured_order(name, options, steps)
    assert order - 0.3 <= slope <= order + 0.4, (slope, errs)


def test_order_holds_with_shift_and_from_sigma_one():
    slope, errs = measured_order("unipc", {}, (128, 256, 512), shift=3.0, sigma_max=1.0)
    assert 1.7 <= slope <= 2.4, (slope, errs)
    slope, errs = measured_order("rk4", {}, (32, 64, 128), shift=3.0, sigma_max=1.0)
    assert 3.7 <= slope <= 4.4, (slope, errs)
