"""UniPC and DPM-Solver++ against a float64 numpy re-implementation of the official schedulers' recurrences.

The re-implementation below follows the official `step()` structure (model-output buffer, warm-up order,
lower-order final step, the UniC linear solve) with plain float64 numpy, independently of the JAX code's
closed-form coefficient tables. It covers step counts and shifts that no shipped reference case has.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wan22_jax.samplers import get_sampler, official_schedule, sample
from wan22_jax.verify.sched import oracle_velocity

from .problems import oracle_np

T = 1000
TOL = 1e-5  # the reference cases' tolerance, max|ours - ref| / max|ref|


def ref_schedule(solver, steps, shift):
    """(timesteps int64 [N], sigmas float32 [N+1]) as set_timesteps / get_sampling_sigmas build them."""
    train = (1.0 - np.linspace(1, 1 / T, T)[::-1]).astype(np.float32)
    if solver == "unipc":
        s = np.linspace(float(train[0]), float(train[-1]), steps + 1)[:-1]
        s = shift * s / (1 + (shift - 1) * s)
    else:
        s = np.linspace(1, 0, steps + 1)[:steps]
        s = shift * s / (1 + (shift - 1) * s)
        s = 1.0 * s / (1 + (1.0 - 1) * s)  # set_timesteps re-applies the config shift of 1
    return (s * T).astype(np.int64), np.concatenate([s, [0.0]]).astype(np.float32)


def lam(s):
    with np.errstate(divide="ignore"):
        return np.log(1.0 - s) - np.log(s)


def unipc_ref(x, x0, sigmas, timesteps, order=2):
    """Official FlowUniPCMultistepScheduler loop (bh2, predict_x0, corrector on) in float64."""
    sig = sigmas.astype(np.float64)
    n = len(timesteps)
    outs, last, this_order, lower = [None] * order, None, None, 0
    samples, vels = [x], []
    for i, t in enumerate(timesteps):
        v = oracle_np(x, float(t), x0)
        vels.append(v)
        m = x - sig[i] * v
        if i > 0:  # UniC from sigma_{i-1} to sigma_i, order of the previous predictor
            st, s0 = sig[i], sig[i - 1]
            h = lam(st) - lam(s0)
            rks, d1s = [], []
            for k in range(1, this_order):
                rk = (lam(sig[i - k - 1]) - lam(s0)) / h
                rks.append(rk)
                d1s.append((outs[-(k + 1)] - outs[-1]) / rk)
            rks.append(1.0)
            hh = -h
            phi1 = np.expm1(hh)
            bh = np.expm1(hh)
            hphik, fact, R, b = phi1 / hh - 1, 1, [], []
            for k in range(1, this_order + 1):
                R.append(np.power(rks, k - 1))
                b.append(hphik * fact / bh)
                fact *= k + 1
                hphik = hphik / hh - 1 / fact
            rhos = np.array([0.5]) if this_order == 1 else np.linalg.solve(np.array(R), np.array(b))
            corr = sum(r * d for r, d in zip(rhos[:-1], d1s, strict=True)) if d1s else 0.0
            x = st / s0 * last - (1 - st) * phi1 * outs[-1] - (1 - st) * bh * (corr + rhos[-1] * (m - outs[-1]))
        outs = outs[1:] + [m]
        this_order = min(order, n - i, lower + 1)
        last = x
        st, s0 = sig[i + 1], sig[i]
        with np.errstate(divide="ignore"):
            hh = -(lam(st) - lam(s0))
        phi1 = np.expm1(hh)
        x_new = st / s0 * x - (1 - st) * phi1 * m
        if this_order == 2:
            r = (lam(sig[i - 1]) - lam(s0)) / -hh
            x_new = x_new - (1 - st) * np.expm1(hh) * 0.5 * (outs[-2] - m) / r
        x = x_new
        lower = min(lower + 1, order)
        samples.append(x)
    return np.stack(samples), np.stack(vels)


def dpmpp_ref(x, x0, sigmas, timesteps, noises=None):
    """Official FlowDPMSolverMultistepScheduler loop (2M midpoint, final_sigmas_type zero) in float64."""
    sig = sigmas.astype(np.float64)
    n = len(timesteps)
    outs, lower = [None, None], 0
    samples, vels = [x], []
    for i, t in enumerate(timesteps):
        v = oracle_np(x, float(t), x0)
        vels.append(v)
        outs = outs[1:] + [x - sig[i] * v]
        st, s0 = sig[i + 1], sig[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = lam(st) - lam(s0)
            if lower < 1 or i == n - 1:
                d = outs[-1]
            else:
                r0 = (lam(s0) - lam(sig[i - 1])) / h
                d = outs[-1] + 0.5 * (1.0 / r0) * (outs[-1] - outs[-2])
            if noises is None:
                x = st / s0 * x - (1 - st) * (np.exp(-h) - 1.0) * d
            else:
                x = (st / s0 * np.exp(-h) * x + (1 - st) * (1 - np.exp(-2.0 * h)) * d
                     + st * np.sqrt(1.0 - np.exp(-2.0 * h)) * noises[i])
        lower = min(lower + 1, 2)
        samples.append(x)
    return np.stack(samples), np.stack(vels)


def rel(ours, ref):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def inputs(seed, shape=(2, 3, 5)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
@pytest.mark.parametrize("steps,shift", [(1, 1.0), (2, 3.0), (3, 1.0), (7, 8.0), (23, 12.0), (50, 5.0)])
def test_matches_official_recurrence(solver, steps, shift):
    x_T, x0 = inputs(steps)
    ts_ref, sig_ref = ref_schedule(solver, steps, shift)
    sched = official_schedule(solver, steps, shift)
    np.testing.assert_array_equal(sched.timesteps, ts_ref)
    np.testing.assert_array_equal(sched.sigmas, sig_ref)
    ref = unipc_ref if solver == "unipc" else dpmpp_ref
    samples_ref, vels_ref = ref(x_T.astype(np.float64), x0.astype(np.float64), sig_ref, ts_ref)
    _, traj = sample(get_sampler(solver), oracle_velocity(x0), jnp.asarray(x_T), sched, return_trajectory=True)
    assert rel(traj["samples"], samples_ref) <= TOL
    assert rel(traj["velocities"], vels_ref) <= TOL


@pytest.mark.parametrize("steps,shift", [(9, 5.0)])
def test_dpmpp_sde_matches_official_recurrence(steps, shift):
    x_T, x0 = inputs(100 + steps)
    key = jax.random.key(7)
    # the loop draws step i's noise as normal(fold_in(key, i)); replay it into the reference
    noises = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), x_T.shape))(
        jnp.arange(steps, dtype=jnp.int32)), np.float64)
    ts, sig = ref_schedule("dpm++", steps, shift)
    samples_ref, _ = dpmpp_ref(x_T.astype(np.float64), x0.astype(np.float64), sig, ts, noises)
    _, traj = sample(get_sampler("dpm++-sde"), oracle_velocity(x0), jnp.asarray(x_T),
                     official_schedule("dpm++", steps, shift), key=key, return_trajectory=True)
    assert rel(traj["samples"], samples_ref) <= TOL


def test_unipc_without_corrector_is_dpmpp_midpoint():
    # UniP-2 (bh2, rho = 1/2) and DPM-Solver++(2M) midpoint are the same update; two derivations must agree.
    x_T, x0 = inputs(3)
    sched = official_schedule("dpm++", 12, 4.0)
    a = sample(get_sampler("unipc", use_corrector=False), oracle_velocity(x0), jnp.asarray(x_T), sched)
    b = sample(get_sampler("dpm++"), oracle_velocity(x0), jnp.asarray(x_T), sched)
    assert rel(a, np.asarray(b, np.float64)) <= TOL
