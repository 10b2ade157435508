"""`python -m convert ...` from a source tree: the same command as `sam-jax convert ...`
(`sam_jax.cli.convert`). The conversions themselves are the library's: `sam_jax.conversion`
(file to file) over `sam_jax.formats` (the reference and Hugging Face formats)."""
