"""Reading a LoRA file of any known format (`formats.py`) into deltas on our DiT's parameter paths.

Everything is checked before any weight changes: the file (missing, not safetensors), the format (from the
keys), every key (one that names nothing of the model is an error naming it, or a warning with strict=False),
the pairs (a `lora_down` without its `lora_up`), and every shape against the model's. The result, `LoraWeights`,
holds plain numpy deltas (`lora.apply`), float32, in our layout: A [.., in, r], B [.., r, out] (the torch
factors transposed), full differences through the converter's own transform.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from wan22_jax.convert.mapping import linear
from wan22_jax.errors import ConfigError, UnusualInputWarning, WeightMappingError
from wan22_jax.lora.formats import (ALPHA, DIFF, DIFFUSERS, DOWN, OURS, UP, UP_BIAS, KeyTable, Target,
                                    detect_format)
from wan22_jax.lora.ours import load_adapters, open_safetensors, to_deltas
from wan22_jax.models.dit import DiTConfig, abstract_dit
from wan22_jax.state import flat_state

PEFT_METADATA = "lora_adapter_metadata"  # diffusers' `save_lora_weights`: the PEFT LoraConfig as JSON


@dataclasses.dataclass(frozen=True, eq=False)
class LoraWeights:
    """One LoRA file mapped onto a DiT.

    Attributes:
      source: the file. format: one of `formats.FORMATS`. dit_config: the DiT it was mapped onto.
      deltas: {our parameter path: {"a", "b", "scale"} and/or {"full"}} (see `lora.apply`), numpy float32.
      keys: how many of the file's tensors were used. ignored: the keys that matched nothing (strict=False).
    """

    source: str
    format: str
    dit_config: DiTConfig
    deltas: dict[str, dict[str, Any]]
    keys: int
    ignored: tuple[str, ...] = ()

    def __repr__(self):
        return (f"LoraWeights({self.source!r}, format={self.format!r}, {len(self.deltas)} parameters from "
                f"{self.keys} tensors" + (f", {len(self.ignored)} ignored" if self.ignored else "") + ")")


def _unknown(source: str, keys: list[str], fmt: str, strict: bool) -> None:
    if not keys:
        return
    msg = (f"{source}: {len(keys)} {fmt} LoRA key(s) match no parameter of this DiT: {sorted(keys)[:10]}"
           + (" ..." if len(keys) > 10 else ""))
    if strict:
        raise WeightMappingError(msg + " (strict=False ignores them with a warning)")
    warnings.warn(msg + "; ignored", UnusualInputWarning, stacklevel=3)


def _peft_scale(metadata: dict[str, str], source: str) -> float:
    """lora_alpha / r from diffusers' PEFT metadata (a model's `save_lora_adapter` writes the fields, a pipeline's
    `save_lora_weights` prefixes them with "transformer."); 1 without it (as diffusers loads such a file)."""
    if PEFT_METADATA not in metadata:
        return 1.0
    try:
        cfg = json.loads(metadata[PEFT_METADATA])
        if any(k.startswith("transformer.") for k in cfg):  # a pipeline's file: fields per component
            cfg = {k.removeprefix("transformer."): v for k, v in cfg.items() if k.startswith("transformer.")}
        r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{source}: unreadable {PEFT_METADATA} metadata ({e})") from None
    for field in ("rank_pattern", "alpha_pattern"):
        if cfg.get(field):
            raise ConfigError(f"{source}: PEFT {field} {cfg[field]} (per-module ranks) is not supported")
    return float(alpha) / float(r)


def _per_layer_shape(target: Target, expected: dict[str, Any]) -> tuple[int, ...]:
    shape = tuple(expected[target.path].shape)
    return shape if target.layer is None else shape[1:]


def _module_update(name: str, parts: dict[str, tuple[str, np.ndarray]], target: Target, want: tuple[int, ...],
                   default_scale: float, source: str) -> dict[str, Any]:
    """One source parameter's update in our layout: {"a", "b", "scale"} and/or {"full"} (per layer)."""
    out: dict[str, Any] = {}
    low = {k: parts[k] for k in (DOWN, UP, ALPHA) if k in parts}
    scale = default_scale
    if low:
        for need, other in ((DOWN, UP), (UP, DOWN)):
            if need not in low:
                raise WeightMappingError(f"{source}: {low[other][0] if other in low else low[ALPHA][0]!r} has no "
                                         f"matching {'lora_down/lora_A' if need == DOWN else 'lora_up/lora_B'}")
        (kd, down), (ku, up) = low[DOWN], low[UP]
        rank = down.shape[0]
        if ALPHA in low:
            scale = float(np.asarray(low[ALPHA][1]).reshape(-1)[0]) / rank
        if target.transform is not linear:
            # a convolution's LoRA (the patch embedding): down [r, I, kt, kh, kw], up [O, r, 1, 1, 1] make a
            # full-size update in torch layout, converted like the weight itself
            if up.ndim < 2 or up.shape[1] != rank or down.ndim < 2 or len(want) < 2:
                raise WeightMappingError(f"{source}: {kd!r} {down.shape} and {ku!r} {up.shape} are a low-rank "
                                         f"update of {name!r}, which is neither a Linear nor a convolution")
            torch_delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)).reshape(up.shape[0],
                                                                                           *down.shape[1:])
            full = scale * np.asarray(target.transform(torch_delta))
            if full.shape != want:
                raise WeightMappingError(f"{source}: {kd!r} {down.shape} and {ku!r} {up.shape} make an update of "
                                         f"shape {full.shape} (ours), but {name!r} of this model has {want}")
            out["full"] = full
        else:
            down, up = down.reshape(rank, -1), up.reshape(up.shape[0], -1)
            d_in, d_out = want
            if down.shape[1] != d_in or up.shape[0] != d_out or up.shape[1] != rank:
                raise WeightMappingError(
                    f"{source}: {kd!r} {down.shape} and {ku!r} {up.shape} do not make a [{d_out}, {d_in}] update "
                    f"of {name!r} (this model's shape)")
            out.update(a=down.T, b=up.T, scale=scale)
    full = out.pop("full", None)
    if DIFF in parts:
        key, diff = parts[DIFF]
        d = np.asarray(target.transform(diff))
        if d.shape != want:
            raise WeightMappingError(f"{source}: {key!r} has shape {diff.shape}, but {name!r} of this model has "
                                     f"{want} (ours)")
        full = d if full is None else full + d
    if UP_BIAS in parts:
        key, bias = parts[UP_BIAS]
        if bias.shape != want:
            raise WeightMappingError(f"{source}: {key!r} has shape {bias.shape}, but {name!r} has {want}")
        full = scale * bias if full is None else full + scale * bias
    if full is not None:
        out["full"] = full
    return out


def _stack(path: str, shape: tuple[int, ...], per_layer: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-layer updates of a stacked parameter -> one entry over all layers (absent layers: zero, ranks padded
    with zero columns, which add nothing)."""
    n = shape[0]
    out: dict[str, Any] = {}
    low = {i: u for i, u in per_layer.items() if "a" in u}
    if low:
        r = max(u["a"].shape[1] for u in low.values())
        a = np.zeros((n, shape[1], r), np.float32)
        b = np.zeros((n, r, shape[2]), np.float32)
        scale = np.zeros((n, 1, 1), np.float32)
        for i, u in low.items():
            k = u["a"].shape[1]
            a[i, :, :k], b[i, :k], scale[i] = u["a"], u["b"], u["scale"]
        out.update(a=a, b=b, scale=scale)
    fulls = {i: u["full"] for i, u in per_layer.items() if "full" in u}
    if fulls:
        full = np.zeros(shape, np.float32)
        for i, f in fulls.items():
            full[i] = f
        out["full"] = full
    return out


def _expected(cfg: DiTConfig) -> dict[str, Any]:
    _, abstract = abstract_dit(cfg)
    return flat_state(abstract)


def _from_ours(path: str, cfg: DiTConfig, strict: bool) -> LoraWeights:
    lora, lcfg = load_adapters(path)
    expected = _expected(cfg)
    known = {p: ab for p, ab in lora.items() if p in expected}
    _unknown(path, [f"{p}.lora_a" for p in lora if p not in expected], OURS, strict)
    for p, ab in known.items():
        want = tuple(expected[p].shape)
        got = (*ab["a"].shape[:-1], ab["b"].shape[-1])
        if got != want or ab["a"].shape[-1] != ab["b"].shape[-2]:
            raise WeightMappingError(f"{path}: adapter {p!r} has A {ab['a'].shape} and B {ab['b'].shape}, but "
                                     f"this model's {p!r} is {want}")
    deltas = to_deltas({p: {k: np.asarray(v, np.float32) for k, v in ab.items()} for p, ab in known.items()}, lcfg)
    return LoraWeights(path, OURS, cfg, deltas, 2 * len(known),
                       tuple(sorted(f"{p}.lora_a" for p in lora if p not in expected)))


def read_lora(path: str | os.PathLike, dit_config: DiTConfig, *, strict: bool = True) -> LoraWeights:
    """Reads a LoRA safetensors file of any known format and maps it onto a DiT of `dit_config`.

    Args:
      path: the file. dit_config: the DiT it will update (names, layer count and shapes are checked against it).
      strict: a key that matches no parameter is an error (WeightMappingError naming the keys); False: a warning
        (UnusualInputWarning) and the key is skipped.
    Returns:
      LoraWeights (deltas on our parameter paths). Raises InputFileError (no such file), CheckpointFormatError
      (not safetensors), WeightMappingError (unknown format, unknown key, unpaired factor, shape mismatch).
    """
    path = str(Path(path))
    with open_safetensors(path) as f:
        metadata = f.metadata() or {}
        keys = list(f.keys())
        fmt = detect_format(keys, metadata, path)
        if fmt == OURS:
            tensors = None
        else:
            tensors = {k: np.asarray(f.get_tensor(k), np.float32) for k in keys}
    if fmt == OURS:
        return _from_ours(path, dit_config, strict)
    table = KeyTable.build(fmt, dit_config)
    groups: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    unknown = []
    for key, value in tensors.items():
        parsed = table.parse(key)
        if parsed is None:
            unknown.append(key)
            continue
        name, kind = parsed
        if kind in groups.setdefault(name, {}):
            raise WeightMappingError(f"{path}: {key!r} and {groups[name][kind][0]!r} both hold the {kind} of "
                                     f"{name!r}")
        groups[name][kind] = (key, value)
    _unknown(path, unknown, fmt, strict)
    expected = _expected(dit_config)
    default_scale = _peft_scale(metadata, path) if fmt == DIFFUSERS else 1.0
    per_path: dict[str, dict[int | None, dict[str, Any]]] = {}
    for name, parts in groups.items():
        target = table.params[name]
        update = _module_update(name, parts, target, _per_layer_shape(target, expected), default_scale, path)
        if update:
            per_path.setdefault(target.path, {})[target.layer] = update
    deltas = {}
    for p, layers in per_path.items():
        if None in layers:
            deltas[p] = layers[None]
        else:
            deltas[p] = _stack(p, tuple(expected[p].shape), layers)
    used = sum(len(parts) for parts in groups.values())
    if not deltas:
        raise WeightMappingError(f"{path}: no LoRA update for this DiT in it ({len(keys)} keys)")
    return LoraWeights(path, fmt, dit_config, deltas, used, tuple(sorted(unknown)))
