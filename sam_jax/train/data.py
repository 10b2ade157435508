"""Batches for the step: samples resized into the model frame, targets on the low-res grid,
in a data order that is a pure function of (seed, cursor), prepared on a host thread."""

from __future__ import annotations

import typing
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from sam_jax import transforms
from sam_jax.config import SamConfig
from sam_jax.modeling.sam import SamParams
from sam_jax.predictor import encode_padded
from sam_jax.train.config import TrainConfig
from sam_jax.train.step import Batch

# ----------------------------------------------------------------------------- data


def resize_mask(mask: np.ndarray, input_hw: tuple[int, int], image_size: int, side: int) -> np.ndarray:
    """A full-resolution (H, W) bool mask -> (side, side) bool in the padded model frame.

    Resized with the image (bilinear, then > 0.5), zero-padded to the model input, then
    area-averaged to the low-res grid and thresholded at one half.
    """
    h, w = input_hw
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BILINEAR)) > 127
    padded = np.zeros((image_size, image_size), np.float32)
    padded[:h, :w] = m
    f = image_size // side
    return padded.reshape(side, f, side, f).mean(axis=(1, 3)) >= 0.5


def target_side(config: SamConfig, cfg: TrainConfig) -> int:
    """Side of the training targets: the low-res side times `cfg.loss_upsample`."""
    side = config.low_res_mask_size * cfg.loss_upsample
    if config.image_size % side:
        raise ValueError(
            f"loss_upsample {cfg.loss_upsample} must divide image_size / low-res side "
            f"({config.image_size} / {config.low_res_mask_size})"
        )
    return side


def prepare_sample(
    image: np.ndarray, masks: np.ndarray, config: SamConfig, side: int | None = None
) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """(H, W, 3) uint8 and (K, H, W) bool -> padded image, input (h, w), (K', L, L) bool targets
    with L = `side` (default: the low-res side).

    Instances that vanish at that resolution are dropped.
    """
    resized = transforms.resize_to_model(image, config)
    input_hw = resized.shape[:2]
    side = side or config.low_res_mask_size
    targets = np.stack([resize_mask(m, input_hw, config.image_size, side) for m in masks]) if len(masks) else None
    if targets is not None:
        targets = targets[targets.any(axis=(1, 2))]
    empty = np.zeros((0, side, side), bool)
    return transforms.pad_to_square(resized, config.image_size), input_hw, targets if targets is not None else empty


class EmbeddingCache:
    """A frozen image encoder's embedding of each training sample, computed once and kept on
    the host: after the first epoch a step runs only the prompt encoder and the decoder.

    Each sample is encoded alone, so its embedding does not depend on the batch it came in.
    Up to `max_bytes` are kept; samples past that are encoded again when they come back.
    """

    def __init__(self, params: SamParams, max_bytes: int) -> None:
        self.params, self.max_bytes = params, max_bytes
        self.kept: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.computed = 0

    def __call__(
        self, index: int, padded: np.ndarray, input_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(embedding (E, E, C), early features (E, E, D) for a SAM-HQ model, else None)."""
        if index in self.kept:
            return self.kept[index]
        hw = np.asarray([input_hw], np.int32)
        emb, early = encode_padded(self.params, padded[None], hw)
        out = (np.asarray(emb)[0], None if early is None else np.asarray(early)[0])
        self.computed += 1
        if (len(self.kept) + 1) * _nbytes(out) <= self.max_bytes:
            self.kept[index] = out
        return out

    @property
    def kept_bytes(self) -> int:
        return sum(_nbytes(e) for e in self.kept.values())


def _nbytes(arrays: tuple[np.ndarray, np.ndarray | None]) -> int:
    return sum(a.nbytes for a in arrays if a is not None)


class BatchStream:
    """Deterministic batches: the data order is a pure function of (seed, cursor).

    The stream visits the datasets' samples in a seeded permutation per epoch; `cursor`
    counts samples consumed (images without usable instances are skipped and counted), so
    a resumed run that restores the cursor sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        config: SamConfig,
        cfg: TrainConfig,
        cursor: int = 0,
        embeddings: EmbeddingCache | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.total = sum(self.sizes)
        if self.total == 0:
            raise ValueError("the training data is empty")
        self.config, self.cfg, self.cursor = config, cfg, cursor
        self.side = target_side(config, cfg)
        self.skipped_images = 0
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation, computed once per epoch rather than per sample."""
        if self._epoch != epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.cfg.seed, epoch]).permutation(self.total)
        return self._perm

    def _sample(self, position: int) -> tuple[int, Any]:
        """(index over all datasets, sample) of the `position`-th sample of the stream."""
        epoch, offset = divmod(position, self.total)
        index = int(self._order(epoch)[offset])
        rest = index
        for dataset, size in zip(self.datasets, self.sizes, strict=True):
            if rest < size:
                return index, dataset[rest]
            rest -= size
        raise AssertionError("unreachable")

    def next_batch(self) -> tuple[Batch, int]:
        """Returns (batch, cursor after it)."""
        images: list[np.ndarray] = []
        hws: list[tuple[int, int]] = []
        targets: list[np.ndarray] = []
        embeddings: list[tuple[np.ndarray, np.ndarray | None]] = []
        p = self.cfg.prompts_per_image
        misses = 0
        while len(images) < self.cfg.batch_size:
            position = self.cursor
            self.cursor += 1
            index, sample = self._sample(position)
            padded, hw, t = prepare_sample(sample.image, sample.masks, self.config, self.side)
            if len(t) == 0:
                self.skipped_images += 1
                misses += 1
                if misses > 100 * self.cfg.batch_size:
                    raise ValueError("no usable instance masks found in 100 batches of training data")
                continue
            rng = np.random.default_rng([self.cfg.seed, position, 3])
            pick = rng.choice(len(t), size=p, replace=len(t) < p)
            images.append(padded)
            hws.append(hw)
            targets.append(t[pick])
            if self.embeddings is not None:
                embeddings.append(self.embeddings(index, padded, hw))
        # Host arrays: the loop puts the batch on the mesh in one step.
        batch = Batch(
            images=typing.cast(jax.Array, np.stack(images)),
            input_hw=typing.cast(jax.Array, np.asarray(hws, np.int32)),
            targets=typing.cast(jax.Array, np.stack(targets)),
            embeddings=typing.cast(jax.Array, np.stack([e for e, _ in embeddings])) if embeddings else None,
            early_features=(
                typing.cast(jax.Array, np.stack([f for _, f in embeddings if f is not None]))
                if embeddings and embeddings[0][1] is not None
                else None
            ),
        )
        return batch, self.cursor

    def __iter__(self) -> Iterator[tuple[Batch, int]]:
        while True:
            yield self.next_batch()


# ----------------------------------------------------------------------------- the loop


def prefetch(stream: BatchStream, depth: int = 2) -> Generator[tuple[Batch, int], None, None]:
    """Prepares batches on a host thread while the device runs the previous step."""
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                q.put(stream.next_batch())
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
