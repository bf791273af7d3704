"""The command line's kernel switch, shared by `wan22 generate / bench / verify / train`.

`--cpu-kernels` alone opts into every CPU kernel, `--cpu-kernels attention,conv` into some; absent, XLA runs.
The environment variable WAN22_CPU_KERNELS may set the CLI's default (same values); it is read here, when the
command line is parsed, and never by a model or a traced function.
"""

from __future__ import annotations

import argparse
import os

from wan22_jax.errors import ConfigError
from wan22_jax.ops.kernels import CPU_OPS, Kernels, parse_cpu_kernels

ENV = "WAN22_CPU_KERNELS"


def add_kernel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu-kernels", nargs="?", const="all", default=os.environ.get(ENV), metavar="OPS",
                   help="run fp32 ops on the CPU kernels (MKL sgemm and fused attention, oneDNN convolutions; the "
                        f"`cpu` extra): all of them, or a comma list of {', '.join(CPU_OPS)} (on AMD EPYC: "
                        f"attention,conv). Default: XLA everywhere (${ENV} may set it)")


def kernels_from_args(args: argparse.Namespace) -> Kernels:
    """The Kernels the parsed arguments ask for; ConfigError naming the bad op."""
    try:
        return parse_cpu_kernels(args.cpu_kernels)
    except ConfigError as e:
        raise ConfigError(f"--cpu-kernels {args.cpu_kernels!r}: {e}") from None
