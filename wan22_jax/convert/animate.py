"""Animate-14B checkpoints -> our models: the DiT (`WanAnimateModel`), the CLIP image encoder and the relighting LoRA.

* DiT: `config.json` + `diffusion_pytorch_model*.safetensors` (save_pretrained of WanAnimateModel). The config holds
  the constructor arguments; the widths the official constructor hard-codes (CLIP width, face-crop size, motion
  encoder channels, face encoder width and heads) are read off the weight shapes. One declarative table: the T2V
  DiT rows of `convert/dit.py` plus the Animate rows; every tensor, the blur filter buffers included, must map.
* CLIP: `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, the whole XLM-RoBERTa CLIP. The image tower's
  used part maps strictly; the tensors WanAnimate never runs (the text tower, `log_scale`, the tower's last
  block, `post_norm`, `head`) are named in `CLIP_UNUSED` and skipped, anything else unknown is refused.
* LoRA: `relighting_lora.ckpt` = {"state_dict": PEFT keys `blocks.N.<linear>.lora_{A,B}.default.weight`}; becomes
  our adapter pytree for `wan22_jax.training.lora.apply_lora` (W + alpha / rank * A B, A = lora_A^T, B = lora_B^T).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.convert.dit import OFFICIAL, dit_table
from wan22_jax.convert.mapping import Rule, conv2d, conv3d, convert, flatten, identity, linear, squeeze0, stacked
from wan22_jax.errors import CheckpointFormatError, ConfigError, WeightMappingError
from wan22_jax.io.tensor_source import SafetensorsSource, TensorSource
from wan22_jax.io.torch_pickle import load_pth
from wan22_jax.models.animate.clip import CLIPVisionConfig, CLIPVisionEncoder, abstract_clip
from wan22_jax.models.animate.model_animate import AnimateConfig, WanAnimateModel, abstract_animate
from wan22_jax.sharding import context_mesh
from wan22_jax.sharding.loading import convert_sharded
from wan22_jax.state import fill_state, flat_state
from wan22_jax.training.lora import LoraConfig, apply_lora

CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CLIP_CONFIG = "clip_config.json"
LORA_FILE = "relighting_lora.ckpt"
CLIP_HEADS_14B = 16  # not recoverable from shapes: the official clip_xlm_roberta_vit_h_14 value


class SubsetSource(TensorSource):
    """A view of `source` without the names in `skip` (declared-unused tensors)."""

    def __init__(self, source: TensorSource, skip: set[str]):
        self._source = source
        self._names = [n for n in source if n not in skip]
        self.description = source.description

    def __getitem__(self, name):
        if name not in self._names:
            raise KeyError(name)
        return self._source[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._names

    def load(self, name):
        return self._source.load(name)

    def dtype(self, name):
        return self._source.dtype(name)


def _shape(source: TensorSource, name: str) -> tuple[int, ...]:
    if name not in source:
        raise WeightMappingError(f"{source.description}: missing tensor {name!r} (needed to read the model's sizes)")
    return tuple(source[name])


def _torch_conv1d(x):
    """torch Conv1d [O, I, k] -> [k, I, O]."""
    return x.transpose(2, 1, 0)


# ------------------------------------------------------------------------------------------------ CLIP
def read_clip_config(source: TensorSource, folder: str | Path | None = None) -> CLIPVisionConfig:
    """The image tower's sizes from the weight shapes (and `clip_config.json` beside the file if present, which
    must agree with them; the head count comes only from there, else the release's 16)."""
    pos = _shape(source, "visual.pos_embedding")
    patch = _shape(source, "visual.patch_embedding.weight")
    mlp = _shape(source, "visual.transformer.0.mlp.0.weight")
    layers = 1 + max((int(m.group(1)) for n in source
                      if (m := re.match(r"visual\.transformer\.(\d+)\.", n))), default=-1)
    grid = math.isqrt(pos[1] - 1)
    sizes = dict(image_size=grid * patch[-1], patch_size=patch[-1], vision_dim=pos[-1],
                 vision_mlp_ratio=mlp[0] // pos[-1], vision_layers=layers)
    heads = CLIP_HEADS_14B
    path = None if folder is None else Path(folder) / CLIP_CONFIG
    if path is not None and path.is_file():
        raw = json.loads(path.read_text())
        for key, value in sizes.items():
            if key in raw and raw[key] != value:
                raise ConfigError(f"{path}: {key}={raw[key]!r} but the weights say {value}")
        heads = raw.get("vision_heads", heads)
        if raw.get("activation", "gelu") != "gelu" or raw.get("vision_pool", "token") != "token":
            raise ConfigError(f"{path}: activation {raw.get('activation')!r} / vision_pool "
                              f"{raw.get('vision_pool')!r}: only the 'gelu' / 'token' tower of WanAnimate is "
                              "implemented")
    return config_from_dict(CLIPVisionConfig, {**sizes, "vision_heads": heads}, source=source.description)


def clip_unused(cfg: CLIPVisionConfig, source: TensorSource) -> set[str]:
    """Names of the release file that `CLIPModel.visual(use_31_block=True)` never reads."""
    last = f"visual.transformer.{cfg.vision_layers - 1}."
    keep_out = ("textual.", last, "visual.post_norm.")
    return {n for n in source if n.startswith(keep_out) or n in ("log_scale", "visual.head")}


_CLIP_BLOCK = [("norm1.weight", identity), ("norm1.bias", identity), ("attn.to_qkv.kernel", linear),
               ("attn.to_qkv.bias", identity), ("attn.proj.kernel", linear), ("attn.proj.bias", identity),
               ("norm2.weight", identity), ("norm2.bias", identity), ("mlp.0.kernel", linear),
               ("mlp.0.bias", identity), ("mlp.2.kernel", linear), ("mlp.2.bias", identity)]


def clip_table(cfg: CLIPVisionConfig) -> list[Rule]:
    table = [Rule("patch_embedding.kernel", "visual.patch_embedding.weight", conv2d),
             Rule("cls_embedding", "visual.cls_embedding", flatten),
             Rule("pos_embedding", "visual.pos_embedding", squeeze0),
             Rule("pre_norm.weight", "visual.pre_norm.weight"), Rule("pre_norm.bias", "visual.pre_norm.bias")]
    for ours, tf in _CLIP_BLOCK:
        src = ours.replace(".kernel", ".weight")
        table.append(stacked(f"transformer.{ours}", f"visual.transformer.{{i}}.{src}", cfg.num_blocks, tf))
    return table


def load_clip(path: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32) -> CLIPVisionEncoder:
    """Loads the CLIP .pth (a file, or the folder holding it) into a CLIPVisionEncoder."""
    path = Path(path)
    if path.is_dir():
        path = path / CLIP_FILE
    source = load_pth(path)
    cfg = read_clip_config(source, path.parent)
    graphdef, abstract = abstract_clip(cfg, dtype=dtype, param_dtype=param_dtype)
    arrays = convert(clip_table(cfg), SubsetSource(source, clip_unused(cfg, source)), flat_state(abstract))
    return nnx.merge(graphdef, fill_state(abstract, {k: jnp.asarray(v) for k, v in arrays.items()}))


# ------------------------------------------------------------------------------------------------ DiT
def widths_from_shapes(source: TensorSource) -> dict[str, Any]:
    """The AnimateConfig fields the official constructor hard-codes, read off the weight shapes."""
    app = "motion_encoder.enc.net_app.convs"
    n_convs = 1 + max((int(m.group(1)) for n in source if (m := re.match(rf"{re.escape(app)}\.(\d+)\.", n))),
                      default=-1)
    if n_convs < 2:
        raise WeightMappingError(f"{source.description}: no motion encoder ({app}.N.*) found")
    channels = [_shape(source, f"{app}.0.0.weight")[0]]
    channels += [_shape(source, f"{app}.{r}.conv2.1.weight")[0] for r in range(1, n_convs - 1)]
    face_hidden = _shape(source, "face_encoder.conv2.conv.weight")[0]
    return dict(image_dim=_shape(source, "img_emb.proj.1.weight")[1],
                motion_encoder_size=2 ** (n_convs - 2 + 2),  # log2(size) - 2 ResBlocks down to 4 x 4
                motion_style_dim=_shape(source, f"{app}.{n_convs - 1}.weight")[0],
                motion_dim=_shape(source, "motion_encoder.dec.direction.weight")[1],
                motion_channels=tuple(channels),
                face_hidden_dim=face_hidden,
                face_num_heads=_shape(source, "face_encoder.conv1_local.conv.weight")[0] // face_hidden)


def read_animate_config(folder: str | Path, source: TensorSource) -> AnimateConfig:
    """`folder/config.json` (WanAnimateModel's constructor arguments) + the hard-coded widths from the weights."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointFormatError(f"{folder}: no config.json (is this an Animate DiT folder?)")
    raw = json.loads(path.read_text())
    if raw.get("_class_name", "WanAnimateModel") != "WanAnimateModel":
        raise ConfigError(f"{path}: _class_name {raw['_class_name']!r} is not WanAnimateModel")
    if raw.get("use_img_emb", True) is not True:
        raise ConfigError(f"{path}: use_img_emb={raw['use_img_emb']!r}; the Animate release uses the CLIP image "
                          "branch and only that is implemented")
    # use_context_parallel is how the official code splits work over GPUs, not part of the model
    return config_from_dict(AnimateConfig, {**raw, **widths_from_shapes(source)}, source=str(path),
                            ignore=("use_img_emb", "use_context_parallel"))


def _motion_rows(cfg: AnimateConfig) -> list[Rule]:
    app, ours = "motion_encoder.enc.net_app.convs", "motion_encoder.enc.net_app.convs"
    rows = [Rule(f"{ours}.0.0.kernel", f"{app}.0.0.weight", conv2d), Rule(f"{ours}.0.1.bias", f"{app}.0.1.bias", flatten)]
    n_res = len(cfg.motion_channels) - 1
    for r in range(1, n_res + 1):
        rows += [Rule(f"{ours}.{r}.conv1.0.kernel", f"{app}.{r}.conv1.0.weight", conv2d),
                 Rule(f"{ours}.{r}.conv1.1.bias", f"{app}.{r}.conv1.1.bias", flatten),
                 Rule(f"{ours}.{r}.conv2.0.kernel", f"{app}.{r}.conv2.0.kernel"),
                 Rule(f"{ours}.{r}.conv2.1.kernel", f"{app}.{r}.conv2.1.weight", conv2d),
                 Rule(f"{ours}.{r}.conv2.2.bias", f"{app}.{r}.conv2.2.bias", flatten),
                 Rule(f"{ours}.{r}.skip.0.kernel", f"{app}.{r}.skip.0.kernel"),
                 Rule(f"{ours}.{r}.skip.1.kernel", f"{app}.{r}.skip.1.weight", conv2d)]
    rows.append(Rule(f"{ours}.{n_res + 1}.kernel", f"{app}.{n_res + 1}.weight", conv2d))
    for j in range(5):
        rows += [Rule(f"motion_encoder.enc.fc.{j}.kernel", f"motion_encoder.enc.fc.{j}.weight", linear),
                 Rule(f"motion_encoder.enc.fc.{j}.bias", f"motion_encoder.enc.fc.{j}.bias")]
    rows.append(Rule("motion_encoder.dec.direction.weight", "motion_encoder.dec.direction.weight"))
    return rows


def animate_table(cfg: AnimateConfig) -> list[Rule]:
    """The full conversion table of the official WanAnimateModel layout."""
    table = dit_table(cfg, OFFICIAL)
    n = cfg.num_layers
    for name in ("k_img", "v_img"):
        table += [stacked(f"blocks.cross_attn.{name}.kernel", f"blocks.{{i}}.cross_attn.{name}.weight", n, linear),
                  stacked(f"blocks.cross_attn.{name}.bias", f"blocks.{{i}}.cross_attn.{name}.bias", n)]
    table.append(stacked("blocks.cross_attn.norm_k_img.weight", "blocks.{i}.cross_attn.norm_k_img.weight", n))
    table += [Rule("pose_patch_embedding.kernel", "pose_patch_embedding.weight", conv3d),
              Rule("pose_patch_embedding.bias", "pose_patch_embedding.bias")]
    for i in ("0", "4"):
        table += [Rule(f"img_emb.proj.{i}.weight", f"img_emb.proj.{i}.weight"),
                  Rule(f"img_emb.proj.{i}.bias", f"img_emb.proj.{i}.bias")]
    for i in ("1", "3"):
        table += [Rule(f"img_emb.proj.{i}.kernel", f"img_emb.proj.{i}.weight", linear),
                  Rule(f"img_emb.proj.{i}.bias", f"img_emb.proj.{i}.bias")]
    table += _motion_rows(cfg)
    g, fb = cfg.num_face_blocks, "face_adapter.fuser_blocks"
    for name in ("linear1_kv", "linear1_q", "linear2"):
        table += [stacked(f"{fb}.{name}.kernel", f"{fb}.{{i}}.{name}.weight", g, linear),
                  stacked(f"{fb}.{name}.bias", f"{fb}.{{i}}.{name}.bias", g)]
    table += [stacked(f"{fb}.{name}.weight", f"{fb}.{{i}}.{name}.weight", g) for name in ("q_norm", "k_norm")]
    for name in ("conv1_local", "conv2", "conv3"):
        table += [Rule(f"face_encoder.{name}.conv.kernel", f"face_encoder.{name}.conv.weight", _torch_conv1d),
                  Rule(f"face_encoder.{name}.conv.bias", f"face_encoder.{name}.conv.bias")]
    table += [Rule("face_encoder.out_proj.kernel", "face_encoder.out_proj.weight", linear),
              Rule("face_encoder.out_proj.bias", "face_encoder.out_proj.bias"),
              Rule("face_encoder.padding_tokens", "face_encoder.padding_tokens", flatten)]
    return table


def load_animate(folder: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32, mesh=None) -> WanAnimateModel:
    """Loads an official Animate DiT folder (single or sharded safetensors) into a WanAnimateModel.

    mesh: a jax.sharding.Mesh: every parameter goes straight onto its shards by the DiT rules (as `load_dit`),
      each process reading only its slices; None: the mesh set by `jax.set_mesh` if any, else one device.
    """
    folder = Path(folder)
    mesh = mesh if mesh is not None else context_mesh()
    source = SafetensorsSource.from_folder(folder)
    cfg = read_animate_config(folder, source)
    graphdef, abstract = abstract_animate(cfg, dtype=dtype, param_dtype=param_dtype)
    if mesh is not None:
        return nnx.merge(graphdef, fill_state(abstract, convert_sharded(animate_table(cfg), source, abstract, "dit",
                                                                        mesh)))
    arrays = convert(animate_table(cfg), source, flat_state(abstract))
    return nnx.merge(graphdef, fill_state(abstract, {k: jnp.asarray(v) for k, v in arrays.items()}))


# ------------------------------------------------------------------------------------------------ LoRA
# the official targets (animate_utils.get_loraconfig): every Linear under `blocks` that is not a face module
LORA_MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")


def relighting_lora_table(cfg: AnimateConfig) -> list[Rule]:
    """Rows `blocks.<module>.lora_{a,b}` <- `blocks.{i}.<module>.lora_{A,B}.default.weight` (transposed)."""
    table = []
    for m in LORA_MODULES:
        table += [stacked(f"blocks.{m}.lora_a", f"blocks.{{i}}.{m}.lora_A.default.weight", cfg.num_layers, linear),
                  stacked(f"blocks.{m}.lora_b", f"blocks.{{i}}.{m}.lora_B.default.weight", cfg.num_layers, linear)]
    return table


def load_relighting_lora(path: str | Path, cfg: AnimateConfig, *, alpha: float | None = None):
    """Reads `relighting_lora.ckpt` (a file or the folder holding it) for a model of config `cfg`.

    alpha: the LoRA alpha. The file holds no alpha; the official loader uses alpha = rank (128, 128), so None
      means alpha = the rank found in the file (scaling 1).
    Returns:
      (adapters {our kernel path: {"a": [layers, in, r], "b": [layers, r, out]}}, LoraConfig) for `apply_lora`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LORA_FILE
    source = load_pth(path)
    first = f"blocks.0.{LORA_MODULES[0]}.lora_A.default.weight"
    rank = _shape(source, first)[0]
    d, f = cfg.dim, cfg.ffn_dim
    sizes = {m: (d, d) for m in LORA_MODULES}
    sizes.update({"ffn.0": (d, f), "ffn.2": (f, d)})
    expected = {}
    for m, (din, dout) in sizes.items():
        expected[f"blocks.{m}.lora_a"] = jax.ShapeDtypeStruct((cfg.num_layers, din, rank), jnp.float32)
        expected[f"blocks.{m}.lora_b"] = jax.ShapeDtypeStruct((cfg.num_layers, rank, dout), jnp.float32)
    arrays = convert(relighting_lora_table(cfg), source, expected)
    adapters = {f"blocks.{m}.kernel": {"a": jnp.asarray(arrays[f"blocks.{m}.lora_a"]),
                                       "b": jnp.asarray(arrays[f"blocks.{m}.lora_b"])} for m in LORA_MODULES}
    lora_cfg = LoraConfig(rank=rank, alpha=float(rank if alpha is None else alpha),
                          targets=tuple(f"blocks.*.{m}" for m in LORA_MODULES))
    return adapters, lora_cfg


def with_lora(model: WanAnimateModel, adapters, lora_cfg: LoraConfig, scale: float = 1.0) -> WanAnimateModel:
    """A copy of `model` with the adapters merged into its weights (W + scale * alpha / rank * A B)."""
    graphdef, state = nnx.split(model)
    merged = apply_lora(nnx.to_pure_dict(state), adapters, lora_cfg, scale)
    new_state = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(new_state, merged)
    return nnx.merge(graphdef, new_state)


__all__ = ["animate_table", "clip_table", "load_animate", "load_clip", "load_relighting_lora",
           "read_animate_config", "read_clip_config", "with_lora"]
