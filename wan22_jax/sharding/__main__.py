"""`python -m wan22_jax.sharding snapshot|memory` (see `memory.main`)."""

import sys

from wan22_jax.sharding.memory import main

if __name__ == "__main__":
    sys.exit(main())
