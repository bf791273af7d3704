"""Unmerged LoRAs inside the sampling loop: the factors travel as a pytree beside the base weights, and each
step applies them at its own strength, so a LoRA can be on for some steps and off (or weaker) for others.

    pipe = pipe.load_lora("style.safetensors", strength=[1.0] * 10 + [0.0] * 10, merge=False)
    pipe = pipe.load_lora("lightning_high.safetensors", strength=lambda i: 1.0 if i < 2 else 0.5,
                          expert="high", merge=False)

Per expert, the LoRAs are one `ExpertLoras` pytree:

* low-rank updates of Linears, all LoRAs concatenated on the rank axis: `a` [.., in, R], `b` [.., R, out],
  `scale` [.., 1, R] (alpha / rank of the LoRA owning each column, 0 on layers a file does not touch) and
  `owner` [R] (the index of that LoRA). A Linear then computes x @ W + ((x @ A) * scale * s[owner]) @ B
  (`models.layers.Linear`), the kernel untouched;
* full-size differences (LightX2V's `.diff` / `.diff_b` / `diff_m`, convolution LoRAs): `full` [n, *shape] with
  `full_owner` [n], added to the parameter per step as W + sum_k s[owner_k] * full_k;
* `strengths` [loras, steps]: each LoRA's strength at each step.

At a step i the strengths are a column of that table (`attach`): the same compiled loop serves any schedule of
the same length. A LoRA on the text path (text embedding, cross-attention k / v / norm_k) changes the text K/V,
which the loop then recomputes at every step (`touches_text`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.errors import InputError, WeightMappingError
from wan22_jax.models.layers import Linear, LoraFactor
from wan22_jax.state import fill_state, flat_state

Strength = float | Sequence[float] | np.ndarray | Callable[[int], float]
# parameters whose change alters the text K/V computed once per generation (`WanModel.encode_context`)
TEXT_PATH = ("text_embedding.", "blocks.cross_attn.k.", "blocks.cross_attn.v.", "blocks.cross_attn.norm_k.")


class ExpertLoras(NamedTuple):
    """One expert's unmerged LoRAs (a pytree; see the module docstring).

    lowrank: {kernel path: {"a" [.., in, R], "b" [.., R, out], "scale" [.., 1, R], "owner" [R] int32}}.
    full: {parameter path: {"delta" [n, *shape] float32, "owner" [n] int32}}.
    strengths: [loras, steps] float32.
    """

    lowrank: dict
    full: dict
    strengths: jax.Array


def check_strength(strength: Any) -> Strength:
    """A strength as `load_lora(merge=False)` takes it, checked: a finite number, a 1-D sequence of finite
    numbers (one per step) or a callable of the step index. Raises InputError otherwise."""
    if callable(strength):
        return strength
    if isinstance(strength, bool):
        raise InputError(f"strength={strength!r}: expected a number, a per-step sequence or a function of the step")
    if isinstance(strength, (int, float)):
        if not math.isfinite(strength):
            raise InputError(f"strength={strength!r}: expected a finite number")
        return float(strength)
    try:
        arr = np.asarray(strength, np.float64)
    except (TypeError, ValueError):
        raise InputError(f"strength={strength!r}: expected a number, a per-step sequence or a function of the "
                         "step") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InputError(f"strength of shape {arr.shape}: a per-step strength must be a non-empty 1-D sequence of "
                         "finite numbers")
    return arr


def strength_table(strength: Strength, steps: int, name: str) -> np.ndarray:
    """One LoRA's strength at each of `steps` steps ([steps] float32).

    Args:
      strength: from `check_strength`. steps: the generation's step count. name: the LoRA, for errors.
    Raises:
      InputError: a sequence of another length, or a function returning something other than a finite number.
    """
    if isinstance(strength, float):
        return np.full((steps,), strength, np.float32)
    if isinstance(strength, np.ndarray):
        if strength.shape != (steps,):
            raise InputError(f"LoRA {name}: {strength.shape[0]} per-step strengths for a generation of {steps} "
                             "steps")
        return strength.astype(np.float32)
    out = []
    for i in range(steps):
        v = strength(i)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise InputError(f"LoRA {name}: its strength function returned {v!r} at step {i}; expected a finite "
                             "number")
        out.append(float(v))
    return np.asarray(out, np.float32)


def _columns(entry, rank: int) -> np.ndarray:
    """An entry's scale (a float or [layers, 1, 1]) per rank column: [1, rank] or [layers, 1, rank]."""
    scale = np.asarray(entry.get("scale", 1.0), np.float32)
    lead = np.shape(entry["a"])[:-2]
    return np.broadcast_to(scale.reshape(*lead, 1, 1) if scale.ndim else scale, (*lead, 1, rank))


def build_expert_loras(adapters: Sequence[tuple[dict, np.ndarray]], expected: dict[str, Any]) -> ExpertLoras:
    """The pytree of one expert's LoRAs.

    Args:
      adapters: (deltas {our path: entry} as `lora.apply` reads them, strengths [steps]) per LoRA, in order.
      expected: the expert's {parameter path: array or ShapeDtypeStruct} (`state.flat_state`).
    Returns:
      ExpertLoras. Raises WeightMappingError for a path the model lacks, or a low-rank update of a parameter
      that is not a Linear's kernel.
    """
    low: dict[str, list] = {}
    full: dict[str, list] = {}
    for k, (deltas, _) in enumerate(adapters):
        for path, entry in deltas.items():
            if path not in expected:
                raise WeightMappingError(f"LoRA update for {path!r}, which the model does not have")
            if "a" in entry:
                if not path.endswith(".kernel") or np.ndim(expected[path]) != np.ndim(entry["a"]):
                    raise WeightMappingError(f"a low-rank LoRA update of {path!r}, which is not a Linear's kernel")
                low.setdefault(path, []).append((k, entry))
            if "full" in entry:
                full.setdefault(path, []).append((k, np.asarray(entry["full"], np.float32)))
    lowrank = {}
    for path, items in low.items():
        ranks = [np.shape(e["a"])[-1] for _, e in items]
        lowrank[path] = {
            "a": jnp.asarray(np.concatenate([np.asarray(e["a"], np.float32) for _, e in items], -1)),
            "b": jnp.asarray(np.concatenate([np.asarray(e["b"], np.float32) for _, e in items], -2)),
            "scale": jnp.asarray(np.concatenate([_columns(e, r) for (_, e), r in zip(items, ranks)], -1)),
            "owner": jnp.asarray(np.concatenate([np.full(r, k, np.int32) for (k, _), r in zip(items, ranks)])),
        }
    fulls = {path: {"delta": jnp.asarray(np.stack([d for _, d in items])),
                    "owner": jnp.asarray(np.asarray([k for k, _ in items], np.int32))}
             for path, items in full.items()}
    table = np.stack([s for _, s in adapters]).astype(np.float32)
    return ExpertLoras(lowrank, fulls, jnp.asarray(table))


def touches_text(loras: ExpertLoras) -> bool:
    """Whether the LoRAs change the text K/V (then recomputed every step). Static: it reads the pytree's keys."""
    return any(p.startswith(TEXT_PATH) for p in (*loras.lowrank, *loras.full))


def _module(model, path: str):
    node = model
    for name in path.split("."):
        node = node[name] if isinstance(node, nnx.Dict) else getattr(node, name)
    return node


def attach(graphdef, state, loras: ExpertLoras, step) -> nnx.Module:
    """The expert at step `step` with its LoRAs applied unmerged (call inside the jitted step).

    Args:
      graphdef, state: the expert (base weights, untouched). loras: its ExpertLoras. step: the step index
        (a traced int32 scalar).
    Returns:
      The model: full-size differences added to copies of their parameters, low-rank factors set on the
      Linears (`models.layers.Linear`).
    """
    s = loras.strengths[:, step]  # [loras]
    if loras.full:
        flat = flat_state(state)
        for path, d in loras.full.items():
            w = flat[path]
            add = jnp.tensordot(s[d["owner"]], d["delta"], axes=1)
            flat[path] = (w.astype(jnp.float32) + add).astype(w.dtype)
        state = fill_state(state, flat)
    model = nnx.merge(graphdef, state)
    for path, f in loras.lowrank.items():
        linear = _module(model, path.removesuffix(".kernel"))
        if not isinstance(linear, Linear):
            raise WeightMappingError(f"a low-rank LoRA update of {path!r}, which is not a Linear's kernel")
        # nnx.data: the slots are declared None (static) in Linear, as `weight_scale` is for quantisation
        linear.lora_a = nnx.data(LoraFactor(f["a"]))
        linear.lora_b = nnx.data(LoraFactor(f["b"]))
        linear.lora_scale = nnx.data(LoraFactor(f["scale"] * s[f["owner"]]))
    return model
