"""Sharding over a device mesh: FSDP, sequence parallelism (Ulysses), tensor parallelism, data (CFG) parallelism.

The mesh always has the four axes of `MESH_AXES`; a spec string names the sizes (`"fsdp=4,seq=2"`, the others
default to 1). Parameters are sharded by data, not code: every `nnx.Param` carries `logical_axes` metadata
(layers.py) and one rules table per component maps logical names to mesh axes. Activations are constrained
with `shard(x, names)`, a no-op unless a mesh is set with `jax.set_mesh` (`mesh_context`).

How the DiT is split (see docs/wan22_architecture.md for the block):
* fsdp: weights split on their `embed` axis, gathered per layer by XLA; the residual stream split on tokens.
* seq: the residual stream split on tokens; self-attention swaps that for a split over heads (an all-to-all
  that XLA derives from the two sharding constraints: DeepSpeed-Ulysses). When the token count does not divide,
  each latent frame is zero-padded and the padded keys are masked (`frame_tokens`, `pad_frames`).
* tensor: attention heads and the FFN hidden axis (Megatron); cross-attention K/V split on heads.
* data: the batch, i.e. the cond/uncond halves of classifier-free guidance (`batch_cfg`) and several prompts.

An axis that does not divide a dimension falls back to replication on that dimension; `param_specs` reports
every such fallback. Loading places each converted leaf straight onto its shards (`convert_sharded`,
`jax.make_array_from_callback`): a full-size parameter never lands on one device, and a process only reads the
slices its devices hold.

    python -m wan22_jax.sharding snapshot > tests/data/sharding_snapshot.json   # regenerate the snapshot
    python -m wan22_jax.sharding memory                                          # the README memory table
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from wan22_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "seq", "tensor")

# logical parameter axis -> mesh axes (in order; an axis that does not divide the dimension is skipped)
RULES: dict[str, dict[str, tuple[str, ...]]] = {
    "dit": {"layers": (), "embed": ("fsdp",), "heads": ("tensor",), "mlp": ("tensor",),
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


def _mesh_shape(mesh) -> dict[str, int]:
    return dict(mesh.shape) if not isinstance(mesh, Mapping) else dict(mesh)


def _leaves(state) -> Iterable[tuple[str, Any, tuple[str | None, ...]]]:
    """(dotted path, leaf value, logical axes) of every variable of an NNX state."""
    from flax import nnx
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
    shape = _mesh_shape(mesh)
    specs, notes = {}, []
    for path, value, axes in _leaves(state):
        specs[path], n = resolve_spec(axes, value.shape, RULES[component], shape, where=path)
        notes += n
    return specs, notes


def state_shardings(state, component: str, mesh: Mesh) -> dict[str, NamedSharding]:
    """{dotted path: NamedSharding} for every parameter of `state`."""
    specs, _ = param_specs(state, component, mesh)
    return {k: NamedSharding(mesh, s) for k, s in specs.items()}


def init_sharded(build: Callable[[], Any], component: str, mesh: Mesh):
    """(graphdef, state) of the module `build()` makes (random init), each parameter created directly on its
    shards: the full model never exists on one device."""
    from flax import nnx

    from wan22_jax.convert.mapping import fill_state
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    out = fill_state(abstract, state_shardings(abstract, component, mesh))
    return graphdef, jax.jit(lambda: nnx.state(build()), out_shardings=out)()


def place_state(state, component: str, mesh: Mesh):
    """A state with each leaf moved onto its shards (for states that already exist, e.g. small or random
    ones; checkpoints load sharded with `convert_sharded` instead)."""
    from wan22_jax.convert.mapping import fill_state, flat_state
    shardings = state_shardings(state, component, mesh)
    return fill_state(state, {k: jax.device_put(v, shardings[k]) for k, v in flat_state(state).items()})


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


# ----------------------------------------------------------------------------------------------- sharded loading
def _view(source, name: str):
    """A tensor of `source` without reading it: a memory map for safetensors (slicing it reads only the
    slice's pages), the loaded array otherwise."""
    from wan22_jax.io.tensor_source import SafetensorsSource
    if isinstance(source, SafetensorsSource):
        # TensorSource has no public lazy view yet; its header records (file, entry, data start) per name.
        path, info, start = source._where[name]
        begin, end = info["data_offsets"]
        mm = np.memmap(path, dtype=source.dtype(name), mode="r", offset=start + begin,
                       shape=tuple(info["shape"]))
        return mm
    return source.load(name)


def _rule_slice(rule, source, index: tuple[slice, ...]) -> np.ndarray:
    """Rows `index` of the parameter `rule` produces, reading only what that slice needs."""
    names = rule.sources()
    if rule.stack is None:
        return np.asarray(rule.transform(_view(source, names[0]))[index])
    layers = range(rule.stack)[index[0]]
    return np.stack([np.asarray(rule.transform(_view(source, names[i]))[index[1:]]) for i in layers])


def convert_sharded(table, source, abstract_state, component: str, mesh: Mesh, dtype: Any | None = None,
                    stats: dict[str, int] | None = None) -> dict[str, jax.Array]:
    """`mapping.convert`, but each leaf goes straight onto its shards: only the slices this process's devices
    hold are read and transformed (`jax.make_array_from_callback`), one slice at a time.

    Args:
      table, source: as `mapping.convert` (checked the same way before anything is read).
      abstract_state: the model's abstract state (shapes, dtypes, logical axes).
      dtype: cast every parameter to this dtype; None keeps each parameter's dtype.
      stats: if given, receives "elements_read" (on this process) and "elements_total".
    Returns:
      {our dotted path: jax.Array sharded over mesh}.
    """
    from wan22_jax.convert.mapping import check, flat_state
    expected = flat_state(abstract_state)
    table = list(table)
    check(table, source, expected)
    shardings = state_shardings(abstract_state, component, mesh)
    read = total = 0
    out = {}
    for rule in table:
        leaf = expected[rule.ours]
        target = np.dtype(dtype) if dtype is not None else np.dtype(leaf.dtype)
        cache: dict[Any, np.ndarray] = {}

        def callback(index, rule=rule, target=target, cache=cache, shape=tuple(leaf.shape)):
            nonlocal read
            key = tuple(s.indices(n) for s, n in zip(index, shape))
            if key not in cache:  # replicated shards ask for the same slice once per device
                cache[key] = np.ascontiguousarray(_rule_slice(rule, source, index).astype(target, copy=False))
                read += cache[key].size
            return cache[key]

        out[rule.ours] = jax.make_array_from_callback(tuple(leaf.shape), shardings[rule.ours], callback)
        total += math.prod(leaf.shape)
    if stats is not None:
        stats.update(elements_read=read, elements_total=total)
    return out


def sharded_target(abstract_state, component: str, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """{path: ShapeDtypeStruct with its sharding}: an Orbax restore target (each process reads its shards)."""
    from wan22_jax.convert.mapping import flat_state
    shardings = state_shardings(abstract_state, component, mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
            for k, v in flat_state(abstract_state).items()}


def load_params_sharded(folder, abstract_state, component: str, mesh: Mesh) -> dict[str, jax.Array]:
    """Our Orbax format restored straight onto the shards (each process reads only its own), after checking
    every stored name and shape against the model."""
    from pathlib import Path

    import orbax.checkpoint as ocp

    from wan22_jax.convert.mapping import Rule, check, flat_state
    from wan22_jax.io.orbax_io import load_params
    from wan22_jax.io.tensor_source import ShapeSource
    with ocp.StandardCheckpointer() as ckpt:
        stored = dict(ckpt.metadata(Path(folder).absolute() / "params").item_metadata)
    expected = flat_state(abstract_state)
    check([Rule(k, k) for k in expected], ShapeSource({k: v.shape for k, v in stored.items()},
                                                      description=str(folder)), expected)
    return load_params(folder, sharded_target(abstract_state, component, mesh))


# ----------------------------------------------------------------------------------------------- components
def vae_decode(graphdef, state, latent, mesh: Mesh | None, **kwargs) -> jax.Array:
    """`vae_tiling.decode` with the latent split over the batch (data) and rows (fsdp x seq), the weights by the
    VAE rules; XLA carries the split through the convolutions (halo exchange at row borders), so the result
    equals the unsharded decode."""
    from wan22_jax.models.vae_tiling import decode
    if mesh is None:
        return decode(graphdef, state, latent, **kwargs)
    state = place_state(state, "vae", mesh)
    latent = place(jax.numpy.asarray(latent, jax.numpy.float32), ("batch", None, None, "height", None), mesh)
    with mesh_context(mesh):
        return decode(graphdef, state, latent, **kwargs)


def shard_pipeline(pipe, mesh: Mesh | str):
    """A new `Wan22Pipeline` sharded over `mesh` (`Wan22Pipeline.sharded`; the given one is unchanged): DiT
    experts by the DiT rules, the VAE by the VAE rules; denoising then runs under the mesh."""
    return pipe.sharded(mesh)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None) -> bool:
    """`jax.distributed.initialize` from arguments or the usual environment variables.

    Reads JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES, JAX_PROCESS_ID and optionally
    JAX_LOCAL_DEVICE_IDS (comma-separated). Without any of them (and no arguments) nothing is initialised and
    the run stays single-process; on managed clusters (SLURM, TPU pods, ...) pass `coordinator="auto"` to let
    JAX detect everything. Returns True when running multi-process. Call it before any other JAX call.
    """
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if coordinator is None:
        return False
    if coordinator == "auto":
        jax.distributed.initialize()
        return jax.process_count() > 1
    num_processes = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if num_processes is None or process_id is None:
        raise ConfigError("multi-host: JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                          "must be set too")
    if local_device_ids is None and env.get("JAX_LOCAL_DEVICE_IDS"):
        local_device_ids = [int(v) for v in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                               process_id=int(process_id), local_device_ids=local_device_ids)
    return jax.process_count() > 1


# ----------------------------------------------------------------------------------------------- snapshot, memory
SNAPSHOT_PRESETS = ("t2v-A14B", "i2v-A14B", "ti2v-5B")
SNAPSHOT_MESHES = ("fsdp=8", "fsdp=2,seq=2,tensor=2", "data=2,fsdp=4,tensor=4")


def _spec_json(spec: PartitionSpec) -> str:
    return ", ".join("+".join(p) if isinstance(p, tuple) else str(p) for p in spec)


def _abstract_dit_state(preset: str):
    from wan22_jax.convert.dit import abstract_dit
    from wan22_jax.models.dit import DIT_PRESETS
    import jax.numpy as jnp
    return abstract_dit(DIT_PRESETS[preset], dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)[1]


def snapshot(presets: Sequence[str] = SNAPSHOT_PRESETS, meshes: Sequence[str] = SNAPSHOT_MESHES) -> dict:
    """Logical axes and PartitionSpecs of every DiT parameter of each preset on each mesh, computed abstractly
    (no device, no memory): what tests/data/sharding_snapshot.json holds."""
    out: dict[str, Any] = {"meshes": list(meshes), "rules": {k: {n: list(a) for n, a in v.items()}
                                                              for k, v in RULES.items()}, "presets": {}}
    for preset in presets:
        state = _abstract_dit_state(preset)
        params = {path: {"shape": list(v.shape), "logical_axes": list(axes), "specs": {}}
                  for path, v, axes in _leaves(state)}
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
    shape = _mesh_shape(mesh)
    specs, _ = param_specs(state, component, shape)
    total = 0
    for path, value, _ in _leaves(state):
        split = math.prod(shape[a] for p in specs[path] if p is not None for a in ((p,) if isinstance(p, str) else p))
        total += math.prod(value.shape) // split * itemsize
    return total


def memory_estimate(preset: str, mesh: str | Mapping[str, int], *, frames: int | None = None,
                    height: int | None = None, width: int | None = None, batch: int = 1) -> dict[str, float]:
    """Rough per-device memory (GiB) of a DiT preset's denoising on a mesh: bf16 weights of every expert (from
    the sharding rules, exact), plus an activation estimate (one block live, flash attention so no logits,
    classifier-free guidance batched: 2 * batch rows; text K/V cache of every layer). T5 and VAE excluded."""
    from wan22_jax.configs import get_task
    from wan22_jax.models.dit import DIT_PRESETS
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
    state = _abstract_dit_state(preset)
    params = PRESET_EXPERTS[preset] * param_bytes_per_device(state, "dit", sizes)
    layer = sum(math.prod(v.shape[1:]) for p, v, _ in _leaves(state) if p.startswith("blocks.")) * 2 // tp
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["snapshot"]:
        print(json.dumps(snapshot(), indent=1, sort_keys=True))
        return 0
    if argv == ["memory"]:
        print(memory_table())
        return 0
    print("usage: python -m wan22_jax.sharding snapshot|memory", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
