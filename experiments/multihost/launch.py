"""Launches N local processes of run_dit.py over loopback (127.0.0.1) and checks they agree.

    python experiments/multihost/launch.py /work/shared/reference/dit_t2v --processes 2 --mesh fsdp=8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(case: str | Path, out: str | Path, *, processes: int = 2, devices_per_process: int = 4,
           mesh: str = "fsdp=8", timeout: float = 240.0) -> tuple[list[np.ndarray], list[dict]]:
    """Runs the processes (killed after `timeout` seconds). Returns each one's output and read statistics."""
    port = free_port()
    procs = []
    for pid in range(processes):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                   JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
        procs.append(subprocess.Popen([sys.executable, str(HERE / "run_dit.py"), str(case), "--mesh", mesh,
                                       "--out", str(out)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        if p.returncode != 0:
            raise RuntimeError(f"process exited with {p.returncode}:\n{log[-4000:]}")
    out = Path(out)
    return ([np.load(out / f"out_{i}.npy") for i in range(processes)],
            [json.loads((out / f"stats_{i}.json").read_text()) for i in range(processes)])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("case")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=4)
    p.add_argument("--mesh", default="fsdp=8")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outs, stats = launch(args.case, tmp, processes=args.processes, devices_per_process=args.devices_per_process,
                             mesh=args.mesh)
    from wan22_jax.verify import load_case, relative_error
    ref = load_case(args.case).outputs["out"]
    for o, s in zip(outs, stats):
        print(f"process {s['process']}/{s['processes']} ({s['local_devices']} of {s['devices']} devices): read "
              f"{s['elements_read']}/{s['elements_total']} parameter elements; error vs reference "
              f"{relative_error(o, ref):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
