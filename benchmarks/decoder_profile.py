"""Where a click's decoder time goes, by part of the model: not a test (issue 34).

Runs `decode`'s compiled decoder for one prompt without a mask (as a click after the
first: the image's `first_layer` made) under JAX's profiler, and sums the time of XLA's
operations (thunks) by the part of the model their HLO metadata names: the first layer's
cross-attentions, the second layer, the final attention, the upscaling, ... Times are
summed over XLA's threads (two here), so a part's share, not its wall time, is the figure;
the program's wall time is printed beside them. Products that XLA hands to Eigen run
asynchronously and are traced only in part (the token-to-image weighted sums of the
per-prompt layers), so those parts read low.

    python benchmarks/decoder_profile.py                  # vit_b, one click and four clicks
    python benchmarks/decoder_profile.py --clicks 1 8 --repeats 40
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("SAM_JAX_COMPILATION_CACHE", "off")

import jax
import numpy as np
from jax.profiler import ProfileData

import sam_jax
from sam_jax import predictor
from sam_jax.modeling.sam import predict_low_res_slots
from sam_jax.prompt_layout import fast_slots, layout_prompts

PARTS = (  # first match wins: (label, pattern in the HLO op_name)
    ("layer 0: token to image", r"layers_0/cross_attn_token_to_image"),
    ("layer 0: image to token", r"layers_0/cross_attn_image_to_token|layers_0/norm4"),
    ("layer 0: tokens (self attention, MLP, norms)", r"layers_0/"),
    ("layer 1: token to image", r"layers_1/cross_attn_token_to_image"),
    ("layer 1: image to token", r"layers_1/cross_attn_image_to_token|layers_1/norm4"),
    ("layer 1: tokens (self attention, MLP, norms)", r"layers_1/"),
    ("final attention", r"final_attn_token_to_image|norm_final_attn"),
    ("upscaling", r"upscal"),
    ("hypernetworks and mask product", r"predict_masks"),
    ("prompt encoder", r"PromptEncoder"),
    ("IoU head", r"iou_prediction_head"),
)


def op_names(hlo: str) -> dict[str, str]:
    """HLO instruction name -> the op_name of its metadata (the model path that made it)."""
    names = {}
    for m in re.finditer(r'%([\w.\-]+) = [^\n]*?op_name="([^"]*)"', hlo):
        names[m.group(1)] = m.group(2)
    return names


def part_of(op_name: str) -> str:
    for label, pattern in PARTS:
        if re.search(pattern, op_name):
            return label
    return "other (layout, copies, branch selection)"


def decode_low_res(
    params: sam_jax.SamParams, image_embedding: jax.Array, coords: jax.Array, slots: jax.Array, first: Any
) -> tuple[jax.Array, jax.Array]:
    """The program `decode` runs for prompts without a mask (`sam_jax.predictor`)."""
    fewer = fast_slots(params.config.num_output_tokens)
    return predict_low_res_slots(params, image_embedding, coords, slots, None, None, fewer, first_layer=first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    params = sam_jax.init(args.model)
    cfg = params.config
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    emb = sam_jax.encode(params, image)
    predictor.wait_for_preparations()
    first = predictor.first_layer(params, emb)
    for k in args.clicks:
        points = rng.uniform((0, 0), (cfg.image_size, 0.75 * cfg.image_size), (1, k, 2)).astype(np.float32)
        coords, slots = layout_prompts(points, np.ones((1, k), np.int32), None, 1, cfg.num_output_tokens)
        call = (params, emb.image_embedding, coords, slots, first)
        compiled = jax.jit(decode_low_res).lower(*call).compile()
        names = op_names(compiled.as_text())
        for _ in range(5):
            jax.block_until_ready(compiled(*call))
        walls = []
        with tempfile.TemporaryDirectory() as trace:
            jax.profiler.start_trace(trace)
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(*call))
                walls.append(time.perf_counter() - t0)
            jax.profiler.stop_trace()
            profile = ProfileData.from_file(sorted(glob.glob(f"{trace}/**/*.xplane.pb", recursive=True))[-1])
        parts: collections.Counter[str] = collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in names:
                        parts[part_of(names[event.name])] += event.duration_ns
        total = sum(parts.values())
        tokens = cfg.num_output_tokens + int((slots[0] != -2).sum())
        print(
            f"\n{args.model}, {k} click(s) ({tokens} tokens), program wall time: median "
            f"{statistics.median(walls) * 1e3:.1f} ms (under the profiler); time summed over threads:"
        )
        for label, ns in parts.most_common():
            print(f"  {label:46s} {ns / args.repeats / 1e6:6.2f} ms  {100 * ns / total:4.1f}%")


if __name__ == "__main__":
    main()
