"""The command line, the top of the import order: `sam-jax` (`main`), its subcommands, and
`sam-jax convert` (`convert`, also `python -m convert` in a source tree); `args` holds the
argument helpers both parsers use."""

from sam_jax.cli.main import main

__all__ = ["main"]
