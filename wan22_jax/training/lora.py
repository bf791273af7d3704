"""LoRA training on the DiT as a transformation of its parameter pytree (the model code is untouched).

For each chosen Linear `W` ([in, out], or [layers, in, out] for the scanned blocks):

    W_eff = W + scale * (alpha / rank) * A @ B,     A [.., in, rank] ~ N(0, 1/in),  B [.., rank, out] = 0

so a fresh adapter is the identity. `apply_lora` computes W_eff functionally (`wan22_jax.lora.apply`): inside a
jitted forward it is the "unmerged" adapter (recomputed every call, base weights untouched); called once outside
it gives merged weights. Both run the same arithmetic, so merged and unmerged outputs agree
(tests/training/test_lora.py).

Targets are parameter-path patterns (fnmatch) on module paths, with the per-layer index of scanned blocks
spelt out: "blocks.*.self_attn.q" (every layer), "blocks.1.cross_attn.[kv]" (layer 1 only), "head.head".
The file format (`save_lora` / `load_lora`) and `LoraConfig` live in `wan22_jax.lora.ours`; `wan22_jax.lora`
also reads the community's formats and exports ours to them.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.errors import ConfigError
from wan22_jax.lora.apply import apply_deltas, flatten, merge_into_experts, unflatten
from wan22_jax.lora.ours import STACKED_PREFIX, LoraConfig, load_adapters, save_adapters, target_layers, to_deltas

__all__ = ["LoraConfig", "STACKED_PREFIX", "apply_lora", "flatten", "init_lora", "load_lora", "lora_params_fn",
           "merge_into_pipeline", "save_lora", "select_targets", "unflatten"]


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
            layers, hits = target_layers(module, np.shape(flat[path])[0], cfg.targets)
            used.update(hits)
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


def apply_lora(params: Mapping[str, Any], lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig,
               scale: float | jax.Array = 1.0) -> dict[str, Any]:
    """params with every adapted kernel replaced by W + scale * alpha/rank * A @ B (a new nested dict; the
    inputs are not modified). Works on arrays and tracers, inside or outside jit."""
    missing = sorted(set(lora) - set(flatten(params)))
    if missing:
        raise ConfigError(f"LoRA adapters for {missing}, which the model does not have")
    return apply_deltas(params, [(to_deltas(lora, cfg), scale)])


def lora_params_fn(cfg: LoraConfig, scale: float = 1.0):
    """A `params_fn` for `make_train_step`: trainable = adapters, frozen = the base DiT params."""
    def params_fn(lora, base):
        return apply_lora(base, lora, cfg, scale)
    return params_fn


# ------------------------------------------------------------------------------------------------ files
def save_lora(path: str | os.PathLike, lora: Mapping[str, Mapping[str, Any]], cfg: LoraConfig) -> Path:
    """Writes the adapters to one safetensors file (float32) with the config in its metadata."""
    return save_adapters(path, lora, cfg)


def load_lora(path: str | os.PathLike) -> tuple[dict[str, dict[str, jax.Array]], LoraConfig]:
    """Reads a `save_lora` file. Returns (adapters as jax arrays, config)."""
    lora, cfg = load_adapters(path)
    return {p: {k: jnp.asarray(v) for k, v in ab.items()} for p, ab in lora.items()}, cfg


def merge_into_pipeline(pipe, adapters: Mapping[str, tuple[Mapping, LoraConfig]], scale: float = 1.0) -> None:
    """Merges adapters into a Wan22Pipeline's experts in place: {expert name ("model", "high_noise_model",
    "low_noise_model"): (adapters, config)}; an expert not named keeps its weights. (`Wan22Pipeline.load_lora`
    returns a new pipeline instead.)"""
    for name in adapters:
        if name not in pipe.experts:
            raise ConfigError(f"no expert {name!r} in this pipeline; experts: {sorted(pipe.experts)}")
    merged = merge_into_experts(pipe.experts, {n: [(to_deltas(lo, cfg), scale)] for n, (lo, cfg) in adapters.items()},
                                jit=False)
    pipe.experts.update(merged)
