"""S2V-14B checkpoints -> our `WanModelS2V` params (official `WanModel_S2V` release folder).

One declarative table: the T2V DiT's table (convert/dit.py) plus the S2V modules (pose encoder, token-type
embedding, audio encoder, stacked audio injectors, frame packer); `mapping.convert` checks every name and shape
against `nnx.eval_shape` of the model before loading anything. The wav2vec2 audio-encoder folder has its own
table in convert/wav2vec2.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.convert.dit import OFFICIAL, dit_table
from wan22_jax.convert.mapping import Rule, conv3d, convert, identity, linear, stacked
from wan22_jax.errors import CheckpointFormatError, ConfigError
from wan22_jax.io.tensor_source import SafetensorsSource, TensorSource
from wan22_jax.models.s2v.model_s2v import S2VConfig, WanModelS2V, abstract_s2v
from wan22_jax.sharding import context_mesh
from wan22_jax.sharding.loading import convert_sharded
from wan22_jax.state import fill_state, flat_state


def conv1d(x):
    """torch Conv1d [O, I, K] -> our [K, I, O]."""
    return x.transpose(2, 1, 0)


_ATTN = ("q", "k", "v", "o")


def s2v_table(cfg: S2VConfig) -> list[Rule]:
    """The full conversion table of one WanModel_S2V checkpoint."""
    table = dit_table(cfg.dit, OFFICIAL)
    table += [Rule("cond_encoder.kernel", "cond_encoder.weight", conv3d),
              Rule("cond_encoder.bias", "cond_encoder.bias")]
    table.append(Rule("trainable_cond_mask.weight", "trainable_cond_mask.weight"))
    enc = "casual_audio_encoder.encoder"
    convs = ["conv1_local", "conv2", "conv3"] + (["conv1_global"] if cfg.enable_adain else [])
    table.append(Rule("casual_audio_encoder.weights", "casual_audio_encoder.weights"))
    table.append(Rule(f"{enc}.padding_tokens", f"{enc}.padding_tokens"))
    for c in convs:
        table += [Rule(f"{enc}.{c}.conv.kernel", f"{enc}.{c}.conv.weight", conv1d),
                  Rule(f"{enc}.{c}.conv.bias", f"{enc}.{c}.conv.bias")]
    if cfg.enable_adain:
        table += [Rule(f"{enc}.final_linear.kernel", f"{enc}.final_linear.weight", linear),
                  Rule(f"{enc}.final_linear.bias", f"{enc}.final_linear.bias")]
    count = cfg.injectors[0]
    inj = "audio_injector.injector"
    for o in _ATTN:
        table += [stacked(f"{inj}.{o}.kernel", f"{inj}.{{i}}.{o}.weight", count, linear),
                  stacked(f"{inj}.{o}.bias", f"{inj}.{{i}}.{o}.bias", count)]
    table += [stacked(f"{inj}.{n}.weight", f"{inj}.{{i}}.{n}.weight", count) for n in ("norm_q", "norm_k")]
    if cfg.enable_adain:
        ada = "audio_injector.injector_adain_layers"
        table += [stacked(f"{ada}.linear.kernel", f"{ada}.{{i}}.linear.weight", count, linear),
                  stacked(f"{ada}.linear.bias", f"{ada}.{{i}}.linear.bias", count)]
    for p in ("proj", "proj_2x", "proj_4x"):
        table += [Rule(f"frame_packer.{p}.kernel", f"frame_packer.{p}.weight", conv3d),
                  Rule(f"frame_packer.{p}.bias", f"frame_packer.{p}.bias", identity)]
    return table


# `WanModel_S2V.ignore_for_config`: save_pretrained leaves these out of config.json; a real release needs these
# values (the reference cases write them because their tiny models differ).
_NOT_WRITTEN = {"patch_size": (1, 2, 2), "text_dim": 4096, "window_size": (-1, -1), "qk_norm": True,
                "cross_attn_norm": True}


def read_s2v_config(folder: str | Path) -> S2VConfig:
    """Reads `folder/config.json` of an official WanModel_S2V. Every key save_pretrained writes is required
    (the official constructor's defaults are not the release's); the ignored-for-config ones default to the
    release values."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointFormatError(f"{folder}: no config.json (is this the S2V DiT folder?)")
    raw = json.loads(path.read_text())
    if raw.get("_class_name") != "WanModel_S2V":
        raise ConfigError(f"{path}: _class_name {raw.get('_class_name')!r} is not 'WanModel_S2V'")
    required = sorted(set(S2VConfig.__dataclass_fields__) - set(_NOT_WRITTEN))
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing config field(s) {missing}")
    return config_from_dict(S2VConfig, {**_NOT_WRITTEN, **raw}, source=str(path))


def convert_s2v(source: TensorSource, cfg: S2VConfig, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """Checks and converts an S2V DiT checkpoint. Returns (graphdef, state) with concrete arrays."""
    graphdef, abstract = abstract_s2v(cfg, dtype=dtype, param_dtype=param_dtype)
    arrays = convert(s2v_table(cfg), source, flat_state(abstract))
    return graphdef, fill_state(abstract, {k: jnp.asarray(v) for k, v in arrays.items()})


def load_s2v(folder: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32, mesh=None) -> WanModelS2V:
    """Loads an official S2V DiT folder (`config.json` + single or sharded `diffusion_pytorch_model*.safetensors`).

    mesh: a jax.sharding.Mesh: every parameter goes straight onto its shards with the DiT's rules (the S2V modules
      carry the same logical axes); None: the mesh set by `jax.set_mesh` if any, else the default device.
    """
    cfg = read_s2v_config(folder)
    source = SafetensorsSource.from_folder(folder)
    mesh = mesh if mesh is not None else context_mesh()
    if mesh is not None:
        graphdef, abstract = abstract_s2v(cfg, dtype=dtype, param_dtype=param_dtype)
        return nnx.merge(graphdef, fill_state(abstract, convert_sharded(s2v_table(cfg), source, abstract, "dit",
                                                                        mesh)))
    return nnx.merge(*convert_s2v(source, cfg, dtype=dtype, param_dtype=param_dtype))
