"""The S2V audio encoder folder (`wav2vec2-large-xlsr-53-english/`: transformers `Wav2Vec2ForCTC`) -> our
`Wav2Vec2Model` params.

One declarative table over transformers' key names. The positional convolution's weight norm is read under the
names of the released 2021 file (`weight_g` / `weight_v`) or, for files written by newer transformers, of its
parametrization (`parametrizations.weight.original0` / `original1`). The CTC head (`lm_head.*`) and the
pre-training mask embedding (`masked_spec_embed`) are not used by S2V: they are named here as ignored; any other
tensor that no rule maps is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import jax.numpy as jnp
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.convert.mapping import Rule, convert, flatten, identity, linear, stacked
from wan22_jax.convert.s2v import conv1d
from wan22_jax.errors import CheckpointFormatError, ConfigError
from wan22_jax.io.tensor_source import SafetensorsSource, TensorSource
from wan22_jax.io.torch_pickle import load_pth
from wan22_jax.models.s2v.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from wan22_jax.state import fill_state, flat_state

PREFIX = "wav2vec2."
IGNORED = ("lm_head.weight", "lm_head.bias", "wav2vec2.masked_spec_embed")
_WEIGHT_NORM_ALIASES = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}

_LAYER = [
    *[(f"attention.{p}.kernel", f"attention.{p}.weight", linear) for p in ("q_proj", "k_proj", "v_proj", "out_proj")],
    *[(f"attention.{p}.bias", f"attention.{p}.bias", identity) for p in ("q_proj", "k_proj", "v_proj", "out_proj")],
    ("layer_norm.weight", "layer_norm.weight", identity), ("layer_norm.bias", "layer_norm.bias", identity),
    ("final_layer_norm.weight", "final_layer_norm.weight", identity),
    ("final_layer_norm.bias", "final_layer_norm.bias", identity),
    ("feed_forward.intermediate_dense.kernel", "feed_forward.intermediate_dense.weight", linear),
    ("feed_forward.intermediate_dense.bias", "feed_forward.intermediate_dense.bias", identity),
    ("feed_forward.output_dense.kernel", "feed_forward.output_dense.weight", linear),
    ("feed_forward.output_dense.bias", "feed_forward.output_dense.bias", identity),
]


def wav2vec2_table(cfg: Wav2Vec2Config) -> list[Rule]:
    """The conversion table of the wav2vec2 encoder (transformers names, `wav2vec2.` prefix)."""
    p = PREFIX
    table = []
    for i in range(len(cfg.conv_dim)):
        src = f"{p}feature_extractor.conv_layers.{i}"
        ours = f"feature_extractor.conv_layers.{i}"
        table += [Rule(f"{ours}.conv.kernel", f"{src}.conv.weight", conv1d),
                  Rule(f"{ours}.conv.bias", f"{src}.conv.bias"),
                  Rule(f"{ours}.layer_norm.weight", f"{src}.layer_norm.weight"),
                  Rule(f"{ours}.layer_norm.bias", f"{src}.layer_norm.bias")]
    table += [Rule(f"feature_projection.{n}", f"{p}feature_projection.{n}") for n in
              ("layer_norm.weight", "layer_norm.bias", "projection.bias")]
    table.append(Rule("feature_projection.projection.kernel", f"{p}feature_projection.projection.weight", linear))
    pos = "encoder.pos_conv_embed.conv"
    table += [Rule(f"{pos}.weight_g", f"{p}{pos}.weight_g", flatten),
              Rule(f"{pos}.weight_v", f"{p}{pos}.weight_v", conv1d),
              Rule(f"{pos}.bias", f"{p}{pos}.bias")]
    table += [stacked(f"encoder.layers.{ours}", f"{p}encoder.layers.{{i}}.{src}", cfg.num_hidden_layers, tf)
              for ours, src, tf in _LAYER]
    table += [Rule(f"encoder.layer_norm.{n}", f"{p}encoder.layer_norm.{n}") for n in ("weight", "bias")]
    return table


class _ReleaseView(TensorSource):
    """A tensor source seen through the release conventions: weight-norm aliases renamed, ignored names hidden."""

    def __init__(self, base: TensorSource):
        self.base = base
        self.description = getattr(base, "description", "wav2vec2 checkpoint")
        self._names: dict[str, str] = {}
        for name in base:
            if name in IGNORED:
                continue
            ours = name
            for alias, legacy in _WEIGHT_NORM_ALIASES.items():
                if name.endswith(alias):
                    ours = name[:-len(alias)] + legacy
            if ours in self._names:
                raise CheckpointFormatError(f"{self.description}: both {self._names[ours]!r} and {name!r} hold "
                                            f"the positional convolution's {ours.rsplit('.', 1)[-1]}")
            self._names[ours] = name

    def __getitem__(self, name):
        return self.base[self._names[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def load(self, name):
        return self.base.load(self._names[name])

    def dtype(self, name):
        return self.base.dtype(self._names[name])


# transformers config keys with no effect on the encoder's inference (training, CTC head, pre-training heads,
# other model variants' fields, metadata); any key that is neither this nor an architecture field is refused
_INFERENCE_IRRELEVANT_PARTS = ("dropout", "mask_", "ctc_", "codevector", "tdnn_", "xvector", "adapter", "token_id",
                               "layerdrop", "spec_augment", "loss", "negatives", "temperature", "initializer",
                               "classifier", "dtype", "architectures", "transformers_version", "gradient_checkpointing",
                               "output_hidden_size", "num_feat_extract_layers", "model_type", "use_weighted_layer_sum",
                               "problem_type", "label", "name_or_path", "return_dict", "chunk_size")
# fields whose value must be what the S2V encoder implements
_REQUIRED_VALUES = {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "feat_extract_activation": "gelu",
                    "hidden_act": "gelu", "add_adapter": False, "model_type": "wav2vec2"}


def read_wav2vec2_config(folder: str | Path) -> Wav2Vec2Config:
    """Reads `folder/config.json` (a transformers Wav2Vec2Config), refusing variants S2V's encoder is not."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointFormatError(f"{folder}: no config.json (is this the wav2vec2 folder?)")
    raw = json.loads(path.read_text())
    for key, want in _REQUIRED_VALUES.items():
        if key in raw and raw[key] != want:
            raise ConfigError(f"{path}: {key}={raw[key]!r}; the S2V audio encoder implements {want!r}")
    if raw.get("adapter_attn_dim") is not None:
        raise ConfigError(f"{path}: adapter_attn_dim={raw['adapter_attn_dim']!r} (attention adapters) is not "
                          "implemented")
    known = set(Wav2Vec2Config.__dataclass_fields__)
    fields = {}
    for key, value in raw.items():
        if key in known:
            fields[key] = value
        elif not (key.startswith("_") or key in _REQUIRED_VALUES
                  or any(part in key for part in _INFERENCE_IRRELEVANT_PARTS)):
            raise ConfigError(f"{path}: unknown config field {key!r} for the wav2vec2 audio encoder")
    return config_from_dict(Wav2Vec2Config, fields, source=str(path))


def abstract_wav2vec2(cfg: Wav2Vec2Config, *, dtype=jnp.float32, param_dtype=jnp.float32):
    return nnx.split(nnx.eval_shape(lambda: Wav2Vec2Model(cfg, dtype=dtype, param_dtype=param_dtype)))


def convert_wav2vec2(source: TensorSource, cfg: Wav2Vec2Config, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """Checks and converts a wav2vec2 checkpoint. Returns (graphdef, state) with concrete arrays."""
    graphdef, abstract = abstract_wav2vec2(cfg, dtype=dtype, param_dtype=param_dtype)
    arrays = convert(wav2vec2_table(cfg), _ReleaseView(source), flat_state(abstract))
    return graphdef, fill_state(abstract, {k: jnp.asarray(v) for k, v in arrays.items()})


def load_wav2vec2(folder: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32) -> Wav2Vec2Model:
    """Loads the `wav2vec2-large-xlsr-53-english/` folder: `config.json` + `model.safetensors` (single or
    sharded), or the older `pytorch_model.bin` (read weights-only with torch) when there is no safetensors file."""
    folder = Path(folder)
    cfg = read_wav2vec2_config(folder)
    has_safetensors = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not has_safetensors and (folder / "pytorch_model.bin").is_file():
        source = load_pth(folder / "pytorch_model.bin")
    else:
        source = SafetensorsSource.from_folder(folder, stem="model")
    return nnx.merge(*convert_wav2vec2(source, cfg, dtype=dtype, param_dtype=param_dtype))
