"""Our converted format for any component: `<dir>/wan22.json` ({"kind", "config"}) + Orbax `<dir>/params`.

`wan22 convert` writes a release folder as: the DiT at the root (or `high_noise_model/`, `low_noise_model/`),
`vae/`, `t5/`, and the tokenizer copied to `google/umt5-xxl/`; the loaders below find each component there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from wan22_jax.config_utils import config_from_dict, config_to_dict
from wan22_jax.convert.mapping import Rule, check
from wan22_jax.errors import CheckpointFormatError
from wan22_jax.io.orbax_io import MANIFEST, load_params, read_manifest, save_params
from wan22_jax.io.tensor_source import DictSource
from wan22_jax.state import fill_state, flat_state


def find(path: str | Path, kind: str) -> Path | None:
    """`path` or `path/<kind>` if it holds our checkpoint of `kind`, else None."""
    for folder in (Path(path), Path(path) / kind):
        if (folder / MANIFEST).is_file() and read_manifest(folder).get("kind") == kind:
            return folder
    return None


def save(model: nnx.Module, kind: str, cfg: Any, dst: str | Path) -> Path:
    """Writes a component's config and params (atomic)."""
    return save_params(dst, kind, config_to_dict(cfg), flat_state(nnx.state(model)))


def load(folder: Path, kind: str, config_cls: type, abstract: Callable[[Any], tuple[Any, Any]],
         dtype: Any | None = None):
    """Restores a component: config -> `abstract(cfg)` = (graphdef, abstract state) -> checked params.

    Names and shapes are checked like any conversion (missing / unexpected / mis-shaped keys are named).
    """
    manifest = read_manifest(folder)
    if manifest.get("kind") != kind:
        raise CheckpointFormatError(f"{folder}: holds a {manifest.get('kind')!r} checkpoint, not a {kind}")
    cfg = config_from_dict(config_cls, manifest["config"], source=str(folder / MANIFEST))
    graphdef, abstract_state = abstract(cfg)
    expected = flat_state(abstract_state)
    arrays = load_params(folder)
    check([Rule(k, k) for k in expected], DictSource(arrays, str(folder)), expected)
    return cfg, nnx.merge(graphdef, fill_state(abstract_state, {
        k: jnp.asarray(v, dtype if dtype is not None else expected[k].dtype) for k, v in arrays.items()}))
