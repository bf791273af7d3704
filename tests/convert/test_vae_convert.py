"""VAE converter: full-size manifests map completely (shapes only, no memory), errors name the culprit, configs
are strict, and every checkpoint location `load_vae` accepts resolves."""

from __future__ import annotations

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.convert.mapping import check
from wan22_jax.convert.vae import (
    abstract_vae, diffusers_table, load_vae, official_table, read_diffusers_config, read_official_config)
from wan22_jax.errors import CheckpointFormatError, ConfigError, WeightMappingError
from wan22_jax.io.tensor_source import DictSource, ShapeSource
from wan22_jax.io.torch_pickle import load_pth
from wan22_jax.models.vae_config import normalize_latent, preset
from wan22_jax.state import flat_state
from wan22_jax.verify import load_case, relative_error

MANIFESTS = [
    ("official_vae_2_1.json", "wan2.1", official_table),
    ("official_vae_2_2.json", "wan2.2", official_table),
    ("diffusers_vae_2_1.json", "wan2.1", diffusers_table),
    ("diffusers_vae_2_2.json", "wan2.2", diffusers_table),
]


@pytest.mark.parametrize("manifest,name,table", MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_full_size_manifest_maps_completely(reference_dir, manifest, name, table):
    source = ShapeSource.from_manifest(reference_dir / "manifests" / manifest)
    cfg = preset(name)
    _, abstract = abstract_vae(cfg)
    expected = flat_state(abstract)
    check(table(cfg), source, expected)  # raises on any missing, unexpected or mis-shaped key
    assert len(table(cfg)) == len(source) == len(expected)


@pytest.fixture()
def tiny21(reference_dir):
    """(config, source) of the vae21 reference checkpoint."""
    ckpt = reference_dir / "vae21_decode" / "checkpoint"
    return read_official_config(ckpt / "vae_config.json"), load_pth(ckpt / "Wan2.1_VAE.pth")


def _arrays(source):
    return {k: source.load(k) for k in source}


def test_missing_tensor_is_named(tiny21):
    cfg, source = tiny21
    arrays = _arrays(source)
    del arrays["decoder.upsamples.3.time_conv.weight"]
    with pytest.raises(WeightMappingError, match=r"missing 1 tensor.*decoder\.upsamples\.3\.time_conv\.weight"):
        check(official_table(cfg), DictSource(arrays), flat_state(abstract_vae(cfg)[1]))


def test_unexpected_tensor_is_named(tiny21):
    cfg, source = tiny21
    arrays = _arrays(source)
    arrays["encoder.middle.1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightMappingError, match=r"unexpected.*encoder\.middle\.1\.extra\.weight"):
        check(official_table(cfg), DictSource(arrays), flat_state(abstract_vae(cfg)[1]))


def test_wrong_shape_is_named(tiny21):
    cfg, source = tiny21
    arrays = _arrays(source)
    arrays["encoder.head.2.weight"] = np.zeros((32, 16, 3, 3, 2), np.float32)
    with pytest.raises(WeightMappingError, match=r"encoder\.head\.2\.weight.*\(32, 16, 3, 3, 2\)"):
        check(official_table(cfg), DictSource(arrays), flat_state(abstract_vae(cfg)[1]))


def test_official_config_is_strict(tmp_path):
    path = tmp_path / "vae_config.json"
    path.write_text(json.dumps({"version": "2.1", "dim": 4, "z_dim": 16, "dim_mul": [1, 2]}))
    with pytest.raises(ConfigError, match="dim_mul"):
        read_official_config(path)
    path.write_text(json.dumps({"version": "3.0"}))
    with pytest.raises(ConfigError, match="'3.0'"):
        read_official_config(path)
    path.write_text(json.dumps({"version": "2.1", "attn_scales": [0.5]}))
    with pytest.raises(ConfigError, match="attn_scales"):
        read_official_config(path)


def test_diffusers_config_is_strict(tmp_path, reference_dir):
    raw = json.loads((reference_dir / "vae22_diffusers" / "checkpoint" / "config.json").read_text())
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps({**raw, "clip_output": False}))  # real Wan2.2 Diffusers configs carry it
    cfg = read_diffusers_config(cfg_path)
    assert (cfg.version, cfg.dim, cfg.decoder_dim, cfg.z_dim) == ("2.2", 4, 4, 48)
    assert cfg.latents_mean == (0.0,) * 48
    cfg_path.write_text(json.dumps({**raw, "upcast_vae": True}))
    with pytest.raises(ConfigError, match="upcast_vae"):
        read_diffusers_config(cfg_path)
    cfg_path.write_text(json.dumps({**raw, "in_channels": 3}))
    with pytest.raises(ConfigError, match="in_channels, out_channels, patch_size"):
        read_diffusers_config(cfg_path)


def test_real_diffusers_defaults_are_wan21():
    """An AutoencoderKLWan config with only the class name is the Wan2.1 VAE (diffusers' defaults)."""
    from wan22_jax.convert.vae import DiffusersVAEConfig
    cfg = DiffusersVAEConfig().to_vae_config("defaults")
    assert (cfg.version, cfg.dim, cfg.decoder_dim, cfg.z_dim, cfg.spatial_stride) == ("2.1", 96, 96, 16, 8)


def test_load_vae_locations(reference_dir, tmp_path):
    ckpt = reference_dir / "vae22_decode" / "checkpoint"
    by_folder = load_vae(ckpt)
    by_file = load_vae(ckpt / "Wan2.2_VAE.pth")
    assert by_folder.config == by_file.config and by_folder.config.version == "2.2"
    a, b = flat_state(nnx.state(by_folder)), flat_state(nnx.state(by_file))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    diffusers = load_vae(reference_dir / "vae22_diffusers" / "checkpoint")
    assert diffusers.config.version == "2.2" and diffusers.config.latents_std == (1.0,) * 48
    # a pipeline folder with the VAE under vae/
    shutil.copytree(reference_dir / "vae_diffusers" / "checkpoint", tmp_path / "pipe" / "vae")
    assert load_vae(tmp_path / "pipe").config.version == "2.1"
    with pytest.raises(ConfigError, match="holds Wan2.2_VAE.pth, but version='2.1'"):
        load_vae(ckpt, version="2.1")
    with pytest.raises(ConfigError, match="holds a Wan2.2 VAE, but version='2.1'"):
        load_vae(ckpt / "Wan2.2_VAE.pth", version="2.1")
    with pytest.raises(CheckpointFormatError, match="found neither Wan2.1_VAE.pth nor Wan2.2_VAE.pth"):
        load_vae(tmp_path)


def test_bf16_params_and_compute(reference_dir):
    """bf16 storage and compute run end to end (the speed mode; parity is fp32's job). On the random tiny
    reference model the bf16 encode deviates by ~0.01 max|d|/max|ref| (decode: ~0.09)."""
    case = load_case(reference_dir / "vae21_encode")
    vae = load_vae(case.checkpoint, dtype=jnp.bfloat16)
    assert {np.dtype(v.dtype) for v in flat_state(nnx.state(vae)).values()} == {np.dtype(jnp.bfloat16)}
    graphdef, state = nnx.split(vae)

    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})  # fast compile
    def run(state, video):
        model = nnx.merge(graphdef, state)
        mu = model.encode_frames(jnp.moveaxis(video, 1, -1).astype(jnp.bfloat16))
        return jnp.moveaxis(normalize_latent(mu.astype(jnp.float32), model.config), -1, 1)

    latent = run(state, case.inputs["video"])
    assert relative_error(np.asarray(latent), case.outputs["latent"]) < 0.05


def test_pth_without_config_assumes_release_sizes(reference_dir, tmp_path):
    """Real releases ship the .pth alone; a tiny one without its vae_config.json fails naming the assumption."""
    shutil.copy(reference_dir / "vae21_encode" / "checkpoint" / "Wan2.1_VAE.pth", tmp_path)
    with pytest.raises(WeightMappingError, match=r"encoder\.conv1\.weight.*released wan2\.1 sizes"):
        load_vae(tmp_path)
