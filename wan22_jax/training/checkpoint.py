"""Training checkpoints: the whole state pytree (params, optimizer state, EMA, step, rng, data position) with
Orbax's CheckpointManager: asynchronous saves, the last `keep` steps kept.

Orbax writes each step into a temporary folder and renames it only once every file is complete, and lists
only committed steps; a save interrupted by SIGKILL therefore leaves a temporary folder that `latest_step`
never returns, and resuming picks the last complete step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from wan22_jax.errors import CheckpointFormatError


class TrainCheckpointer:
    """Saves and restores training states under `directory/<step>/`.

    Args:
      directory: the checkpoint folder (created).
      keep: how many most recent steps to keep.
      async_save: return from `save` while the write continues in the background (call `wait` or `close`).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def save(self, state: dict, meta: dict[str, Any] | None = None) -> int:
        """Starts saving `state` at its own step; `meta` (JSON) is stored beside it. Returns the step."""
        step = int(jax.device_get(state["step"]))
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta or {})))
        return step

    def latest_step(self) -> int | None:
        """The last committed step (temporary, half-written folders are ignored), or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def restore(self, template: dict, step: int | None = None) -> tuple[dict, dict]:
        """Restores (state, meta) at `step` (default: the latest) onto the structure, shapes and dtypes of
        `template` (a state built the same way, e.g. by `init_state`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointFormatError(f"{self.directory}: no complete checkpoint to restore")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  meta=ocp.args.JsonRestore()))
        return dict(out["state"]), dict(out["meta"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def read_meta(directory: str | os.PathLike, step: int) -> dict:
    path = Path(directory) / str(step) / "meta" / "metadata"
    return json.loads(path.read_text()) if path.is_file() else {}
