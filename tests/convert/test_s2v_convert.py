"""S2V converters (DiT and wav2vec2): full-size manifests map completely, bad checkpoints and configs are named."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refcases import REFERENCE_DIR
from wan22_jax.convert.mapping import check
from wan22_jax.convert.s2v import read_s2v_config, s2v_table
from wan22_jax.convert.wav2vec2 import (IGNORED, _ReleaseView, abstract_wav2vec2, load_wav2vec2,
                                        read_wav2vec2_config, wav2vec2_table)
from wan22_jax.errors import CheckpointFormatError, ConfigError, WeightMappingError
from wan22_jax.io.tensor_source import DictSource, SafetensorsSource, ShapeSource
from wan22_jax.models.s2v.model_s2v import S2V_PRESETS, abstract_s2v
from wan22_jax.models.s2v.wav2vec2 import Wav2Vec2Config
from wan22_jax.state import flat_state

MANIFESTS = REFERENCE_DIR / "manifests"
DIT_CASE = REFERENCE_DIR / "s2v_dit" / "checkpoint"
W2V_CASE = REFERENCE_DIR / "s2v_audio" / "checkpoint" / "wav2vec2-large-xlsr-53-english"


def _index(name):
    return json.loads((MANIFESTS / "index.json").read_text())[name]


def _n_params(expected):
    return sum(int(np.prod(v.shape)) for v in expected.values())


def test_full_size_s2v_manifest_maps_completely():
    cfg = S2V_PRESETS["s2v-14B"]
    expected = flat_state(abstract_s2v(cfg, param_dtype=jnp.bfloat16)[1])  # eval_shape: nothing allocated
    check(s2v_table(cfg), ShapeSource.from_manifest(MANIFESTS / "official_dit_s2v_14B.json"), expected)
    assert _n_params(expected) == _index("official_dit_s2v_14B.json")["num_params"]
    assert len(s2v_table(cfg)) < _index("official_dit_s2v_14B.json")["num_tensors"]  # stacked rules


def test_full_size_wav2vec2_manifest_maps_completely():
    cfg = Wav2Vec2Config()
    path = MANIFESTS / "official_wav2vec2_large_xlsr_53_english.json"
    source = ShapeSource.from_manifest(path)
    expected = flat_state(abstract_wav2vec2(cfg)[1])
    check(wav2vec2_table(cfg), _ReleaseView(source), expected)
    ignored = sum(int(np.prod(source[n])) for n in IGNORED)
    assert _n_params(expected) + ignored == _index(path.name)["num_params"]


def _dit_sd():
    src = SafetensorsSource.from_folder(DIT_CASE)
    return {k: src.load(k) for k in src}, read_s2v_config(DIT_CASE)


def _dit_expected(cfg):
    return flat_state(abstract_s2v(cfg)[1])


@pytest.mark.parametrize("key, shape, match", [
    # shape None: the tensor is removed; else it is added or replaced by zeros of that shape
    ("audio_injector.injector.1.norm_k.weight", None,
     r"missing 1 tensor.*audio_injector\.injector\.1\.norm_k\.weight"),
    ("motioner.zip_motion_out.1.weight", (2, 2), r"unexpected.*motioner\.zip_motion_out\.1\.weight"),
    ("frame_packer.proj_4x.weight", (32, 16, 2, 8, 8),
     r"'frame_packer\.proj_4x\.weight' has shape \(32, 16, 2, 8, 8\)"),
], ids=["missing_injector_key", "unexpected_key", "wrong_shape"])
def test_s2v_bad_checkpoint_is_named(key, shape, match):
    sd, cfg = _dit_sd()
    if shape is None:
        del sd[key]
    else:
        sd[key] = np.zeros(shape, np.float32)
    with pytest.raises(WeightMappingError, match=match):
        check(s2v_table(cfg), DictSource(sd), _dit_expected(cfg))


def _config_copy(tmp_path, src, **changes):
    raw = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


def test_s2v_config_missing_written_field_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing config field\(s\) \['audio_dim'\]"):
        read_s2v_config(_config_copy(tmp_path, DIT_CASE, audio_dim=None))


def test_s2v_config_unimplemented_variant_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="enable_motioner"):
        read_s2v_config(_config_copy(tmp_path, DIT_CASE, enable_motioner=True, enable_framepack=False))


def test_s2v_config_unknown_field_is_named(tmp_path):
    with pytest.raises(ConfigError, match="use_magic"):
        read_s2v_config(_config_copy(tmp_path, DIT_CASE, use_magic=True))


def test_s2v_config_ignored_for_config_fields_default_to_release(tmp_path):
    folder = _config_copy(tmp_path, DIT_CASE, patch_size=None, text_dim=None, window_size=None, qk_norm=None,
                          cross_attn_norm=None)
    cfg = read_s2v_config(folder)
    assert cfg.text_dim == 4096 and cfg.patch_size == (1, 2, 2)


def _w2v_sd():
    src = SafetensorsSource.from_folder(W2V_CASE, stem="model")
    return {k: src.load(k) for k in src}, read_wav2vec2_config(W2V_CASE)


def test_wav2vec2_parametrization_names_equal_legacy_names():
    sd, cfg = _w2v_sd()
    expected = flat_state(abstract_wav2vec2(cfg)[1])
    pos = "wav2vec2.encoder.pos_conv_embed.conv."
    new = dict(sd)
    new[pos + "parametrizations.weight.original0"] = new.pop(pos + "weight_g")
    new[pos + "parametrizations.weight.original1"] = new.pop(pos + "weight_v")
    view = _ReleaseView(DictSource(new))
    check(wav2vec2_table(cfg), view, expected)
    np.testing.assert_array_equal(view.load(pos + "weight_v"), sd[pos + "weight_v"])


def test_wav2vec2_both_weight_norm_names_is_an_error():
    sd, _ = _w2v_sd()
    pos = "wav2vec2.encoder.pos_conv_embed.conv."
    sd[pos + "parametrizations.weight.original0"] = sd[pos + "weight_g"]
    with pytest.raises(CheckpointFormatError, match="weight_g"):
        _ReleaseView(DictSource(sd))


def test_wav2vec2_unknown_tensor_is_named():
    sd, cfg = _w2v_sd()
    sd["wav2vec2.adapter.layers.0.conv.weight"] = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(WeightMappingError, match=r"unexpected.*wav2vec2\.adapter\.layers\.0\.conv\.weight"):
        check(wav2vec2_table(cfg), _ReleaseView(DictSource(sd)), flat_state(abstract_wav2vec2(cfg)[1]))


def test_wav2vec2_missing_layer_tensor_is_named():
    sd, cfg = _w2v_sd()
    del sd["wav2vec2.encoder.layers.23.attention.v_proj.bias"]
    with pytest.raises(WeightMappingError, match=r"wav2vec2\.encoder\.layers\.23\.attention\.v_proj\.bias"):
        check(wav2vec2_table(cfg), _ReleaseView(DictSource(sd)), flat_state(abstract_wav2vec2(cfg)[1]))


@pytest.mark.parametrize("key,value,match", [
    ("feat_extract_norm", "group", "feat_extract_norm='group'"),
    ("do_stable_layer_norm", False, "do_stable_layer_norm=False"),
    ("use_magic", 1, "unknown config field 'use_magic'"),
    ("hidden_size", 15, "hidden_size 15 is not divisible"),
])
def test_wav2vec2_config_refusals_name_the_field(tmp_path, key, value, match):
    shutil.copy(W2V_CASE / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match=match):
        read_wav2vec2_config(_config_copy(tmp_path, W2V_CASE, **{key: value}))


def test_wav2vec2_pytorch_model_bin_equals_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    sd, _ = _w2v_sd()
    shutil.copy(W2V_CASE / "config.json", tmp_path / "config.json")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    a, b = load_wav2vec2(W2V_CASE), load_wav2vec2(tmp_path)
    for (path, x), (_, y) in zip(flat_state(nnx.state(a)).items(), flat_state(nnx.state(b)).items()):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)


def test_wav2vec2_folder_without_weights_is_named(tmp_path):
    shutil.copy(W2V_CASE / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointFormatError, match="model.safetensors"):
        load_wav2vec2(tmp_path)
