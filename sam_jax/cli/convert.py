"""`sam-jax convert CHECKPOINT OUTPUT_DIR` / `sam-jax convert --to-torch DIR OUT.pth` /
`sam-jax convert --to-hf DIR OUT_DIR` (also `python -m convert ...` from a source tree)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sam_jax.cli.args import OneLineParser, int_at_least
from sam_jax.conversion import convert_checkpoint, export_hf_checkpoint, export_torch
from sam_jax.formats.hf import CONFIG_FILE
from sam_jax.formats.reference import MODEL_TYPES, ConversionError, describe
from sam_jax.io import OutputExistsError


class _Parser(OneLineParser):
    error_name = "convert"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sam-jax convert",
        description="Convert an official SAM checkpoint (.pth) or a Hugging Face transformers SAM "
        "(folder, .safetensors, .bin) to a sam_jax checkpoint directory, or back with --to-torch / --to-hf.",
    )
    p.add_argument(
        "source",
        help="official checkpoint (.pth) or transformers SAM folder / file, "
        "or with --to-torch / --to-hf a sam_jax checkpoint directory",
    )
    p.add_argument("output", help="output directory, or with --to-torch the output .pth file")
    to = p.add_mutually_exclusive_group()
    to.add_argument("--to-torch", action="store_true", help="export a sam_jax checkpoint as a reference state_dict")
    to.add_argument("--to-hf", action="store_true", help="export a sam_jax checkpoint as a transformers folder")
    p.add_argument("--model-type", default="auto", help=f"one of {', '.join(MODEL_TYPES)} (default: inferred)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output: a sam_jax checkpoint directory, with --to-torch a file, "
        "with --to-hf a folder written by --to-hf",
    )
    p.add_argument(
        "--decoder-num-heads",
        type=int_at_least(1),
        default=None,
        help="mask decoder heads, invisible in tensor shapes (default 8, as every official model)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.to_torch:
            state_dict = export_torch(args.source, args.output, overwrite=args.overwrite)
            print(f"wrote {args.output}: {len(state_dict)} tensors")
        elif args.to_hf:
            tensors = export_hf_checkpoint(args.source, args.output, overwrite=args.overwrite)
            # SamModel or SamHQModel, as the written config.json names it
            architecture = json.loads((Path(args.output) / CONFIG_FILE).read_text())["architectures"][0]
            print(f"wrote {args.output}: transformers {architecture}, {len(tensors)} tensors")
        else:
            notes: list[str] = []
            params = convert_checkpoint(
                args.source, args.output, args.model_type, args.decoder_num_heads, notes, overwrite=args.overwrite
            )
            for note in notes:
                print(f"convert: note: {note}", file=sys.stderr)
            print(f"wrote {args.output}: {describe(params.config)} model")
    except ConversionError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    except OutputExistsError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"convert: error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
