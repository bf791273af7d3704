"""Where each leaf of a training run lives on a mesh: the same rules as inference (`sharding/rules.py`).

* Parameters (the DiT's, or the T5's when it trains too) by their logical axes: FSDP on `embed`, heads and the
  FFN hidden axis over `tensor`. The frozen base of a LoRA run is placed the same way.
* The optimizer state and the EMA copy by the parameter they mirror: an Adam moment of
  `blocks.ffn.0.kernel` is split exactly like that kernel, so the update is element-wise on each shard
  (ZeRO-3: nothing is replicated but scalars). LoRA adapters are small and replicated.
* Batches by the activation rules: the sample axis over `data` (the `batch` logical axis); latents and contexts
  are otherwise whole on each device, the model splits tokens itself.

Leaves are matched by their path of dict keys: `opt_state[0].mu["blocks"]["ffn"]["0"]["kernel"]` is the path
`blocks.ffn.0.kernel` once the non-dict keys (tuple indices, state attributes) are dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wan22_jax.sharding.rules import ACTIVATION_RULES, param_specs, resolve_spec


def dotted_specs(nnx_state, component: str, mesh: Mesh, prefix: str = "") -> dict[str, PartitionSpec]:
    """{prefix + dotted param path: PartitionSpec} of an NNX state (real or abstract) by `component`'s rules."""
    specs, _ = param_specs(nnx_state, component, mesh)
    return {prefix + k: v for k, v in specs.items()}


def _dict_path(path) -> str:
    return ".".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def tree_shardings(tree, specs: Mapping[str, PartitionSpec], mesh: Mesh, *, skip: int = 0):
    """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs): the spec of the parameter whose dotted
    path the leaf's dict keys spell (after dropping the first `skip` of them), replicated when none matches or
    the spec does not fit the leaf's rank (scalars such as Adam's step count)."""
    def one(path, leaf):
        keys = [k for k in path if isinstance(k, jax.tree_util.DictKey)][skip:]
        spec = specs.get(_dict_path(keys))
        if spec is None or len(spec) > np.ndim(leaf):
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map_with_path(one, tree)


def state_shardings(state, specs: Mapping[str, PartitionSpec], mesh: Mesh) -> dict[str, Any]:
    """Shardings of a training state ({"params", "opt_state", optional "ema", "step", "rng", "data_position"}):
    each leaf under params / opt_state / ema as the parameter it mirrors, everything else replicated."""
    return tree_shardings(state, specs, mesh, skip=1)  # skip the state's own key ("params", "opt_state", ...)


def batch_shardings(batch, mesh: Mesh):
    """Shardings of a batch whose leaves are [A (micro-batches), B (samples), ...]: B over the `batch` rule."""
    def one(leaf):
        names = (None, "batch") + (None,) * (np.ndim(leaf) - 2)
        spec, _ = resolve_spec(names, np.shape(leaf), ACTIVATION_RULES, dict(mesh.shape))
        return NamedSharding(mesh, spec)
    return jax.tree.map(one, batch)


def put(tree, shardings):
    """`jax.device_put` of a pytree onto its shardings (None: unchanged)."""
    return tree if shardings is None else jax.device_put(tree, shardings)


__all__ = ["dotted_specs", "tree_shardings", "state_shardings", "batch_shardings", "put"]
