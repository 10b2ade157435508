"""Drawing helpers every scene family shares: colours, texture fields, shape masks, the
window a shape is drawn in, and the finished scene with its visible masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

# The classic scenes' shape kinds (every family draws these; `broad` adds its own).
SHAPE_KINDS = ("circle", "ellipse", "rectangle", "triangle", "polygon", "star")


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
