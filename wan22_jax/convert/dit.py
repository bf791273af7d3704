"""DiT checkpoints -> our `WanModel` params: the official `WanModel` layout and Diffusers' `WanTransformer3DModel`.

Each layout is one declarative table (per-block rules are stacked over `blocks.{i}`); `mapping.convert` checks
every name and shape against `nnx.eval_shape` of the model before loading anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from wan22_jax.config_utils import config_from_dict, config_to_dict
from wan22_jax.convert.mapping import Rule, check, conv3d, convert, identity, linear, stacked
from wan22_jax.errors import CheckpointFormatError, ConfigError
from wan22_jax.io.orbax_io import MANIFEST, load_params, read_manifest, save_params
from wan22_jax.io.tensor_source import DictSource, SafetensorsSource, TensorSource
from wan22_jax.models.dit import DiTConfig, WanModel, abstract_dit
from wan22_jax.sharding import context_mesh
from wan22_jax.sharding.loading import convert_sharded, load_params_sharded
from wan22_jax.state import fill_state, flat_state

OFFICIAL, DIFFUSERS = "official", "diffusers"


def _attn(ours: str, src: str, names: tuple[str, str, str, str]) -> list[tuple[str, str, Any]]:
    """Rows of one attention module; `names` are the source names of q, k, v, o."""
    rows = []
    for o, s in zip(("q", "k", "v", "o"), names):
        rows += [(f"{ours}.{o}.kernel", f"{src}.{s}.weight", linear), (f"{ours}.{o}.bias", f"{src}.{s}.bias", identity)]
    rows += [(f"{ours}.norm_q.weight", f"{src}.norm_q.weight", identity),
             (f"{ours}.norm_k.weight", f"{src}.norm_k.weight", identity)]
    return rows


# (our path inside a block, source name inside block i, transform)
_BLOCK = {
    OFFICIAL: [
        *_attn("self_attn", "self_attn", ("q", "k", "v", "o")),
        *_attn("cross_attn", "cross_attn", ("q", "k", "v", "o")),
        ("norm3.weight", "norm3.weight", identity), ("norm3.bias", "norm3.bias", identity),
        ("ffn.0.kernel", "ffn.0.weight", linear), ("ffn.0.bias", "ffn.0.bias", identity),
        ("ffn.2.kernel", "ffn.2.weight", linear), ("ffn.2.bias", "ffn.2.bias", identity),
        ("modulation", "modulation", identity),
    ],
    DIFFUSERS: [
        *_attn("self_attn", "attn1", ("to_q", "to_k", "to_v", "to_out.0")),
        *_attn("cross_attn", "attn2", ("to_q", "to_k", "to_v", "to_out.0")),
        # diffusers numbers its norms by position: its norm2 is the affine cross-attention norm (official norm3)
        ("norm3.weight", "norm2.weight", identity), ("norm3.bias", "norm2.bias", identity),
        ("ffn.0.kernel", "ffn.net.0.proj.weight", linear), ("ffn.0.bias", "ffn.net.0.proj.bias", identity),
        ("ffn.2.kernel", "ffn.net.2.weight", linear), ("ffn.2.bias", "ffn.net.2.bias", identity),
        ("modulation", "scale_shift_table", identity),
    ],
}
_TOP = {
    OFFICIAL: [
        ("patch_embedding.kernel", "patch_embedding.weight", conv3d),
        ("patch_embedding.bias", "patch_embedding.bias", identity),
        ("text_embedding.0.kernel", "text_embedding.0.weight", linear),
        ("text_embedding.0.bias", "text_embedding.0.bias", identity),
        ("text_embedding.2.kernel", "text_embedding.2.weight", linear),
        ("text_embedding.2.bias", "text_embedding.2.bias", identity),
        ("time_embedding.0.kernel", "time_embedding.0.weight", linear),
        ("time_embedding.0.bias", "time_embedding.0.bias", identity),
        ("time_embedding.2.kernel", "time_embedding.2.weight", linear),
        ("time_embedding.2.bias", "time_embedding.2.bias", identity),
        ("time_projection.1.kernel", "time_projection.1.weight", linear),
        ("time_projection.1.bias", "time_projection.1.bias", identity),
        ("head.head.kernel", "head.head.weight", linear),
        ("head.head.bias", "head.head.bias", identity),
        ("head.modulation", "head.modulation", identity),
    ],
    DIFFUSERS: [
        ("patch_embedding.kernel", "patch_embedding.weight", conv3d),
        ("patch_embedding.bias", "patch_embedding.bias", identity),
        ("text_embedding.0.kernel", "condition_embedder.text_embedder.linear_1.weight", linear),
        ("text_embedding.0.bias", "condition_embedder.text_embedder.linear_1.bias", identity),
        ("text_embedding.2.kernel", "condition_embedder.text_embedder.linear_2.weight", linear),
        ("text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias", identity),
        ("time_embedding.0.kernel", "condition_embedder.time_embedder.linear_1.weight", linear),
        ("time_embedding.0.bias", "condition_embedder.time_embedder.linear_1.bias", identity),
        ("time_embedding.2.kernel", "condition_embedder.time_embedder.linear_2.weight", linear),
        ("time_embedding.2.bias", "condition_embedder.time_embedder.linear_2.bias", identity),
        ("time_projection.1.kernel", "condition_embedder.time_proj.weight", linear),
        ("time_projection.1.bias", "condition_embedder.time_proj.bias", identity),
        ("head.head.kernel", "proj_out.weight", linear),
        ("head.head.bias", "proj_out.bias", identity),
        ("head.modulation", "scale_shift_table", identity),
    ],
}


def dit_table(cfg: DiTConfig, layout: str = OFFICIAL) -> list[Rule]:
    """The full conversion table of one DiT for `layout` ("official" or "diffusers")."""
    if layout not in _TOP:
        raise ValueError(f"unknown DiT layout {layout!r}")
    table = [Rule(ours, src, tf) for ours, src, tf in _TOP[layout]]
    table += [stacked(f"blocks.{ours}", f"blocks.{{i}}.{src}", cfg.num_layers, tf) for ours, src, tf in _BLOCK[layout]]
    return table


# ------------------------------------------------------------------------------------------------ configs
def _diffusers_config(raw: dict[str, Any], source: str) -> DiTConfig:
    """Maps WanTransformer3DModel's config onto ours, refusing features Wan2.2 does not use."""
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    known = {"added_kv_proj_dim", "attention_head_dim", "cross_attn_norm", "eps", "ffn_dim", "freq_dim",
             "image_dim", "in_channels", "num_attention_heads", "num_layers", "out_channels", "patch_size",
             "pos_embed_seq_len", "qk_norm", "rope_max_seq_len", "text_dim"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown Diffusers transformer config field(s) {unknown}")
    for k in ("added_kv_proj_dim", "image_dim", "pos_embed_seq_len"):
        if raw.get(k) is not None:
            raise ConfigError(f"{source}: {k}={raw[k]!r} (a Wan2.1 CLIP-image branch) is not part of Wan2.2 and "
                              "is not implemented")
    if raw.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
        raise ConfigError(f"{source}: qk_norm={raw['qk_norm']!r}; only 'rms_norm_across_heads' is implemented")
    if raw.get("rope_max_seq_len", 1024) != 1024:
        raise ConfigError(f"{source}: rope_max_seq_len={raw['rope_max_seq_len']} (Wan uses 1024)")
    in_dim, out_dim = raw.get("in_channels", 16), raw.get("out_channels", 16)
    model_type = "ti2v" if in_dim == out_dim == 48 else ("i2v" if in_dim > out_dim else "t2v")
    mapped = dict(model_type=model_type, in_dim=in_dim, out_dim=out_dim,
                  dim=raw.get("attention_head_dim", 128) * raw.get("num_attention_heads", 40),
                  num_heads=raw.get("num_attention_heads", 40), num_layers=raw.get("num_layers", 40),
                  ffn_dim=raw.get("ffn_dim", 13824), freq_dim=raw.get("freq_dim", 256),
                  text_dim=raw.get("text_dim", 4096), eps=raw.get("eps", 1e-6),
                  cross_attn_norm=raw.get("cross_attn_norm", True), patch_size=raw.get("patch_size", (1, 2, 2)))
    return config_from_dict(DiTConfig, mapped, source=source)


def read_dit_config(folder: str | Path) -> tuple[DiTConfig, str]:
    """Reads `folder/config.json` of an official (`WanModel`) or Diffusers (`WanTransformer3DModel`) DiT."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointFormatError(f"{folder}: no config.json (is this a DiT folder?)")
    raw = json.loads(path.read_text())
    if raw.get("_class_name") == "WanTransformer3DModel":
        return _diffusers_config(raw, str(path)), DIFFUSERS
    if raw.get("_class_name", "WanModel") != "WanModel":
        raise ConfigError(f"{path}: _class_name {raw['_class_name']!r} is not a Wan DiT")
    return config_from_dict(DiTConfig, raw, source=str(path)), OFFICIAL


# ------------------------------------------------------------------------------------------------ loading
def convert_dit(source: TensorSource, cfg: DiTConfig, layout: str, *, dtype=jnp.float32,
                param_dtype=jnp.float32):
    """Checks and converts a DiT checkpoint. Returns (graphdef, state) with concrete arrays."""
    graphdef, abstract = abstract_dit(cfg, dtype=dtype, param_dtype=param_dtype)
    arrays = convert(dit_table(cfg, layout), source, flat_state(abstract))
    return graphdef, fill_state(abstract, {k: jnp.asarray(v) for k, v in arrays.items()})


KIND = "dit"


def save_dit(model_or_state, cfg: DiTConfig, dst: str | Path) -> Path:
    """Writes our converted format (atomic): `dst/wan22.json` + Orbax `dst/params`."""
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
    return save_params(dst, KIND, config_to_dict(cfg), flat_state(state))


def load_dit(folder: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32,
             config_overrides: dict[str, Any] | None = None, mesh=None) -> WanModel:
    """Loads a DiT folder into a WanModel: official or Diffusers (single or sharded safetensors), or ours.

    mesh: a jax.sharding.Mesh: every parameter is placed straight onto its shards (`wan22_jax.sharding`), each
      process reading only the slices its devices hold; None: the mesh set by `jax.set_mesh` if any, else the
      default device.
    """
    folder = Path(folder)
    mesh = mesh if mesh is not None else context_mesh()
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        if manifest["kind"] != KIND:
            raise CheckpointFormatError(f"{folder}: holds a {manifest['kind']!r} checkpoint, not a DiT")
        cfg = config_from_dict(DiTConfig, manifest["config"], source=str(folder / MANIFEST))
        if config_overrides:
            cfg = dataclasses.replace(cfg, **config_overrides)
        graphdef, abstract = abstract_dit(cfg, dtype=dtype, param_dtype=param_dtype)
        expected = flat_state(abstract)
        if mesh is not None:
            return nnx.merge(graphdef, fill_state(abstract, load_params_sharded(folder, abstract, "dit", mesh)))
        arrays = load_params(folder)
        check([Rule(k, k) for k in expected], DictSource(arrays, str(folder)), expected)
        return nnx.merge(graphdef, fill_state(abstract, {k: jnp.asarray(v, expected[k].dtype)
                                                         for k, v in arrays.items()}))
    cfg, layout = read_dit_config(folder)
    if config_overrides:
        cfg = dataclasses.replace(cfg, **config_overrides)
    source = SafetensorsSource.from_folder(folder)
    if mesh is not None:
        graphdef, abstract = abstract_dit(cfg, dtype=dtype, param_dtype=param_dtype)
        return nnx.merge(graphdef, fill_state(abstract, convert_sharded(dit_table(cfg, layout), source, abstract,
                                                                        "dit", mesh)))
    return nnx.merge(*convert_dit(source, cfg, layout, dtype=dtype, param_dtype=param_dtype))
