"""`python -m sam_jax.cli ...`, the same as `sam-jax ...`."""

import sys

from sam_jax.cli.main import main

sys.exit(main())
