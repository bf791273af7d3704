"""`wan22 verify CASE_DIR [...] [--save-outputs DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.numpy import save_file

from wan22_jax.errors import ConfigError, UnsupportedComponentError
from wan22_jax.io.atomic import atomic_path
from wan22_jax.sharding import make_mesh
from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args
from wan22_jax.verify import find_cases, run_case


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases", nargs="+", help="reference case folders (or folders containing them)")
    p.add_argument("--save-outputs", metavar="DIR", help="write our outputs to DIR/<case>/outputs.safetensors")
    add_kernel_arguments(p)
    p.add_argument("--mesh", metavar="SPEC", help="run sharded over a device mesh, e.g. fsdp=4,seq=2 (axes data, "
                   "fsdp, seq, tensor; the product must equal the device count)")


def main(args: argparse.Namespace) -> int:
    dirs: list[Path] = []
    for c in args.cases:
        p = Path(c)
        if (p / "case.json").is_file():
            dirs.append(p)
        elif p.is_dir() and find_cases(p):
            dirs.extend(find_cases(p))
        else:
            print(f"error: {c} is not a reference case folder (no case.json inside)", file=sys.stderr)
            return 2
    mesh = None
    if args.mesh:
        try:
            mesh = make_mesh(args.mesh)
        except ConfigError as e:
            print(f"error: --mesh: {e}", file=sys.stderr)
            return 2
    try:
        kernels = kernels_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_fail = 0
    unsupported = 0
    for d in dirs:
        try:
            res = run_case(d, mesh=mesh, kernels=kernels)
        except UnsupportedComponentError as e:
            print(f"{d.name}: UNSUPPORTED ({e})", file=sys.stderr)
            unsupported += 1
            continue
        for o in res.outputs:
            kind = "exact" if o.exact else f"err {o.error:.3e} tol {o.tolerance:.3e}"
            extra = f" ({o.detail})" if o.detail else ""
            print(f"{res.case}/{o.name}: {kind} {'PASS' if o.passed else 'FAIL'}{extra}")
        print(f"{res.case}: {'PASS' if res.passed else 'FAIL'}")
        n_fail += not res.passed
        if args.save_outputs:
            out = Path(args.save_outputs) / d.name
            out.mkdir(parents=True, exist_ok=True)
            with atomic_path(out / "outputs.safetensors") as tmp:
                save_file({k: v for k, v in res.ours.items()}, str(tmp))
    if n_fail:
        return 1
    if unsupported:
        return 2
    return 0
