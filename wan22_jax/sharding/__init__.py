"""Sharding over a device mesh (see `rules.py` for how each model is split).

The package namespace holds only the rules (`rules.py`), which import nothing else of the package, so that
models can `from wan22_jax.sharding import shard` without pulling in converters or checkpoint readers. Sharded
loading is in `wan22_jax.sharding.loading`, multi-process start-up in `wan22_jax.sharding.distributed`, the
snapshot and memory estimate in `wan22_jax.sharding.memory` (`python -m wan22_jax.sharding memory`).
"""

from wan22_jax.sharding.rules import (ACTIVATION_RULES, MESH_AXES, RULES, context_mesh, frame_tokens, make_mesh,
                                      mesh_context, mesh_sizes, pad_frames, param_leaves, param_specs,
                                      parse_mesh_spec, place, resolve_spec, shard, state_shardings, token_multiple,
                                      unpad_frames)

__all__ = ["MESH_AXES", "RULES", "ACTIVATION_RULES", "parse_mesh_spec", "make_mesh", "context_mesh", "mesh_context",
           "resolve_spec", "mesh_sizes", "param_leaves", "param_specs", "state_shardings", "shard", "place",
           "token_multiple", "frame_tokens", "pad_frames", "unpad_frames"]
