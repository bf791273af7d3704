"""Our converted-checkpoint format: `<dir>/wan22.json` (component kind + config) and `<dir>/params/` (Orbax).

Params are stored as a flat {dotted path: array} tree so that a checkpoint can be restored onto any sharding
(pass an abstract target with shardings) and read without building the model first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from wan22_jax.errors import CheckpointFormatError
from wan22_jax.io.atomic import atomic_path

MANIFEST = "wan22.json"


def save_params(dst: str | os.PathLike, kind: str, config: Mapping[str, Any],
                params: Mapping[str, Any]) -> Path:
    """Writes `params` ({dotted path: array}) and the config atomically: `dst` appears complete or not at all."""
    dst = Path(dst).absolute()
    with atomic_path(dst, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / "params", {k: np.asarray(v) for k, v in params.items()})
            ckpt.wait_until_finished()
        (tmp / MANIFEST).write_text(json.dumps({"kind": kind, "config": dict(config)}, indent=1))
    return dst


def read_manifest(src: str | os.PathLike) -> dict[str, Any]:
    path = Path(src) / MANIFEST
    if not path.is_file():
        raise CheckpointFormatError(f"{src}: not a wan22_jax checkpoint (no {MANIFEST})")
    return json.loads(path.read_text())


def load_params(src: str | os.PathLike, target: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Restores the flat params. `target` ({path: ShapeDtypeStruct with .sharding}) places each leaf on its
    shards directly; without it arrays come back on the default device."""
    src = Path(src).absolute()
    read_manifest(src)
    with ocp.StandardCheckpointer() as ckpt:
        if target is None:
            return dict(ckpt.restore(src / "params"))
        return dict(ckpt.restore(src / "params", dict(target)))
