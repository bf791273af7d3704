"""The typed training config that `wan22 train CONFIG.json` reads: one frozen dataclass tree, parsed strictly.

    RunConfig
      out_dir, steps, batch_size, progress, stop_after      the run
      data        DataConfig       where clips come from: "world" (the procedural mini-world) or "cache" (a
                                   latent cache of video files made by `wan22 cache`, training/loader.py)
      world       WorldConfig      the mini-world's clips (training/data.py; kind "world" only)
      vae         path or null     a Wan VAE folder ("default": the embedded model's) for latents, or null:
                                   average-pooled pixels (kind "world"; with a cache it only decodes the
                                   sample videos)
      text        TextConfig       tokenizer + umT5, frozen or trained (training/text.py)
      dit         DiTConfig        the DiT (models/dit.py); required
      train       TrainConfig      optimizer, schedule, objective, precision, remat, attention (training/config.py)
      lora        LoraRunConfig    null, or a LoRA on a base DiT folder (training/lora.py's LoraConfig fields)
      mesh        MeshConfig       shard the run over a device mesh ("fsdp=4,seq=2"); "" = one device
      checkpoint  CheckpointConfig Orbax folder, steps kept, save interval
      eval        EvalConfig       held-out loss interval and batch

Every mistake is one ConfigError naming the field path ("training config checkpoint.keep='3': must be a whole
number >= 1", "config train: invalid TrainConfig: lr='fast'..."): unknown fields, wrong types, bad values, before
anything is built. `describe()` renders the tree and each section's documentation (`wan22 train --help`).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping

from wan22_jax.config_utils import config_from_dict
from wan22_jax.convert.dit import read_dit_config
from wan22_jax.errors import CheckpointFormatError, ConfigError, InputError
from wan22_jax.io.orbax_io import MANIFEST, read_manifest
from wan22_jax.models.dit import DiTConfig
from wan22_jax.pipeline.files import default_checkpoint
from wan22_jax.sharding.rules import parse_mesh_spec
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.data import WorldConfig
from wan22_jax.training.lora import LoraConfig
from wan22_jax.training.text import TextConfig

DATA_KINDS = ("world", "cache")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the training clips come from. kind: "world", the procedural mini-world sized by the `world` section;
    or "cache", the latent cache in `dir` (`wan22 cache` of a folder of videos/images with captions): batches of
    one bucket each, in an order fixed by train.seed, resumed from the checkpoint's data position.
    held_out (cache only): that many samples are kept out of training and their loss is evaluated per bucket
    every eval.every steps (eval.csv: all of them; eval_buckets.csv: per bucket); 0: no held-out loss.
    read_threads (cache only): Grain's reading threads."""

    kind: str = "world"
    dir: str | None = None
    held_out: int = 0
    read_threads: int = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """spec: a mesh over all devices, "axis=size,..." with axes data, fsdp, seq, tensor (one may be -1: the
    rest); parameters, optimizer state, EMA and batches are split by the inference rules (sharding/rules.py).
    "" (default): one device, no mesh."""

    spec: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """dir: the Orbax checkpoint folder (null: out_dir/ckpt); a run finding a committed step there resumes from
    it. keep: newest steps kept. every: save every N steps (also at the last step and on Ctrl-C)."""

    dir: str | None = None
    keep: int = 3
    every: int = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """every: the held-out loss at t = 100, 500, 900 every N steps (eval.csv); batch: held-out clips (a cache:
    samples per evaluation batch, all held-out samples are evaluated). samples: sample videos generated from
    held-out captions at every evaluation (out_dir/samples/step_N_i.mp4), when the run can decode its latents
    (a `vae`, or the mini-world's pooled pixels); 0: none. sample_steps, guidance: their sampling steps and
    guide scale (shift: train.shift)."""

    every: int = 100
    batch: int = 8
    samples: int = 0
    sample_steps: int = 20
    guidance: float = 4.0


EXPERTS = {"high": "high_noise_model", "low": "low_noise_model"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraRunConfig:
    """base: the DiT folder the adapters train on (frozen; a release's DiT folder, `wan22 convert` or `wan22
    train` output), or "default": the embedded mini-world model; the `dit` section may then be left out (it is
    the base's). expert: "high" / "low" for one expert of an A14B release (null: read from a base folder named
    high_noise_model / low_noise_model); the ComfyUI file is then named for it (lora_comfyui.high_noise.safetensors)
    and loads with `pipe.load_lora(path, expert="high")`. The other fields are the adapter's (LoraConfig: rank,
    alpha, targets), written flat beside `base`. A LoRA run writes out_dir/lora.safetensors (ours) and
    out_dir/lora_comfyui.safetensors (`diffusion_model.<module>.lora_A / lora_B / alpha`: ComfyUI's naming)."""

    base: str
    expert: str | None = None
    adapter: LoraConfig = LoraConfig()

    @property
    def base_path(self) -> Path:
        """The base DiT folder ("default" resolved to the embedded model)."""
        return default_checkpoint() if self.base == "default" else Path(self.base)

    @property
    def expert_name(self) -> str | None:
        """The A14B expert the adapter is for ("high_noise_model" / "low_noise_model"), or None."""
        if self.expert is not None:
            return EXPERTS[self.expert]
        name = Path(self.base).name
        return name if name in EXPERTS.values() else None


def base_dit_config(folder: Path) -> DiTConfig:
    """The DiTConfig of a DiT folder (ours, official or Diffusers), read without its weights."""
    if (folder / MANIFEST).is_file():
        return config_from_dict(DiTConfig, read_manifest(folder)["config"], source=str(folder / MANIFEST))
    return read_dit_config(folder)[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """out_dir: where the logs and the trained weights go: loss.csv, metrics.csv and tensorboard/ (loss, grad
    norm, lr, samples/s, MFU), eval.csv (held-out loss; eval_buckets.csv per bucket), loss.png, samples/ (sample
    videos), and out_dir/dit (+ out_dir/t5 and out_dir/tokenizer), or out_dir/lora.safetensors and
    out_dir/lora_comfyui.safetensors. steps: optimizer steps of the run. batch_size: samples per micro-batch (a
    step sees train.grad_accum of them). progress: a tqdm bar. stop_after: stop once optimizer step N (of the
    whole run, a resume counts on from its checkpoint) is done, leaving a checkpoint at N (checkpoint.dir) and no
    trained outputs unless N >= steps; the config without stop_after (or with a later one) then resumes from N."""

    out_dir: str
    dit: DiTConfig
    steps: int
    batch_size: int
    data: DataConfig = DataConfig()
    world: WorldConfig = WorldConfig()
    vae: str | None = None
    text: TextConfig = TextConfig()
    train: TrainConfig = TrainConfig()
    lora: LoraRunConfig | None = None
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    progress: bool = True
    stop_after: int | None = None

    @property
    def vae_path(self) -> Path | None:
        """The VAE folder ("default": the embedded model's), or None."""
        return default_checkpoint() if self.vae == "default" else None if self.vae is None else Path(self.vae)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (what the checkpoints store beside the state); `parse_run_config` reads it back."""
        out = dataclasses.asdict(self)
        if self.lora is not None:  # the adapter's fields are written flat, as in the config file
            out["lora"] = {"base": self.lora.base, **({} if self.lora.expert is None else
                                                      {"expert": self.lora.expert}), **out["lora"]["adapter"]}
        return out


# sections built by their own strict constructors (each names its bad field in its own words)
OWN_PARSERS = {"dit": DiTConfig, "world": WorldConfig, "text": TextConfig, "train": TrainConfig}
# whole numbers and their minimum, per section ("" = the top level)
MINIMUM = {("", "steps"): 1, ("", "batch_size"): 1, ("", "stop_after"): 1, ("checkpoint", "keep"): 1,
           ("checkpoint", "every"): 1, ("eval", "every"): 1, ("eval", "batch"): 1,
           ("data", "read_threads"): 1, ("eval", "sample_steps"): 1}


def _where(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _typed(value: Any, hint: Any, section: str, name: str) -> Any:
    """`value` checked against a field's annotation (int, float, bool, str, or one of them | None)."""
    where = _where(section, name)
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"training config {where}={value!r}: must be true or false")
    elif hint is int:
        low = MINIMUM.get((section, name), 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"training config {where}={value!r}: must be a whole number >= {low}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"training config {where}={value!r}: must be a number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"training config {where}={value!r}: must be a string")
    return value


def _fields(cls, raw: Any, section: str) -> dict[str, Any]:
    """The checked scalar fields of a small section dataclass from its JSON object."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"training config {section!r} must be an object of fields, found {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown training config field(s) {[_where(section, k) for k in unknown]}; valid: "
                          f"{sorted(known)}")
    return {k: _typed(v, hints[k], section, k) for k, v in raw.items()}


def _lora(raw: Any) -> LoraRunConfig | None:
    if raw is None:
        return None
    if not (isinstance(raw, Mapping) and isinstance(raw.get("base"), str)):
        raise ConfigError(f"training config lora={raw!r}: must be null or an object with a \"base\" DiT folder")
    expert = raw.get("expert")
    if expert is not None and expert not in EXPERTS:
        raise ConfigError(f"training config lora.expert={expert!r}: \"high\", \"low\" or null")
    spec = {k: v for k, v in raw.items() if k not in ("base", "expert")}
    if "targets" in spec and not spec["targets"]:
        spec.pop("targets")  # an empty list: the default targets
    return LoraRunConfig(base=raw["base"], expert=expert,
                         adapter=config_from_dict(LoraConfig, spec, source="config lora"))


def parse_run_config(raw: Any) -> RunConfig:
    """A RunConfig from the JSON object of a training config; ConfigError names the first bad field."""
    if isinstance(raw, RunConfig):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the training config must be a JSON object, found {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown training config field(s) {unknown}; valid: {sorted(fields)}")
    for k in ("out_dir", "dit", "steps", "batch_size"):
        if k not in raw and not (k == "dit" and raw.get("lora") is not None):
            raise ConfigError(f"training config needs {k!r}")
    hints = typing.get_type_hints(RunConfig)
    kw: dict[str, Any] = {}
    for name, value in raw.items():
        if name in OWN_PARSERS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"training config {name!r} must be an object of fields, found {value!r}")
            kw[name] = config_from_dict(OWN_PARSERS[name], value, source=f"config {name}")
        elif name == "lora":
            kw[name] = _lora(value)
        elif dataclasses.is_dataclass(hints[name]):
            kw[name] = hints[name](**_fields(hints[name], value, name))
        elif name == "vae" and value is not None and not isinstance(value, str):
            raise ConfigError(f"training config vae={value!r}: must be a path (a string) or null")
        else:
            kw[name] = _typed(value, hints[name], "", name)
    if "dit" not in kw:  # a LoRA run: the base's own config
        try:
            kw["dit"] = base_dit_config(kw["lora"].base_path)
        except (CheckpointFormatError, InputError, OSError) as e:
            raise ConfigError(f"training config lora.base={kw['lora'].base!r}: cannot read its DiT config ({e}); "
                              "give the base folder, or a `dit` section") from None
    cfg = RunConfig(**kw)
    _check(cfg)
    return cfg


def _check(cfg: RunConfig) -> None:
    """Values that each section alone cannot judge."""
    if cfg.data.kind not in DATA_KINDS:
        raise ConfigError(f"training config data.kind={cfg.data.kind!r}: one of {DATA_KINDS}")
    if cfg.data.kind == "cache" and not cfg.data.dir:
        raise ConfigError("training config data.dir: data.kind \"cache\" needs the cache folder (`wan22 cache "
                          "... --out DIR`)")
    if cfg.data.kind == "world" and (cfg.data.dir is not None or cfg.data.held_out):
        raise ConfigError("training config data.dir / data.held_out belong to data.kind \"cache\"; the mini-world "
                          "(kind \"world\") is sized by the `world` section")
    if cfg.data.kind == "cache" and cfg.text.train and cfg.text.tokenizer_dir is None:
        raise ConfigError("training config text.tokenizer_dir: training the text encoder on a cache needs the "
                          "tokenizer folder the cache was made with (its token ids)")
    if cfg.eval.samples and cfg.data.kind == "cache" and cfg.vae is None:
        raise ConfigError("training config eval.samples: sample videos from a cache need its VAE to decode them: "
                          "set vae to the VAE folder the cache was made with")
    if cfg.mesh.spec:
        parse_mesh_spec(cfg.mesh.spec)  # its syntax, before any device is asked
    if cfg.lora is not None and cfg.text.train:
        raise ConfigError("text.train trains the encoder with the whole DiT; a LoRA run keeps both frozen")


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "").replace("NoneType", "null")


def describe() -> str:
    """Every section and field of the training config with its type, default and documentation (the dataclasses'
    docstrings): `wan22 train --help`."""
    hints = typing.get_type_hints(RunConfig)
    lines = ["training config (a JSON object; fields left out take their defaults):", "",
             _indent(RunConfig.__doc__)]
    sections = []
    for f in dataclasses.fields(RunConfig):
        hint = hints[f.name]
        inner = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)
        if dataclasses.is_dataclass(inner):
            sections.append((f.name, inner))
            continue
        default = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
        lines.append(f"  {f.name}: {_type_name(hint)} ({default})")
    for name, cls in sections:
        if cls is LoraRunConfig:
            cls_fields = [("base", "str", "required"), ("expert", "str | null", "default None")] + [
                (g.name, _type_name(typing.get_type_hints(LoraConfig)[g.name]), f"default {g.default!r}")
                for g in dataclasses.fields(LoraConfig)]
            doc = LoraRunConfig.__doc__ + "\n" + LoraConfig.__doc__
            head = f"{name} (null by default):"
        elif cls is DiTConfig:
            lines += ["", f"{name} (required): {cls.__name__} fields", _indent(cls.__doc__),
                      "  " + ", ".join(g.name for g in dataclasses.fields(cls))]
            continue
        else:
            sub = typing.get_type_hints(cls)
            cls_fields = [(g.name, _type_name(sub[g.name]),
                           "default " + repr(g.default if g.default is not dataclasses.MISSING
                                             else g.default_factory()))
                          for g in dataclasses.fields(cls)]
            doc, head = cls.__doc__, f"{name}:"
        lines += ["", head, _indent(doc)] + [f"    {n}: {t} ({d})" for n, t, d in cls_fields]
    return "\n".join(lines)


def _indent(doc: str | None) -> str:
    return "\n".join("  " + line.strip() for line in (doc or "").strip().splitlines())


__all__ = ["RunConfig", "DataConfig", "MeshConfig", "CheckpointConfig", "EvalConfig", "LoraRunConfig",
           "parse_run_config", "describe"]
