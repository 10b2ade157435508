"""The device check's harness: the clock, the models the parts share, one row run within
its time, and the device's small facts (peak memory, torch's device, attention paths)."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from common import SMALL_MODELS, converted_in_memory, model_config, reference_model
from segment_anything import sam_model_registry

import sam_jax
from sam_jax.config import SamConfig
from sam_jax.modeling import attention_kernels
from sam_jax.modeling.sam import abstract_params
from sam_jax.testing import build_reference

from .plan import Plan
from .results import Recorder

REPO = Path(__file__).resolve().parents[2]

# The reference's float32 is float32 too: no TF32 in its matmuls or convolutions.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


class Clock:
    """The run's deadline, and the current part's: the earlier of its share and the run's end."""

    def __init__(self, budget: float, reserve: float = 5.0) -> None:
        self.start = time.monotonic()
        self.end = self.start + budget - reserve
        self.part_end = self.end

    def begin_part(self, share: float) -> None:
        self.part_end = min(self.end, time.monotonic() + share)

    def left(self) -> float:
        return self.part_end - time.monotonic()

    def run_left(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


# ----------------------------------------------------------------------------- the device


def jax_peak_gb() -> float | None:
    """Peak bytes the JAX allocator held on the first device so far (None where not reported)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 1e9


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def release_torch_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def attention_path_of(config: SamConfig, dtype: str, requested: str = "auto") -> str:
    """The path the encoder's global blocks take for this config (a ViT encoder) and dtype
    here, when the params ask for `requested` (their `attention`)."""
    vit, grid = config.image_encoder, (config.embedding_size, config.embedding_size)
    head_dim = vit.embed_dim // vit.num_heads
    return attention_kernels.attention_path(jnp.dtype(dtype), head_dim, grid, vit.use_rel_pos, requested)


def random_params(config: SamConfig, seed: int = 0) -> sam_jax.SamParams:
    """Weights of the right shapes for speed rows, with nothing to compile: LayerNorm scales 1,
    every other tensor a slice of one pool of normal(0, 0.02) draws (random-looking, never
    zeros, which multiply faster on GPUs than real data), placed on the default device."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params(config).weights)
    largest = max(math.prod(leaf.shape) for _, leaf in leaves)
    rng = np.random.default_rng(seed)
    pool = (0.02 * rng.standard_normal(largest + 4099)).astype(np.float32)
    drawn = []
    for i, (path, leaf) in enumerate(leaves):
        size = math.prod(leaf.shape)
        if jax.tree_util.keystr(path).endswith("['scale']"):
            drawn.append(np.ones(leaf.shape, np.float32))
        else:
            start = (i * 4093) % (len(pool) - size + 1)  # a different slice for each tensor
            drawn.append(pool[start : start + size].reshape(leaf.shape))
    return sam_jax.SamParams(config=config, weights=jax.device_put(jax.tree_util.tree_unflatten(treedef, drawn)))


# ----------------------------------------------------------------------------- one run


class Check:
    """One run: the plan, its clock and records, the models shared between parts, and the
    attention path every encoder program of the run asks for (`attention`: "auto", what
    `--attention` forces, or "blocked" once the cuDNN probe has failed)."""

    def __init__(self, plan: Plan, rec: Recorder, clock: Clock, attention: str = "auto") -> None:
        self.plan, self.rec, self.clock, self.attention = plan, rec, clock, attention
        self._parity: tuple[torch.nn.Module, sam_jax.SamParams] | None = None
        self._params: dict[str, sam_jax.SamParams] = {}
        self.costs: dict[str, float] = {}  # seconds a kind of row took last: the next one's estimate

    def parity_models(self) -> tuple[torch.nn.Module, sam_jax.SamParams]:
        """The parity model on both sides: the reference with every tensor randomised (with
        the tests' fixtures' seeds), on the device; the same weights converted in memory."""
        if self._parity is None:
            name = self.plan.parity_model
            ref = reference_model(name, seed=0 if name in SMALL_MODELS else 1)
            params = jax.device_put(converted_in_memory(ref, name))  # before `to` moves ref off the host
            self._parity = (ref.to(torch_device()), params)
        ref, params = self._parity
        return ref, params.with_attention(self.attention)

    def params(self, name: str) -> sam_jax.SamParams:
        if name == self.plan.parity_model:
            return self.parity_models()[1]
        if name not in self._params:
            self._params[name] = random_params(model_config(name))
        return self._params[name].with_attention(self.attention)

    def reference_encoder(self, name: str) -> torch.nn.Module:
        if name == self.plan.parity_model:
            return self.parity_models()[0].image_encoder
        with torch.device(torch_device()):
            model = build_reference(model_config(name)) if name in SMALL_MODELS else sam_model_registry[name]()
        return model.image_encoder.eval()

    def fits(self, part: str, what: str, key: str, default: float) -> bool:
        """Whether a row whose kind last took costs[key] (else `default`) fits in the part's time."""
        need = self.costs.get(key, default)
        if self.clock.left() >= need:
            return True
        self.rec.skip(part, what, f"out of time (needs ~{need:.0f} s, {max(self.clock.left(), 0):.0f} s left)")
        return False

    def measure(self, part: str, what: str, key: str, default: float, fn: Callable[[], None]) -> None:
        """Runs one row if it fits; an exception becomes an error row and the part goes on."""
        if not self.fits(part, what, key, default):
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # out of memory, an unsupported kernel, ...
            self.rec.error(part, what, e)
            traceback.print_exc()
            release_torch_memory()
        self.costs[key] = time.perf_counter() - t0
