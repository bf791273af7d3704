"""Reliability suite: each bad input gives ONE clear error naming the problem, before heavy compute.

Every row is a distinct bad input with the exception type and the words its message must contain. The README
lists what is validated; `test_suite_counts_distinct_bad_inputs` keeps the suite honest about its size.
"""

import dataclasses
import io
import json
import pickle
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from dit_reference import official_state_dict
from wan22_jax.config_utils import config_from_dict
from wan22_jax.errors import (CheckpointFormatError, ConfigError, InputError, Wan22Error,
                              WeightMappingError)
from wan22_jax.models.dit import DIT_PRESETS, DiTConfig

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


def _load_dit(folder):
    from wan22_jax.convert.dit import load_dit
    return load_dit(folder)


# ---- each case: (name, callable(tmp_path), exception, regex the message must match)
def c_missing_key(tmp):
    _load_dit(_official_folder(tmp, _sd(blocks__0__ffn__2__bias=None)))


def c_extra_key(tmp):
    _load_dit(_official_folder(tmp, _sd(blocks__0__img_emb__weight=np.zeros(3, np.float32))))


def c_wrong_shape(tmp):
    _load_dit(_official_folder(tmp, _sd(text_embedding__0__weight=np.zeros((64, 40), np.float32))))


def c_unknown_dit_field(tmp):
    _load_dit(_official_folder(tmp, config={"use_flash": True}))


def c_inconsistent_dit(tmp):
    _load_dit(_official_folder(tmp, config={"num_heads": 5}))


def c_unknown_model_type(tmp):
    _load_dit(_official_folder(tmp, config={"model_type": "t2i"}))


def c_no_config(tmp):
    tmp.mkdir()
    _load_dit(tmp)


def c_truncated_safetensors(tmp):
    f = _official_folder(tmp)
    p = f / "diffusion_pytorch_model.safetensors"
    p.write_bytes(p.read_bytes()[:-1000])
    _load_dit(f)


def c_garbage_safetensors(tmp):
    f = _official_folder(tmp)
    (f / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    _load_dit(f)


def c_missing_shard(tmp):
    f = _official_folder(tmp)
    (f / "diffusion_pytorch_model.safetensors").unlink()
    (f / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    _load_dit(f)


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/wan22_pwned_marker",))


def c_code_carrying_pickle(tmp):
    import torch
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
    from wan22_jax.io.torch_pickle import load_pth
    try:
        load_pth(path)
    finally:
        import os
        assert not os.path.exists("/tmp/wan22_pwned_marker"), "the pickle's code ran"


def c_pth_not_a_state_dict(tmp):
    import torch
    tmp.mkdir()
    torch.save([torch.zeros(2)], tmp / "x.pth")
    from wan22_jax.io.torch_pickle import load_pth
    load_pth(tmp / "x.pth")


def c_unknown_t5_field(tmp):
    from wan22_jax.models.t5 import t5_config_from_dict
    t5_config_from_dict({"vocab_size": 10, "dim": 8, "rotary": True}, source="t5_config.json")


def c_unknown_vae_field(tmp):
    from wan22_jax.models.vae_config import VAEConfig
    config_from_dict(VAEConfig, {"version": "2.1", "dim": 8, "z_dim": 16, "use_gan": 1}, source="vae_config.json")


def c_bad_vae_version(tmp):
    from wan22_jax.models.vae_config import VAEConfig
    VAEConfig(version="3.0")


def _pipe():
    global _PIPE
    try:
        return _PIPE
    except NameError:
        from wan22_jax.presets import random_pipeline
        _PIPE = random_pipeline("ti2v-5B")
        return _PIPE


FAST = dict(num_inference_steps=2, progress=False)


def c_frames_not_1_plus_4k(tmp):
    _pipe()(prompt="x", num_frames=10, **FAST)


def c_size_not_divisible(tmp):
    _pipe()(prompt="x", num_frames=5, height=48, width=64, **FAST)


def c_unknown_task(tmp):
    from wan22_jax.configs import get_task
    get_task("t2v-1.3B")


def c_unknown_solver(tmp):
    _pipe()(prompt="x", num_frames=5, solver="plms", **FAST)


def c_unknown_spacing(tmp):
    from wan22_jax.samplers import make_schedule
    make_schedule(10, shift=5.0, spacing="cosine")


def c_unknown_sampler_option(tmp):
    from wan22_jax.samplers import get_sampler
    get_sampler("unipc", eta=0.3)


def c_image_for_text_only_task(tmp):
    from wan22_jax.presets import random_pipeline
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
    from wan22_jax.models.dit import WanModel
    WanModel(TINY)(np.zeros((1, 17, 1, 4, 4), np.float32), np.zeros(1, np.float32), np.zeros((1, 3, 48), np.float32))


def c_dit_context_dim(tmp):
    from wan22_jax.models.dit import WanModel
    WanModel(TINY)(np.zeros((1, 16, 1, 4, 4), np.float32), np.zeros(1, np.float32), np.zeros((1, 3, 40), np.float32))


def c_prompt_embeds_shape(tmp):
    _pipe()(prompt_embeds=np.zeros((1, 4, 31), np.float32), num_frames=5, **FAST)


def c_wrong_image_shape(tmp):
    _pipe()(prompt="x", image=np.zeros((64, 64, 4), np.uint8), num_frames=5, **FAST)


def c_convert_into_existing(tmp):
    from wan22_jax.convert.release import convert_release
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
    (c_vae_frames, InputError, r"4"),
    (c_vae_spatial, InputError, r"40"),
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
    from wan22_jax.models.tokenizer import PromptTruncatedWarning
    with pytest.warns(PromptTruncatedWarning, match="truncated to 128"):
        c_prompt_too_long(tmp_path)


def test_failed_conversion_leaves_nothing(tmp_path):
    with pytest.raises(WeightMappingError):
        c_convert_into_existing(tmp_path)
    assert not (tmp_path / "out").exists()


def test_suite_counts_distinct_bad_inputs():
    assert len({c[0] for c in CASES}) + 1 >= 25  # +1: the truncation warning


# ---- fuzz: arbitrary config dicts give a valid config or a ConfigError, nothing else
_values = st.one_of(st.integers(-3, 5000), st.floats(allow_nan=True), st.booleans(), st.text(max_size=5),
                    st.lists(st.integers(0, 4), max_size=4), st.none())


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(DiTConfig)] + ["bogus", "_meta"]),
                       _values, max_size=8))
def test_fuzz_dit_config(raw):
    try:
        cfg = config_from_dict(DiTConfig, raw, source="fuzz")
    except ConfigError:
        return
    assert isinstance(cfg, DiTConfig)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                                        "temperal_downsample", "dropout", "dec_dim", "nope"]), _values, max_size=6))
def test_fuzz_vae_config(raw):
    from wan22_jax.models.vae_config import VAEConfig
    try:
        config_from_dict(VAEConfig, raw, source="fuzz")
    except ConfigError:
        return


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["vocab_size", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers",
                                        "num_buckets", "shared_pos", "dropout", "zzz"]), _values, max_size=6))
def test_fuzz_t5_config(raw):
    from wan22_jax.models.t5 import T5Config
    try:
        config_from_dict(T5Config, raw, source="fuzz")
    except ConfigError:
        return
