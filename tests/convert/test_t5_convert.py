"""T5 converter: full-size manifests map completely, every layout and path form loads the same weights, bad
checkpoints and configs fail with one error naming the culprit, and a pickle carrying code is refused unrun."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from models.test_t5 import make_hf_umt5, random_inputs, run_ours, save_diffusers
from wan22_jax.convert.mapping import check
from wan22_jax.convert.t5 import (OFFICIAL_WEIGHTS, diffusers_table, embedding_keys_of, load_t5, official_table,
                                  open_t5_checkpoint, t5_config_from_transformers)
from wan22_jax.errors import CheckpointFormatError, ConfigError, WeightMappingError
from wan22_jax.io.tensor_source import DictSource, ShapeSource
from wan22_jax.models.t5 import PRESETS, abstract_t5, t5_config
from wan22_jax.state import flat_state

MANIFESTS = {
    "official": "official_t5_umt5_xxl_encoder.json",
    "diffusers": "diffusers_text_encoder_umt5_xxl.json",
}


def expected_shapes(cfg):
    return flat_state(abstract_t5(cfg)[1])


def table_for(layout, cfg, source):
    return official_table(cfg) if layout == "official" else diffusers_table(cfg, embedding_keys_of(source))


def official_state_dict(hf_model) -> dict[str, np.ndarray]:
    """The official `T5Encoder.state_dict()` of a transformers model, renamed key by key here (independently
    of the converter's tables) from the official module structure in wan/modules/t5.py."""
    sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for i in range(hf_model.config.num_layers):
        hf = f"encoder.block.{i}.layer."
        wan = f"blocks.{i}."
        out[wan + "norm1.weight"] = sd[hf + "0.layer_norm.weight"]
        for p in "qkvo":
            out[wan + f"attn.{p}.weight"] = sd[hf + f"0.SelfAttention.{p}.weight"]
        out[wan + "pos_embedding.embedding.weight"] = sd[hf + "0.SelfAttention.relative_attention_bias.weight"]
        out[wan + "norm2.weight"] = sd[hf + "1.layer_norm.weight"]
        out[wan + "ffn.gate.0.weight"] = sd[hf + "1.DenseReluDense.wi_0.weight"]
        out[wan + "ffn.fc1.weight"] = sd[hf + "1.DenseReluDense.wi_1.weight"]
        out[wan + "ffn.fc2.weight"] = sd[hf + "1.DenseReluDense.wo.weight"]
    return out


def write_official(folder, state_dict, cfg=None):
    """A release-style folder: the .pth, an optional t5_config.json, and an unrelated .pth beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
               folder / OFFICIAL_WEIGHTS)
    if cfg is not None:
        raw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("max_distance", "eps")}
        (folder / "t5_config.json").write_text(json.dumps(raw))
    torch.save({"x": torch.zeros(1)}, folder / "Wan2.1_VAE.pth")
    return folder


def params_of(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flat_state(nnx.state(model)).items()}


@pytest.fixture(scope="module")
def tiny_hf():
    return make_hf_umt5(PRESETS["tiny-wide-attn"], seed=2)


# ----------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("layout", sorted(MANIFESTS))
def test_full_size_manifest_maps_completely(reference_dir, layout):
    source = ShapeSource.from_manifest(reference_dir / "manifests" / MANIFESTS[layout])
    cfg = t5_config("umt5-xxl")
    check(table_for(layout, cfg, source), source, expected_shapes(cfg))


def test_diffusers_manifest_lists_the_tied_embedding_twice(reference_dir):
    source = ShapeSource.from_manifest(reference_dir / "manifests" / MANIFESTS["diffusers"])
    assert embedding_keys_of(source) == ("shared.weight", "encoder.embed_tokens.weight")


def _manifest_source(reference_dir, layout, edit):
    raw = json.loads((reference_dir / "manifests" / MANIFESTS[layout]).read_text())
    shapes = {k: tuple(v[0]) for k, v in raw.items()}
    edit(shapes)
    return ShapeSource(shapes)


@pytest.mark.parametrize("layout,edit,needle", [
    ("official", lambda s: s.pop("blocks.23.ffn.fc1.weight"), "blocks.23.ffn.fc1.weight"),
    ("official", lambda s: s.update({"blocks.24.norm1.weight": (4096,)}), "blocks.24.norm1.weight"),
    ("official", lambda s: s.update({"blocks.5.attn.o.weight": (4096, 4000)}), "blocks.5.attn.o.weight"),
    ("official", lambda s: s.update({"pos_embedding.embedding.weight": (32, 64)}), "pos_embedding.embedding"),
    ("diffusers", lambda s: s.update({"encoder.embed_tokens.weight": (256000, 4096)}),
     "encoder.embed_tokens.weight"),
    ("diffusers", lambda s: s.pop("encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight"),
     "encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight"),
])
def test_bad_checkpoint_errors_name_the_key(reference_dir, layout, edit, needle):
    source = _manifest_source(reference_dir, layout, edit)
    cfg = t5_config("umt5-xxl")
    with pytest.raises(WeightMappingError, match=needle.replace(".", r"\.")):
        check(table_for(layout, cfg, source), source, expected_shapes(cfg))


# ----------------------------------------------------------------------------------------------- layouts
def test_every_layout_and_path_form_loads_the_same_weights(tmp_path, tiny_hf):
    cfg = PRESETS["tiny-wide-attn"]
    release = write_official(tmp_path / "release", official_state_dict(tiny_hf), cfg)
    diffusers_root = tmp_path / "diffusers"
    text_encoder = save_diffusers(tiny_hf, diffusers_root)
    sharded_root = tmp_path / "sharded"
    sharded = save_diffusers(tiny_hf, sharded_root, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file(), os.listdir(sharded)

    forms = {"release folder": release, "pth file": release / OFFICIAL_WEIGHTS,
             "diffusers root": diffusers_root, "text_encoder folder": text_encoder, "sharded": sharded_root}
    loaded = {name: load_t5(p, dtype=jnp.float32, param_dtype=jnp.float32) for name, p in forms.items()}
    assert {name: open_t5_checkpoint(p).layout for name, p in forms.items()} == {
        "release folder": "official", "pth file": "official", "diffusers root": "diffusers",
        "text_encoder folder": "diffusers", "sharded": "diffusers"}
    ref = params_of(loaded["release folder"])
    for name, model in loaded.items():
        assert model.cfg == cfg, name
        got = params_of(model)
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name}: {k}")
    ids, mask = random_inputs(np.random.default_rng(0), 2, 7, cfg.vocab_size, [7, 2])
    np.testing.assert_array_equal(run_ours(loaded["pth file"], ids, mask), run_ours(loaded["sharded"], ids, mask))


def test_bf16_release_weights_load_in_either_param_dtype(tmp_path, tiny_hf):
    sd = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in official_state_dict(tiny_hf).items()}
    folder = tmp_path / "bf16"
    folder.mkdir()
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}, folder / OFFICIAL_WEIGHTS)
    (folder / "t5_config.json").write_text(json.dumps({"vocab_size": 300, "dim": 24, "dim_attn": 48,
                                                       "dim_ffn": 40, "num_heads": 6, "num_layers": 3}))
    as32 = params_of(load_t5(folder, dtype=jnp.float32, param_dtype=jnp.float32))
    as16 = params_of(load_t5(folder))
    np.testing.assert_array_equal(as32["token_embedding.weight"], sd["token_embedding.weight"])
    assert as16["blocks.attn.q.kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(as16["blocks.attn.q.kernel"][1].astype(np.float32), sd["blocks.1.attn.q.weight"].T)


def test_release_without_config_defaults_to_umt5_xxl(tmp_path, tiny_hf):
    folder = write_official(tmp_path / "nocfg", official_state_dict(tiny_hf))
    assert open_t5_checkpoint(folder).config == t5_config("umt5-xxl")
    with pytest.raises(WeightMappingError, match=r"missing \d+ tensor\(s\): 'blocks\.3\.norm1\.weight'"):
        load_t5(folder)  # a 3-layer checkpoint read as the 24-layer model: refused, not silently loaded


def test_unknown_t5_config_field_refused(tmp_path, reference_dir):
    folder = tmp_path / "ckpt"
    shutil.copytree(reference_dir / "t5_encoder" / "checkpoint", folder)
    raw = json.loads((folder / "t5_config.json").read_text())
    (folder / "t5_config.json").write_text(json.dumps({**raw, "relative_scale": 2.0}))
    with pytest.raises(ConfigError, match="relative_scale"):
        load_t5(folder)


def test_official_source_with_stray_tensor_names_it(tiny_hf):
    sd = official_state_dict(tiny_hf)
    sd["blocks.1.attn.rope"] = np.zeros(3, np.float32)
    cfg = PRESETS["tiny-wide-attn"]
    with pytest.raises(WeightMappingError, match=r"blocks\.1\.attn\.rope"):
        check(official_table(cfg), DictSource(sd), expected_shapes(cfg))


def test_unrecognised_folder_and_file(tmp_path):
    with pytest.raises(CheckpointFormatError, match="no T5 encoder found"):
        load_t5(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointFormatError, match="weights.bin"):
        load_t5(tmp_path / "weights.bin")
    with pytest.raises(CheckpointFormatError, match="missing_dir"):
        load_t5(tmp_path / "missing_dir")


class _RunsCode:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / OFFICIAL_WEIGHTS
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "payload": _RunsCode(f"touch {marker}")}, path)
    with pytest.raises(CheckpointFormatError, match="refused"):
        load_t5(tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- hf config
UMT5_XXL_HF = {
    "architectures": ["UMT5EncoderModel"], "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64, "d_model": 4096,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
    "layer_norm_epsilon": 1e-06, "model_type": "umt5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
    "output_past": True, "pad_token_id": 0, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "scalable_attention": True, "tie_word_embeddings": False,
    "tokenizer_class": "T5Tokenizer", "torch_dtype": "float32", "transformers_version": "4.44.0",
    "use_cache": True, "vocab_size": 256384, "_name_or_path": "google/umt5-xxl",
}


def test_transformers_config_of_umt5_xxl():
    cfg = t5_config_from_transformers(UMT5_XXL_HF, source="config.json")
    assert cfg == dataclasses.replace(t5_config("umt5-xxl"), dropout=0.1)


def test_transformers_config_of_saved_model(tiny_hf, tmp_path):
    folder = save_diffusers(tiny_hf, tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    assert t5_config_from_transformers(raw, source="c") == PRESETS["tiny-wide-attn"]


@pytest.mark.parametrize("edit,needle", [
    ({"feed_forward_proj": "relu"}, "feed_forward_proj"),
    ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj"),
    ({"dense_act_fn": "gelu"}, "dense_act_fn"),
    ({"is_gated_act": False}, "is_gated_act"),
    ({"model_type": "t5"}, "model_type"),
    ({"is_decoder": True}, "is_decoder"),
    ({"rotary_dim": 64}, "rotary_dim"),
    ({"d_kv": None}, "d_kv"),
    ({"relative_attention_num_buckets": 7}, "num_buckets"),
])
def test_transformers_config_refusals_name_the_field(edit, needle):
    raw = {**UMT5_XXL_HF, **edit}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=needle):
        t5_config_from_transformers(raw, source="config.json")
