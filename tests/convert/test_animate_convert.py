"""Animate converters: full-size manifests map completely (shapes only), sizes come from the weights, and every
kind of bad checkpoint is refused by name."""

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from refcases import REFERENCE_DIR
from wan22_jax.convert.animate import (CLIP_FILE, LORA_FILE, SubsetSource, animate_table, clip_table, clip_unused,
                                       load_relighting_lora, read_animate_config, read_clip_config,
                                       widths_from_shapes)
from wan22_jax.convert.mapping import check
from wan22_jax.errors import ConfigError, WeightMappingError
from wan22_jax.io.tensor_source import DictSource, SafetensorsSource, ShapeSource
from wan22_jax.models.animate.clip import CLIPVisionConfig, abstract_clip
from wan22_jax.models.animate.model_animate import ANIMATE_PRESETS, abstract_animate
from wan22_jax.state import flat_state

MANIFESTS = REFERENCE_DIR / "manifests"
DIT_CASE = REFERENCE_DIR / "animate_dit" / "checkpoint"


def _n_params(flat):
    return sum(int(np.prod(v.shape)) for v in flat.values())


def test_full_size_animate_manifest_maps_completely():
    path = MANIFESTS / "official_dit_animate_14B.json"
    source = ShapeSource.from_manifest(path)
    cfg = ANIMATE_PRESETS["animate-14B"]
    # the widths the official constructor hard-codes are recovered from the shapes alone
    assert dataclasses.replace(cfg, **widths_from_shapes(source)) == cfg
    _, abstract = abstract_animate(cfg, param_dtype=jnp.bfloat16)  # eval_shape: nothing is allocated
    expected = flat_state(abstract)
    check(animate_table(cfg), source, expected)  # raises on any unmapped/unused/mis-shaped key
    index = json.loads((MANIFESTS / "index.json").read_text())
    assert _n_params(expected) == index[path.name]["num_params"]


def test_full_size_clip_manifest_maps_completely():
    path = MANIFESTS / "official_clip_xlm_roberta_vit_h_14.json"
    source = ShapeSource.from_manifest(path)
    cfg = read_clip_config(source)
    assert cfg == CLIPVisionConfig()
    _, abstract = abstract_clip(cfg, param_dtype=jnp.float16)
    expected = flat_state(abstract)
    unused = clip_unused(cfg, source)
    check(clip_table(cfg), SubsetSource(source, unused), expected)
    # what we load plus what we declare unused is the whole file
    skipped = sum(int(np.prod(source[n])) for n in unused)
    index = json.loads((MANIFESTS / "index.json").read_text())
    assert _n_params(expected) + skipped == index[path.name]["num_params"]
    assert any(n.startswith("textual.") for n in unused) and "visual.transformer.31.norm1.weight" in unused


def test_tiny_widths_match_the_recorded_overrides():
    overrides = json.loads((DIT_CASE / "hardcoded_overrides.json").read_text())
    got = widths_from_shapes(SafetensorsSource.from_folder(DIT_CASE))
    assert got["image_dim"] == overrides["image_dim"]
    assert got["motion_encoder_size"] == overrides["motion_encoder_size"]
    assert got["motion_style_dim"] == overrides["motion_style_dim"]
    assert got["motion_dim"] == overrides["motion_dim"]
    assert got["face_hidden_dim"] == overrides["face_encoder_hidden_dim"]
    assert got["face_num_heads"] == overrides["face_encoder_num_heads"]
    table = overrides["motion_encoder_channel_sizes"]
    size = got["motion_encoder_size"]
    assert got["motion_channels"] == tuple(table[str(size >> i)] for i in range(len(got["motion_channels"])))


def _tiny_state():
    src = SafetensorsSource.from_folder(DIT_CASE)
    return {k: src.load(k) for k in src}


def _check_tiny(sd):
    cfg = ANIMATE_PRESETS["tiny-animate"]
    check(animate_table(cfg), DictSource(sd, "tiny"), flat_state(abstract_animate(cfg)[1]))


def test_tiny_checkpoint_maps_and_config_reads(tmp_path):
    source = SafetensorsSource.from_folder(DIT_CASE)
    assert read_animate_config(DIT_CASE, source) == ANIMATE_PRESETS["tiny-animate"]
    _check_tiny(_tiny_state())


@pytest.mark.parametrize("key, shape, match", [
    # shape None: the tensor is removed; else it is added or replaced by zeros of that shape
    ("motion_encoder.enc.net_app.convs.1.skip.0.kernel", None, r"missing 1 tensor.*convs\.1\.skip\.0\.kernel"),
    ("face_adapter.fuser_blocks.1.linear2.weight", (32, 32), r"unexpected.*fuser_blocks\.1\.linear2\.weight"),
    ("blocks.3.cross_attn.k_img.weight", (32, 16), r"blocks\.3\.cross_attn\.k_img\.weight"),
    # the direction rows must match the motion encoder's dim
    ("motion_encoder.dec.direction.weight", (12, 8), r"direction\.weight.*\(12, 8\)"),
], ids=["missing_blur_buffer", "unexpected_key", "wrong_shape", "direction_rows"])
def test_bad_tiny_checkpoint_is_named(key, shape, match):
    sd = _tiny_state()
    if shape is None:
        del sd[key]
    else:
        sd[key] = np.zeros(shape, np.float32)
    with pytest.raises(WeightMappingError, match=match):
        _check_tiny(sd)


def _copy_case(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(DIT_CASE, dst)
    return dst


@pytest.mark.parametrize("field, value", [("use_img_emb", False), ("use_magic", 1)],
                         ids=["without_image_branch", "unknown_field"])
def test_bad_config_is_refused(tmp_path, field, value):
    folder = _copy_case(tmp_path)
    conf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**conf, field: value}))
    with pytest.raises(ConfigError, match=field):
        read_animate_config(folder, SafetensorsSource.from_folder(folder))


def test_relighting_lora_reads_and_refuses_a_missing_key(tmp_path):
    cfg = ANIMATE_PRESETS["tiny-animate"]
    adapters, lora_cfg = load_relighting_lora(DIT_CASE, cfg)
    assert lora_cfg.rank == 8 and lora_cfg.alpha == 8.0 and len(adapters) == 12
    assert adapters["blocks.ffn.0.kernel"]["a"].shape == (5, 32, 8)
    assert adapters["blocks.ffn.0.kernel"]["b"].shape == (5, 8, 64)
    state = torch.load(DIT_CASE / LORA_FILE, weights_only=True)["state_dict"]
    del state["blocks.2.cross_attn.v_img.lora_B.default.weight"]
    torch.save({"state_dict": state}, tmp_path / LORA_FILE)
    with pytest.raises(WeightMappingError, match=r"blocks\.2\.cross_attn\.v_img\.lora_B\.default\.weight"):
        load_relighting_lora(tmp_path, cfg)


def test_clip_unknown_tensor_is_refused():
    from_pth = torch.load(REFERENCE_DIR / "animate_clip" / "checkpoint" / CLIP_FILE, weights_only=True)
    arrays = {k: v.numpy() for k, v in from_pth.items()}
    arrays["visual.extra_token"] = np.zeros((1, 32), np.float32)
    source = DictSource(arrays, "clip")
    cfg = read_clip_config(source)
    with pytest.raises(WeightMappingError, match=r"unexpected.*visual\.extra_token"):
        check(clip_table(cfg), SubsetSource(source, clip_unused(cfg, source)), flat_state(abstract_clip(cfg)[1]))
