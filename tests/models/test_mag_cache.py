"""MagCache: the skip schedule follows the paper's rule from the calibrated curve, a skipped step reuses the last
residual, retention and the expert switch force runs, and the calibration run records the residual-norm ratios."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from wan22_jax.errors import InputError
from wan22_jax.models.dit import DIT_PRESETS, random_dit
from wan22_jax.models.mag_cache import MagCache, MagCalibration, nearest_ratios
from wan22_jax.pipeline.mag_calibration import calibrate_mag_cache
from wan22_jax.presets import random_pipeline


def _inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 2, 4, 6)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 5, 48)), jnp.float32)
    return x, ctx


def expected_skips(ratios, threshold, max_skips, always):
    """The paper's rule written out on the host."""
    out, acc, err, run = [], 1.0, 0.0, 0
    for g, forced in zip(ratios, always):
        acc, run = acc * g, run + 1
        err += abs(1 - acc)
        skip = (not forced) and err < threshold and run <= max_skips
        if not skip:
            acc, err, run = 1.0, 0.0, 0
        out.append(skip)
    return out


def test_skips_follow_the_rule_and_reuse_the_residual():
    model = random_dit(DIT_PRESETS["tiny-t2v"], seed=1)
    x, ctx = _inputs()
    t = jnp.array([700.0, 700.0])
    ratios = (1.0, 1.0, 1.01, 1.02, 0.9, 1.0, 1.0, 1.0)
    cache = MagCache(ratios, threshold=0.05, max_skips=2, retention=0.25).resolved(8)
    always = cache.always_run()
    np.testing.assert_array_equal(always, [True, True, False, False, False, False, False, False])
    want = expected_skips(ratios, 0.05, 2, always)
    assert want == [False, False, True, True, False, True, True, False]  # the rule is not trivial here
    ref = np.asarray(model(x, t, ctx))
    c = cache.init(model, x, t, context=ctx)
    for i, skip in enumerate(want):
        before = int(c["skipped"])
        out, c = cache.forward(model, c, x, t, step=jnp.int32(i), context=ctx)
        assert int(c["skipped"]) - before == int(skip), i
        # same input each step: a reused residual gives the computed output back
        assert float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref))) < 1e-5


def test_retention_and_expert_starts():
    cache = MagCache((1.0,) * 10, retention=0.2).resolved(10, (0, 4))
    # expert 0 has 4 steps: max(1, int(0.8)) = 1 retained; expert 1 has 6: int(1.2) = 1
    np.testing.assert_array_equal(np.flatnonzero(cache.always_run()), [0, 4])
    # index round(i * 2 / 4): numpy rounds halves to even (0, 0, 1, 2, 2), as the official resampling
    assert nearest_ratios((1.0, 2.0, 3.0), 5) == (1.0, 1.0, 2.0, 3.0, 3.0)
    assert nearest_ratios((1.0, 2.0, 3.0), 1) == (3.0,)


# slow (7 s): test_pipeline_calibrate_then_skip[t2v-A14B] calibrates through the pipeline in the default suite
@pytest.mark.slow
def test_calibration_records_residual_norm_ratios():
    model = random_dit(DIT_PRESETS["tiny-t2v"], seed=1)
    x, ctx = _inputs()
    cal = MagCalibration(3)
    c = cal.init(model, x, jnp.array([900.0, 900.0]), context=ctx)
    residuals = []
    for i, (scale, tv) in enumerate([(1.0, 900.0), (0.7, 600.0), (0.4, 300.0)]):
        t = jnp.array([tv, tv])
        out, c = cal.forward(model, c, x * scale, t, step=jnp.int32(i), context=ctx)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(model(x * scale, t, ctx)))
        inp = model.prepare(x * scale, t, context=ctx)
        h, _ = model.run_blocks(inp, inp.tokens)
        residuals.append(np.linalg.norm(np.asarray(h - inp.tokens, np.float64), axis=-1))
    want = [1.0] + [float(np.mean(residuals[i] / residuals[i - 1])) for i in (1, 2)]
    np.testing.assert_allclose(np.asarray(c["ratios"]), want, rtol=1e-4)
    assert abs(want[1] - 1) > 1e-3  # the recorded ratios are not all 1


# the one-DiT ti2v run is slow-marked (suite time): the two-expert t2v run covers the same path and more
@pytest.mark.parametrize("task", [pytest.param("ti2v-5B", marks=pytest.mark.slow), "t2v-A14B"])
def test_pipeline_calibrate_then_skip(task):
    pipe = random_pipeline(task)
    kw = dict(prompt="a red circle", num_inference_steps=8, seed=0, output_type="latent", progress=False)
    ratios = calibrate_mag_cache(pipe, **kw)
    assert len(ratios) == 8 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    ref = pipe(**kw).latents
    never = pipe(step_cache=MagCache(ratios, threshold=0.0), **kw)
    np.testing.assert_array_equal(never.latents, ref)
    assert never.skipped_steps == 0
    always = pipe(step_cache=MagCache(ratios, threshold=1e9, max_skips=2, retention=0.25), **kw)
    if task == "ti2v-5B":  # run run (retained) | skip skip run | skip skip run
        assert always.skipped_steps == 4
    else:
        # timesteps 997 988 972 952 922 877 | 799 631: the low-noise expert starts at step 6 with a fresh cache
        assert int(np.sum(always.timesteps >= 875)) == 6
        # high: run (retained) | skip skip run | skip skip; low: run (retained) | skip
        assert always.skipped_steps == 5
    assert not np.array_equal(always.latents, ref)


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="ratios"):
        MagCache((1.0, -1.0))
    with pytest.raises(InputError, match="retention"):
        MagCache((1.0,), retention=1.5)
    pipe = random_pipeline("ti2v-5B")
    with pytest.raises(InputError, match="once per step"):
        pipe(prompt="x", solver="heun", num_inference_steps=2, step_cache=MagCache((1.0, 1.0)))
    with pytest.raises(InputError, match="MagCalibration"):
        pipe(prompt="x", num_inference_steps=2, step_cache=MagCalibration(3))
