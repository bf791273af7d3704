"""One process of a multi-host sharded DiT forward (CPU stand-in for a multi-host GPU/TPU job).

Every process runs this same script; `wan22_jax.sharding.distributed.initialize_distributed` reads
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Each process converts only the slices of the
checkpoint that its own devices hold, the forward runs over the global mesh, and each process writes the gathered
output plus how many parameter elements it read:

    python experiments/multihost/launch.py CASE_DIR --processes 2 --devices-per-process 4 --mesh fsdp=8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("case", help="a wan_dit reference case folder (checkpoint + inputs)")
    p.add_argument("--mesh", default="fsdp=8")
    p.add_argument("--out", required=True, help="folder for out_<process>.npy and stats_<process>.json")
    args = p.parse_args()

    from wan22_jax.sharding.distributed import initialize_distributed
    initialize_distributed()  # before anything touches a device

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.experimental import multihost_utils

    from wan22_jax.convert.dit import dit_table, read_dit_config
    from wan22_jax.models.dit import abstract_dit
    from wan22_jax.io.tensor_source import SafetensorsSource
    from wan22_jax.sharding import make_mesh, mesh_context
    from wan22_jax.sharding.loading import convert_sharded
    from wan22_jax.state import fill_state
    from wan22_jax.verify import load_case

    case = load_case(args.case)
    mesh = make_mesh(args.mesh)  # over every process's devices
    cfg, layout = read_dit_config(case.checkpoint)
    graphdef, abstract = abstract_dit(cfg)
    stats: dict[str, int] = {}
    arrays = convert_sharded(dit_table(cfg, layout), SafetensorsSource.from_folder(case.checkpoint), abstract, "dit",
                             mesh, stats=stats)
    state = fill_state(abstract, arrays)
    inp = case.inputs

    @jax.jit
    def forward(state, x, t, context, y):
        return nnx.merge(graphdef, state)(x, t, context, y=y)

    with mesh_context(mesh):
        out = forward(state, jnp.asarray(inp["x"]), jnp.asarray(inp["t"]), jnp.asarray(inp["context"]),
                      None if inp.get("y") is None else jnp.asarray(inp["y"]))
    full = np.asarray(multihost_utils.process_allgather(out, tiled=True))
    pid = jax.process_index()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / f"out_{pid}.npy", full)
    stats.update(process=pid, processes=jax.process_count(), devices=jax.device_count(),
                 local_devices=jax.local_device_count())
    (out_dir / f"stats_{pid}.json").write_text(json.dumps(stats))
    multihost_utils.sync_global_devices("done")  # nobody exits while another still needs the collectives
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
