"""The LoRA file formats in use for Wan, told apart by their keys, and the key table of each.

| format      | example key                                              | written by                        |
|-------------|----------------------------------------------------------|-----------------------------------|
| `diffusers` | `transformer.blocks.0.attn1.to_q.lora_A.weight`          | diffusers / PEFT                  |
| `comfyui`   | `diffusion_model.blocks.0.self_attn.q.lora_A.weight`     | ComfyUI, the official trainers,   |
|             | (`lora_down`/`lora_up`, `.alpha`, `.diff`, `.diff_b`)    | LightX2V's distillation LoRAs     |
| `musubi`    | `lora_unet_blocks_0_self_attn_q.lora_down.weight`        | musubi-tuner / kohya              |
| `wan22_jax` | `blocks.self_attn.q.kernel.lora_a` (+ JSON metadata)     | `wan22 train` (`lora/ours.py`)    |

A key names a module in the official (`comfyui`, `musubi`) or the Diffusers (`diffusers`) layout, and which part
of an update it holds (`KINDS`). The module names are not restated here: they are the DiT converter's table
(`convert/dit.py`), read by `source_params`, so a LoRA key is accepted exactly when it names a parameter that the
converter maps. LightX2V's files are `comfyui` files that also carry full-weight differences: `.diff` on Linears
and norms, `.diff_b` on biases, and `blocks.N.diff_m` on the block modulation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

from wan22_jax.convert.dit import DIFFUSERS as DIFFUSERS_LAYOUT, OFFICIAL, dit_table
from wan22_jax.errors import WeightMappingError
from wan22_jax.models.dit import DiTConfig

DIFFUSERS, COMFYUI, MUSUBI, OURS = "diffusers", "comfyui", "musubi", "wan22_jax"
FORMATS = (DIFFUSERS, COMFYUI, MUSUBI, OURS)

# what one key holds
DOWN = "down"        # the low-rank factor next to the input: torch [rank, in]
UP = "up"            # the low-rank factor next to the output: torch [out, rank]
ALPHA = "alpha"      # a scalar: the update is scaled by alpha / rank
DIFF = "diff"        # a full-size difference added to the parameter (torch layout)
UP_BIAS = "up_bias"  # PEFT's `lora_B.bias`: a bias difference scaled like the low-rank update


@dataclasses.dataclass(frozen=True)
class Format:
    """How one format spells its keys.

    name: one of FORMATS. layout: the converter layout its module names follow ("official" or "diffusers").
    prefixes: the key prefixes it uses, tried in order ("" last: no prefix).
    suffixes: (key suffix after the module name, KIND, the parameter of the module it updates).
    underscored: module names with "_" for "." (kohya's `blocks_0_self_attn_q`).
    """

    name: str
    layout: str
    prefixes: tuple[str, ...]
    suffixes: tuple[tuple[str, str, str], ...]
    underscored: bool = False


_LOW_RANK = (("lora_A.weight", DOWN, "weight"), ("lora_B.weight", UP, "weight"),
             ("lora_down.weight", DOWN, "weight"), ("lora_up.weight", UP, "weight"), ("alpha", ALPHA, "weight"))
_DIFFS = (("diff", DIFF, "weight"), ("diff_b", DIFF, "bias"), ("diff_m", DIFF, "modulation"))

TABLE = {
    DIFFUSERS: Format(DIFFUSERS, DIFFUSERS_LAYOUT, ("transformer.", "base_model.model.", ""),
                      _LOW_RANK + (("lora_B.bias", UP_BIAS, "bias"),) + _DIFFS),
    COMFYUI: Format(COMFYUI, OFFICIAL, ("diffusion_model.", ""), _LOW_RANK + _DIFFS),
    MUSUBI: Format(MUSUBI, OFFICIAL, ("lora_unet_",), _LOW_RANK + _DIFFS, underscored=True),
}

OURS_METADATA = "wan22_jax.lora"  # the `format` metadata of `wan22 train`'s files


def detect_format(keys: Iterable[str], metadata: Mapping[str, str] | None, source: str) -> str:
    """The format of a LoRA file from its keys (and metadata). Raises WeightMappingError if none fits.

    Args:
      keys: the tensor names; metadata: the safetensors header metadata (or None); source: names the file.
    Returns:
      One of FORMATS.
    """
    keys = list(keys)
    if (metadata or {}).get("format") == OURS_METADATA:
        return OURS
    if not keys:
        raise WeightMappingError(f"{source}: holds no tensors")
    if any(k.startswith("lora_unet_") for k in keys):
        return MUSUBI
    if any(k.startswith("diffusion_model.") for k in keys):
        return COMFYUI
    if any(k.startswith(("transformer.", "base_model.model.")) for k in keys):
        return DIFFUSERS
    if any(".attn1." in k or ".attn2." in k or k.startswith(("condition_embedder.", "proj_out.")) for k in keys):
        return DIFFUSERS
    if any(".self_attn." in k or ".cross_attn." in k or k.startswith(("head.", "time_projection.")) for k in keys):
        return COMFYUI
    raise WeightMappingError(
        f"{source}: not a Wan LoRA in a known format (keys such as {sorted(keys)[:3]}); known: "
        "diffusers (transformer.blocks.N.attn1.to_q.lora_A.weight), comfyui "
        "(diffusion_model.blocks.N.self_attn.q.lora_A.weight), musubi (lora_unet_blocks_N_self_attn_q.lora_down"
        ".weight), wan22_jax (`wan22 train`)")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a source parameter lands in our DiT: `path` (dotted, e.g. "blocks.self_attn.q.kernel"), `layer` on
    the stacked blocks axis (None: an unstacked parameter), and the converter's torch -> ours `transform`."""

    path: str
    layer: int | None
    transform: Callable[[Any], Any]


def source_params(cfg: DiTConfig, layout: str) -> dict[str, Target]:
    """{source parameter name in `layout` (e.g. "blocks.3.self_attn.q.weight"): its Target}, from the DiT
    converter's table."""
    out = {}
    for rule in dit_table(cfg, layout):
        for i, name in enumerate(rule.sources()):
            out[name] = Target(rule.ours, None if rule.stack is None else i, rule.transform)
    return out


@dataclasses.dataclass(frozen=True)
class KeyTable:
    """The parsing table of one format on one model: `params` (source parameter -> Target) and, for underscored
    formats, {underscored module name: dotted module name}."""

    fmt: Format
    params: dict[str, Target]
    modules: dict[str, str]

    @classmethod
    def build(cls, fmt: str, cfg: DiTConfig) -> "KeyTable":
        spec = TABLE[fmt]
        params = source_params(cfg, spec.layout)
        modules = {}
        if spec.underscored:
            for name in params:
                module = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
                modules[module.replace(".", "_")] = module
        return cls(spec, params, modules)

    def parse(self, key: str) -> tuple[str, str] | None:
        """(source parameter name, KIND) of a key, or None for a key that names nothing of the model."""
        for prefix in self.fmt.prefixes:
            if key.startswith(prefix):
                name = key[len(prefix):]
                break
        else:
            return None
        for suffix, kind, param in self.fmt.suffixes:
            if name.endswith("." + suffix):
                module = name[: -len(suffix) - 1]
                break
        else:
            return None
        if self.fmt.underscored:
            module = self.modules.get(module)
            if module is None:
                return None
        target = f"{module}.{param}"
        if target not in self.params and param == "weight" and module in self.params:
            target = module  # parameters without a `.weight` suffix (`head.modulation.diff`)
        return (target, kind) if target in self.params else None
