"""The sharding snapshot and the per-device memory estimate of the DiT presets, computed abstractly (no device).

    python -m wan22_jax.sharding snapshot > tests/data/sharding_snapshot.json   # regenerate the snapshot
    python -m wan22_jax.sharding memory                                          # the README memory table
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from wan22_jax.configs import get_task
from wan22_jax.models.dit import DIT_PRESETS, abstract_dit
from wan22_jax.sharding.rules import (RULES, frame_tokens, mesh_sizes, param_leaves, param_specs,
                                      parse_mesh_spec)

SNAPSHOT_PRESETS = ("t2v-A14B", "i2v-A14B", "ti2v-5B")
SNAPSHOT_MESHES = ("fsdp=8", "fsdp=2,seq=2,tensor=2", "data=2,fsdp=4,tensor=4")


def _spec_json(spec: PartitionSpec) -> str:
    return ", ".join("+".join(p) if isinstance(p, tuple) else str(p) for p in spec)


def abstract_dit_state(preset: str) -> nnx.State:
    """The abstract (ShapeDtypeStruct, bf16) state of a DiT preset; allocates nothing."""
    return abstract_dit(DIT_PRESETS[preset], dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)[1]


def snapshot(presets: Sequence[str] = SNAPSHOT_PRESETS, meshes: Sequence[str] = SNAPSHOT_MESHES) -> dict:
    """Logical axes and PartitionSpecs of every DiT parameter of each preset on each mesh, computed abstractly
    (no device, no memory): what tests/data/sharding_snapshot.json holds."""
    out: dict[str, Any] = {"meshes": list(meshes), "rules": {k: {n: list(a) for n, a in v.items()}
                                                              for k, v in RULES.items()}, "presets": {}}
    for preset in presets:
        state = abstract_dit_state(preset)
        params = {path: {"shape": list(v.shape), "logical_axes": list(axes), "specs": {}}
                  for path, v, axes in param_leaves(state)}
        fallbacks = {}
        for m in meshes:
            specs, notes = param_specs(state, "dit", parse_mesh_spec(m))
            for path, spec in specs.items():
                params[path]["specs"][m] = _spec_json(spec)
            fallbacks[m] = notes
        out["presets"][preset] = {"params": params, "fallbacks": fallbacks}
    return out


# Official default sizes (frames, height, width) and number of DiT experts held on the device.
PRESET_VIDEO = {"t2v-A14B": (81, 720, 1280), "i2v-A14B": (81, 720, 1280), "ti2v-5B": (121, 704, 1280)}
PRESET_EXPERTS = {"t2v-A14B": 2, "i2v-A14B": 2, "ti2v-5B": 1}


def param_bytes_per_device(state, component: str, mesh: Mesh | Mapping[str, int], itemsize: int = 2) -> int:
    """Bytes of one device's shards of `state` (every parameter stored with `itemsize` bytes per element)."""
    shape = mesh_sizes(mesh)
    specs, _ = param_specs(state, component, shape)
    total = 0
    for path, value, _ in param_leaves(state):
        split = math.prod(shape[a] for p in specs[path] if p is not None for a in ((p,) if isinstance(p, str) else p))
        total += math.prod(value.shape) // split * itemsize
    return total


def memory_estimate(preset: str, mesh: str | Mapping[str, int], *, frames: int | None = None,
                    height: int | None = None, width: int | None = None, batch: int = 1) -> dict[str, float]:
    """Rough per-device memory (GiB) of a DiT preset's denoising on a mesh: bf16 weights of every expert (from
    the sharding rules, exact), plus an activation estimate (one block live, flash attention so no logits,
    classifier-free guidance batched: 2 * batch rows; text K/V cache of every layer). T5 and VAE excluded."""
    sizes = parse_mesh_spec(mesh)
    cfg = DIT_PRESETS[preset]
    task = get_task(preset)
    f, h, w = (v if v is not None else d for v, d in zip((frames, height, width), PRESET_VIDEO[preset]))
    st, sh, sw = task.vae_stride
    pt, ph, pw = cfg.patch_size
    grid = ((f - 1) // st + 1) // pt, h // sh // ph, w // sw // pw
    split_tokens = sizes["fsdp"] * sizes["seq"]
    tokens = grid[0] * frame_tokens(grid[0], grid[1] * grid[2], split_tokens)
    rows = 2 * batch
    b = rows // sizes["data"] if rows % sizes["data"] == 0 else rows
    local = tokens // split_tokens
    d, ffn, tp = cfg.dim, cfg.ffn_dim, sizes["tensor"]
    heads_split = sizes["seq"] * tp if cfg.num_heads % (sizes["seq"] * tp) == 0 else tp
    state = abstract_dit_state(preset)
    params = PRESET_EXPERTS[preset] * param_bytes_per_device(state, "dit", sizes)
    layer = sum(math.prod(v.shape[1:]) for p, v, _ in param_leaves(state) if p.startswith("blocks.")) * 2 // tp
    act = (2 * b * local * d * 4  # fp32 residual stream + its modulated copy
           + 2 * b * tokens * d // heads_split * 2  # self-attention K, V: every token, this device's heads
           + 2 * b * (tokens // sizes["fsdp"]) * d // heads_split * 2  # queries and attention output
           + 2 * b * local * ffn // tp * 2  # FFN hidden before / after the GELU
           + 2 * layer  # one block's weights gathered over fsdp (and the next one prefetched)
           + cfg.num_layers * b * cfg.text_len * d // tp * 2 * 2)  # cross-attention K/V of every layer
    gib = 2 ** 30
    return {"params_gib": params / gib, "activations_gib": act / gib, "total_gib": (params + act) / gib,
            "tokens": tokens}


MEMORY_MESHES = ("fsdp=1", "fsdp=8", "fsdp=4,seq=2", "fsdp=2,seq=2,tensor=2", "data=2,fsdp=4",
                 "data=2,fsdp=4,seq=2")


def memory_table(presets: Sequence[str] = SNAPSHOT_PRESETS, meshes: Sequence[str] = MEMORY_MESHES) -> str:
    """A markdown table of `memory_estimate` (params + activations = total GiB per device)."""
    lines = ["| preset (video) | tokens | " + " | ".join(f"`{m}`" for m in meshes) + " |",
             "|---|---|" + "---|" * len(meshes)]
    for p in presets:
        cells = [memory_estimate(p, m) for m in meshes]
        f, h, w = PRESET_VIDEO[p]
        lines.append(f"| {p} ({f}x{w}x{h}) | {cells[0]['tokens']} | " + " | ".join(
            f"{c['params_gib']:.1f} + {c['activations_gib']:.1f} = **{c['total_gib']:.1f}**" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m wan22_jax.sharding snapshot|memory`: prints the snapshot JSON or the memory table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["snapshot"]:
        print(json.dumps(snapshot(), indent=1, sort_keys=True))
        return 0
    if argv == ["memory"]:
        print(memory_table())
        return 0
    print("usage: python -m wan22_jax.sharding snapshot|memory", file=sys.stderr)
    return 2


__all__ = ["SNAPSHOT_PRESETS", "SNAPSHOT_MESHES", "MEMORY_MESHES", "PRESET_VIDEO", "PRESET_EXPERTS",
           "abstract_dit_state", "snapshot", "param_bytes_per_device", "memory_estimate", "memory_table", "main"]
