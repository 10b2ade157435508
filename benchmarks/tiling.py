"""Tiled automatic masks on a large synthetic scene (issue 32's acceptance): not a test.

A scene of known, separate objects (`sam_jax.data.synthetic.scattered_scene`, 8,000 x 8,000
by default) is written as a tiled TIFF and segmented by `sam-jax amg --tile`, which reads it
a tile at a time; a 2,000 x 2,000 crop of it (a PNG, decoded whole) is segmented untiled.
Each run is a fresh process, so its peak RSS is its own. Then, for every object that a tile
border cuts: its best IoU with the tiled run's masks and how many of them cover it (IoU above
0.5); for those inside the crop, the untiled run's best IoU beside it.

    python benchmarks/tiling.py                      # the issue's sizes, embedded tiny-shapes, ~10 min on 2 cores
    python benchmarks/tiling.py --size 3000 --crop 1000   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLDS = ["--pred-iou-thresh", "0.6", "--stability-score-thresh", "0.85"]  # tiny-shapes' (README)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_scene(args: argparse.Namespace) -> dict:
    from PIL import Image

    from sam_jax.data.synthetic import scattered_scene
    from sam_jax.windowed import write_tiled_tiff

    image, objects = scattered_scene(args.size, args.size, cell=args.cell, seed=args.seed)
    work = Path(args.work)
    write_tiled_tiff(work / "scene.tif", image, tile=256)
    c0 = args.crop_at
    Image.fromarray(image[c0 : c0 + args.crop, c0 : c0 + args.crop]).save(work / "crop.png")
    np.savez_compressed(
        work / "truth.npz",
        boxes=np.asarray([(x0, y0, x0 + m.shape[1], y0 + m.shape[0]) for y0, x0, m in objects]),
        bits=np.concatenate([np.packbits(m.ravel()) for _, _, m in objects]),
        nbytes=np.asarray([(m.size + 7) // 8 for _, _, m in objects]),
    )
    return {"objects": len(objects), "tiff_mb": (work / "scene.tif").stat().st_size / 1e6}


def phase_amg(args: argparse.Namespace, tiled: bool) -> dict:
    from sam_jax import cli

    work = Path(args.work)
    common = ["amg", "--checkpoint", "tiny-shapes", "--no-progress", *THRESHOLDS]
    if tiled:
        argv = [*common, "--input", str(work / "scene.tif"), "--output", str(work / "tiled")]
        argv += ["--tile", str(args.tile), "--overlap", str(args.overlap), "--points-per-side", str(args.points)]
        argv += ["--max-pixels", str(args.tile * args.tile)]  # the scene is far over it: read by windows
    else:
        argv = [*common, "--input", str(work / "crop.png"), "--output", str(work / "untiled"), "--convert-to-rle"]
        argv += ["--points-per-side", str(args.untiled_points)]
    t0 = time.perf_counter()
    status = cli.main(argv)
    return {"status": status, "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def _truth(work: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    data = np.load(work / "truth.npz")
    boxes, bits, nbytes = data["boxes"], data["bits"], data["nbytes"]
    starts = np.concatenate([[0], np.cumsum(nbytes)])
    masks = []
    for (x0, y0, x1, y1), a, b in zip(boxes, starts[:-1], starts[1:], strict=True):
        h, w = y1 - y0, x1 - x0
        masks.append(np.unpackbits(bits[a:b])[: h * w].reshape(h, w).astype(bool))
    return boxes, masks


def _rles(records: list[dict]) -> list[dict]:
    return [{"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()} for r in records]


def phase_evaluate(args: argparse.Namespace) -> dict:
    from pycocotools import mask as coco

    from sam_jax import masks
    from sam_jax.amg.tiling import tile_boxes

    work = Path(args.work)
    boxes, truth = _truth(work)
    size = (args.size, args.size)
    tiles = tile_boxes(size, args.tile, args.overlap)
    edges_x = {b[0] for b in tiles if b[0] > 0} | {b[2] for b in tiles if b[2] < args.size}
    edges_y = {b[1] for b in tiles if b[1] > 0} | {b[3] for b in tiles if b[3] < args.size}
    cut = [any(x0 < e < x1 for e in edges_x) or any(y0 < e < y1 for e in edges_y) for x0, y0, x1, y1 in boxes.tolist()]
    tiled_records = json.loads((work / "tiled" / "scene.json").read_text())
    tiled = _rles(tiled_records)
    untiled = _rles(json.loads((work / "untiled" / "crop.json").read_text()))

    def encoded(m: np.ndarray, y0: int, x0: int, shape: tuple[int, int]) -> dict:
        rle = coco.frPyObjects(masks.placed_mask_to_rle(m, y0, x0, shape), *shape)
        return rle

    idx = [i for i in range(len(truth)) if cut[i]]
    gt = [encoded(truth[i], int(boxes[i][1]), int(boxes[i][0]), size) for i in idx]
    iou_tiled = coco.iou(tiled, gt, [0] * len(gt)) if tiled and gt else np.zeros((len(tiled), len(gt)))
    best_tiled = np.asarray(iou_tiled).max(axis=0) if len(tiled) else np.zeros(len(gt))
    covering = (np.asarray(iou_tiled) > 0.5).sum(axis=0) if len(tiled) else np.zeros(len(gt), int)
    # Two masks of one object from one tile are the generator's own near-duplicates (box NMS
    # keeps masks below its IoU threshold, untiled too); from different tiles, a merge missed.
    crops_of = [
        {tuple(tiled_records[m]["crop_box"]) for m in np.flatnonzero(np.asarray(iou_tiled)[:, k] > 0.5)}
        for k in range(len(gt))
    ]
    across = sum(1 for k in range(len(gt)) if covering[k] >= 2 and len(crops_of[k]) > 1)
    c0, c1 = args.crop_at, args.crop_at + args.crop
    in_crop = [
        k
        for k, i in enumerate(idx)
        if c0 <= boxes[i][0] and boxes[i][2] <= c1 and c0 <= boxes[i][1] and boxes[i][3] <= c1
    ]
    crop_gt = [
        encoded(truth[idx[k]], int(boxes[idx[k]][1]) - c0, int(boxes[idx[k]][0]) - c0, (args.crop, args.crop))
        for k in in_crop
    ]
    iou_untiled = np.asarray(coco.iou(untiled, crop_gt, [0] * len(crop_gt))) if untiled and crop_gt else None
    best_untiled = iou_untiled.max(axis=0) if iou_untiled is not None else np.zeros(len(crop_gt))
    pair_tiled = best_tiled[in_crop]
    return {
        "objects_cut_by_tile_borders": len(idx),
        "cut_objects_with_exactly_one_mask_over_0.5": int((covering == 1).sum()),
        "cut_objects_with_none": int((covering == 0).sum()),
        "cut_objects_with_two_or_more": int((covering >= 2).sum()),
        "of_which_from_different_tiles": across,
        "mean_best_iou_tiled_all_cut": float(best_tiled.mean()) if len(idx) else None,
        "cut_objects_inside_crop": len(in_crop),
        "crop_mean_best_iou_tiled": float(pair_tiled.mean()) if in_crop else None,
        "crop_mean_best_iou_untiled": float(best_untiled.mean()) if in_crop else None,
        "crop_tiled_within_0.02_of_untiled_or_better": int((pair_tiled >= best_untiled - 0.02).sum()),
        "crop_worst_tiled_minus_untiled": float((pair_tiled - best_untiled).min()) if in_crop else None,
        "masks_tiled": len(tiled),
        "masks_untiled": len(untiled),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8000)
    p.add_argument("--cell", type=int, default=400, help="one object per cell, about half a cell across")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=256)
    p.add_argument("--points", type=int, default=12, help="points per side of each tile")
    p.add_argument("--crop", type=int, default=2000)
    p.add_argument("--crop-at", type=int, default=3000, help="the crop's top-left corner (x = y)")
    p.add_argument("--untiled-points", type=int, default=24, help="points per side of the crop (the tiles' density)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="working folder (default: a temporary one)")
    p.add_argument("--phase", choices=("scene", "tiled", "untiled", "evaluate"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        run = {
            "scene": phase_scene,
            "tiled": lambda a: phase_amg(a, True),
            "untiled": lambda a: phase_amg(a, False),
            "evaluate": phase_evaluate,
        }[args.phase]
        print(json.dumps(run(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="sam-jax-tiling-") as tmp:
        args.work = args.work or tmp
        names = ("size", "cell", "tile", "overlap", "points", "crop", "crop_at", "untiled_points", "seed")
        passed = [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names]
        results = {}
        for phase in ("scene", "tiled", "untiled", "evaluate"):
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, *passed, "--work", args.work, "--phase", phase]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stdout, done.stderr, file=sys.stderr)
                return 1
            results[phase] = {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}
            print(phase, json.dumps(results[phase]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
