"""Scene families beyond the classic generator: objects from 5% to 60% of the side, rings and
holes, concave and thin shapes, palettes, lighting, blur, noise and other aspect ratios; and a
held-out family of shape kinds and textures that training on `broad` never sees.

A family is data (`SceneFamily`); `render_family_scene` draws one scene of it. The classic
scenes of `synthetic.py` are not drawn here and stay exactly as they were.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from sam_jax.data.drawing import (
    SHAPE_KINDS,
    Scene,
    colour_offset,
    finish_scene,
    inside_polygon,
    pick_colour,
    shape_mask,
    shape_window,
    unit_field,
)

# Shapes the `broad` family trains on: the classic six and six more kinds.
BROAD_SHAPES = (*SHAPE_KINDS, "ring", "holed", "crescent", "bar", "lshape", "blob")
# Kinds only the held-out family draws: concave, thin or with a gap, unlike any training kind.
HELDOUT_SHAPES = ("heart", "arrow", "cshape", "cross")
PALETTES = ("any", "muted", "vivid", "dark")


@dataclasses.dataclass(frozen=True)
class SceneFamily:
    """What a scene of a family may contain.

    Attributes:
        shapes: shape kinds drawn (uniformly).
        textures: object textures ("flat", "gradient", "stripes", "noise", "dots").
        backgrounds: background patterns ("gradient", "noise", "stripes", "checker", "dots").
        radius: bounding radius of a shape as a fraction of the longest side, drawn
            log-uniformly (small objects as frequent as large ones).
        min_contrast: least RGB distance between an object's colour and the background's.
        aspect: range of the short side over the long side.
        min_visible: visible parts with fewer pixels are not instances.
    """

    shapes: tuple[str, ...]
    textures: tuple[str, ...] = ("flat", "gradient", "stripes", "noise")
    backgrounds: tuple[str, ...] = ("gradient", "noise", "stripes", "checker")
    radius: tuple[float, float] = (0.025, 0.3)
    min_contrast: float = 60.0
    aspect: tuple[float, float] = (0.5, 1.0)
    min_visible: int = 16


FAMILIES = {
    "broad": SceneFamily(shapes=BROAD_SHAPES),
    "heldout-family": SceneFamily(
        shapes=HELDOUT_SHAPES,
        textures=("flat", "gradient", "stripes", "noise", "dots"),
        backgrounds=("gradient", "noise", "stripes", "checker", "dots"),
    ),
}


def _rotated(ys: np.ndarray, xs: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in the shape's own axes (u along, v across) for a rotation `theta`."""
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    return xs * c + ys * s, ys * c - xs * s


def _polygon(ys: np.ndarray, xs: np.ndarray, theta: float, points: np.ndarray) -> np.ndarray:
    """Inside test of a polygon given in the shape's own (u, v) axes, rotated by `theta`."""
    c, s = np.cos(theta), np.sin(theta)
    vx = points[:, 0] * c - points[:, 1] * s
    vy = points[:, 0] * s + points[:, 1] * c
    return inside_polygon(ys, xs, vy, vx)


def family_shape_mask(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray, r: float) -> np.ndarray:
    """One shape of any family, bounding radius `r`, centred at the origin; (h, w) bool.

    `ys` (h, 1) and `xs` (1, w) are pixel-centre offsets from the centre.
    """
    if kind in SHAPE_KINDS:
        return shape_mask(rng, kind, ys, xs, r)
    theta = float(rng.uniform(0.0, 2.0 * np.pi))
    u, v = _rotated(ys, xs, theta)
    d2 = ys * ys + xs * xs
    thin = max(float(r) * float(rng.uniform(0.08, 0.2)), 1.0)  # half-width of thin parts, >= 1 px
    if kind == "ring":
        return (d2 <= r * r) & (d2 >= (r * rng.uniform(0.4, 0.75)) ** 2)
    if kind == "cshape":  # a ring with a gap
        gap = rng.uniform(0.5, 1.4)
        angle = np.abs((np.arctan2(v, u) + np.pi) % (2 * np.pi) - np.pi)
        return (d2 <= r * r) & (d2 >= (r * rng.uniform(0.45, 0.75)) ** 2) & (angle >= gap / 2)
    if kind == "holed":  # a polygon with an elliptical hole
        n = int(rng.integers(4, 9))
        angles = np.arange(n) * 2.0 * np.pi / n
        outer = _polygon(ys, xs, theta, np.stack([np.cos(angles), np.sin(angles)], 1) * r)
        hu, hv = u - r * rng.uniform(-0.15, 0.15), v - r * rng.uniform(-0.15, 0.15)
        a, b = r * rng.uniform(0.25, 0.45), r * rng.uniform(0.2, 0.4)
        return outer & ((hu / a) ** 2 + (hv / b) ** 2 > 1.0)
    if kind == "crescent":
        shift = r * rng.uniform(0.3, 0.6)
        return (d2 <= r * r) & ((u - shift) ** 2 + v * v > (r * rng.uniform(0.7, 0.95)) ** 2)
    if kind == "bar":
        return (np.abs(u) <= r * 0.98) & (np.abs(v) <= thin)
    if kind == "cross":
        a = r * 0.95
        return ((np.abs(u) <= a) & (np.abs(v) <= thin)) | ((np.abs(u) <= thin) & (np.abs(v) <= a))
    if kind == "lshape":
        a = r / np.sqrt(2.0)
        return ((np.abs(u) <= a) & (v >= -a) & (v <= -a + 2 * thin)) | (
            (np.abs(v) <= a) & (u >= -a) & (u <= -a + 2 * thin)
        )
    if kind == "blob":  # a radius that varies smoothly with the angle: an irregular outline
        k = np.arange(2, 6)
        amp, phase = rng.uniform(0.0, 1.0, 4) / k, rng.uniform(0.0, 2.0 * np.pi, 4)
        phi = np.arctan2(v, u)[..., None]
        wave = (amp * np.cos(k * phi + phase)).sum(-1) / amp.sum()  # in [-1, 1]
        depth = rng.uniform(0.25, 0.55)
        return np.sqrt(d2) <= r * (1.0 - depth * (0.5 - 0.5 * wave))
    if kind == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, within 1.33 of (0, 0.15)
        x, y = u * (1.35 / r), -v * (1.35 / r) + 0.15
        return (x * x + y * y - 1.0) ** 3 <= x * x * y**3
    if kind == "arrow":
        w, head, tip = rng.uniform(0.15, 0.3), rng.uniform(0.5, 0.8), rng.uniform(0.0, 0.4)
        points = np.array([[-1, -w], [tip, -w], [tip, -head], [1, 0], [tip, head], [tip, w], [-1, w]]) * r * 0.98
        return _polygon(ys, xs, theta, points)
    raise ValueError(f"unknown shape kind {kind!r}")


def _palette_colour(rng: np.random.Generator, palette: str) -> np.ndarray:
    """An RGB colour (3,) in [0, 255] from a palette."""
    if palette == "muted":
        return np.clip(rng.uniform(40.0, 215.0) + colour_offset(rng, 10.0, 70.0), 0.0, 255.0)
    if palette == "vivid":
        hsv = np.array([[[rng.integers(180), rng.integers(150, 256), rng.integers(150, 256)]]], np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)
    if palette == "dark":
        return rng.uniform(5.0, 110.0, 3)
    return rng.uniform(15.0, 240.0, 3)


def _field(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray, scale: float) -> np.ndarray:
    """`unit_field`, plus "dots": a grid of round spots (the held-out family's pattern)."""
    if kind != "dots":
        return unit_field(rng, kind, ys, xs, scale)
    period = rng.uniform(0.06, 0.2) * scale + 4.0
    u, v = _rotated(ys, xs, float(rng.uniform(0.0, np.pi)))
    du, dv = (u % period) - period / 2, (v % period) - period / 2
    return np.where(du * du + dv * dv <= (period * rng.uniform(0.2, 0.35)) ** 2, 0.5, -0.5).astype(np.float32)


def render_family_scene(rng: np.random.Generator, size: int, max_objects: int, family: SceneFamily) -> Scene:
    """One scene of `family`, long side `size`: shapes drawn in order, later ones occluding.

    After drawing, the whole image may get a lighting gradient, a blur and sensor noise;
    the masks stay the shapes' exact visible parts.
    """
    short = max(round(size * rng.uniform(*family.aspect)), 16)
    h, w = (size, short) if rng.uniform() < 0.5 else (short, size)
    palette = PALETTES[int(rng.integers(len(PALETTES)))]
    background = _palette_colour(rng, palette)
    ys_all = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs_all = np.arange(w, dtype=np.float32)[None, :] + 0.5
    kind = family.backgrounds[int(rng.integers(len(family.backgrounds)))]
    field = _field(rng, kind, ys_all, xs_all, float(size))
    image = background.astype(np.float32) + field[..., None] * colour_offset(rng, 12.0, 45.0).astype(np.float32)
    owner = np.full((h, w), -1, np.int32)
    kinds: list[str] = []
    colours: list[np.ndarray] = []
    log_lo, log_hi = np.log(family.radius[0]), np.log(family.radius[1])
    for k in range(int(rng.integers(1, max_objects + 1))):
        kind = family.shapes[int(rng.integers(len(family.shapes)))]
        r = size * float(np.exp(rng.uniform(log_lo, log_hi)))
        cy, cx = rng.uniform(-0.05, 1.05) * h, rng.uniform(-0.05, 1.05) * w
        colour = pick_colour(
            # From the palette, then from any colour when the palette cannot give the contrast.
            lambda attempt: _palette_colour(rng, palette if attempt < 15 else "any"),
            background,
            colours,
            family.min_contrast,
            0.6 * family.min_contrast,
            30,
        )
        kinds.append(kind)
        colours.append(colour)
        window = shape_window((h, w), cy, cx, r)
        if window is None:
            continue
        ys, xs = window.ys, window.xs
        mask = family_shape_mask(rng, kind, ys, xs, r)
        texture = family.textures[int(rng.integers(len(family.textures)))]
        region = image[window.rows, window.cols]
        if texture == "flat":
            region[mask] = colour
        else:  # amplitude well below the contrast, so the object stays one object
            amplitude = colour_offset(rng, 0.15, 0.45).astype(np.float32) * np.float32(family.min_contrast)
            tex = _field(rng, texture, ys, xs, float(max(mask.shape)))
            region[mask] = colour.astype(np.float32) + tex[mask][:, None] * amplitude
        owner[window.rows, window.cols][mask] = k
    # Lighting: a smooth brightness ramp over the whole scene.
    ramp = unit_field(rng, "gradient", ys_all, xs_all, float(size))
    image *= (1.0 + rng.uniform(0.0, 0.35) * ramp)[..., None]
    if rng.uniform() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=float(rng.uniform(0.4, 1.2)))
    image += rng.uniform(0.0, 8.0) * rng.standard_normal((h, w, 1), dtype=np.float32)
    return finish_scene(image, owner, kinds, family.min_visible)
