"""`wan22 bench <component> ...`: each component's benchmark is a module here with add_arguments/main."""

from __future__ import annotations

import argparse
import importlib
import sys

COMPONENTS = {
    "dit": "wan22_jax.bench.dit",
    "t5": "wan22_jax.bench.t5",
    "vae": "wan22_jax.bench.vae",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="component", required=True)
    for name, mod in COMPONENTS.items():
        q = sub.add_parser(name, help=f"benchmark the {name}")
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            q.set_defaults(_bench=None)
            continue
        module.add_arguments(q)
        q.set_defaults(_bench=module.main)


def main(args: argparse.Namespace) -> int:
    if args._bench is None:
        print(f"error: `wan22 bench {args.component}` is not implemented yet", file=sys.stderr)
        return 2
    return int(args._bench(args) or 0)
