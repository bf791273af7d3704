"""Our own LoRA file, the one `wan22 train` writes: adapters on our parameter paths, config in the metadata.

For each adapted Linear `W` ([in, out], or [layers, in, out] for the scanned blocks):

    W_eff = W + scale * (alpha / rank) * A @ B,     A [.., in, rank],  B [.., rank, out]

Targets are fnmatch patterns on module paths with the layer index of scanned blocks spelt out
("blocks.*.self_attn.q" every layer, "blocks.1.cross_attn.[kv]" layer 1 only, "head.head"). A file holds
`<kernel path>.lora_a` / `.lora_b` (float32; stacked kernels carry every layer, the unchosen ones unused) and
`{"format": "wan22_jax.lora", "config": <LoraConfig as JSON>}` as metadata.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from wan22_jax.errors import CheckpointFormatError, ConfigError, InputFileError
from wan22_jax.lora.formats import OURS_METADATA

STACKED_PREFIX = "blocks."  # our scanned DiT blocks: kernels carry a leading layers axis


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """rank, alpha (the update is scaled by alpha / rank), targets: fnmatch patterns of module paths."""

    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = ("blocks.*.self_attn.q", "blocks.*.self_attn.k", "blocks.*.self_attn.v",
                                "blocks.*.self_attn.o", "blocks.*.cross_attn.q", "blocks.*.cross_attn.o")

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.targets:
            raise ConfigError("LoRA needs at least one target pattern")


def target_layers(module: str, n: int, targets: tuple[str, ...]) -> tuple[list[int], set[str]]:
    """The layers of a stacked module `module` ("blocks.self_attn.q", n layers) that `targets` choose, and the
    patterns that matched."""
    rest = module[len(STACKED_PREFIX):]
    layers, used = [], set()
    for i in range(n):
        hits = [t for t in targets if fnmatch.fnmatchcase(f"{STACKED_PREFIX}{i}.{rest}", t)]
        used.update(hits)
        if hits:
            layers.append(i)
    return layers, used


def layer_scale(path: str, lead: tuple[int, ...], cfg: LoraConfig) -> np.ndarray | float:
    """alpha / rank for an adapted kernel whose factors have leading axes `lead`: a [layers, 1, 1] array (0 on
    the layers no target chooses) for a stacked kernel (lead = (layers,)), a float otherwise."""
    factor = cfg.alpha / cfg.rank
    if not (path.startswith(STACKED_PREFIX) and len(lead) == 1):
        return factor
    layers, _ = target_layers(path[: -len(".kernel")], lead[0], cfg.targets)
    m = np.zeros((lead[0], 1, 1), np.float32)
    m[layers] = factor
    return m


def to_deltas(lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig) -> dict[str, dict[str, Any]]:
    """Trained adapters {kernel path: {"a", "b"}} -> the deltas `lora.apply` adds ({"a", "b", "scale"})."""
    return {p: {"a": ab["a"], "b": ab["b"], "scale": layer_scale(p, np.shape(ab["a"])[:-2], cfg)}
            for p, ab in lora.items()}


def save_adapters(path: str | os.PathLike, lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig) -> Path:
    """Writes trained adapters {kernel path: {"a", "b"}} to one safetensors file (float32), atomically.

    Returns:
      The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for p, ab in lora.items():
        tensors[f"{p}.lora_a"] = np.asarray(ab["a"], np.float32)
        tensors[f"{p}.lora_b"] = np.asarray(ab["b"], np.float32)
    meta = {"format": OURS_METADATA, "config": json.dumps(dataclasses.asdict(cfg))}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # never a half-written adapter under the final name
    return path


def open_safetensors(path: str | os.PathLike):
    """A safe_open handle (numpy); InputFileError for a missing file, CheckpointFormatError for one that is
    not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such LoRA file")
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError) as e:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from None


def load_adapters(path: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], LoraConfig]:
    """Reads a `save_adapters` file. Returns (adapters {kernel path: {"a", "b"}}, config)."""
    with open_safetensors(path) as f:
        meta = f.metadata() or {}
        if meta.get("format") != OURS_METADATA:
            raise CheckpointFormatError(f"{path}: not a wan22_jax LoRA file (metadata format "
                                        f"{meta.get('format')!r})")
        raw = json.loads(meta["config"])
        cfg = LoraConfig(rank=raw["rank"], alpha=raw["alpha"], targets=tuple(raw["targets"]))
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in f.keys():
            base, _, kind = key.rpartition(".lora_")
            if kind not in ("a", "b"):
                raise CheckpointFormatError(f"{path}: unexpected tensor {key!r}")
            out.setdefault(base, {})[kind] = f.get_tensor(key)
    for p, ab in out.items():
        if set(ab) != {"a", "b"}:
            raise CheckpointFormatError(f"{path}: adapter {p!r} lacks lora_{'b' if 'a' in ab else 'a'}")
    return out, cfg
