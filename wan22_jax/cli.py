"""The `wan22` command (also `python -m wan22_jax`). Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from wan22_jax.compile_cache import enable_compilation_cache
from wan22_jax.errors import Wan22Error, Wan22Warning
from wan22_jax.sharding.distributed import initialize_distributed

# subcommand -> (module with add_arguments/main, help). Modules are imported only when their command runs,
# so `wan22 --help` stays fast and a missing optional piece breaks only its own command.
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("wan22_jax.verify.cli", "run reference parity cases and report PASS/FAIL"),
    "convert": ("wan22_jax.convert.cli", "convert an official or Diffusers checkpoint folder to our Orbax format"),
    "bench": ("wan22_jax.bench.cli", "benchmark a component with random weights"),
    "generate": ("wan22_jax.generate_cli", "generate a video"),
    "cache": ("wan22_jax.cache_cli", "encode a folder of videos/images with captions once (VAE latents, text "
                                     "contexts) for training; resumes"),
    "train": ("wan22_jax.train_cli", "train a DiT or a LoRA on the mini-world (resumes from checkpoints)"),
    "aot": ("wan22_jax.aot.cli", "compile a task's programs for a TPU or NVIDIA target on this host: memory, fit, "
                                 "collectives, kernels, roofline (needs the aot extra)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wan22", description="Wan2.2 in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (mod, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            p.set_defaults(_missing=f"`wan22 {name}` is not implemented yet")
            continue
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # one process per host: join the others before any JAX work
        initialize_distributed()
    if args.command in ("generate", "verify"):  # not bench: it reports compile times
        enable_compilation_cache()
    if getattr(args, "_missing", None):
        print(f"error: {args._missing}", file=sys.stderr)
        return 2
    _show_warnings_briefly()
    # the package's own errors are user mistakes with a message that says what to do: one line, no traceback
    try:
        return int(args._main(args) or 0)
    except Wan22Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _show_warnings_briefly() -> None:
    """Our warnings print as one `warning: ...` line (Python's default adds the file, line and source)."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Wan22Warning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
