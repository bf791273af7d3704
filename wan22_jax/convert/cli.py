"""`wan22 convert SRC DST`: an official/Diffusers checkpoint folder -> our Orbax format, all components at once.

Every component found in SRC is converted and checked before anything is written; DST appears complete or not
at all (written under a temporary name and renamed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wan22_jax.convert import release
from wan22_jax.errors import Wan22Error


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="official release folder, a DiT folder (config.json + safetensors), or Diffusers")
    p.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def main(args: argparse.Namespace) -> int:
    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        print(f"error: {dst} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        written = release.convert_release(Path(args.src), dst)
    except Wan22Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name in written:
        print(f"converted {name}")
    print(f"wrote {dst}")
    return 0
