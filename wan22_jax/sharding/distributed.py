"""Multi-process start-up: `jax.distributed.initialize` from arguments or the usual environment variables."""

from __future__ import annotations

import os
from typing import Sequence

import jax

from wan22_jax.errors import ConfigError


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


__all__ = ["initialize_distributed"]
