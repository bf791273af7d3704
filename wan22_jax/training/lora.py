"""LoRA on the DiT as a transformation of its parameter pytree (the model code is untouched).

For each chosen Linear `W` ([in, out], or [layers, in, out] for the scanned blocks):

    W_eff = W + scale * (alpha / rank) * A @ B,     A [.., in, rank] ~ N(0, 1/in),  B [.., rank, out] = 0

so a fresh adapter is the identity. `apply_lora` computes W_eff functionally: inside a jitted forward it is the
"unmerged" adapter (recomputed every call, base weights untouched); called once outside it gives merged weights.
Both run the same arithmetic, so merged and unmerged outputs agree (tests/training/test_lora.py).

Targets are parameter-path patterns (fnmatch) on module paths, with the per-layer index of scanned blocks
spelt out: "blocks.*.self_attn.q" (every layer), "blocks.1.cross_attn.[kv]" (layer 1 only), "head.head".
Adapters are saved as a small safetensors file (`<path>.lora_a`, `<path>.lora_b`, JSON metadata).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from wan22_jax.errors import CheckpointFormatError, ConfigError

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


# ------------------------------------------------------------------------------------------------ pytrees
def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted path: leaf}."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


# ------------------------------------------------------------------------------------------------ targets
def select_targets(params: Mapping[str, Any], cfg: LoraConfig) -> dict[str, tuple[int, ...] | None]:
    """{kernel path: layers it applies to (None: an unstacked kernel)} for every Linear matching a pattern.

    Raises ConfigError naming a pattern that matches no Linear (a typo must not train nothing).
    """
    flat = flatten(params)
    kernels = [p for p, v in flat.items() if p.endswith(".kernel") and np.ndim(v) in (2, 3)]
    chosen: dict[str, tuple[int, ...] | None] = {}
    used = set()
    for path in kernels:
        module = path[: -len(".kernel")]
        stacked = module.startswith(STACKED_PREFIX) and np.ndim(flat[path]) == 3
        if stacked:
            rest = module[len(STACKED_PREFIX):]
            n = np.shape(flat[path])[0]
            layers = []
            for i in range(n):
                hits = [t for t in cfg.targets if fnmatch.fnmatchcase(f"{STACKED_PREFIX}{i}.{rest}", t)]
                used.update(hits)
                if hits:
                    layers.append(i)
            if layers:
                chosen[path] = tuple(layers)
        else:
            hits = [t for t in cfg.targets if fnmatch.fnmatchcase(module, t)]
            used.update(hits)
            if hits:
                chosen[path] = None
    unused = [t for t in cfg.targets if t not in used]
    if unused:
        raise ConfigError(f"LoRA target pattern(s) {unused} match no Linear; kernels look like "
                          f"{sorted(k[:-len('.kernel')] for k in kernels)[:6]}... (blocks as 'blocks.<i>.<name>')")
    return chosen


def init_lora(params: Mapping[str, Any], cfg: LoraConfig, *, seed: int = 0) -> dict[str, dict[str, jax.Array]]:
    """Fresh adapters {kernel path: {"a", "b"}} (B = 0, so the adapted model starts equal to the base)."""
    flat = flatten(params)
    rng = np.random.default_rng(seed)
    out = {}
    for path in select_targets(params, cfg):
        shape = np.shape(flat[path])
        lead, (d_in, d_out) = shape[:-2], shape[-2:]
        a = rng.standard_normal((*lead, d_in, cfg.rank)).astype(np.float32) / np.sqrt(d_in)
        out[path] = {"a": jnp.asarray(a), "b": jnp.zeros((*lead, cfg.rank, d_out), jnp.float32)}
    return out


def _layer_mask(layers: tuple[int, ...] | None, n: int):
    if layers is None:
        return None
    m = np.zeros((n, 1, 1), np.float32)
    m[list(layers)] = 1.0
    return jnp.asarray(m)


def apply_lora(params: Mapping[str, Any], lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig,
               scale: float | jax.Array = 1.0) -> dict[str, Any]:
    """params with every adapted kernel replaced by W + scale * alpha/rank * A @ B (a new nested dict; the
    inputs are not modified). Works on arrays and tracers, inside or outside jit."""
    flat = flatten(params)
    targets = select_targets(params, cfg)
    missing = sorted(set(lora) - set(flat))
    if missing:
        raise ConfigError(f"LoRA adapters for {missing}, which the model does not have")
    factor = scale * cfg.alpha / cfg.rank
    for path, ab in lora.items():
        w = flat[path]
        delta = jnp.matmul(ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32))
        mask = _layer_mask(targets.get(path), w.shape[0]) if w.ndim == 3 else None
        if mask is not None:
            delta = delta * mask
        flat[path] = (w.astype(jnp.float32) + factor * delta).astype(w.dtype)
    return unflatten(flat)


def lora_params_fn(cfg: LoraConfig, scale: float = 1.0):
    """A `params_fn` for `make_train_step`: trainable = adapters, frozen = the base DiT params."""
    def params_fn(lora, base):
        return apply_lora(base, lora, cfg, scale)
    return params_fn


# ------------------------------------------------------------------------------------------------ files
def save_lora(path: str | os.PathLike, lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig) -> Path:
    """Writes the adapters to one safetensors file (float32) with the config in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for p, ab in lora.items():
        tensors[f"{p}.lora_a"] = np.asarray(ab["a"], np.float32)
        tensors[f"{p}.lora_b"] = np.asarray(ab["b"], np.float32)
    meta = {"format": "wan22_jax.lora", "config": json.dumps(dataclasses.asdict(cfg))}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # never a half-written adapter under the final name
    return path


def load_lora(path: str | os.PathLike) -> tuple[dict[str, dict[str, jax.Array]], LoraConfig]:
    """Reads a `save_lora` file. Returns (adapters, config)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such LoRA file")
    try:
        handle = safe_open(str(path), framework="numpy")
    except SafetensorError as e:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from None
    with handle as f:
        meta = f.metadata() or {}
        if meta.get("format") != "wan22_jax.lora":
            raise CheckpointFormatError(f"{path}: not a wan22_jax LoRA file (metadata format "
                                        f"{meta.get('format')!r})")
        raw = json.loads(meta["config"])
        cfg = LoraConfig(rank=raw["rank"], alpha=raw["alpha"], targets=tuple(raw["targets"]))
        out: dict[str, dict[str, jax.Array]] = {}
        for key in f.keys():
            base, _, kind = key.rpartition(".lora_")
            if kind not in ("a", "b"):
                raise CheckpointFormatError(f"{path}: unexpected tensor {key!r}")
            out.setdefault(base, {})[kind] = jnp.asarray(f.get_tensor(key))
    for p, ab in out.items():
        if set(ab) != {"a", "b"}:
            raise CheckpointFormatError(f"{path}: adapter {p!r} lacks lora_{'b' if 'a' in ab else 'a'}")
    return out, cfg


def merge_into_pipeline(pipe, adapters: Mapping[str, tuple[Mapping, LoraConfig]], scale: float = 1.0) -> None:
    """Merges adapters into a Wan22Pipeline's experts in place: {expert name ("model", "high_noise_model",
    "low_noise_model"): (adapters, config)}; an expert not named keeps its weights."""
    from flax import nnx
    for name, (lora, cfg) in adapters.items():
        if name not in pipe.experts:
            raise ConfigError(f"no expert {name!r} in this pipeline; experts: {sorted(pipe.experts)}")
        graphdef, state = pipe.experts[name]
        merged = apply_lora(nnx.to_pure_dict(state), lora, cfg, scale)
        new_state = jax.tree.map(lambda x: x, state)
        nnx.replace_by_pure_dict(new_state, merged)
        pipe.experts[name] = (graphdef, new_state)
