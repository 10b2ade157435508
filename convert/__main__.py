"""`python -m convert CHECKPOINT OUTPUT_DIR` (see `sam-jax convert -h`)."""

import sys

from sam_jax.cli.convert import main

sys.exit(main())
