"""`AmgOptions`: the reference generator's options, same names and defaults, checked."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from sam_jax.amg import utils
from sam_jax.io import host_memory

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle", "polygons", "geojson")
# Host bytes per crop (its box, its per-crop results) and per point of a layer's grid (the
# grid in float64 and the temporaries that build and scale it): upper estimates, from which
# the bounds on `crop_n_layers` and `points_per_side` follow (a quarter of host memory).
CROP_BYTES = 2048
GRID_POINT_BYTES = 64


def memory_budget() -> int:
    """Bytes that one set of options may plan for: a quarter of this machine's memory (as
    `--batch-size`'s bound)."""
    return host_memory() // 4


def _machine() -> str:
    return f"a quarter of this machine's {host_memory() / 2**30:.0f} GiB"


def max_crop_layers() -> int:
    """The most crop layers whose crops' records fit `memory_budget` (layer i has 4**i crops)."""
    layers, crops = 0, 1
    while (crops + 4 ** (layers + 1)) * CROP_BYTES <= memory_budget():
        layers, crops = layers + 1, crops + 4 ** (layers + 1)
    return layers


def max_points_per_side() -> int:
    """The largest grid side whose points fit `memory_budget`."""
    return max(1, math.isqrt(memory_budget() // GRID_POINT_BYTES))


@dataclasses.dataclass(frozen=True)
class AmgOptions:
    """The reference generator's options, same names and defaults (tuned there for ViT-H).

    Attributes:
        points_per_side: the grid has points_per_side**2 points; None when `point_grids` is given.
        points_per_batch: points decoded in one call (more is faster and uses more memory).
        pred_iou_thresh: keep masks whose predicted IoU is above this (<= 0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (<= 0 disables).
        stability_score_offset: the logit shift used by the stability score.
        box_nms_thresh: box IoU above which the lower-scored of two masks of a crop is dropped.
        crop_n_layers: extra layers of crops; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU for suppression across crops (smaller crops win).
        crop_overlap_ratio: overlap of first-layer crops, as a fraction of the short side.
        crop_n_points_downscale_factor: layer i uses points_per_side / factor**i points per side.
        point_grids: explicit (N, 2) grids in [0, 1] (x, y), one per crop layer.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this (pixels).
        output_mode: "binary_mask", "uncompressed_rle" or "coco_rle" (the reference's), or
            "polygons" (`{"size": [H, W], "polygons": [...]}`, `sam_jax.vectors`) or "geojson"
            (a GeoJSON Polygon or MultiPolygon in pixel coordinates).
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[np.ndarray, ...] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int >= {low}, got {v!r}")
            if v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v}")

        def number(name: str, low: float, high: float | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"{name} must be a number, got {v!r}")
            if not np.isfinite(v) or v < low or (high is not None and v > high):
                if high is None:
                    bounds = f">= {low}"
                else:
                    bounds = f"<= {high}" if low == -np.inf else f"in [{low}, {high}]"
                raise ValueError(f"{name} must be a number {bounds}, got {v}")

        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("give exactly one of points_per_side or point_grids")
        if self.points_per_side is not None:
            integer("points_per_side", 1)
        integer("points_per_batch", 1)
        integer("crop_n_layers", 0)
        integer("crop_n_points_downscale_factor", 1)
        integer("min_mask_region_area", 0)
        # Options that multiply memory are bounded by this machine's before anything is built
        # (their work grows with them too: 4**i crops in layer i, points_per_side**2 prompts).
        if self.crop_n_layers > max_crop_layers():
            crops = "a billion or more" if self.crop_n_layers > 14 else str((4 ** (self.crop_n_layers + 1) - 1) // 3)
            raise ValueError(
                f"crop_n_layers {self.crop_n_layers} makes {crops} crops; at most {max_crop_layers()} layers' "
                f"crops fit in {_machine()}"
            )
        if self.points_per_side is not None and self.points_per_side > max_points_per_side():
            side = int(self.points_per_side)
            raise ValueError(
                f"points_per_side {side} makes a grid of {side**2} points; at most {max_points_per_side()} points per "
                f"side fit in {_machine()}"
            )
        # The reference filters only with a threshold above 0: any lower one (negative too)
        # means no filter, as there. Above 1 nothing would pass: refused, as a likely typo.
        for name in ("pred_iou_thresh", "stability_score_thresh"):
            number(name, -np.inf, 1.0)
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            number(name, 0.0, 1.0)
        number("stability_score_offset", 0.0)
        number("crop_overlap_ratio", 0.0, 1.0)
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {self.output_mode!r}")
        if self.points_per_side is not None:
            for layer in range(1, self.crop_n_layers + 1):
                if int(self.points_per_side / self.crop_n_points_downscale_factor**layer) < 1:
                    raise ValueError(
                        f"crop_n_points_downscale_factor {self.crop_n_points_downscale_factor} leaves no points in "
                        f"crop layer {layer} (points_per_side {self.points_per_side} / "
                        f"{self.crop_n_points_downscale_factor}**{layer} < 1); use a smaller factor or fewer layers"
                    )
        if self.point_grids is not None:
            if isinstance(self.point_grids, (str, bytes, np.ndarray)) or not isinstance(self.point_grids, Sequence):
                raise TypeError(
                    "point_grids must be a list of (N, 2) arrays, one per crop layer, "
                    f"got {type(self.point_grids).__name__}"
                )
            grids = []
            for i, g in enumerate(self.point_grids):
                arr = np.asarray(g)
                if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                    raise TypeError(f"point_grids[{i}] must be an array of numbers of shape (N, 2), got {arr.dtype}")
                if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
                    raise ValueError(f"point_grids[{i}] must have shape (N, 2) with N >= 1, got {arr.shape}")
                if not np.all((arr >= 0) & (arr <= 1)):
                    raise ValueError(f"point_grids[{i}] must hold (x, y) coordinates normalised to [0, 1]")
                grids.append(arr.astype(np.float64))
            points = sum(len(g) for g in grids)
            if points * GRID_POINT_BYTES > memory_budget():
                raise ValueError(
                    f"point_grids hold {points} points; at most {memory_budget() // GRID_POINT_BYTES} fit in "
                    f"{_machine()}"
                )
            if len(grids) < self.crop_n_layers + 1:
                raise ValueError(
                    f"point_grids must hold one grid per crop layer ({self.crop_n_layers + 1}), got {len(grids)}"
                )
            object.__setattr__(self, "point_grids", tuple(grids))

    def check_memory(self, embedding_size: int, prompt_embed_dim: int, low_res_size: int, name: str = "") -> None:
        """Refuses a `points_per_batch` whose decoder work for one batch (each point's copy of
        the image tokens and its candidates' low-res logits, float32) would not fit
        `memory_budget`; `name` is how the message names the option (default its field name)."""
        per_point = 4 * (2 * embedding_size**2 * prompt_embed_dim + 4 * low_res_size**2)
        if self.points_per_batch * per_point > memory_budget():
            raise ValueError(
                f"{name or 'points_per_batch'} {self.points_per_batch} needs "
                f"{self.points_per_batch * per_point / 2**30:.1f} GiB for one batch of this model's decoder; at most "
                f"{max(memory_budget() // per_point, 1)} points fit in {_machine()}"
            )

    def layer_point_grids(self) -> tuple[np.ndarray, ...]:
        if self.point_grids is not None:
            return self.point_grids
        assert self.points_per_side is not None
        return tuple(
            utils.build_all_layer_point_grids(
                self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
            )
        )


def options_from(args: Sequence[object] = (), kwargs: dict[str, object] | None = None) -> AmgOptions:
    """`AmgOptions` from options given by position (the reference generator's order, its
    fields' order here) and by name, with one-line errors naming what is wrong."""
    kwargs = dict(kwargs or {})
    fields = [f.name for f in dataclasses.fields(AmgOptions)]
    if len(args) > len(fields):
        raise TypeError(f"at most {len(fields)} options by position ({', '.join(fields)}), got {len(args)}")
    twice = sorted(set(fields[: len(args)]) & set(kwargs))
    if twice:
        raise TypeError(f"option(s) {', '.join(twice)} given by position and by name")
    options = {**dict(zip(fields[: len(args)], args, strict=False)), **kwargs}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; see sam_jax.AmgOptions for the accepted ones")
    return AmgOptions(**options)  # type: ignore[arg-type]
