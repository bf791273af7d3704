"""Flat views of an NNX state: {dotted path: leaf} and back.

A leaf module (it imports only flax) so that models, converters and sharding can all share it without
depending on one another.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx


def flat_state(state: nnx.State) -> dict[str, Any]:
    """NNX state -> {dotted path: leaf value} (a ShapeDtypeStruct for abstract states).

    Args:
      state: an NNX state, concrete or abstract (from `nnx.eval_shape`).
    Returns:
      {"blocks.self_attn.q.kernel": array or ShapeDtypeStruct, ...} in the state's order.
    """
    out = {}
    for path, var in nnx.to_flat_state(state):
        out[".".join(str(p) for p in path)] = var.get_value() if hasattr(var, "get_value") else var.value
    return out


def fill_state(abstract: nnx.State, arrays: Mapping[str, Any]) -> nnx.State:
    """Returns `abstract` with every leaf replaced by `arrays[dotted path]` (metadata kept).

    Args:
      abstract: an NNX state whose structure and variable metadata (e.g. logical axes) are kept.
      arrays: {dotted path: new leaf} covering every leaf of `abstract`.
    Returns:
      A new NNX state of the same structure holding the given leaves.
    """
    flat = nnx.to_flat_state(abstract)
    leaves = []
    for path, var in flat:
        key = ".".join(str(p) for p in path)
        leaves.append((path, var.replace(arrays[key])))
    return nnx.from_flat_state(leaves)
