"""Procedural scenes of textured, overlapping shapes with their visible masks: training data
that needs no files, deterministic by seed, and the held-out split the embedded model is
evaluated on."""

from __future__ import annotations

import numpy as np

from sam_jax.data.base import Sample, check_index, check_int
from sam_jax.data.drawing import (
    SHAPE_KINDS,
    Scene,
    colour_offset,
    finish_scene,
    pick_colour,
    shape_mask,
    shape_window,
    unit_field,
)
from sam_jax.data.families import FAMILIES, render_family_scene

BACKGROUND_KINDS = ("gradient", "noise", "stripes", "checker")
TEXTURE_KINDS = ("flat", "gradient", "stripes", "noise")
# Visible parts smaller than this are dropped from a synthetic scene's masks: they are
# slivers that vanish at the model's low-res mask resolution anyway.
MIN_VISIBLE_PIXELS = 30
# Bounding radius of a shape as a fraction of the image side. Shapes smaller than this are
# only one or two 16-pixel patches wide in a small model's 128-pixel input: below what its
# embedding grid resolves, so they measure the grid rather than the model.
RADIUS_RANGE = (0.1, 0.3)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A low-to-moderate contrast textured background.

    Returns:
        (image, base): image (size, size, 3) float32 in about [0, 255], and its mean colour (3,).
    """
    base = rng.uniform(40.0, 215.0, 3)
    offset = colour_offset(rng, 12.0, 45.0)
    coords = np.arange(size, dtype=np.float32) + 0.5
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    field = unit_field(rng, kind, coords[:, None], coords[None, :], float(size))
    image = base.astype(np.float32) + field[..., None] * offset.astype(np.float32)
    # Sensor-like grain so that no region is perfectly flat.
    image += 3.0 * rng.standard_normal((size, size, 1), dtype=np.float32)
    return image, base


def _paint(
    rng: np.random.Generator, region: np.ndarray, mask: np.ndarray, colour: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> None:
    """Paints `colour` with a random texture into `region` (h, w, 3) where `mask` (h, w) is set."""
    kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    if kind == "flat":
        region[mask] = colour
        return
    # Texture amplitude stays well below the colour distance to the background (>= 100).
    high = 35.0 if kind == "noise" else 50.0
    offset = colour_offset(rng, 15.0, high).astype(np.float32)
    field = unit_field(rng, kind, ys, xs, float(max(ys.shape[0], xs.shape[1])))
    region[mask] = colour.astype(np.float32) + field[mask][:, None] * offset


def render_scene(rng: np.random.Generator, size: int, max_objects: int) -> Scene:
    """Draws 1..max_objects shapes in order onto a background; later shapes occlude earlier ones."""
    image, background = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # index of the shape visible at each pixel
    kinds: list[str] = []
    colours: list[np.ndarray] = []
    for k in range(int(rng.integers(1, max_objects + 1))):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        r = size * rng.uniform(*RADIUS_RANGE)
        cy, cx = size * rng.uniform(-0.05, 1.05, 2)  # may lie partly outside the image
        colour = pick_colour(lambda _: rng.uniform(15.0, 240.0, 3), background, colours, 100.0, 60.0, 20)
        kinds.append(kind)
        colours.append(colour)
        window = shape_window((size, size), cy, cx, r)
        if window is None:
            continue
        mask = shape_mask(rng, kind, window.ys, window.xs, r)
        _paint(rng, image[window.rows, window.cols], mask, colour, window.ys, window.xs)
        owner[window.rows, window.cols][mask] = k
    return finish_scene(image, owner, kinds, MIN_VISIBLE_PIXELS)


def make_scene(rng: np.random.Generator, size: int, max_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """One procedural scene: textured shapes over a textured background.

    Args:
        rng: the only source of randomness; the scene is a pure function of its state.
        size: side of the square image in pixels.
        max_objects: 1..max_objects shapes are drawn; fewer may remain visible.

    Returns:
        (image, masks): image (size, size, 3) uint8 RGB; masks (K, size, size) bool, the
        visible part of each shape that shows at least `MIN_VISIBLE_PIXELS` pixels, in drawing
        order. Masks are mutually disjoint.
    """
    scene = render_scene(rng, size, max_objects)
    return scene.image, scene.masks


class SyntheticShapes:
    """Procedural scenes: 1..max_objects occluding shapes over a textured background.

    Sample i is a pure function of (seed, i, family), independent of the order of access.

    The `classic` family (the embedded model's first generator): square images, shapes of
    `SHAPE_KINDS` with a diameter of 20%..60% of the side at a random position (possibly
    partly outside), each with its own colour, far from the background's, and texture
    (flat, gradient, stripes, noise) over a gradient, value-noise, stripes or checker
    background of low-to-moderate contrast. The other families (`sam_jax.data.FAMILIES`):
    `broad` (objects of 5%..60% of the long side, rings, holes, concave and thin shapes,
    palettes, lighting, blur, noise, aspect ratios down to 1:2) and `heldout-family`
    (shape kinds and a texture that `broad` never draws).
    Masks are the visible parts; too small ones are dropped (so K may be less than the
    number drawn, rarely 0).

    Args:
        size: side of the square images (the long side for other families) in pixels, >= 32.
        length: number of samples, >= 1.
        seed: >= 0; datasets with different seeds hold different scenes.
        max_objects: most shapes drawn per scene, >= 1.
        family: "classic" or a name in `sam_jax.data.FAMILIES`.
    """

    def __init__(
        self, size: int = 256, length: int = 10_000, seed: int = 0, max_objects: int = 5, family: str = "classic"
    ) -> None:
        self.size = check_int(size, "size", 32)
        self.length = check_int(length, "length", 1)
        self.seed = check_int(seed, "seed", 0)
        self.max_objects = check_int(max_objects, "max_objects", 1)
        if family != "classic" and family not in FAMILIES:
            raise ValueError(f"family must be 'classic' or one of {', '.join(FAMILIES)}, got {family!r}")
        self.family = family

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        i = check_index(index, self.length)
        if self.family == "classic":
            scene = render_scene(np.random.default_rng([self.seed, i]), self.size, self.max_objects)
            return Sample(scene.image, scene.masks, f"synthetic:{self.seed}:{i}", scene.kinds)
        rng = np.random.default_rng([self.seed, i, FAMILY_STREAMS[self.family]])
        scene = render_family_scene(rng, self.size, self.max_objects, FAMILIES[self.family])
        return Sample(scene.image, scene.masks, f"synthetic:{self.family}:{self.seed}:{i}", scene.kinds)

    def __repr__(self) -> str:
        family = "" if self.family == "classic" else f", family={self.family!r}"
        return (
            f"SyntheticShapes(size={self.size}, length={self.length}, seed={self.seed}, "
            f"max_objects={self.max_objects}{family})"
        )


# A third seed word per family, so that a family's scenes never share a random stream with
# another's of the same (seed, index).
FAMILY_STREAMS = {"broad": 1, "heldout-family": 2}


# Synthetic scenes drawn with this seed are never used for training by default: the
# held-out split for evaluating models trained on `SyntheticShapes` of other seeds.
HELDOUT_SEED = 1_000_003


def heldout_synthetic(size: int, length: int = 200, family: str = "classic") -> SyntheticShapes:
    """The held-out synthetic split: `length` scenes of side `size` of `family` with `HELDOUT_SEED`."""
    return SyntheticShapes(size=size, length=length, seed=HELDOUT_SEED, family=family)


def scattered_scene(
    height: int, width: int, *, cell: int = 128, seed: int = 0
) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """A large scene of separate, known objects (for tiled automatic masks): one flat-coloured
    disc, ellipse or rectangle per `cell` x `cell` square of a grid, of 45%..75% of the cell
    across, placed at random within it, over a gently graded, grainy background. Drawn
    straight into uint8, so an 8,000 x 8,000 scene costs its 192 MB and little more.

    Args:
        height, width: image size in pixels (any, >= `cell`).
        cell: grid step in pixels, >= 32; objects are about half a cell across.
        seed: the scene is a pure function of (height, width, cell, seed).
    Returns:
        (image, objects): image (H, W, 3) uint8 RGB; objects a list of (y0, x0, mask), each
        mask (h, w) bool tight around the object, whose pixel (0, 0) is the image's (y0, x0).
        Objects never touch each other.
    """
    import cv2

    check_int(cell, "cell", 32)
    check_int(height, "height", cell)
    check_int(width, "width", cell)
    rng = np.random.default_rng([seed, height, width, cell])
    base = rng.uniform(90.0, 150.0, 3)
    ramp_y = np.linspace(-20.0, 20.0, height, dtype=np.float32)[:, None]
    ramp_x = np.linspace(-15.0, 15.0, width, dtype=np.float32)[None, :]
    image = np.empty((height, width, 3), np.uint8)
    for c in range(3):  # a channel at a time: float32 temporaries of one channel, not three
        grain = rng.integers(-4, 5, (height, width), dtype=np.int8)
        image[..., c] = np.clip(base[c] + ramp_y + ramp_x * (c - 1) + grain, 0, 255).astype(np.uint8)
    objects = []
    for cy in range(0, height - cell + 1, cell):
        for cx in range(0, width - cell + 1, cell):
            size = int(cell * rng.uniform(0.45, 0.75))
            y0 = cy + int(rng.integers(1, cell - size))
            x0 = cx + int(rng.integers(1, cell - size))
            mask = np.zeros((size, size), np.uint8)
            kind = int(rng.integers(3))
            half = size // 2
            if kind == 0:
                cv2.circle(mask, (half, half), half - 1, 1, -1)
            elif kind == 1:
                axes = (half - 1, max(int(half * rng.uniform(0.5, 0.9)), 4))
                cv2.ellipse(mask, (half, half), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            else:
                short = int(size * rng.uniform(0.5, 0.9))
                mask[(size - short) // 2 : (size - short) // 2 + short, 1:-1] = 1
            colour = pick_colour(lambda _: rng.uniform(15.0, 240.0, 3), base, [], 100.0, 60.0, 20)
            region = image[y0 : y0 + size, x0 : x0 + size]
            region[mask.astype(bool)] = np.clip(colour, 0, 255).astype(np.uint8)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            tight = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(bool)
            objects.append((y0 + int(rows[0]), x0 + int(cols[0]), tight))
    return image, objects
