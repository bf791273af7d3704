import sys

from wan22_jax.cli import main

sys.exit(main())
