"""Reliability suite: each bad input gives ONE clear error naming the problem, before heavy compute.

Every row is a distinct bad input with the exception type and the words its message must contain. The README
lists what is validated; `test_suite_counts_distinct_bad_inputs` keeps the suite honest about its size.
"""

import dataclasses
import functools
import json
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from dit_reference import official_state_dict
from wan22_jax.config_utils import config_from_dict, config_to_dict
from wan22_jax.configs import get_task
from wan22_jax.convert.dit import load_dit
from wan22_jax.convert.release import convert_release
from wan22_jax.errors import (CheckpointFormatError, ConfigError, InputError, Wan22Error,
                              WeightMappingError)
from wan22_jax.io.torch_pickle import load_pth
from wan22_jax.models.dit import DIT_PRESETS, MODEL_TYPES, DiTConfig, WanModel
from wan22_jax.models.t5 import T5Config, t5_config_from_dict
from wan22_jax.models.tokenizer import PromptTruncatedWarning
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.presets import random_pipeline
from wan22_jax.samplers import get_sampler, make_schedule

TINY = dataclasses.replace(DIT_PRESETS["tiny-t2v"], num_layers=1)


def _official_folder(tmp, sd=None, config=None):
    tmp.mkdir(parents=True, exist_ok=True)
    conf = {"_class_name": "WanModel", **{f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)}}
    conf.update(config or {})
    (tmp / "config.json").write_text(json.dumps(conf))
    save_file(sd if sd is not None else official_state_dict(TINY, np.random.default_rng(0)),
              str(tmp / "diffusion_pytorch_model.safetensors"))
    return tmp


def _sd(**changes):
    sd = official_state_dict(TINY, np.random.default_rng(0))
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    return sd


# ---- each case: (name, callable(tmp_path), exception, regex the message must match)
def c_missing_key(tmp):
    load_dit(_official_folder(tmp, _sd(blocks__0__ffn__2__bias=None)))


def c_extra_key(tmp):
    load_dit(_official_folder(tmp, _sd(blocks__0__img_emb__weight=np.zeros(3, np.float32))))


def c_wrong_shape(tmp):
    load_dit(_official_folder(tmp, _sd(text_embedding__0__weight=np.zeros((64, 40), np.float32))))


def c_unknown_dit_field(tmp):
    load_dit(_official_folder(tmp, config={"use_flash": True}))


def c_inconsistent_dit(tmp):
    load_dit(_official_folder(tmp, config={"num_heads": 5}))


def c_unknown_model_type(tmp):
    load_dit(_official_folder(tmp, config={"model_type": "t2i"}))


def c_no_config(tmp):
    tmp.mkdir()
    load_dit(tmp)


def c_truncated_safetensors(tmp):
    f = _official_folder(tmp)
    p = f / "diffusion_pytorch_model.safetensors"
    p.write_bytes(p.read_bytes()[:-1000])
    load_dit(f)


def c_garbage_safetensors(tmp):
    f = _official_folder(tmp)
    (f / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    load_dit(f)


def c_missing_shard(tmp):
    f = _official_folder(tmp)
    (f / "diffusion_pytorch_model.safetensors").unlink()
    (f / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    load_dit(f)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/wan22_pwned_marker",))


def c_code_carrying_pickle(tmp):
    tmp.mkdir()
    path = tmp / "Wan2.1_VAE.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, path)
    # replace the pickle inside the zip with one whose unpickling would run a command
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in items if n.endswith("data.pkl"))
    items[name] = pickle.dumps({"encoder.conv1.weight": _Boom()}, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in items.items():
            z.writestr(n, data)
    try:
        load_pth(path)
    finally:
        assert not os.path.exists("/tmp/wan22_pwned_marker"), "the pickle's code ran"


def c_pth_not_a_state_dict(tmp):
    tmp.mkdir()
    torch.save([torch.zeros(2)], tmp / "x.pth")
    load_pth(tmp / "x.pth")


def c_unknown_t5_field(tmp):
    t5_config_from_dict({"vocab_size": 10, "dim": 8, "rotary": True}, source="t5_config.json")


def c_unknown_vae_field(tmp):
    config_from_dict(VAEConfig, {"version": "2.1", "dim": 8, "z_dim": 16, "use_gan": 1}, source="vae_config.json")


def c_bad_vae_version(tmp):
    VAEConfig(version="3.0")


@functools.cache
def _pipe():
    return random_pipeline("ti2v-5B")


FAST = dict(num_inference_steps=2, progress=False)


def c_frames_not_1_plus_4k(tmp):
    _pipe()(prompt="x", num_frames=10, **FAST)


def c_size_not_divisible(tmp):
    _pipe()(prompt="x", num_frames=5, height=48, width=64, **FAST)


def c_unknown_task(tmp):
    get_task("t2v-1.3B")


def c_unknown_solver(tmp):
    _pipe()(prompt="x", num_frames=5, solver="plms", **FAST)


def c_unknown_spacing(tmp):
    make_schedule(10, shift=5.0, spacing="cosine")


def c_unknown_sampler_option(tmp):
    get_sampler("unipc", eta=0.3)


def c_image_for_text_only_task(tmp):
    random_pipeline("t2v-A14B")(prompt="x", image=np.zeros((48, 64, 3), np.uint8), num_frames=5, **FAST)


def c_prompt_too_long(tmp):
    _pipe().text_encoder.tokenizer(" ".join(["circle"] * 400))


def c_nan_latents(tmp):
    _pipe()(prompt="x", num_frames=5, latents=np.full((48, 2, 4, 4), np.inf, np.float32), **FAST)


def c_vae_frames(tmp):
    p = _pipe()
    p.vae_encode(np.zeros((1, 3, 4, 64, 64), np.float32))


def c_vae_spatial(tmp):
    p = _pipe()
    p.vae_encode(np.zeros((1, 3, 5, 40, 64), np.float32))


def c_dit_channels(tmp):
    WanModel(TINY)(np.zeros((1, 17, 1, 4, 4), np.float32), np.zeros(1, np.float32), np.zeros((1, 3, 48), np.float32))


def c_dit_context_dim(tmp):
    WanModel(TINY)(np.zeros((1, 16, 1, 4, 4), np.float32), np.zeros(1, np.float32), np.zeros((1, 3, 40), np.float32))


def c_prompt_embeds_shape(tmp):
    _pipe()(prompt_embeds=np.zeros((1, 4, 31), np.float32), num_frames=5, **FAST)


def c_wrong_image_shape(tmp):
    _pipe()(prompt="x", image=np.zeros((64, 64, 4), np.uint8), num_frames=5, **FAST)


def c_convert_into_existing(tmp):
    src = _official_folder(tmp / "src", _sd(head__modulation=None))
    convert_release(src, tmp / "out")


CASES = [
    (c_missing_key, WeightMappingError, r"missing 1 tensor.*'blocks\.0\.ffn\.2\.bias'"),
    (c_extra_key, WeightMappingError, r"unexpected tensor.*'blocks\.0\.img_emb\.weight'"),
    (c_wrong_shape, WeightMappingError, r"'text_embedding\.0\.weight' has shape \(64, 40\).*expects \(48, 64\)"),
    (c_unknown_dit_field, ConfigError, r"unknown config field.*use_flash"),
    (c_inconsistent_dit, ConfigError, r"dim 64 must split into num_heads 5"),
    (c_unknown_model_type, ConfigError, r"model_type 't2i'"),
    (c_no_config, CheckpointFormatError, r"no config\.json"),
    (c_truncated_safetensors, CheckpointFormatError, r"truncated file"),
    (c_garbage_safetensors, CheckpointFormatError, r"corrupt safetensors header"),
    (c_missing_shard, CheckpointFormatError, r"shard file.*not found"),
    (c_code_carrying_pickle, CheckpointFormatError, r"refused or unreadable torch checkpoint"),
    (c_pth_not_a_state_dict, CheckpointFormatError, r"expected a state dict, found list"),
    (c_unknown_t5_field, ConfigError, r"rotary"),
    (c_unknown_vae_field, ConfigError, r"use_gan"),
    (c_bad_vae_version, ConfigError, r"VAE version '3\.0'"),
    (c_frames_not_1_plus_4k, InputError, r"num_frames=10: must be 1 \+ 4k"),
    (c_size_not_divisible, InputError, r"size 64x48.*multiples of 32"),
    (c_unknown_task, InputError, r"unknown task 't2v-1\.3B'"),
    (c_unknown_solver, InputError, r"unknown sampler 'plms'"),
    (c_unknown_spacing, InputError, r"unknown sigma spacing 'cosine'"),
    (c_unknown_sampler_option, InputError, r"no option.*eta"),
    (c_image_for_text_only_task, InputError, r"text-to-video: it takes no image"),
    (c_nan_latents, FloatingPointError, r"NaN or Inf in the latents at denoising step 0"),
    (c_vae_frames, InputError, r"video has 4 frames.*1 \+ 4k"),
    (c_vae_spatial, InputError, r"video size 40x64.*spatial stride 16"),
    (c_dit_channels, InputError, r"latent input has shape \(1, 17, 1, 4, 4\)"),
    (c_dit_context_dim, InputError, r"context has shape \(1, 3, 40\)"),
    (c_prompt_embeds_shape, InputError, r"prompt_embeds has shape \(1, 4, 31\)"),
    (c_wrong_image_shape, InputError, r"image has shape \(64, 64, 4\)"),
    (c_convert_into_existing, WeightMappingError, r"missing 1 tensor.*head\.modulation"),
]


@pytest.mark.parametrize("fn,exc,match", CASES, ids=[c[0].__name__[2:] for c in CASES])
def test_bad_input_gives_one_clear_error(tmp_path, fn, exc, match):
    with pytest.raises(exc, match=match) as info:
        fn(tmp_path / "case")
    # one error of ours (not a deep numpy/jax traceback) unless it is the NaN guard
    assert isinstance(info.value, (Wan22Error, FloatingPointError))


def test_prompt_longer_than_text_len_warns(tmp_path):
    with pytest.warns(PromptTruncatedWarning, match="truncated to 128"):
        c_prompt_too_long(tmp_path)


def test_failed_conversion_leaves_nothing(tmp_path):
    with pytest.raises(WeightMappingError, match=r"missing 1 tensor.*head\.modulation"):
        c_convert_into_existing(tmp_path)
    assert not (tmp_path / "out").exists()


def test_suite_counts_distinct_bad_inputs():
    assert len({c[0] for c in CASES}) + 1 >= 25  # +1: the truncation warning


# ---- fuzz: a valid config dict builds the config and round-trips through its dict form; a dict with one bad
# field (or an unknown key) raises ConfigError naming that field.
def _names(message: str, field: str) -> bool:
    """Whether `message` names `field` as a word of its own ("dim" is not named by "dec_dim")."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(field)}(?![A-Za-z0-9_])", message) is not None


def _check_valid(cls, raw):
    cfg = config_from_dict(cls, raw, source="fuzz")
    as_dict = config_to_dict(cfg)
    # every field lands where it is named (the strategies give all fields)
    assert as_dict == {k: v for k, v in raw.items() if not k.startswith("_")}
    assert config_from_dict(cls, json.loads(json.dumps(as_dict)), source="fuzz") == cfg


def _check_invalid(cls, raw, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(cls, raw, source="fuzz")
    assert _names(str(info.value), field), f"{field}={raw[field]!r}: {info.value}"


def _one_bad_field(valid, bad):
    """(raw, field): a valid dict with one field replaced by a value from `bad[field](raw)`, or an unknown key."""
    unknown = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)

    def mutate(raw_field):
        raw, field = raw_field
        if field is None:
            return unknown.filter(lambda k: k not in raw).map(lambda k: ({**raw, k: 1}, k))
        return bad[field](raw).map(lambda v: ({**raw, field: v}, field))

    return st.tuples(valid, st.sampled_from([None, *sorted(bad)])).flatmap(mutate)


def _non_integral_float():
    return st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not float(x).is_integer())


def _not_an_int():
    return st.one_of(_non_integral_float(), st.text(max_size=4), st.booleans(), st.none(),
                     st.lists(st.integers(1, 4), min_size=1, max_size=3))


def _bad_positive_int(_raw=None):
    return st.one_of(_not_an_int(), st.integers(-5, 0))


def _bad_eps(_raw=None):
    return st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.text(max_size=3), st.none(),
                     st.booleans())


def _bad_bool(_raw=None):
    return st.one_of(st.integers(0, 1), st.none(), st.text(max_size=3), st.floats(0, 1))


VAE_VERSIONS = ("2.1", "2.2")  # the official releases' VAEs
_POS = st.integers(1, 5000)
_EPS = st.floats(1e-12, 1e-3)


@st.composite
def _valid_dit(draw):
    heads = draw(st.integers(1, 48))
    return {"_class_name": "WanModel", "model_type": draw(st.sampled_from(MODEL_TYPES)),
            "patch_size": draw(st.lists(st.integers(1, 4), min_size=3, max_size=3)), "text_len": draw(_POS),
            "in_dim": draw(_POS), "dim": heads * 2 * draw(st.integers(1, 128)), "ffn_dim": draw(_POS),
            "freq_dim": 2 * draw(st.integers(1, 512)), "text_dim": draw(_POS), "out_dim": draw(_POS),
            "num_heads": heads, "num_layers": draw(st.integers(1, 64)), "window_size": [-1, -1],
            "qk_norm": True, "cross_attn_norm": True, "eps": draw(_EPS)}


_BAD_DIT = {
    **{f: _bad_positive_int for f in ("text_len", "in_dim", "dim", "ffn_dim", "text_dim", "out_dim", "num_heads",
                                      "num_layers")},
    "freq_dim": lambda raw: st.one_of(_bad_positive_int(), st.integers(0, 500).map(lambda k: 2 * k + 1)),
    "model_type": lambda raw: st.one_of(st.text(max_size=5).filter(lambda t: t not in MODEL_TYPES),
                                        st.integers(), st.none()),
    "patch_size": lambda raw: st.one_of(
        _not_an_int().filter(lambda v: not isinstance(v, list)),
        st.lists(st.integers(1, 4), max_size=5).filter(lambda v: len(v) != 3),
        st.tuples(st.integers(0, 2), st.one_of(st.integers(-3, 0), _not_an_int())).map(
            lambda ib: [ib[1] if i == ib[0] else 1 for i in range(3)])),
    "window_size": lambda raw: st.one_of(
        st.lists(st.integers(-2, 64), min_size=2, max_size=2).filter(lambda v: v != [-1, -1]),
        st.integers(), st.none(), st.text(max_size=3)),
    "qk_norm": lambda raw: st.one_of(st.just(False), _bad_bool()),
    "cross_attn_norm": lambda raw: st.one_of(st.just(False), _bad_bool()),
    "eps": _bad_eps,
}


@settings(max_examples=100, deadline=None)
@given(_valid_dit())
def test_fuzz_valid_dit_config_builds_and_round_trips(raw):
    _check_valid(DiTConfig, raw)


@settings(max_examples=300, deadline=None)
@given(_one_bad_field(_valid_dit(), _BAD_DIT))
def test_fuzz_dit_config_with_a_bad_field_names_it(raw_field):
    _check_invalid(DiTConfig, *raw_field)


@st.composite
def _valid_t5(draw):
    heads = draw(st.integers(1, 64))
    return {"vocab_size": draw(st.integers(1, 300_000)), "dim": draw(_POS),
            "dim_attn": heads * draw(st.integers(1, 128)), "dim_ffn": draw(_POS), "num_heads": heads,
            "num_layers": draw(st.integers(1, 48)), "num_buckets": 2 * draw(st.integers(2, 64)),
            "max_distance": draw(st.integers(1, 1024)), "shared_pos": False, "eps": draw(_EPS),
            "dropout": draw(st.floats(0.0, 0.5))}


_BAD_T5 = {
    **{f: _bad_positive_int for f in ("vocab_size", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers",
                                      "max_distance")},
    "num_buckets": lambda raw: st.one_of(_bad_positive_int(), st.sampled_from([1, 2, 3, 5, 33])),
    "shared_pos": lambda raw: st.one_of(st.just(True), _bad_bool()),
    "eps": _bad_eps,
    "dropout": lambda raw: st.one_of(st.floats(max_value=-1e-9), st.just(float("nan")), st.text(max_size=3),
                                     st.none()),
}


@settings(max_examples=100, deadline=None)
@given(_valid_t5())
def test_fuzz_valid_t5_config_builds_and_round_trips(raw):
    _check_valid(T5Config, raw)


@settings(max_examples=300, deadline=None)
@given(_one_bad_field(_valid_t5(), _BAD_T5))
def test_fuzz_t5_config_with_a_bad_field_names_it(raw_field):
    _check_invalid(T5Config, *raw_field)


@st.composite
def _valid_vae(draw):
    levels = draw(st.integers(2, 4))
    z_dim = draw(st.integers(1, 64))
    stats = draw(st.booleans())
    stat = st.lists(st.floats(-3, 3), min_size=z_dim, max_size=z_dim)
    return {"version": draw(st.sampled_from(VAE_VERSIONS)), "dim": draw(st.integers(1, 256)),
            "dec_dim": draw(st.none() | st.integers(1, 256)), "z_dim": z_dim,
            "dim_mult": draw(st.lists(st.integers(1, 4), min_size=levels, max_size=levels)),
            "num_res_blocks": draw(st.integers(1, 3)), "attn_scales": [],
            "temperal_downsample": draw(st.lists(st.booleans(), min_size=levels - 1, max_size=levels - 1)),
            "dropout": draw(st.floats(0.0, 0.5)),
            "latents_mean": draw(stat) if stats else None,
            "latents_std": draw(stat.map(lambda v: [abs(x) + 0.1 for x in v])) if stats else None}


def _bad_dim_mult(raw):
    """Same length as the valid dim_mult (so the temperal_downsample length check cannot be what fires)."""
    n = len(raw["dim_mult"])
    return st.tuples(st.integers(0, n - 1), st.one_of(st.integers(-3, 0), _not_an_int())).map(
        lambda ib: [ib[1] if i == ib[0] else 2 for i in range(n)])


_BAD_VAE = {
    "version": lambda raw: st.one_of(st.text(max_size=4).filter(lambda t: t not in VAE_VERSIONS),
                                     st.floats(0, 5), st.none()),
    "dim": _bad_positive_int,
    "dec_dim": lambda raw: _bad_positive_int().filter(lambda v: v is not None),
    "z_dim": _bad_positive_int,
    "num_res_blocks": lambda raw: st.one_of(_not_an_int(), st.integers(-5, -1)),
    "dim_mult": _bad_dim_mult,
    "attn_scales": lambda raw: st.lists(st.floats(0.1, 1), min_size=1, max_size=2),
    "temperal_downsample": lambda raw: st.one_of(
        st.lists(st.booleans(), max_size=5).filter(lambda v: len(v) != len(raw["dim_mult"]) - 1),
        st.integers(), st.none()),
    "dropout": lambda raw: st.one_of(st.floats(max_value=-1e-9), st.text(max_size=3), st.none()),
    "latents_mean": lambda raw: st.lists(st.floats(-1, 1), max_size=70).filter(
        lambda v: len(v) != raw["z_dim"] or raw["latents_std"] is None),
}


def test_vae_config_refuses_non_integer_dims():
    for field, value in [("dim", 2.5), ("z_dim", "4"), ("dim_mult", [1, 2.0, 4, 4]), ("dec_dim", 8.5),
                         ("num_res_blocks", 1.5)]:
        _check_invalid(VAEConfig, {field: value}, field)


@settings(max_examples=100, deadline=None)
@given(_valid_vae())
def test_fuzz_valid_vae_config_builds_and_round_trips(raw):
    _check_valid(VAEConfig, raw)


@settings(max_examples=300, deadline=None)
@given(_one_bad_field(_valid_vae(), _BAD_VAE))
def test_fuzz_vae_config_with_a_bad_field_names_it(raw_field):
    _check_invalid(VAEConfig, *raw_field)
