"""Writing our trained LoRAs (`wan22 train`, `lora/ours.py`) in the community's layouts, so other tools load them:

* `comfyui`: `diffusion_model.<official module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r], `.alpha`
  (ComfyUI, and diffusers through its converter);
* `diffusers`: `transformer.<diffusers module>.lora_A.weight` / `.lora_B.weight`, with alpha / rank folded
  into lora_B (PEFT's files carry no alpha key; diffusers then scales by 1).

The module names come from the DiT converter's table (`formats.source_params`) run backwards. One file holds one
DiT: for A14B write one file per expert (`expert_path`), loaded with `expert="high"` / `"low"`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import save_file

from wan22_jax.convert.mapping import linear
from wan22_jax.errors import InputError, WeightMappingError
from wan22_jax.lora.formats import COMFYUI, DIFFUSERS, TABLE, source_params
from wan22_jax.lora.ours import LoraConfig, layer_scale, load_adapters
from wan22_jax.models.dit import DiTConfig

EXPORT_FORMATS = (COMFYUI, DIFFUSERS)
_PREFIX = {COMFYUI: "diffusion_model.", DIFFUSERS: "transformer."}


def expert_path(path: str | os.PathLike, expert: str) -> Path:
    """`name.safetensors` -> `name.high_noise.safetensors` (expert "high_noise_model") or `.low_noise`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{expert.removesuffix('_model')}{path.suffix}")


def to_layout(lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig, dit_config: DiTConfig,
              fmt: str = COMFYUI) -> dict[str, np.ndarray]:
    """Trained adapters {kernel path: {"a", "b"}} -> {key: float32 array} in `fmt` ("comfyui" or "diffusers").

    Layers of a stacked kernel that no target pattern chooses are left out (their update is zero).
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"LoRA export format {fmt!r}: expected one of {EXPORT_FORMATS}")
    names = {(t.path, t.layer): name for name, t in source_params(dit_config, TABLE[fmt].layout).items()
             if t.transform is linear}
    out = {}
    for path, ab in lora.items():
        a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        scale = np.broadcast_to(np.asarray(layer_scale(path, a.shape[:-2], cfg), np.float32), (*a.shape[:-2], 1, 1))
        layers = [None] if a.ndim == 2 else [i for i in range(a.shape[0]) if scale[i, 0, 0] != 0]
        for i in layers:
            name = names.get((path, i))
            if name is None:
                raise WeightMappingError(f"adapter {path!r}{'' if i is None else f' layer {i}'} is not a Linear of "
                                         f"a {dit_config.num_layers}-layer DiT")
            module = _PREFIX[fmt] + name.removesuffix(".weight")
            ai, bi = (a, b) if i is None else (a[i], b[i])
            if fmt == COMFYUI:
                out[f"{module}.lora_A.weight"] = np.ascontiguousarray(ai.T)
                out[f"{module}.lora_B.weight"] = np.ascontiguousarray(bi.T)
                out[f"{module}.alpha"] = np.asarray(cfg.alpha, np.float32)
            else:
                s = scale[0, 0] if i is None else scale[i, 0, 0]
                out[f"{module}.lora_A.weight"] = np.ascontiguousarray(ai.T)
                out[f"{module}.lora_B.weight"] = np.ascontiguousarray((bi * np.float32(s)).T)
    return out


def export_lora(path: str | os.PathLike, lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig,
                dit_config: DiTConfig, fmt: str = COMFYUI) -> Path:
    """Writes trained adapters as one safetensors file in `fmt` ("comfyui" or "diffusers"), atomically.

    Args:
      path: the file. lora, cfg: from `wan22 train` / `train_pipeline_lora` / `lora.ours.load_adapters`.
      dit_config: the DiT they were trained on (its layer count names the blocks).
    Returns:
      The path written.
    """
    tensors = to_layout(lora, cfg, dit_config, fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def export_lora_file(src: str | os.PathLike, dst: str | os.PathLike, dit_config: DiTConfig,
                     fmt: str = COMFYUI) -> Path:
    """`wan22 train`'s `lora.safetensors` (`src`) rewritten as `dst` in `fmt`; dit_config: the DiT it was
    trained on. Returns dst."""
    lora, cfg = load_adapters(src)
    return export_lora(dst, lora, cfg, dit_config, fmt)
