"""Adding LoRA updates to DiT parameters: merged once into the weights, or unmerged inside a jitted forward.

A set of deltas is a plain pytree {our parameter path: entry}, the entry holding any of

    "a" [.., in, r], "b" [.., r, out], "scale" (a float, or [layers, 1, 1]): the low-rank update scale * A @ B
    "full" (the parameter's shape): a full-size difference (LightX2V's `.diff`, `.diff_b`, `diff_m`)

so that the parameter becomes `W + strength * (scale * A @ B + full)`, computed in float32 and cast back to W's
dtype. Stacked block parameters carry the layers axis first; a layer a file does not touch has scale 0 (and
zero factors). `apply_deltas` is one pure function of arrays: called outside jit it merges, called inside a
jitted forward on the base weights it is the unmerged adapter (recomputed every call, base untouched), and both
run the same arithmetic, so they agree.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from wan22_jax.errors import InputError, WeightMappingError
from wan22_jax.state import fill_state, flat_state

Deltas = Mapping[str, Mapping[str, Any]]
LORA_EXPERTS = {"high": "high_noise_model", "low": "low_noise_model"}


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
    """{dotted path: leaf} -> nested dict."""
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def param_delta(entry: Mapping[str, Any]) -> jax.Array:
    """The float32 update of one parameter: scale * A @ B + full (whichever parts the entry has)."""
    delta = None
    if "a" in entry:
        delta = jnp.asarray(entry.get("scale", 1.0), jnp.float32) * jnp.matmul(
            jnp.asarray(entry["a"], jnp.float32), jnp.asarray(entry["b"], jnp.float32))
    if "full" in entry:
        full = jnp.asarray(entry["full"], jnp.float32)
        delta = full if delta is None else delta + full
    return delta


def _updated(w, entries: Sequence[tuple[Mapping[str, Any], Any]]):
    out = w.astype(jnp.float32)
    for entry, strength in entries:
        out = out + strength * param_delta(entry)
    return out.astype(w.dtype)


_updated_jit = jax.jit(_updated)


def _by_path(flat_keys, adapters: Sequence[tuple[Deltas, Any]]) -> dict[str, list]:
    per_path: dict[str, list] = {}
    for deltas, strength in adapters:
        missing = sorted(set(deltas) - set(flat_keys))
        if missing:
            raise WeightMappingError(f"LoRA updates for {missing[:10]}, which the model does not have")
        for path, entry in deltas.items():
            per_path.setdefault(path, []).append((entry, strength))
    return per_path


def apply_flat(flat: Mapping[str, Any], adapters: Sequence[tuple[Deltas, Any]], *, jit: bool = False
               ) -> dict[str, Any]:
    """{path: array} with the adapters added (a new dict; inputs untouched).

    Args:
      flat: {dotted path: parameter}. adapters: (deltas, strength) pairs, summed in order.
      jit: compile the update of each parameter (merging big weights outside a jitted function).
    Returns:
      The new {dotted path: parameter}.
    """
    out = dict(flat)
    for path, entries in _by_path(flat, adapters).items():
        out[path] = (_updated_jit if jit else _updated)(flat[path], entries)
    return out


def apply_deltas(params: Mapping[str, Any], adapters: Sequence[tuple[Deltas, Any]]) -> dict[str, Any]:
    """Nested params (`nnx.to_pure_dict`) with the adapters added; pure, works on tracers inside jit.

    Args:
      params: the DiT's parameters as a nested dict. adapters: (deltas, strength) pairs.
    Returns:
      A new nested dict.
    """
    return unflatten(apply_flat(flatten(params), adapters))


def merge_state(state, adapters: Sequence[tuple[Deltas, Any]], *, jit: bool = True):
    """An expert's NNX state with the adapters merged in (a new state; weights not updated are shared).

    Args:
      state: the DiT's nnx.State. adapters: (deltas, strength) pairs.
      jit: one compiled update per parameter (no full-size float32 temporaries); False: the same arithmetic
        op by op, bit-equal to `apply_deltas` run eagerly.
    Returns:
      The new nnx.State (same structure, dtypes and shardings).
    """
    flat = flat_state(state)
    merged = apply_flat(flat, adapters, jit=jit)
    for path in merged:
        old = flat[path]
        sharding = getattr(old, "sharding", None)
        if merged[path] is not old and sharding is not None:
            merged[path] = jax.device_put(merged[path], sharding)
    return fill_state(state, merged)


def expert_names(experts: Mapping[str, Any], expert: str | None) -> tuple[str, ...]:
    """The experts a LoRA goes to: all of them for expert=None, one for "high" / "low" (A14B pipelines).

    Raises InputError for another value, or "high" / "low" on a pipeline with one DiT.
    """
    if expert is None:
        return tuple(experts)
    if expert not in LORA_EXPERTS:
        raise InputError(f"expert={expert!r}: expected None, 'high' or 'low'")
    if LORA_EXPERTS[expert] not in experts:
        raise InputError(f"expert={expert!r}: this pipeline has one DiT ({sorted(experts)}), no high/low-noise "
                         "experts; leave the expert unset")
    return (LORA_EXPERTS[expert],)


def merge_into_experts(experts: Mapping[str, tuple[Any, Any]],
                       adapters: Mapping[str, Sequence[tuple[Deltas, Any]]], *, jit: bool = True
                       ) -> dict[str, tuple[Any, Any]]:
    """{expert name: (graphdef, state)} with each named expert's adapters merged (a new dict).

    Args:
      experts: a pipeline's experts. adapters: {expert name: [(deltas, strength), ...]}; an expert not named
        keeps its weights. jit: as `merge_state`.
    Returns:
      The new experts dict.
    """
    unknown = sorted(set(adapters) - set(experts))
    if unknown:
        raise InputError(f"no expert {unknown} in this pipeline; experts: {sorted(experts)}")
    out = dict(experts)
    for name, pairs in adapters.items():
        graphdef, state = experts[name]
        out[name] = (graphdef, merge_state(state, list(pairs), jit=jit))
    return out
