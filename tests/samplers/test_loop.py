"""The scanned loop, guidance and expert switch, the registry, and the RK samplers' stage timesteps."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from wan22_jax.errors import InputError
from wan22_jax.samplers import (
    ClassifierFreeGuidance,
    at_or_above,
    cfg,
    expert_switch,
    get_sampler,
    make_schedule,
    official_schedule,
    sample,
    sampler_names,
)
from wan22_jax.samplers.base import compute_dtype
from wan22_jax.samplers.loop import init_carry, loop_aux, run_scan, scan_steps, step_rows
from wan22_jax.verify.sched import oracle_velocity

X0 = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 3)), jnp.float32)
X_T = jnp.asarray(np.random.default_rng(1).standard_normal((1, 2, 3)), jnp.float32)
VELOCITY = oracle_velocity(X0)


def count_scans(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "scan"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += count_scans(sub)
    return n


@pytest.mark.parametrize("name", sampler_names())
def test_every_sampler_is_one_scan_whatever_the_steps(name):
    sampler = get_sampler(name)
    traces = []
    for steps in (3, 17):
        sched = official_schedule("unipc", steps, 3.0)
        calls = []

        def velocity_fn(x, t, i):
            calls.append(1)  # counts traces of the model call, not executions
            return VELOCITY(x, t, i)

        closed = jax.make_jaxpr(lambda x: sample(sampler, velocity_fn, x, sched, key=jax.random.key(0)))(X_T)
        assert count_scans(closed.jaxpr) == 1
        traces.append(len(calls))
    # the model is traced a fixed number of times (once per distinct stage call site), not once per step
    assert traces[0] == traces[1] <= {"heun": 2, "rk4": 4}.get(name, 1)


@pytest.mark.parametrize("name", sampler_names())
def test_every_sampler_runs_and_reports_nfe(name):
    sampler = get_sampler(name)
    sched = official_schedule("unipc", 6, 5.0)
    evals = []

    def velocity_fn(x, t, i):
        jax.debug.callback(lambda t: evals.append(float(t)), t)
        return VELOCITY(x, t, i)

    x, traj = sample(sampler, velocity_fn, X_T, sched, key=jax.random.key(0), return_trajectory=True)
    jax.effects_barrier()
    assert np.all(np.isfinite(np.asarray(x))) and x.dtype == X_T.dtype
    assert traj["samples"].shape == (7, *X_T.shape) and traj["velocities"].shape == (6, *X_T.shape)
    np.testing.assert_array_equal(traj["samples"][0], X_T)
    np.testing.assert_array_equal(traj["samples"][-1], x)
    assert len(evals) == sampler.nfe(6)
    assert min(evals) > 0  # no sampler evaluates the model at t = 0 by default
    assert all(float(t).is_integer() for t in evals)  # truncate mode: integer timesteps, stages included


def test_rk_stage_times():
    sched = official_schedule("unipc", 5, 3.0)
    tab = get_sampler("heun").tables(sched)
    # Heun's second stage sees the next node's (truncated float64) timestep, then Euler on the last step
    np.testing.assert_array_equal(tab["t"][:-1, 1], sched.timesteps[1:])
    assert tab["active"][-1, 1] == 0.0
    rk = get_sampler("rk4", eval_at_zero=True).tables(make_schedule(4, timestep_mode="exact"))
    s = make_schedule(4).sigmas.astype(np.float64)
    np.testing.assert_allclose(rk["t"][:, 1], 500 * (s[:-1] + s[1:]))
    assert rk["t"][-1, 3] == 0.0 and rk["active"].min() == 1.0
    assert get_sampler("rk4").nfe(10) == 39 and get_sampler("heun").nfe(10) == 19


def test_cfg_guidance_inside_the_loop():
    sched = official_schedule("unipc", 5, 5.0)

    def pair(x, t, i):
        v = VELOCITY(x, t, i)
        return v, 0.5 * v

    guided = sample(get_sampler("unipc"), pair, X_T, sched, guidance=ClassifierFreeGuidance(scale=3.0))
    manual = sample(get_sampler("unipc"), lambda x, t, i: cfg(*pair(x, t, i), 3.0), X_T, sched)
    np.testing.assert_allclose(guided, manual, rtol=1e-6)


def test_moe_guide_scale_and_expert_switch_follow_the_boundary():
    # t2v-A14B: 40 steps, shift 12, boundary 0.875 -> the first 26 steps are high-noise (section 7.4)
    sched = official_schedule("unipc", 40, 12.0)
    t = jnp.asarray(sched.timesteps, jnp.float32)
    g = ClassifierFreeGuidance(scale=(3.0, 4.0), boundary=0.875)
    np.testing.assert_array_equal(g.scale_at(t), np.where(np.arange(40) < 26, 4.0, 3.0))
    # the switch evaluates inside the scanned body: record which expert ran at each step
    hi = lambda x, t, i: jnp.full_like(x, 1.0)  # noqa: E731
    lo = lambda x, t, i: jnp.full_like(x, 2.0)  # noqa: E731
    _, traj = sample(get_sampler("euler"), expert_switch(hi, lo, boundary=0.875), X_T, sched,
                     return_trajectory=True)
    np.testing.assert_array_equal(traj["velocities"][:, 0, 0, 0], np.where(np.arange(40) < 26, 1.0, 2.0))
    i2v = jnp.asarray(official_schedule("unipc", 40, 5.0).timesteps, jnp.float32)
    assert int(jnp.sum(at_or_above(i2v, 0.9 * 1000))) == 15


def test_at_or_above_is_exact_in_float32():
    thr = 0.7  # float32(0.7) = 0.69999999: a naive float32 comparison would call it >= 0.7
    t = jnp.asarray(np.float32(thr))
    assert float(np.float32(thr)) < thr and not bool(at_or_above(t, thr))
    assert bool(at_or_above(jnp.asarray(np.nextafter(np.float32(thr), np.float32(1))), thr))
    assert bool(at_or_above(jnp.float32(875.0), 875.0))


def test_registry_errors():
    with pytest.raises(InputError, match="unipc"):
        get_sampler("plms")
    with pytest.raises(InputError, match="eta"):
        get_sampler("ddim", etta=0.5)
    with pytest.raises(InputError, match="eta"):
        get_sampler("ddim", eta=1.5)
    assert get_sampler("dpm++-sde").stochastic and not get_sampler("dpm++").stochastic
    with pytest.raises(InputError, match="sde"):
        get_sampler("dpm++-sde", sde=False)


def test_unipc_bh1_cannot_start_at_sigma_one():
    with pytest.raises(InputError, match="bh1"):
        get_sampler("unipc", solver_type="bh1").tables(official_schedule("dpm++", 5, 1.0))


@pytest.mark.parametrize("name", ["unipc", "dpm++", "heun"])
def test_bfloat16_samples_are_updated_in_float32(name):
    sched = official_schedule("unipc", 8, 5.0)
    x32 = sample(get_sampler(name), VELOCITY, X_T, sched)
    x16 = sample(get_sampler(name), VELOCITY, X_T.astype(jnp.bfloat16), sched)
    assert x16.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(x16.astype(jnp.float32) - x32))) < 0.05 * float(jnp.max(jnp.abs(x32)))


@pytest.mark.parametrize("name", ["unipc", "dpm++", "dpm++-sde"])
def test_steps_in_slices_equal_the_whole_loop(name):
    # multistep history, the PRNG key of step i and the non-finite tracking all travel in the carry
    sampler = get_sampler(name)
    tables = sampler.tables(official_schedule("unipc", 7, 5.0))
    key = jax.random.key(3)
    dtype = compute_dtype(X_T)
    whole, ys = scan_steps(sampler, VELOCITY, init_carry(sampler, X_T), step_rows(tables, dtype), key=key,
                           return_trajectory=True, check_finite=True)
    carry, parts = init_carry(sampler, X_T), []
    for start, stop in ((0, 1), (1, 4), (4, 7)):
        carry, y = scan_steps(sampler, VELOCITY, carry, step_rows(tables, dtype, start, stop), key=key,
                              return_trajectory=True, check_finite=True)
        parts.append(y)
    np.testing.assert_array_equal(carry.state.x, whole.state.x)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), ys[0])
    assert int(carry.first_bad) == int(whole.first_bad) == -1
    aux = loop_aux(X_T, carry, None, check_finite=True)
    assert set(aux) == {"first_nonfinite_step"}


def test_a_trajectory_keeps_the_model_state():
    # a velocity function threading a counter: the final count must come back with or without a trajectory
    def counting(x, t, i, n):
        return VELOCITY(x, t, i), n + 1

    sched = official_schedule("unipc", 5, 5.0)
    sampler = get_sampler("unipc")
    x, aux = run_scan(sampler, counting, X_T, sampler.tables(sched), model_state=jnp.int32(0))
    x2, aux2 = run_scan(sampler, counting, X_T, sampler.tables(sched), model_state=jnp.int32(0),
                        return_trajectory=True)
    assert int(aux["model_state"]) == int(aux2["model_state"]) == sampler.nfe(5)
    np.testing.assert_array_equal(x, x2)
    assert aux2["samples"].shape == (6, *X_T.shape) and aux2["velocities"].shape == (5, *X_T.shape)
