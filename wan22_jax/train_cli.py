"""`wan22 train CONFIG.json`: train a DiT (or a LoRA on one) on the mini-world, on one device or sharded over a
mesh; the config is a `RunConfig` (wan22_jax/training/run_config.py; `wan22 train --help` lists every field).
Re-running the same command resumes from the last checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wan22_jax.errors import ConfigError
from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args
from wan22_jax.training.loop import train
from wan22_jax.training.run_config import describe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the field table's layout
    parser.epilog = describe()
    parser.add_argument("config", help="a JSON training config (a RunConfig: the fields below)")
    parser.add_argument("--steps", type=int, default=None, help="override the config's step count")
    parser.add_argument("--out-dir", default=None, help="override the config's out_dir")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_kernel_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Runs `wan22 train`; a ConfigError (any mistake in the config, named) propagates to `wan22_jax.cli.main`,
    which prints it as one line. Returns 0, or 130 after Ctrl-C (checkpoint saved)."""
    kernels = kernels_from_args(args)
    path = Path(args.config)
    if not path.is_file():
        raise ConfigError(f"{path}: no such training config file")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the training config ({e})") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the training config must be a JSON object")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps}: must be >= 1")
    if args.steps is not None:
        config["steps"] = args.steps
    if args.out_dir is not None:
        config["out_dir"] = args.out_dir
    if args.no_progress:
        config["progress"] = False
    try:
        result = train(config, kernels=kernels)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if result["interrupted"]:
        print(f"interrupted at step {result['step']}: checkpoint saved in {result['checkpoint_dir']}; run the same "
              "command again to resume", file=sys.stderr)
        return 130
    print(f"trained to step {result['step']} in {result['seconds']:.1f} s; last loss {result['last_loss']:.5f}; "
          f"outputs in {result['out_dir']}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="wan22 train")
    add_arguments(p)
    try:
        sys.exit(main(p.parse_args()))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
