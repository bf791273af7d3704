"""Convert an official Wan2.2 release folder (or a DiT / Diffusers folder) to our Orbax format.

    python convert/convert.py Wan2.2-T2V-A14B/ converted/ [--overwrite]

Same as `wan22 convert`; the mapping logic lives in `wan22_jax.convert` (one declarative table per layout).
"""

import argparse
import sys

from wan22_jax.convert import cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
