"""Writes the mini-world as files: one mp4 per clip and a JSONL manifest with its English and Japanese captions
(wan22_jax/data/mini_world_files.py has the layout).

    python experiments/mini_world/write_files.py [--out runs/mini_world/files] [--clips 2048] [--held-out 64]

Every file is decoded back and read with the detector; the counts are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wan22_jax.data.mini_world_files import write_split


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/mini_world/files")
    ap.add_argument("--clips", type=int, default=2048, help="training clips (each captioned in both languages)")
    ap.add_argument("--held-out", type=int, default=64, help="clips of the held-out combinations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for split, n in (("train", args.clips), ("held_out", args.held_out)):
        r = write_split(Path(args.out), split, n, seed=args.seed)
        print(f"{split}: {r['clips']} clips; decoded back: detector right on {r['detector_ok']} of {r['checked']}, "
              f"mean |error| at most {r['max_abs_error']:.2f} / 255")


if __name__ == "__main__":
    main()
