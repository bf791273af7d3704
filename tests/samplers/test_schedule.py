"""Sigma schedules: the shift warp and its inverse, official grids and timestep tables, spacings."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wan22_jax.errors import InputError
from wan22_jax.samplers import SPACINGS, make_schedule, official_schedule, shift_sigmas, train_sigma_max, unshift_sigmas

# the official set_timesteps re-run in numpy (docs/architecture.md §7)
T2V_A14B = [999, 997, 995, 993, 990, 988, 985, 982, 979, 976, 972, 969, 965, 961, 956, 952, 947, 941, 936, 929,
            922, 915, 907, 898, 888, 877, 865, 852, 837, 819, 799, 776, 749, 717, 678, 631, 571, 492, 386, 235]
I2V_A14B = [999, 994, 989, 983, 978, 972, 965, 959, 952, 944, 937, 929, 920, 911, 902, 892, 882, 870, 859, 846,
            833, 818, 803, 786, 768, 749, 728, 706, 681, 654, 624, 591, 555, 514, 468, 416, 356, 288, 208, 113]


@settings(max_examples=200, deadline=None)
@given(sigma=st.floats(0.0, 1.0), shift=st.floats(0.05, 50.0))
def test_shift_inverse_round_trip(sigma, shift):
    shifted = shift_sigmas(sigma, shift)
    assert 0.0 <= shifted <= 1.0 + 1e-12
    assert unshift_sigmas(shifted, shift) == pytest.approx(sigma, abs=1e-12)


@given(shift=st.floats(0.05, 50.0))
def test_shift_fixes_the_ends_and_is_monotone(shift):
    assert shift_sigmas(0.0, shift) == 0.0 and shift_sigmas(1.0, shift) == pytest.approx(1.0)
    lin = np.linspace(0, 1, 101)
    s = shift_sigmas(lin, shift)
    assert np.all(np.diff(s) > 0)
    # shift > 1 moves every interior sigma up (more steps at high noise), shift < 1 down
    if abs(shift - 1) > 1e-3:
        assert np.all((s[1:-1] > lin[1:-1]) == (shift > 1))


def test_shift_formula_value():
    assert shift_sigmas(0.5, 5.0) == pytest.approx(2.5 / 3.0)
    assert shift_sigmas(0.3, 1.0) == 0.3


def test_official_unipc_grid():
    sched = official_schedule("unipc", 40, 12.0)
    assert list(sched.timesteps) == T2V_A14B
    assert list(official_schedule("unipc", 40, 5.0).timesteps) == I2V_A14B
    assert sched.sigmas.dtype == np.float32 and sched.sigmas[-1] == 0.0 and sched.sigmas.shape == (41,)
    np.testing.assert_allclose(sched.sigmas[[0, 1, 38, 39]], [0.9999166, 0.9977826, 0.3868470, 0.2351095], rtol=1e-6)
    assert train_sigma_max() == 0.9990000128746033


def test_official_dpmpp_grid_starts_at_one():
    sched = official_schedule("dpm++", 40, 12.0)
    assert sched.sigmas[0] == 1.0 and sched.timesteps[0] == 1000
    assert sched.timesteps[14] == 957  # where UniPC has 956 (section 7.4)


@pytest.mark.parametrize("spacing", sorted(SPACINGS))
@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_spacings_valid(spacing, steps):
    sched = make_schedule(steps, shift=3.0, spacing=spacing, sigma_max=1.0)
    s = sched.sigmas
    assert s.shape == (steps + 1,) and s[-1] == 0 and np.all(np.diff(s) < 0)
    assert s[0] == 1.0
    # all spacings share the linear grid's last nonzero sigma: the shift warp 3u / (1 + 2u) of u = 1 / steps
    assert s[-2] == pytest.approx(3.0 / (steps + 2.0), rel=1e-6)
    # timesteps truncate the float64 sigmas, which the float32 ones round: they agree to within one step
    assert np.all(np.abs(sched.timesteps - s[:-1].astype(np.float64) * 1000) < 1.0 + 1e-3)


def test_karras_crowds_low_sigmas():
    lin = make_schedule(20, spacing="linear", sigma_max=1.0).sigmas
    kar = make_schedule(20, spacing="karras", sigma_max=1.0).sigmas
    assert np.sum(kar[:-1] < 0.3) > np.sum(lin[:-1] < 0.3)


def test_timestep_modes():
    exact = make_schedule(7, shift=2.0, timestep_mode="exact")
    trunc = make_schedule(7, shift=2.0)
    np.testing.assert_allclose(exact.node_times(), exact.sigmas.astype(np.float64) * 1000)
    np.testing.assert_array_equal(trunc.node_times()[:-1], trunc.timesteps)
    assert trunc.model_time(0.12345) == 123.0 and exact.model_time(0.12345) == pytest.approx(123.45)


@pytest.mark.parametrize("kwargs,match", [
    ({"spacing": "cosine"}, "karras"),
    ({"timestep_mode": "round"}, "truncate"),
    ({"shift": 0.0}, "shift"),
    ({"sigma_max": 1.5}, "sigma_max"),
])
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_schedule(10, **kwargs)


def test_bad_steps_and_solver():
    for steps in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="steps"):
            make_schedule(steps)
    with pytest.raises(InputError, match="dpm\\+\\+"):
        official_schedule("euler", 10, 1.0)
