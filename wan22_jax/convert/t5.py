"""umT5 encoder weights -> our `T5Encoder`: one declarative table per layout.

Layouts:
* official: `models_t5_umt5-xxl-enc-bf16.pth` (`T5Encoder.state_dict()`, read with `load_pth`, weights only),
  with an optional `t5_config.json` beside it (the reference cases have one; a real release does not: umt5-xxl).
* diffusers: transformers' `UMT5EncoderModel` as the Diffusers releases keep it under `text_encoder/`
  (`config.json` + `model.safetensors`, or shards listed in `model.safetensors.index.json`). The embedding is
  tied: it may be stored as `shared.weight`, `encoder.embed_tokens.weight`, or both (then both must agree).

`load_t5(path)` finds the layout from what the path holds and returns the NNX module.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.convert.mapping import Rule, convert, linear, stacked
from wan22_jax.convert.ours import find as find_ours, load as load_ours, save as save_ours
from wan22_jax.errors import CheckpointFormatError, ConfigError
from wan22_jax.io.tensor_source import SafetensorsSource, TensorSource
from wan22_jax.io.torch_pickle import load_pth
from wan22_jax.models.t5 import T5Config, T5Encoder, abstract_t5, t5_config, t5_config_from_dict
from wan22_jax.state import fill_state, flat_state

OFFICIAL_WEIGHTS = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_CONFIG = "t5_config.json"
DIFFUSERS_SUBFOLDER = "text_encoder"
DIFFUSERS_STEM = "model"
TIED_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


# ----------------------------------------------------------------------------------------------- tables
def official_table(cfg: T5Config) -> list[Rule]:
    """Official `T5Encoder` state dict -> ours (torch Linear [out, in] -> kernel [in, out])."""
    n = cfg.num_layers
    return [
        Rule("token_embedding.weight", "token_embedding.weight"),
        stacked("blocks.norm1.weight", "blocks.{i}.norm1.weight", n),
        stacked("blocks.attn.q.kernel", "blocks.{i}.attn.q.weight", n, linear),
        stacked("blocks.attn.k.kernel", "blocks.{i}.attn.k.weight", n, linear),
        stacked("blocks.attn.v.kernel", "blocks.{i}.attn.v.weight", n, linear),
        stacked("blocks.attn.o.kernel", "blocks.{i}.attn.o.weight", n, linear),
        stacked("blocks.norm2.weight", "blocks.{i}.norm2.weight", n),
        stacked("blocks.ffn.gate.kernel", "blocks.{i}.ffn.gate.0.weight", n, linear),
        stacked("blocks.ffn.fc1.kernel", "blocks.{i}.ffn.fc1.weight", n, linear),
        stacked("blocks.ffn.fc2.kernel", "blocks.{i}.ffn.fc2.weight", n, linear),
        stacked("blocks.pos_embedding.embedding.weight", "blocks.{i}.pos_embedding.embedding.weight", n),
        Rule("norm.weight", "norm.weight"),
    ]


def diffusers_table(cfg: T5Config, embedding_keys: tuple[str, ...] = ("shared.weight",)) -> list[Rule]:
    """transformers `UMT5EncoderModel` names -> ours. `wi_0` is the GELU-gated branch (our `gate`), `wi_1` the
    linear one (`fc1`).

    Args:
      embedding_keys: the names under which the tied token embedding is stored, the first one is read and the
        others are checked to have its shape (see `embedding_keys_of`).
    """
    n = cfg.num_layers
    attn = "encoder.block.{i}.layer.0."
    ff = "encoder.block.{i}.layer.1."
    return [
        Rule("token_embedding.weight", embedding_keys[0], tied=tuple(embedding_keys[1:])),
        stacked("blocks.norm1.weight", attn + "layer_norm.weight", n),
        stacked("blocks.attn.q.kernel", attn + "SelfAttention.q.weight", n, linear),
        stacked("blocks.attn.k.kernel", attn + "SelfAttention.k.weight", n, linear),
        stacked("blocks.attn.v.kernel", attn + "SelfAttention.v.weight", n, linear),
        stacked("blocks.attn.o.kernel", attn + "SelfAttention.o.weight", n, linear),
        stacked("blocks.norm2.weight", ff + "layer_norm.weight", n),
        stacked("blocks.ffn.gate.kernel", ff + "DenseReluDense.wi_0.weight", n, linear),
        stacked("blocks.ffn.fc1.kernel", ff + "DenseReluDense.wi_1.weight", n, linear),
        stacked("blocks.ffn.fc2.kernel", ff + "DenseReluDense.wo.weight", n, linear),
        stacked("blocks.pos_embedding.embedding.weight", attn + "SelfAttention.relative_attention_bias.weight", n),
        Rule("norm.weight", "encoder.final_layer_norm.weight"),
    ]


def embedding_keys_of(source: TensorSource) -> tuple[str, ...]:
    """Which of the tied embedding names a Diffusers source holds (`shared.weight` if neither: then the
    engine reports it missing)."""
    present = tuple(k for k in TIED_EMBEDDING_KEYS if k in source)
    return present or TIED_EMBEDDING_KEYS[:1]


# ----------------------------------------------------------------------------------------------- configs
# transformers field -> our field, copied as is
_HF_FIELDS = {
    "vocab_size": "vocab_size", "d_model": "dim", "d_ff": "dim_ffn", "num_heads": "num_heads",
    "num_layers": "num_layers", "relative_attention_num_buckets": "num_buckets",
    "relative_attention_max_distance": "max_distance", "layer_norm_epsilon": "eps", "dropout_rate": "dropout",
}
# fields that cannot change the encoder's forward pass: decoder, generation, head, training, bookkeeping.
# `scalable_attention` appears in google/umt5 configs; transformers' UMT5 (the Diffusers reference) ignores it.
_HF_IGNORED = frozenset({
    "architectures", "bos_token_id", "chunk_size_feed_forward", "classifier_dropout", "decoder_start_token_id",
    "dtype", "eos_token_id", "gradient_checkpointing", "id2label", "initializer_factor", "is_encoder_decoder",
    "label2id", "num_decoder_layers", "output_attentions", "output_hidden_states", "output_past",
    "pad_token_id", "problem_type", "return_dict", "scalable_attention", "scale_decoder_outputs",
    "tie_word_embeddings", "tokenizer_class", "torch_dtype", "transformers_version", "use_cache",
})


def t5_config_from_transformers(raw: dict[str, Any], *, source: str) -> T5Config:
    """Maps a transformers `UMT5Config` dict (a Diffusers `text_encoder/config.json`) onto T5Config.

    Refuses (ConfigError naming the field) any unknown field and any value we do not implement: a model type
    other than umt5 (T5/mT5 share layer 0's position bias), a non-gated or non-tanh-GELU feed-forward, a decoder.
    """
    def refuse(field, why):
        raise ConfigError(f"{source}: {field}={raw.get(field)!r} is not supported ({why})")

    if raw.get("model_type", "umt5") != "umt5":
        refuse("model_type", "only umt5 has the per-layer relative position bias this encoder implements")
    if raw.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
        refuse("feed_forward_proj", "only the gated GELU(tanh) feed-forward of umT5 is implemented")
    if raw.get("dense_act_fn", "gelu_new") != "gelu_new":
        refuse("dense_act_fn", "only gelu_new, the tanh approximation, is implemented")
    if raw.get("is_gated_act", True) is not True:
        refuse("is_gated_act", "only the gated feed-forward is implemented")
    if raw.get("is_decoder", False):
        refuse("is_decoder", "this is an encoder")
    handled = set(_HF_FIELDS) | {"d_kv", "model_type", "feed_forward_proj", "dense_act_fn", "is_gated_act",
                                 "is_decoder"}
    unknown = sorted(k for k in raw if not k.startswith("_") and k not in handled and k not in _HF_IGNORED)
    if unknown:
        raise ConfigError(f"{source}: unknown transformers config field(s) {unknown}; refusing to guess "
                          f"whether they change the encoder")
    fields = {ours: raw[theirs] for theirs, ours in _HF_FIELDS.items() if theirs in raw}
    for need in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "vocab_size"):
        if need not in raw:
            raise ConfigError(f"{source}: transformers config lacks {need!r}")
    fields["dim_attn"] = raw["d_kv"] * raw["num_heads"]
    try:
        return T5Config(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: invalid T5 config: {e}") from e


# ----------------------------------------------------------------------------------------------- layouts
@dataclasses.dataclass(frozen=True)
class T5Checkpoint:
    """A located checkpoint: its layout ("official" | "diffusers"), config, and a lazy tensor source."""

    layout: str
    config: T5Config
    source: TensorSource

    def table(self) -> list[Rule]:
        if self.layout == "official":
            return official_table(self.config)
        return diffusers_table(self.config, embedding_keys_of(self.source))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def _official(pth: Path) -> T5Checkpoint:
    cfg_path = pth.parent / OFFICIAL_CONFIG
    cfg = (t5_config_from_dict(_read_json(cfg_path), source=str(cfg_path)) if cfg_path.is_file()
           else t5_config("umt5-xxl"))
    return T5Checkpoint("official", cfg, load_pth(pth))


def _diffusers(folder: Path) -> T5Checkpoint:
    cfg_path = folder / "config.json"
    cfg = t5_config_from_transformers(_read_json(cfg_path), source=str(cfg_path))
    return T5Checkpoint("diffusers", cfg, SafetensorsSource.from_folder(folder, stem=DIFFUSERS_STEM))


def _is_transformers_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (
        (folder / f"{DIFFUSERS_STEM}.safetensors").is_file()
        or (folder / f"{DIFFUSERS_STEM}.safetensors.index.json").is_file())


def open_t5_checkpoint(path: str | os.PathLike) -> T5Checkpoint:
    """Locates the encoder weights under `path`.

    Accepts an official .pth file; a folder holding `models_t5_umt5-xxl-enc-bf16.pth` (a release folder, or
    any folder with exactly one `*t5*.pth`), optionally with `t5_config.json`; a Diffusers model folder (with a
    `text_encoder/` subfolder); or a transformers folder (`config.json` + `model*.safetensors`).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".pth":
            raise CheckpointFormatError(f"{path}: expected an official .pth T5 checkpoint or a folder")
        return _official(path)
    if not path.is_dir():
        raise CheckpointFormatError(f"{path}: no such file or folder")
    if (path / OFFICIAL_WEIGHTS).is_file():
        return _official(path / OFFICIAL_WEIGHTS)
    candidates = sorted(p for p in path.glob("*.pth") if "t5" in p.name.lower())
    if len(candidates) == 1:
        return _official(candidates[0])
    if len(candidates) > 1:
        raise CheckpointFormatError(f"{path}: several T5 .pth files {[p.name for p in candidates]}; pass one")
    for folder in (path / DIFFUSERS_SUBFOLDER, path):
        if _is_transformers_folder(folder):
            return _diffusers(folder)
    raise CheckpointFormatError(
        f"{path}: no T5 encoder found (looked for {OFFICIAL_WEIGHTS} or another *t5*.pth, and for "
        f"config.json + {DIFFUSERS_STEM}.safetensors[.index.json] in {DIFFUSERS_SUBFOLDER}/ or the folder itself)")


def convert_t5(path: str | os.PathLike, *, param_dtype: Any = jnp.bfloat16
               ) -> tuple[T5Config, dict[str, Any]]:
    """Checks and converts a checkpoint. Returns (config, {our dotted path: numpy array in param_dtype})."""
    ckpt = open_t5_checkpoint(path)
    _, abstract = abstract_t5(ckpt.config, param_dtype=param_dtype)
    return ckpt.config, convert(ckpt.table(), ckpt.source, flat_state(abstract))


def load_t5(path: str | os.PathLike, *, dtype: Any = jnp.bfloat16, param_dtype: Any = jnp.bfloat16
            ) -> T5Encoder:
    """Loads an official or Diffusers umT5 encoder (see `open_t5_checkpoint` for what `path` may be).

    Returns the NNX module (XLA ops: `wan22_jax.ops.with_kernels` picks others) on the default device; `nnx.split(model)` gives the (graphdef, state) pair that
    `t5_forward` and the jit boundaries take. Any missing, unexpected or mis-shaped tensor raises
    WeightMappingError naming it.
    """
    ours = find_ours(path, KIND)
    if ours is not None:
        return load_ours(ours, KIND, T5Config, lambda c: abstract_t5(c, dtype=dtype, param_dtype=param_dtype),
                         param_dtype)[1]
    cfg, arrays = convert_t5(path, param_dtype=param_dtype)
    graphdef, abstract = abstract_t5(cfg, dtype=dtype, param_dtype=param_dtype)
    state = fill_state(abstract, {k: jax.device_put(v) for k, v in arrays.items()})
    return nnx.merge(graphdef, state)


KIND = "t5"
OFFICIAL_FILE = "models_t5_umt5-xxl-enc-bf16.pth"


def release_jobs(src: Path) -> list:
    """`wan22 convert` jobs for the text encoder of a release folder: ("t5", writer(dst))."""
    if not (Path(src) / OFFICIAL_FILE).is_file():
        return []

    def write(dst: Path):
        # keep the file's precision: bf16 for a release (11 GB), fp32 for the fp32 test checkpoints
        source = open_t5_checkpoint(src).source
        stored = source.dtype(next(iter(source)))
        param_dtype = jnp.bfloat16 if stored == jnp.bfloat16 else jnp.float32
        model = load_t5(src, dtype=jnp.bfloat16, param_dtype=param_dtype)
        save_ours(model, KIND, model.cfg, dst)
    return [("t5", write)]
