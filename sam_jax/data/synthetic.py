"""Procedural scenes of textured, overlapping shapes with their visible masks: training data
that needs no files, deterministic by seed, and the held-out split the embedded model is
evaluated on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from sam_jax.data.base import Sample, check_index, check_int

SHAPE_KINDS = ("circle", "ellipse", "rectangle", "triangle", "polygon", "star")
BACKGROUND_KINDS = ("gradient", "noise", "stripes", "checker")
TEXTURE_KINDS = ("flat", "gradient", "stripes", "noise")
# Visible parts smaller than this are dropped from a synthetic scene's masks: they are
# slivers that vanish at the model's low-res mask resolution anyway.
MIN_VISIBLE_PIXELS = 30
# Bounding radius of a shape as a fraction of the image side. Shapes smaller than this are
# only one or two 16-pixel patches wide in a small model's 128-pixel input: below what its
# embedding grid resolves, so they measure the grid rather than the model.
RADIUS_RANGE = (0.1, 0.3)


class Scene(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (K, H, W) bool, visible parts
    kinds: tuple[str, ...]  # K shape kinds


def colour_offset(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A random RGB direction with Euclidean length in [low, high]; shape (3,)."""
    d = rng.normal(size=3)
    return d / (np.linalg.norm(d) + 1e-9) * rng.uniform(low, high)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights stretching n_in grid values over n_out pixels."""
    pos = (np.arange(n_out) + 0.5) * ((n_in - 1) / n_out)
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), np.minimum(lo + 1, n_in - 1)] += frac
    return m


def unit_field(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray, scale: float) -> np.ndarray:
    """A pattern in about [-0.5, 0.5] over the pixel grid `ys` (h, 1) x `xs` (1, w); shape (h, w).

    `scale` is the extent of the region in pixels; it sets the stripe/checker/noise periods.
    """
    h, w = ys.shape[0], xs.shape[1]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    proj = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
    if kind == "gradient":
        lo, hi = proj.min(), proj.max()
        return (proj - lo) / max(float(hi - lo), 1e-6) - 0.5
    if kind == "stripes":
        period = rng.uniform(0.04, 0.2) * scale + 3.0
        return 0.5 * np.sin(proj * np.float32(2.0 * np.pi / period) + np.float32(rng.uniform(0.0, 2.0 * np.pi)))
    if kind == "checker":
        cell = max(int(rng.uniform(0.03, 0.2) * scale), 4)
        return ((ys // cell + xs // cell) % 2) - 0.5
    # "noise": smooth value noise (a coarse random grid, interpolated) plus a little grain;
    # matmuls with interpolation matrices are much cheaper than per-pixel interpolation.
    g = int(rng.integers(3, 12))
    grid = rng.uniform(-0.5, 0.5, (g, g)).astype(np.float32)
    smooth = _interp_matrix(h, g) @ grid @ _interp_matrix(w, g).T
    return smooth + 0.15 * rng.standard_normal((h, w), dtype=np.float32)


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


def pick_colour(
    draw: Callable[[int], np.ndarray],
    background: np.ndarray,
    others: Sequence[np.ndarray],
    contrast: float,
    spacing: float,
    tries: int,
) -> np.ndarray:
    """A colour at least `contrast` RGB units from the background and `spacing` from `others`.

    Rejection sampling over `draw(attempt)`; after `tries` draws the best candidate is taken,
    so this always returns. Every draw is made in order, so scenes stay reproducible.
    """
    best, best_margin = background, -np.inf
    for attempt in range(tries):
        colour = draw(attempt)
        margin = float(np.linalg.norm(colour - background)) - contrast
        for other in others:
            margin = min(margin, float(np.linalg.norm(colour - other)) - spacing)
        if margin >= 0:
            return colour
        if margin > best_margin:
            best, best_margin = colour, margin
    return best


def inside_polygon(ys: np.ndarray, xs: np.ndarray, vy: np.ndarray, vx: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of pixel centres; ys (h, 1), xs (1, w) -> (h, w) bool.

    The crossing position of each edge depends only on the row, so per edge this is one
    (h, 1) computation and one (h, w) comparison.
    """
    inside = np.zeros((ys.shape[0], xs.shape[1]), bool)
    for i in range(len(vy)):
        y1, x1, y2, x2 = vy[i], vx[i], vy[i - 1], vx[i - 1]
        if y1 == y2:
            continue
        spans = (y1 > ys) != (y2 > ys)
        cross_x = x1 + (ys - y1) * np.float32((x2 - x1) / (y2 - y1))
        inside ^= spans & (xs < cross_x)
    return inside


def shape_mask(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray, r: float) -> np.ndarray:
    """One shape of bounding radius `r` centred at the origin, over offsets ys (h, 1), xs (1, w).

    Returns:
        (h, w) bool: pixel centres inside the shape.
    """
    if kind == "circle":
        return ys * ys + xs * xs <= r * r
    theta = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    if kind in ("ellipse", "rectangle"):
        u, v = xs * c + ys * s, ys * c - xs * s  # coordinates along the shape's own axes
        if kind == "ellipse":
            b = r * rng.uniform(0.35, 0.85)
            return (u / r) ** 2 + (v / b) ** 2 <= 1.0
        phi = rng.uniform(0.3, 1.27)  # half-diagonal r split into half-width and half-height
        return (np.abs(u) <= r * np.cos(phi)) & (np.abs(v) <= r * np.sin(phi))
    if kind == "triangle":
        angles: np.ndarray = theta + 2.0 * np.pi / 3.0 * np.arange(3) + rng.uniform(-0.35, 0.35, 3)
        radii: np.ndarray = np.full(3, r)
    elif kind == "polygon":
        n = int(rng.integers(5, 9))
        angles = theta + 2.0 * np.pi / n * np.arange(n)
        radii = np.full(n, r)
    else:  # star: alternating outer and inner vertices
        n = int(rng.integers(5, 9))
        angles = theta + np.pi / n * np.arange(2 * n)
        radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.38, 0.6))
    return inside_polygon(ys, xs, radii * np.sin(angles), radii * np.cos(angles))


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


class ShapeWindow(NamedTuple):
    rows: slice  # the shape's bounding box within the image
    cols: slice
    ys: np.ndarray  # (h, 1) float32 offsets of the box's pixel centres from the shape's centre
    xs: np.ndarray  # (1, w)


def shape_window(hw: tuple[int, int], cy: float, cx: float, r: float) -> ShapeWindow | None:
    """Where a shape of bounding radius `r` centred at (cy, cx) lies in an image of size `hw`;
    None when it lies outside. Drawing in this box only is what keeps a scene cheap."""
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, hw[0])
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, hw[1])
    if y0 >= y1 or x0 >= x1:
        return None
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    return ShapeWindow(slice(y0, y1), slice(x0, x1), ys, xs)


def finish_scene(image: np.ndarray, owner: np.ndarray, kinds: Sequence[str], min_visible: int) -> Scene:
    """The scene from a float image and the index of the shape visible at each pixel (-1: none):
    one mask per shape showing at least `min_visible` pixels."""
    area = np.bincount(owner[owner >= 0], minlength=len(kinds))
    keep = np.flatnonzero(area >= min_visible)
    masks = owner[None] == keep[:, None, None]
    pixels = np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)
    return Scene(pixels, masks, tuple(kinds[int(i)] for i in keep))


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
        from sam_jax.data.families import FAMILIES  # families.py draws with this module's helpers

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
        from sam_jax.data.families import FAMILIES, render_family_scene

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
