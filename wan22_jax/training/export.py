"""Writing trained components in the layouts the loaders read, so a trained model goes through the same
`Wan22Pipeline.from_pretrained` path as a release:

* DiT: our Orbax format (`save_dit`: `wan22.json` + `params/`), or the official `config.json` +
  `diffusion_pytorch_model.safetensors` (`export_dit`), both read by `load_dit`;
* VAE: the official `Wan2.2_VAE.pth` / `Wan2.1_VAE.pth` state dict + `vae_config.json`, read by `load_vae`;
* umT5: an official-layout `models_t5_umt5-xxl-enc-bf16.pth` + `t5_config.json`, read by `load_t5`;
* tokenizer: `google/umt5-xxl/` (transformers files), read by `Tokenizer`.

The .pth files are written from the converter tables run backwards (each transform's inverse), and
`tests/training/test_export.py` loads them back through the real loaders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from safetensors.numpy import save_file

from wan22_jax.config_utils import config_to_dict
from wan22_jax.convert import mapping as m, t5 as t5_convert, vae as vae_convert
from wan22_jax.convert.dit import dit_table
from wan22_jax.errors import WeightMappingError


def _inverse(rule: m.Rule, src: str, x: np.ndarray) -> np.ndarray:
    """Our array -> the torch layout of `src` (inverse of rule.transform)."""
    t = rule.transform
    # 2-D convs of the VAE's attention block vs 3-D convs elsewhere: the only place unit axes differ
    attn = ".to_qkv." in src or ".proj." in src or src.endswith(".norm.gamma")
    if t is m.identity:
        return x
    if t is m.linear:
        return x.T
    if t is m.conv3d:
        return x.transpose(4, 3, 0, 1, 2)
    if t is m.conv2d:
        return x.transpose(3, 2, 0, 1)
    if t is m.conv1x1:
        return x.T.reshape(*x.T.shape, *((1, 1) if attn else (1, 1, 1)))
    if t is m.flatten:
        return x.reshape(-1, *((1, 1) if attn else (1, 1, 1)))
    raise WeightMappingError(f"no inverse for the transform of {rule.ours!r} ({getattr(t, '__name__', t)})")


def to_source_layout(table: Iterable[m.Rule], flat: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{our dotted path: array} -> {source key: array in the source layout}; every parameter must be used."""
    out, used = {}, set()
    for rule in table:
        x = np.asarray(flat[rule.ours], np.float32)
        used.add(rule.ours)
        if rule.stack is None:
            out[rule.src] = _inverse(rule, rule.src, x)
        else:
            for i, src in enumerate(rule.sources()):
                out[src] = _inverse(rule, src, x[i])
    left = sorted(set(flat) - used)
    if left:
        raise WeightMappingError(f"parameters no rule exports: {left[:5]}")
    return out


def save_pth(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """A torch state dict of plain tensors (readable with torch.load(weights_only=True))."""
    import torch
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def export_vae(folder: str | os.PathLike, flat: Mapping[str, Any], cfg) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_pth(folder / vae_convert.OFFICIAL_FILES[cfg.version], to_source_layout(vae_convert.official_table(cfg), flat))
    (folder / vae_convert.OFFICIAL_CONFIG).write_text(json.dumps(config_to_dict(cfg), indent=1))
    return folder


def export_t5(folder: str | os.PathLike, flat: Mapping[str, Any], cfg) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_pth(folder / t5_convert.OFFICIAL_WEIGHTS, to_source_layout(t5_convert.official_table(cfg), flat))
    (folder / t5_convert.OFFICIAL_CONFIG).write_text(json.dumps(config_to_dict(cfg), indent=1))
    return folder


def export_tokenizer(folder: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> Path:
    dst = Path(folder) / "google" / "umt5-xxl"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(tokenizer_dir, dst)
    return dst


def export_dit(folder: str | os.PathLike, flat: Mapping[str, Any], cfg) -> Path:
    """The official single-file DiT layout: `config.json` (WanModel's fields) + the safetensors state dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in to_source_layout(dit_table(cfg), flat).items()}
    tmp = folder / "diffusion_pytorch_model.safetensors.tmp"
    save_file(arrays, str(tmp))
    os.replace(tmp, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", **config_to_dict(cfg)}, indent=1))
    return folder
