"""DiT converter: full-size manifests map completely (shapes only), and every kind of bad checkpoint is named."""

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from refcases import REFERENCE_DIR
from dit_reference import official_state_dict
from wan22_jax.convert.dit import DIFFUSERS, OFFICIAL, dit_table, load_dit, read_dit_config
from wan22_jax.convert.mapping import check
from wan22_jax.errors import CheckpointFormatError, ConfigError, WeightMappingError
from wan22_jax.io.tensor_source import DictSource, ShapeSource
from wan22_jax.models.dit import DIT_PRESETS, abstract_dit
from wan22_jax.state import flat_state

MANIFESTS = REFERENCE_DIR / "manifests"


@pytest.mark.parametrize("manifest,preset,layout", [
    ("official_dit_t2v_A14B.json", "t2v-A14B", OFFICIAL),
    ("official_dit_i2v_A14B.json", "i2v-A14B", OFFICIAL),
    ("official_dit_ti2v_5B.json", "ti2v-5B", OFFICIAL),
    ("diffusers_transformer_t2v_A14B.json", "t2v-A14B", DIFFUSERS),
    ("diffusers_transformer_i2v_A14B.json", "i2v-A14B", DIFFUSERS),
    ("diffusers_transformer_ti2v_5B.json", "ti2v-5B", DIFFUSERS),
])
def test_full_size_manifest_maps_completely(manifest, preset, layout):
    path = MANIFESTS / manifest
    assert path.is_file(), f"manifest {path} missing (set WAN22_REFERENCE_DIR)"
    cfg = DIT_PRESETS[preset]
    _, abstract = abstract_dit(cfg, param_dtype=jnp.bfloat16)  # eval_shape: nothing is allocated
    expected = flat_state(abstract)
    source = ShapeSource.from_manifest(path)
    check(dit_table(cfg, layout), source, expected)  # raises on any unmapped/unused/mis-shaped key
    n_params = sum(int(np.prod(v.shape)) for v in expected.values())
    index = json.loads((MANIFESTS / "index.json").read_text())
    assert n_params == index[manifest]["num_params"]


def _tiny():
    cfg = dataclasses.replace(DIT_PRESETS["tiny-t2v"], num_layers=2)
    return cfg, official_state_dict(cfg, np.random.default_rng(0))


def _expected(cfg):
    return flat_state(abstract_dit(cfg)[1])


def test_missing_key_is_named():
    cfg, sd = _tiny()
    del sd["blocks.1.cross_attn.k.weight"]
    with pytest.raises(WeightMappingError, match=r"missing 1 tensor.*blocks\.1\.cross_attn\.k\.weight"):
        check(dit_table(cfg), DictSource(sd), _expected(cfg))


def test_unexpected_key_is_named():
    cfg, sd = _tiny()
    sd["blocks.0.img_emb.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(WeightMappingError, match=r"unexpected.*blocks\.0\.img_emb\.weight"):
        check(dit_table(cfg), DictSource(sd), _expected(cfg))


def test_wrong_shape_names_key_and_both_shapes():
    cfg, sd = _tiny()
    sd["head.head.weight"] = np.zeros((32, 64), np.float32)
    with pytest.raises(WeightMappingError, match=r"'head\.head\.weight' has shape \(32, 64\).*expects \(64, 64\)"):
        check(dit_table(cfg), DictSource(sd), _expected(cfg))


def test_layers_disagreeing_in_shape_are_named():
    cfg, sd = _tiny()
    sd["blocks.1.ffn.0.weight"] = np.zeros((99, 64), np.float32)
    with pytest.raises(WeightMappingError, match=r"blocks\.1\.ffn\.0\.weight"):
        check(dit_table(cfg), DictSource(sd), _expected(cfg))


def _write_official_folder(tmp: Path, cfg, sd, extra_config=None, shards=1):
    tmp.mkdir(parents=True, exist_ok=True)
    conf = {"_class_name": "WanModel", **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}}
    conf.update(extra_config or {})
    (tmp / "config.json").write_text(json.dumps(conf))
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, str(tmp / "diffusion_pytorch_model.safetensors"))
        return tmp
    weight_map = {}
    for s in range(shards):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[s::shards]}
        save_file(part, str(tmp / name))
        weight_map.update({k: name for k in part})
    (tmp / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return tmp


def test_unknown_config_field_is_refused(tmp_path):
    cfg, sd = _tiny()
    folder = _write_official_folder(tmp_path / "m", cfg, sd, {"use_magic": True})
    with pytest.raises(ConfigError, match="use_magic"):
        read_dit_config(folder)


def test_sharded_checkpoint_equals_single_file(tmp_path):
    cfg, sd = _tiny()
    a = load_dit(_write_official_folder(tmp_path / "one", cfg, sd))
    b = load_dit(_write_official_folder(tmp_path / "three", cfg, sd, shards=3))
    x = np.random.default_rng(0).standard_normal((1, 16, 1, 4, 4)).astype(np.float32)
    ctx = np.ones((1, 3, 48), np.float32)
    np.testing.assert_array_equal(np.asarray(a(x, np.array([5.0]), ctx)), np.asarray(b(x, np.array([5.0]), ctx)))


def test_real_release_config_defaults(tmp_path):
    """Real config.json files lack patch_size/text_dim/...: the defaults of a real release apply."""
    conf = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": "ti2v", "text_len": 512,
            "in_dim": 48, "dim": 3072, "ffn_dim": 14336, "freq_dim": 256, "out_dim": 48, "num_heads": 24,
            "num_layers": 30, "eps": 1e-6}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    cfg, layout = read_dit_config(tmp_path)
    assert layout == OFFICIAL and cfg == DIT_PRESETS["ti2v-5B"]


def test_orbax_round_trip_and_truncated_file(tmp_path):
    cfg, sd = _tiny()
    src = _write_official_folder(tmp_path / "src", cfg, sd)
    from wan22_jax.convert.release import convert_release
    convert_release(src, tmp_path / "ours")
    a, b = load_dit(src), load_dit(tmp_path / "ours")
    x = np.random.default_rng(0).standard_normal((1, 16, 1, 4, 4)).astype(np.float32)
    ctx = np.ones((1, 3, 48), np.float32)
    np.testing.assert_array_equal(np.asarray(a(x, np.array([5.0]), ctx)), np.asarray(b(x, np.array([5.0]), ctx)))
    # a truncated safetensors file is one clear error, not a crash deep in numpy
    f = src / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        load_dit(src)


def test_failed_conversion_leaves_no_output(tmp_path):
    cfg, sd = _tiny()
    del sd["head.modulation"]
    src = _write_official_folder(tmp_path / "src", cfg, sd)
    from wan22_jax.convert.release import convert_release
    with pytest.raises(WeightMappingError):
        convert_release(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary left behind either
