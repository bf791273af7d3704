"""Sharding rules over a device mesh: FSDP, sequence parallelism (Ulysses), tensor parallelism, data (CFG) parallelism.

The mesh always has the four axes of `MESH_AXES`; a spec string names the sizes (`"fsdp=4,seq=2"`, the others
default to 1). Parameters are sharded by data, not code: every `nnx.Param` carries `logical_axes` metadata
(layers.py) and one rules table per component maps logical names to mesh axes. Activations are constrained
with `shard(x, names)`, a no-op unless a mesh is set with `jax.set_mesh` (`mesh_context`).

How the DiT is split (docs/architecture.md §8):
* fsdp: weights split on their `embed` axis, gathered per layer by XLA; the residual stream split on tokens.
* seq: the residual stream split on tokens; self-attention swaps that for a split over heads (an all-to-all
  that XLA derives from the two sharding constraints: DeepSpeed-Ulysses). When the token count does not divide,
  each latent frame is zero-padded and the padded keys are masked (`frame_tokens`, `pad_frames`).
* tensor: attention heads and the FFN hidden axis (Megatron); cross-attention K/V split on heads.
* data: the batch, i.e. the cond/uncond halves of classifier-free guidance (`batch_cfg`) and several prompts.

An axis that does not divide a dimension falls back to replication on that dimension; `param_specs` reports
every such fallback.

This module imports nothing else of the package (but errors): models import it to constrain activations. Sharded
loading is in `loading.py`, multi-process start-up in `distributed.py`, the snapshot and memory table in
`memory.py`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from wan22_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "seq", "tensor")

# logical parameter axis -> mesh axes (in order; an axis that does not divide the dimension is skipped)
RULES: dict[str, dict[str, tuple[str, ...]]] = {
    # ZeRO-3 over the whole data-parallel x sequence-parallel group: with fsdp=4,seq=2 each device holds 1/8 of
    # the weights, not 1/4 (the A14B experts: 6.7 instead of 13.4 GiB per device on 8 GPUs; `wan22 aot`)
    "dit": {"layers": (), "embed": ("fsdp", "seq"), "heads": ("tensor",), "mlp": ("tensor",),
            "embed_out": ("tensor",)},
    "t5": {"layers": (), "vocab": ("tensor",), "embed": ("fsdp",), "heads": ("tensor",), "mlp": ("tensor",)},
    # The VAE is small (<1 GB): weights split only over tensor, its activations spatially (`vae_decode`).
    "vae": {"vae_conv_in": (), "vae_conv_out": ("tensor",), "vae_channels": ("tensor",)},
}

# logical activation axis -> mesh axes, used by `shard`
ACTIVATION_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data",),
    "tokens": ("fsdp", "seq"),  # the residual stream between attention calls
    "attn_tokens": ("fsdp",),  # self-attention queries: still split over fsdp, the seq part went to heads
    "attn_heads": ("seq", "tensor"),  # Ulysses: heads split over seq (and tensor) while keys are whole
    "heads": ("tensor",),  # cross-attention: queries keep their token split, heads over tensor
    "mlp": ("tensor",),
    "embed": (),
    "height": ("fsdp", "seq"),  # VAE latents / frames split on rows
}


# ----------------------------------------------------------------------------------------------- the mesh
def parse_mesh_spec(spec: str | Mapping[str, int], num_devices: int | None = None) -> dict[str, int]:
    """`"data=1,fsdp=4,seq=2,tensor=1"` (or a dict) -> {axis: size} over all of MESH_AXES.

    Axes left out are 1; one axis may be -1 to take the remaining devices. With `num_devices`, the product must
    equal it.
    """
    if isinstance(spec, str):
        sizes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, value = part.partition("=")
            name = name.strip()
            try:
                size = int(value) if eq else None
            except ValueError:
                size = None
            if size is None:
                raise ConfigError(f"mesh spec {spec!r}: {part!r} is not axis=size (axes: {', '.join(MESH_AXES)})")
            if name in sizes:
                raise ConfigError(f"mesh spec {spec!r}: axis {name!r} given twice")
            sizes[name] = size
    else:
        sizes = dict(spec)
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"mesh spec {spec!r}: unknown axis {unknown}; the axes are {', '.join(MESH_AXES)}")
    bad = [f"{k}={v}" for k, v in sizes.items() if v < 1 and v != -1]
    if bad or list(sizes.values()).count(-1) > 1:
        raise ConfigError(f"mesh spec {spec!r}: sizes must be positive (one axis may be -1), got {bad or sizes}")
    sizes = {a: sizes.get(a, 1) for a in MESH_AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if -1 in sizes.values():
        if num_devices is None or num_devices % fixed:
            raise ConfigError(f"mesh spec {spec!r}: cannot fill the -1 axis: {num_devices} devices, the other "
                              f"axes take {fixed}")
        sizes = {a: (num_devices // fixed if v == -1 else v) for a, v in sizes.items()}
    if num_devices is not None and math.prod(sizes.values()) != num_devices:
        raise ConfigError(f"mesh spec {spec!r}: {' x '.join(str(v) for v in sizes.values())} = "
                          f"{math.prod(sizes.values())} devices, but {num_devices} are available")
    return sizes


def make_mesh(spec: str | Mapping[str, int] | Mesh, devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh with axes MESH_AXES from a spec (see `parse_mesh_spec`) over `devices` (default: all, every
    process's). A Mesh passes through."""
    if isinstance(spec, Mesh):
        return spec
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    # Auto axes: GSPMD propagates shardings between our constraints (no sharding-in-types).
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def context_mesh() -> Mesh | None:
    """The mesh set by `jax.set_mesh` (`mesh_context`), or None."""
    mesh = jax.sharding.get_mesh()
    return None if mesh.empty else mesh


def mesh_context(mesh: Mesh | None):
    """`jax.set_mesh(mesh)` (what `shard` reads), or a no-op context for None."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


# ----------------------------------------------------------------------------------------------- specs
def resolve_spec(logical: Sequence[str | None], shape: Sequence[int], rules: Mapping[str, tuple[str, ...]],
                 mesh_shape: Mapping[str, int], where: str = "") -> tuple[PartitionSpec, list[str]]:
    """PartitionSpec of one array from its logical axes. Returns (spec, fallback notes).

    Mesh axes of size 1 are left out (the spec then depends only on the axes that split something); a mesh
    axis is used at most once per array; an axis that does not divide the dimension is skipped with a note.
    """
    if len(logical) != len(shape):
        raise ConfigError(f"{where}: logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    parts, notes = [], []
    for name, dim in zip(logical, shape):
        if name is not None and name not in rules:
            raise ConfigError(f"{where}: no sharding rule for logical axis {name!r} (rules: {sorted(rules)})")
        chosen, split = [], 1
        for axis in rules.get(name, ()) if name is not None else ():
            n = mesh_shape.get(axis, 1)
            if n == 1:
                continue
            if axis in used:
                notes.append(f"{where}: {name} ({dim}) not split over {axis} (already used by another axis)")
            elif dim % (split * n):
                notes.append(f"{where}: {name} ({dim}) does not divide by {axis}={n}: replicated over {axis}")
            else:
                chosen.append(axis)
                split *= n
                used.add(axis)
        parts.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*parts), notes


def mesh_sizes(mesh: Mesh | Mapping[str, int]) -> dict[str, int]:
    """{axis: size} of a Mesh, or a copy of an {axis: size} mapping."""
    return dict(mesh.shape) if not isinstance(mesh, Mapping) else dict(mesh)


def param_leaves(state) -> Iterable[tuple[str, Any, tuple[str | None, ...]]]:
    """Yields (dotted path, leaf value, logical axes) of every variable of an NNX state (axes all None for a
    variable without `logical_axes` metadata)."""
    for path, var in nnx.to_flat_state(state):
        meta = var.get_metadata()
        value = var.get_value()
        axes = meta.get("logical_axes")
        if axes is None:
            axes = (None,) * len(value.shape)
        yield ".".join(str(p) for p in path), value, tuple(axes)


def param_specs(state, component: str, mesh: Mesh | Mapping[str, int]) -> tuple[dict[str, PartitionSpec],
                                                                                 list[str]]:
    """{dotted path: PartitionSpec} for every parameter of a (possibly abstract) state, and the fallbacks.

    `mesh` may be a Mesh or just {axis: size}: specs are computed without any device (snapshots, estimates).
    """
    if component not in RULES:
        raise ConfigError(f"unknown component {component!r}; rules exist for {sorted(RULES)}")
    shape = mesh_sizes(mesh)
    specs, notes = {}, []
    for path, value, axes in param_leaves(state):
        specs[path], n = resolve_spec(axes, value.shape, RULES[component], shape, where=path)
        notes += n
    return specs, notes


def state_shardings(state, component: str, mesh: Mesh) -> dict[str, NamedSharding]:
    """{dotted path: NamedSharding} for every parameter of `state`."""
    specs, _ = param_specs(state, component, mesh)
    return {k: NamedSharding(mesh, s) for k, s in specs.items()}


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical names (ACTIVATION_RULES); a no-op without a mesh set.

    Dimensions that the mesh axes do not divide stay replicated on those axes.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec, _ = resolve_spec(names, x.shape, ACTIVATION_RULES, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def place(x, names: Sequence[str | None], mesh: Mesh | None):
    """Puts a host/device array onto `mesh` split by logical activation names (a no-op for mesh None)."""
    if mesh is None:
        return x
    spec, _ = resolve_spec(names, np.shape(x), ACTIVATION_RULES, dict(mesh.shape))
    return jax.device_put(x, NamedSharding(mesh, spec))


# ----------------------------------------------------------------------------------------------- token padding
def token_multiple() -> int:
    """How many ways the context mesh splits the DiT's tokens (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    return math.prod(dict(mesh.shape).get(a, 1) for a in ACTIVATION_RULES["tokens"])


def frame_tokens(frames: int, per_frame: int, multiple: int) -> int:
    """Tokens per latent frame after padding, the least >= per_frame with frames * it divisible by multiple.

    Padding inside each frame (rather than at the end) keeps frames contiguous and equally long, so per-frame
    timestep groups still line up with the tokens.
    """
    step = multiple // math.gcd(multiple, frames)
    return -(-per_frame // step) * step


def pad_frames(x: jax.Array, frames: int, padded: int, axis: int = 1) -> jax.Array:
    """[..., F*P, ...] -> [..., F*padded, ...]: each frame's tokens zero-padded at its end (on `axis`)."""
    p = x.shape[axis] // frames
    if padded == p:
        return x
    shape = x.shape
    y = x.reshape(*shape[:axis], frames, p, *shape[axis + 1:])
    widths = [(0, 0)] * y.ndim
    widths[axis + 1] = (0, padded - p)
    y = jax.numpy.pad(y, widths)
    return y.reshape(*shape[:axis], frames * padded, *shape[axis + 1:])


def unpad_frames(x: jax.Array, frames: int, per_frame: int, axis: int = 1) -> jax.Array:
    """Inverse of `pad_frames`: keeps the first `per_frame` tokens of every frame."""
    p = x.shape[axis] // frames
    if p == per_frame:
        return x
    shape = x.shape
    y = x.reshape(*shape[:axis], frames, p, *shape[axis + 1:])
    y = jax.lax.slice_in_dim(y, 0, per_frame, axis=axis + 1)
    return y.reshape(*shape[:axis], frames * per_frame, *shape[axis + 1:])


__all__ = ["MESH_AXES", "RULES", "ACTIVATION_RULES", "parse_mesh_spec", "make_mesh", "context_mesh", "mesh_context",
           "resolve_spec", "mesh_sizes", "param_leaves", "param_specs", "state_shardings", "shard", "place",
           "token_multiple", "frame_tokens", "pad_frames", "unpad_frames"]
