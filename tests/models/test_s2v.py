"""S2V DiT pieces on a tiny random model: batching, token positions, motion modes, injector numbering, bad inputs.
(Parity with the official model is the reference case s2v_dit, run by tests/test_reference_cases.py.)"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.rope import rope_tables
from wan22_jax.models.s2v.audio_utils import injector_ids
from wan22_jax.models.s2v.model_s2v import S2V_PRESETS, S2VConfig, WanModelS2V
from wan22_jax.models.s2v.motioner import FramePackMotioner
from wan22_jax.models.s2v.s2v_utils import grid_positions, rope_tables_at

CFG = S2V_PRESETS["tiny-s2v"]


@pytest.fixture(scope="module")
def model():
    m = WanModelS2V(CFG, rngs=nnx.Rngs(0))
    # non-zero biases / padding token / cond mask, so that every path shows in the output
    state = nnx.state(m, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [v + 0.1 * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves, keys)]
    nnx.update(m, jax.tree.unflatten(treedef, leaves))
    return m


def _inputs(b=1, f=2, hw=8, tm=19, seed=0):
    r = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(r.standard_normal(s).astype(np.float32))  # noqa: E731
    return dict(x=n(b, 16, f, hw, hw), t=jnp.asarray(r.uniform(0, 1000, b).astype(np.float32)),
                context=n(b, 5, CFG.text_dim), ref_latents=n(b, 16, 1, hw, hw), motion_latents=n(b, 16, tm, hw, hw),
                cond_states=n(b, 16, f, hw, hw), audio_input=n(b, 25, CFG.audio_dim, 4 * f))


@functools.partial(jax.jit, static_argnames=("add_last_motion", "drop_motion_frames"))
def _forward(graphdef, state, inp, add_last_motion=2, drop_motion_frames=False):
    inp = dict(inp)
    x, t, c = inp.pop("x"), inp.pop("t"), inp.pop("context")
    return nnx.merge(graphdef, state)(x, t, c, **inp, add_last_motion=add_last_motion,
                                      drop_motion_frames=drop_motion_frames)


def _run(model, inp, **kw):
    return np.asarray(_forward(*nnx.split(model), inp, **kw))


def test_batched_forward_equals_per_sample(model):
    inp = _inputs(b=2)
    both = _run(model, inp)
    for b in range(2):
        one = _run(model, {k: v[b:b + 1] for k, v in inp.items()})
        np.testing.assert_allclose(both[b:b + 1], one, rtol=1e-5, atol=1e-5 * np.abs(one).max())


def test_drop_motion_frames_ignores_motion_latents(model):
    a, b = _inputs(seed=0), _inputs(seed=0)
    b["motion_latents"] = b["motion_latents"] * 3.0
    np.testing.assert_array_equal(_run(model, a, drop_motion_frames=True), _run(model, b, drop_motion_frames=True))
    assert not np.allclose(_run(model, a), _run(model, b))  # ... which the motion tokens do see


def test_fewer_motion_frames_are_zero_padded_in_front(model):
    short = _inputs(tm=5)
    full = dict(short)
    full["motion_latents"] = jnp.pad(short["motion_latents"], ((0, 0), (0, 0), (14, 0), (0, 0), (0, 0)))
    np.testing.assert_array_equal(_run(model, short), _run(model, full))


def test_padd_mode_zeroes_the_most_recent_latents(model):
    inp = _inputs()
    zeroed = dict(inp)
    zeroed["motion_latents"] = inp["motion_latents"].at[:, :, -1:].set(0)
    np.testing.assert_array_equal(_run(model, inp, add_last_motion=1), _run(model, zeroed, add_last_motion=2))


@pytest.mark.parametrize("mode,add_last,tokens", [("padd", 2, 16 + 4 + 4), ("padd", 0, 24), ("drop", 2, 24),
                                                   ("drop", 1, 8), ("drop", 0, 4)])
def test_frame_pack_tokens_and_positions_agree(mode, add_last, tokens):
    packer = FramePackMotioner(8, mode, rngs=nnx.Rngs(0))
    out, pos = packer(jnp.zeros((1, 16, 19, 8, 8)), add_last)
    assert out.shape == (1, tokens, 8) and pos.shape == (tokens, 3)


def test_frame_pack_positions_are_the_official_ones():
    pos = FramePackMotioner(8, rngs=nnx.Rngs(0)).positions(8, 8)
    post, x2, x4 = pos[:16], pos[16:20], pos[20:]
    np.testing.assert_array_equal(post, grid_positions([-1], range(4), range(4)))
    np.testing.assert_array_equal(x2, grid_positions([-3], [0, 3], [0, 3]))  # linspace(0, 3, 2)
    np.testing.assert_array_equal(x4, grid_positions([-19, -14, -9, -4], [0], [0]))


def test_rope_at_grid_positions_equals_the_dit_tables():
    grid = (3, 4, 5)
    cos, sin = rope_tables_at(grid_positions(*(range(n) for n in grid)), 16)
    ref_cos, ref_sin = rope_tables(grid, 16)
    np.testing.assert_array_equal(cos, ref_cos)
    np.testing.assert_array_equal(sin, ref_sin)


def test_negative_frames_are_conjugates():
    cos_p, sin_p = rope_tables_at(np.array([[7, 0, 0]]), 16)
    cos_n, sin_n = rope_tables_at(np.array([[-7, 0, 0]]), 16)
    np.testing.assert_array_equal(cos_n, cos_p)
    np.testing.assert_array_equal(sin_n[:, :4], -sin_p[:, :4])  # the frame axis' 4 pairs only


def test_injector_ids_reproduce_the_official_substring_matching():
    assert injector_ids(3, (0, 2)) == (2, {0: 0, 2: 1})
    release = S2V_PRESETS["s2v-14B"]
    assert release.injectors == (12, {k: i for i, k in enumerate(release.audio_inject_layers)})
    # "transformer_blocks.1" is a substring of blocks 1, 10 and 11's names: three injectors, the last kept
    assert injector_ids(12, (1,)) == (3, {1: 2})


def test_audio_frames_must_match_latent_frames(model):
    inp = _inputs()
    inp["audio_input"] = inp["audio_input"][..., :6]
    with pytest.raises(InputError, match=r"audio_input has shape \(1, 25, 16, 6\).*4 audio frames per latent"):
        _run(model, inp)


def test_ref_latents_shape_is_checked(model):
    inp = _inputs()
    inp["ref_latents"] = inp["ref_latents"][:, :, :, :4]
    with pytest.raises(InputError, match=r"ref_latents has shape \(1, 16, 1, 4, 8\); expected \[1, 16, 1, 8, 8\]"):
        _run(model, inp)


def test_unimplemented_config_variants_are_refused():
    with pytest.raises(ConfigError, match="adain_mode"):
        dataclasses.replace(CFG, adain_mode="attn_norm_out")
    with pytest.raises(ConfigError, match="framepack_drop_mode"):
        dataclasses.replace(CFG, framepack_drop_mode="crop")
    with pytest.raises(ConfigError, match="model_type"):
        S2VConfig(model_type="t2v")
    # variants the official forward cannot run
    with pytest.raises(ConfigError, match="cond_dim must be a positive integer"):
        dataclasses.replace(CFG, cond_dim=0)
    with pytest.raises(ConfigError, match="zero_timestep=false"):
        dataclasses.replace(CFG, zero_timestep=False)


def test_latents_smaller_than_the_frame_packer_patch_are_refused(model):
    inp = _inputs(hw=6)
    with pytest.raises(InputError, match=r"at least 8 .* got \(6, 6\)"):
        _run(model, inp, drop_motion_frames=True)
