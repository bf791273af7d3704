"""Sharded loading: parameters created, converted or restored straight onto their shards.

Each converted leaf goes onto its shards with `jax.make_array_from_callback` (`convert_sharded`): a full-size
parameter never lands on one device, and a process only reads the slices its devices hold. The specs come from
the rules in `rules.py`; this module adds what needs the converter and the checkpoint readers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from wan22_jax.convert.mapping import Rule, check
from wan22_jax.io.orbax_io import load_params
from wan22_jax.io.tensor_source import SafetensorsSource, ShapeSource
from wan22_jax.models.vae import decode
from wan22_jax.sharding.rules import mesh_context, place, state_shardings
from wan22_jax.state import fill_state, flat_state


# ----------------------------------------------------------------------------------------------- placing
def init_sharded(build: Callable[[], Any], component: str, mesh: Mesh):
    """(graphdef, state) of the module `build()` makes (random init), each parameter created directly on its
    shards: the full model never exists on one device."""
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    out = fill_state(abstract, state_shardings(abstract, component, mesh))
    return graphdef, jax.jit(lambda: nnx.state(build()), out_shardings=out)()


def place_state(state, component: str, mesh: Mesh):
    """A state with each leaf moved onto its shards (for states that already exist, e.g. small or random
    ones; checkpoints load sharded with `convert_sharded` instead)."""
    shardings = state_shardings(state, component, mesh)
    return fill_state(state, {k: jax.device_put(v, shardings[k]) for k, v in flat_state(state).items()})


# ----------------------------------------------------------------------------------------------- sharded loading
def _view(source, name: str):
    """A tensor of `source` without reading it: a memory map for safetensors (slicing it reads only the
    slice's pages), the loaded array otherwise."""
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
    shardings = state_shardings(abstract_state, component, mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
            for k, v in flat_state(abstract_state).items()}


def load_params_sharded(folder, abstract_state, component: str, mesh: Mesh) -> dict[str, jax.Array]:
    """Our Orbax format restored straight onto the shards (each process reads only its own), after checking
    every stored name and shape against the model."""
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
    if mesh is None:
        return decode(graphdef, state, latent, **kwargs)
    state = place_state(state, "vae", mesh)
    latent = place(jax.numpy.asarray(latent, jax.numpy.float32), ("batch", None, None, "height", None), mesh)
    with mesh_context(mesh):
        return decode(graphdef, state, latent, **kwargs)


__all__ = ["init_sharded", "place_state", "convert_sharded", "sharded_target", "load_params_sharded", "vae_decode"]
