"""`make demo`: segment the bundled sample image with the embedded model.

Runs point and box prompts from `assets/sample.json` on `assets/sample.png` with
`sam_jax.load("tiny-shapes")`, then writes to the output folder (default `demo-output/`):

- `points.png`, `boxes.png`: the image with each prompt's mask overlaid;
- `masks.json`: per prompt, the mask (COCO RLE), its predicted IoU, and its IoU with the
  sample's ground truth;
- `automatic.png`, `automatic.json`: "segment everything" (`sam_jax.generate_masks`), the
  masks overlaid and their records (COCO RLE);
- `photo-truck.png`, `photo-dog.png`, `photo-groceries.png`, `photos.png` (the three in a
  row), `photos.json`: the reference's three photos, one box each, segmented by a real
  pretrained model, LiteMedSAM (`sam_jax.load("lite-medsam")`; skipped with a note when its
  package is not installed);

and prints a short summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sam_jax.compilation_cache import enable_from_environment
from sam_jax.loading import EMBEDDED_AUTOMATIC_OPTIONS, load

ASSETS = Path(__file__).parent / "assets"
AUTOMATIC_OPTIONS = {**EMBEDDED_AUTOMATIC_OPTIONS["tiny-shapes"], "output_mode": "coco_rle"}
# What the demo writes into its output folder: the folder may hold these and nothing else.
PHOTOS = ASSETS / "photos"
PHOTO_NAMES = ("truck", "dog", "groceries")
OUTPUT_FILES = (
    "points.png",
    "boxes.png",
    "masks.json",
    "automatic.png",
    "automatic.json",
    *(f"photo-{name}.png" for name in PHOTO_NAMES),
    "photos.png",
    "photos.json",
)
# Photos are written with this longest side (the masks are computed at full size).
PHOTO_SIDE = 900
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def overlay(
    image: np.ndarray, masks: list[np.ndarray], prompts: list[dict[str, Any]], thickness: int = 3, first: int = 0
) -> Image.Image:
    """The image with masks blended in and their prompts drawn (dots for points, boxes), in
    the palette's colours from index `first` on."""
    out = image.astype(np.float32)
    for i, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * np.asarray(PALETTE[(first + i) % len(PALETTE)], np.float32)
    pic = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for i, p in enumerate(prompts):
        colour = PALETTE[(first + i) % len(PALETTE)]
        if "box" in p:
            draw.rectangle(p["box"], outline=colour, width=thickness)
        for x, y in p.get("points", []):
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour, outline=(255, 255, 255), width=2)
    return pic


def row_strip(pictures: list[Image.Image], height: int, gap: int = 8) -> Image.Image:
    """The pictures scaled to `height` and set side by side on white."""
    scaled = [p.resize((round(p.width * height / p.height), height), Image.Resampling.LANCZOS) for p in pictures]
    strip = Image.new("RGB", (sum(p.width for p in scaled) + gap * (len(scaled) - 1), height), "white")
    x = 0
    for p in scaled:
        strip.paste(p, (x, 0))
        x += p.width + gap
    return strip


def run(output: Path, checkpoint: str = "tiny-shapes", photos_checkpoint: str | None = "lite-medsam") -> dict[str, Any]:
    """Runs the demo into `output`: a new or empty folder, or an earlier demo's output (replaced).

    Args:
        checkpoint: the model for the sample scene.
        photos_checkpoint: the model for the photos, or None to leave them out.
    Raises:
        FileExistsError: `output` holds anything else (before any work; it is left untouched).
    """
    from sam_jax.io import only_names, write_directory

    def owns(folder: Path) -> bool:
        return only_names(folder, lambda name: name in OUTPUT_FILES)

    with write_directory(output, owns=owns, overwrite=True, what="the demo's output") as tmp:
        summary = _run_into(tmp, checkpoint)
        summary["photos"] = _photos_into(tmp, photos_checkpoint) if photos_checkpoint else "not asked for"
        return summary


def _photos_into(tmp: Path, checkpoint: str) -> str:
    """Segments each reference photo from its box; returns a line saying what it did."""
    from sam_jax.masks import masks_to_coco_rle
    from sam_jax.predictor import predict

    try:
        params = load(checkpoint)
    except ImportError as e:  # the model's package is missing: the sample's part still stands
        return f"skipped ({e})"
    boxes = json.loads((PHOTOS / "photos.json").read_text())["boxes"]
    records, pictures = [], []
    for name in PHOTO_NAMES:
        image = np.asarray(Image.open(PHOTOS / f"{name}.jpg").convert("RGB"))
        masks, scores, _ = predict(params, image, box=boxes[name], multimask_output=False)
        mask = np.asarray(masks)[0]
        pic = overlay(image, [mask], [{"box": boxes[name]}], thickness=max(3, max(image.shape) // 300), first=3)
        pic.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS)
        pic.save(tmp / f"photo-{name}.png")
        pictures.append(pic)
        records.append(
            {
                "image": f"{name}.jpg",
                "box": boxes[name],
                "predicted_iou": float(np.asarray(scores)[0]),
                "area": int(mask.sum()),
                "segmentation": masks_to_coco_rle(mask[None])[0],
            }
        )
    (tmp / "photos.json").write_text(json.dumps({"model": checkpoint, "masks": records}) + "\n")
    row_strip(pictures, PHOTO_SIDE // 3).save(tmp / "photos.png")
    scores_text = ", ".join(f"{n} {r['predicted_iou']:.2f}" for n, r in zip(PHOTO_NAMES, records, strict=True))
    return f"{checkpoint} segmented the three photos from a box each (predicted IoU {scores_text})"


def _run_into(tmp: Path, checkpoint: str) -> dict[str, Any]:
    from pycocotools import mask as coco_mask

    from sam_jax.amg import generate_masks
    from sam_jax.masks import iou, masks_to_coco_rle
    from sam_jax.predictor import decode, encode

    t0 = time.perf_counter()
    params = load(checkpoint)
    image = np.asarray(Image.open(ASSETS / "sample.png").convert("RGB"))
    spec = json.loads((ASSETS / "sample.json").read_text())
    truth = np.stack([np.asarray(Image.open(ASSETS / f)) > 0 for f in spec["masks"]])
    emb = encode(params, image)

    points = np.array([[o["point"]] for o in spec["objects"]], np.float64)  # (K, 1, 2)
    masks, scores, _ = (np.asarray(a) for a in decode(params, emb, points))
    best = np.argmax(scores, axis=1)
    point_masks = masks[np.arange(len(best)), best]
    point_scores = scores[np.arange(len(best)), best]
    boxes = np.array([o["box"] for o in spec["objects"]], np.float64)
    box_masks, box_scores, _ = (np.asarray(a) for a in decode(params, emb, box=boxes, multimask_output=False))
    box_masks, box_scores = box_masks[:, 0], box_scores[:, 0]

    automatic = generate_masks(params, image, **AUTOMATIC_OPTIONS)
    automatic_masks = [
        coco_mask.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}) > 0
        for r in automatic
    ]

    records = []
    for kind, ms, ss in (("point", point_masks, point_scores), ("box", box_masks, box_scores)):
        for k, (m, s) in enumerate(zip(ms, ss, strict=True)):
            prompt = {"points": points[k].tolist()} if kind == "point" else {"box": boxes[k].tolist()}
            records.append(
                {
                    "object": k,
                    "prompt": kind,
                    **prompt,
                    "predicted_iou": float(s),
                    "iou_with_truth": float(iou(m, truth[k])),
                    "area": int(m.sum()),
                    "segmentation": masks_to_coco_rle(m[None])[0],
                }
            )
    point_prompts = [{"points": p.tolist()} for p in points]
    overlay(image, list(point_masks), point_prompts).save(tmp / "points.png")
    overlay(image, list(box_masks), [{"box": b.tolist()} for b in boxes]).save(tmp / "boxes.png")
    prompts = [{"points": r["point_coords"]} for r in automatic]
    overlay(image, automatic_masks, prompts).save(tmp / "automatic.png")
    (tmp / "automatic.json").write_text(
        json.dumps({"image": "sample.png", "model": checkpoint, "options": AUTOMATIC_OPTIONS, "masks": automatic})
        + "\n"
    )
    (tmp / "masks.json").write_text(json.dumps({"image": "sample.png", "model": checkpoint, "masks": records}) + "\n")
    summary = {
        "objects": len(spec["objects"]),
        "point_miou": float(np.mean([r["iou_with_truth"] for r in records if r["prompt"] == "point"])),
        "box_miou": float(np.mean([r["iou_with_truth"] for r in records if r["prompt"] == "box"])),
        "automatic_masks": len(automatic),
        "seconds": time.perf_counter() - t0,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam_jax.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo-output", help="output folder (replaced atomically)")
    parser.add_argument("--checkpoint", default="tiny-shapes", help="anything sam_jax.load takes")
    parser.add_argument(
        "--photos-checkpoint",
        default="lite-medsam",
        help="the model for the reference photos (default: LiteMedSAM's pretrained weights); 'none' leaves them out",
    )
    args = parser.parse_args(argv)
    photos = None if args.photos_checkpoint == "none" else args.photos_checkpoint
    try:
        enable_from_environment()  # a second `make demo` loads its programs instead of compiling them
        s = run(Path(args.output), args.checkpoint, photos)
    except (OSError, ValueError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    written = ", ".join(sorted(p.name for p in Path(args.output).iterdir()))
    print(
        f"segmented {s['objects']} objects of the sample image from a point and from a box each: "
        f"mIoU with the truth {s['point_miou']:.3f} (points), {s['box_miou']:.3f} (boxes); "
        f"found {s['automatic_masks']} objects automatically; {s['seconds']:.1f} s.\n"
        f"Photos: {s['photos']}.\nWrote into {args.output}/: {written}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
