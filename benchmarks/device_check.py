"""One device check: parity and speed of sam-jax against the reference on one accelerator.

Made for a lent GPU with minutes of device time and no time to write code there
(benchmarks/DEVICE.md says how to run it). Every part has a time budget; a row that would
not fit in what is left is recorded as "skipped: out of time" instead of overrunning, and
the results are rewritten after every part, so a run cut short still leaves its tables.

    bash benchmarks/device_check.sh                    # the lent GPU: about 6 minutes
    bash benchmarks/device_check.sh --only encoder     # some parts (repeatable)
    bash benchmarks/device_check.sh --dry-run          # every part on this CPU, small models

Parts: environment; peak (matmul rates); parity (vit_b end to end in float32 against the
reference on the same device); encoder (images/s, vit_b/h/l x batch 1/8/32 x bfloat16 /
float32); attention (the encoder's attention paths side by side); decode (one point, 64
points); interactive (a session of 8 clicks); amg (automatic masks, 32x32 points, 1024x768);
train (fine-tuning steps); compile and memory (tables gathered from the other parts).
Results: `<results-dir>/<device>-<date>.md` and `.json`, copied with a log to `$OUT` when set.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# torch and JAX share one GPU in this process: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry  # noqa: E402

import sam_jax  # noqa: E402
from sam_jax import formats, train  # noqa: E402
from sam_jax.config import SamConfig  # noqa: E402
from sam_jax.data import SyntheticShapes  # noqa: E402
from sam_jax.modeling import attention_kernels  # noqa: E402
from sam_jax.modeling.sam import abstract_params, image_encoder_forward, normalize_and_pad  # noqa: E402
from sam_jax.testing import (  # noqa: E402
    SMALL,
    TINY,
    build_reference,
    make_image,
    parity_figures,
    parity_holds,
    randomize_,
)

torch.set_grad_enabled(False)
# The reference's float32 is float32 too: no TF32 in its matmuls or convolutions.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

PARTS = (
    "environment",
    "peak",
    "parity",
    "encoder",
    "attention",
    "decode",
    "interactive",
    "amg",
    "train",
    "compile",
    "memory",
)
# Dense bfloat16 matmul peaks from the vendor's datasheets (TFLOP/s), by device-name fragment.
NOMINAL_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
# Measured on this workplace's H200s (device docs, KINDS.md: 8192^3 bf16 products through PyTorch).
DOCUMENTED_BF16_TFLOPS = {"H200": 790.0}
TARGETS_IMG_S = {"vit_b": 400.0, "vit_h": 80.0}  # issue 21: bfloat16 encoder on one H200
COMPILE_CACHE = Path(tempfile.gettempdir()) / "sam-jax-xla-cache"


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures: the GPU plan, or the dry run's small stand-ins."""

    name: str
    parity_model: str  # a registry name, or a name of SMALL_MODELS
    parity_cases: int  # how many of the parity part's prompt cases (each a decoder program)
    encoder_models: tuple[str, ...]
    batches: tuple[int, ...]  # in the order they are measured
    dtypes: tuple[str, ...]
    attention_model: str
    attention_batch: int
    repeats: int
    min_seconds: float  # a timing repeats until this much time has passed (at most 50 calls)
    matmul_side: int
    amg_points: int
    clicks: int
    train_model: str
    train_batch: int
    train_prompts: int
    train_rounds: int
    train_cases: int  # the first this many of TRAIN_CASES
    budget: float  # seconds for the whole run
    shares: dict[str, float]  # the most each part may take (seconds), within the budget
    reference_memory_gb: float  # reference encoder rows estimated above this are not run


GPU_PLAN = Plan(
    name="gpu",
    parity_model="vit_b",
    parity_cases=4,
    encoder_models=("vit_b", "vit_h", "vit_l"),
    batches=(32, 8, 1),
    dtypes=("bfloat16", "float32"),
    attention_model="vit_b",
    attention_batch=8,
    repeats=5,
    min_seconds=0.3,
    matmul_side=8192,
    amg_points=32,
    clicks=8,
    train_model="vit_b",
    train_batch=8,
    train_prompts=4,
    train_rounds=2,
    train_cases=3,
    budget=360.0,
    shares={
        "environment": 10,
        "peak": 15,
        "parity": 50,
        "encoder": 115,
        "attention": 30,
        "decode": 15,
        "interactive": 30,
        "amg": 45,
        "train": 50,
        "compile": 2,
        "memory": 2,
    },
    reference_memory_gb=90.0,
)

DRY_PLAN = Plan(
    name="dry-run",
    parity_model="tiny",
    parity_cases=2,
    encoder_models=("tiny", "micro"),
    batches=(2,),
    dtypes=("bfloat16", "float32"),
    attention_model="micro",
    attention_batch=1,
    repeats=1,
    min_seconds=0.0,
    matmul_side=256,
    amg_points=4,
    clicks=2,
    train_model="micro",
    train_batch=2,
    train_prompts=2,
    train_rounds=0,
    train_cases=1,
    budget=170.0,
    shares={
        "environment": 10,
        "peak": 10,
        "parity": 40,
        "encoder": 40,
        "attention": 30,
        "decode": 20,
        "interactive": 25,
        "amg": 25,
        "train": 60,
        "compile": 5,
        "memory": 5,
    },
    reference_memory_gb=4.0,
)


# The dry run's stand-ins: the tests' models, and TINY cut to one global block.
SMALL_MODELS = {
    "small": SMALL,
    "tiny": TINY,
    "micro": dataclasses.replace(TINY, encoder_depth=1, encoder_global_attn_indexes=(0,)),
}


def model_config(name: str) -> SamConfig:
    return SMALL_MODELS[name] if name in SMALL_MODELS else sam_jax.get_config(name)


def encoder_flops(config: SamConfig) -> float:
    """Matmul FLOPs (2 per multiply-add) of one image through the image encoder.

    Patch embedding, qkv / projection / attention / relative positions per block (windowed
    blocks on their zero-padded windows, as the reference computes them), the MLPs and the
    neck. vit_b: 972.1 GFLOP, the figure the reference's torch FLOP counter gives (972).
    """
    e, c, p = config.embedding_size, config.encoder_embed_dim, config.patch_size
    n = e * e
    total = n * c * p * p * 3 * 2
    for i in range(config.encoder_depth):
        if i in config.encoder_global_attn_indexes:
            tokens, side = n, e
        else:
            ws = config.encoder_window_size
            tokens, side = math.ceil(e / ws) ** 2 * ws * ws, ws
        total += tokens * c * 3 * c * 2 + tokens * c * c * 2  # qkv, proj
        total += tokens * side * side * c * 2 * 2  # q.k and weights.v within each window (or the grid)
        if config.use_rel_pos:
            total += tokens * 2 * side * c * 2  # q against both relative-position tables
        total += n * c * int(config.encoder_mlp_ratio * c) * 2 * 2
    out = config.prompt_embed_dim
    return float(total + n * c * out * 2 + n * out * out * 9 * 2)


# ----------------------------------------------------------------------------- results


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, (int, float)):
        return f"{value} {unit}".strip()
    if unit == "ms":
        return f"{value * 1e3:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s" if value < 100 else f"{value:.0f} s"
    if unit == "img/s":
        return f"{value:.1f} img/s" if value < 1000 else f"{value:.0f} img/s"
    if unit in ("GB", "TFLOP/s"):
        return f"{value:.2f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{value:.3g} {unit}".strip()


def fmt_notes(notes: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in notes.items())


def render_markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    lines = [
        f"# Device check: {meta.get('device_name', 'unknown')}, {meta['date']}",
        "",
        f"Plan `{meta['plan']}`, command `{' '.join(meta['argv'])}`, commit {meta.get('commit', 'unknown')}: "
        f"{meta.get('elapsed_s', 0):.0f} s of a {meta['budget_s']:.0f} s budget; XLA compilation cache "
        f"{meta.get('compile_cache', 'off')}. Written by `benchmarks/device_check.py` (benchmarks/DEVICE.md). "
        "Ratio above 1: ours ahead (reference / ours for times, ours / reference for rates). "
        "`of_nominal_bf16_peak` reads our encoder FLOPs (matmuls, 972 GFLOP per vit_b image) against the "
        "datasheet's dense bfloat16 peak, `of_documented_*` against the 790 TFLOP/s the device docs measured, "
        "`of_measured_*` against this run's own `peak` row.",
        "",
        "| part | status | seconds | host CPU seconds | JAX peak device memory after it |",
        "|---|---|---|---|---|",
    ]
    for part, info in doc["parts"].items():
        peak = info.get("jax_peak_GB")
        lines.append(
            f"| {part} | {info['status']} | {info.get('seconds', 0):.1f} | {info.get('cpu_s', 0):.1f} | "
            f"{'' if peak is None else f'{peak:.2f} GB'} |"
        )
    for part in PARTS:
        rows = [r for r in doc["rows"] if r["part"] == part]
        if not rows:
            continue
        lines += [
            "",
            f"## {part}",
            "",
            "| what | reference | ours | ratio | status | notes |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            ratio = f"x{r['ratio']:.2f}" if r["ratio"] else ""
            notes = fmt_notes(r["notes"]).replace("|", "/")
            lines.append(
                f"| {r['what']} | {fmt(r['reference'], r['unit'])} | {fmt(r['ours'], r['unit'])} | {ratio} | "
                f"{r['status']} | {notes} |"
            )
    return "\n".join(lines) + "\n"


def atomic_write_text(path: Path, text: str) -> None:
    """Writes through a temporary sibling and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets; results are for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Recorder:
    """Rows, part statuses and the log; writes the results after every part."""

    def __init__(self, plan: Plan, results_dir: Path, out_dir: Path | None, argv: list[str], budget: float) -> None:
        self.plan, self.results_dir, self.out_dir = plan, results_dir, out_dir
        self.rows: list[dict[str, Any]] = []
        self.parts: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, Any] = {
            "plan": plan.name,
            "argv": argv,
            "date": datetime.date.today().isoformat(),
            "budget_s": budget,
        }
        self.log: list[str] = []

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.append(text)

    def row(self, part: str, what: str, unit: str, reference: Any, ours: Any, **notes: Any) -> dict[str, Any]:
        """One measurement. unit "s" / "ms": times, ratio reference / ours; "img/s" / "TFLOP/s":
        rates, ratio ours / reference; other units: values, no ratio. Above 1: ours ahead."""
        status = notes.pop("status", "ok")
        ratio = None
        if isinstance(reference, float) and isinstance(ours, float) and reference > 0 and ours > 0:
            if unit in ("s", "ms"):
                ratio = reference / ours
            elif unit in ("img/s", "TFLOP/s"):
                ratio = ours / reference
        r = {"part": part, "what": what, "unit": unit, "reference": reference, "ours": ours, "ratio": ratio}
        r |= {"status": status, "notes": notes}
        self.rows.append(r)
        shown = f"x{ratio:.2f}" if ratio else ""
        self.say(
            f"  {part:11s} {what[:62]:62s} {fmt(reference, unit):>14s} {fmt(ours, unit):>14s} {shown:>6s} "
            f"{'' if status == 'ok' else status}  {fmt_notes(notes)}"
        )
        return r

    def skip(self, part: str, what: str, why: str) -> None:
        self.row(part, what, "", None, None, status=f"skipped: {why}")

    def stem(self) -> str:
        tag = f"-{slug(self.meta['tag'])}" if self.meta.get("tag") else ""
        return f"{slug(self.meta.get('device_name', 'device'))}-{self.meta['date']}{tag}"

    def write(self) -> list[Path]:
        doc = {"meta": self.meta, "parts": self.parts, "rows": self.rows}
        files = {f"{self.stem()}.json": json.dumps(doc, indent=1, default=str) + "\n", f"{self.stem()}.md": ""}
        files[f"{self.stem()}.md"] = render_markdown(doc)
        written = []
        for name, text in files.items():
            atomic_write_text(self.results_dir / name, text)
            written.append(self.results_dir / name)
        if self.out_dir is not None:  # the device tool returns only what lies under $OUT
            for name, text in [*files.items(), ("device_check.log", "\n".join(self.log) + "\n")]:
                atomic_write_text(self.out_dir / name, text)
                written.append(self.out_dir / name)
        return written


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


# ----------------------------------------------------------------------------- timing and devices


def settle(x: Any) -> Any:
    """Waits for a result: JAX arrays are blocked on, torch's CUDA work synchronised."""
    jax.block_until_ready(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return x


def timed(fn: Callable[[], Any], repeats: int, min_seconds: float = 0.0) -> tuple[float, float]:
    """(first call, median of the further calls) in seconds, every call waited for; calls
    repeat `repeats` times and then on until `min_seconds` have passed (at most 50)."""
    t0 = time.perf_counter()
    settle(fn())
    first = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        settle(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first


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


@contextlib.contextmanager
def attention_forced(path: str | None) -> Iterator[None]:
    """Forces the encoder's attention path for programs traced inside. The programs it is used
    for here are new functions (`compiled_encoder`): no compiled cache needs clearing."""
    previous = attention_kernels.forced_path
    attention_kernels.forced_path = path
    try:
        yield
    finally:
        attention_kernels.forced_path = previous


def attention_path_of(config: SamConfig, dtype: str) -> str:
    """The path the encoder's global blocks take for this config and dtype here."""
    head_dim = config.encoder_embed_dim // config.encoder_num_heads
    grid = (config.embedding_size, config.embedding_size)
    return attention_kernels.attention_path(jnp.dtype(dtype), head_dim, grid, config.use_rel_pos)


# ----------------------------------------------------------------------------- models and inputs


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


def scene(size: int, seed: int = 7) -> np.ndarray:
    """A 4:3 synthetic scene whose long side is `size` (1024x768 at 1024, as bench.py)."""
    image = SyntheticShapes(size=size, length=1, seed=seed)[0].image
    return np.ascontiguousarray(image[: size * 3 // 4])


def encode_fn(params: sam_jax.SamParams, images: jax.Array, input_hw: jax.Array) -> jax.Array:
    """uint8 padded images -> embeddings, as `sam_jax.encode` runs them on the device."""
    return image_encoder_forward(params, normalize_and_pad(params.config, images, input_hw))


def compiled_encoder(params: sam_jax.SamParams, batch: int) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """A freshly traced and compiled encoder program, its inputs, and what XLA says of it."""
    size = params.config.image_size
    images = jnp.asarray(np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    hw = jnp.full((batch, 2), size, jnp.int32)

    def program(p: sam_jax.SamParams, i: jax.Array, h: jax.Array) -> jax.Array:
        return encode_fn(p, i, h)  # a new function per call: traced afresh, never a cached trace

    t0 = time.perf_counter()
    compiled = jax.jit(program).lower(params, images, hw).compile()
    info: dict[str, Any] = {"compile_s": time.perf_counter() - t0}
    with contextlib.suppress(Exception):  # not every backend reports these
        mem = compiled.memory_analysis()
        info["xla_temp_GB"] = mem.temp_size_in_bytes / 1e9
        info["xla_total_GB"] = (
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
        ) / 1e9
    with contextlib.suppress(Exception):
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops"):
            # Custom calls (cuDNN's attention) are not counted by XLA.
            info["xla_GFLOP_per_img"] = float(cost["flops"]) / batch / 1e9
    return compiled, (params, images, hw), info


class Check:
    """One run: the plan, its clock and records, and the models shared between parts."""

    def __init__(self, plan: Plan, rec: Recorder, clock: Clock) -> None:
        self.plan, self.rec, self.clock = plan, rec, clock
        self._parity: tuple[torch.nn.Module, sam_jax.SamParams] | None = None
        self._params: dict[str, sam_jax.SamParams] = {}
        self.costs: dict[str, float] = {}  # seconds a kind of row took last: the next one's estimate

    def parity_models(self) -> tuple[torch.nn.Module, sam_jax.SamParams]:
        """The parity model on both sides: the reference with every tensor randomised (as the
        tests' fixtures), on the device; the same weights converted in memory."""
        if self._parity is None:
            name = self.plan.parity_model
            if name in SMALL_MODELS:
                ref = randomize_(build_reference(model_config(name)), seed=0)
                params = formats.convert_state_dict(
                    {k: v.numpy() for k, v in ref.state_dict().items()}, config=model_config(name)
                )
            else:
                ref = randomize_(sam_model_registry[name]().eval(), seed=1)
                params = formats.convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, name)
            self._parity = (ref.to(torch_device()), jax.device_put(params))
        return self._parity

    def params(self, name: str) -> sam_jax.SamParams:
        if name == self.plan.parity_model:
            return self.parity_models()[1]
        if name not in self._params:
            self._params[name] = random_params(model_config(name))
        return self._params[name]

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
            self.rec.row(part, what, "", None, None, status=f"error: {type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc()
            release_torch_memory()
        self.costs[key] = time.perf_counter() - t0


# ----------------------------------------------------------------------------- parts


def device_name(plan: Plan) -> str:
    """What the results files are named after: the accelerator's kind (e.g. "NVIDIA H200")."""
    dev = jax.devices()[0]
    name = dev.device_kind if jax.default_backend() == "gpu" else f"{platform.machine()} {jax.default_backend()}"
    return f"{name} dry-run" if plan.name == "dry-run" else name


def part_environment(ck: Check) -> None:
    dev = jax.devices()[0]
    info: dict[str, Any] = {
        "jax / jaxlib": f"{jax.__version__} / {importlib.metadata.version('jaxlib')}",
        "jax backend": f"{jax.default_backend()}, {jax.device_count()} device(s): {dev.device_kind}",
        "compute capability": getattr(dev, "compute_capability", "n/a"),
        "torch (CUDA / cuDNN)": f"{torch.__version__} ({torch.version.cuda} / {torch.backends.cudnn.version()})",
        "torch device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "segment-anything / numpy / python": (
            f"{importlib.metadata.version('segment-anything')} / {np.__version__} / {platform.python_version()}"
        ),
        "attention path, bfloat16 (vit_b global block)": attention_path_of(sam_jax.get_config("vit_b"), "bfloat16"),
        "attention path, float32": attention_path_of(sam_jax.get_config("vit_b"), "float32"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
    }
    for plugin in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[plugin] = importlib.metadata.version(plugin)
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        info[f"nvidia-smi ({query})"] = (result.stdout or result.stderr).strip()
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        info["JAX allocator limit"] = f"{stats['bytes_limit'] / 1e9:.1f} GB"
    ck.rec.meta["environment"] = info
    for key, value in info.items():
        ck.rec.row("environment", key, "", None, None, value=str(value).replace("\n", " "))
    probe_fused_attention(ck)


# vit_b's attention shapes (batch, heads, grid side, head dim): a global block of one image, its windows.
PROBE_SHAPES = {"global block": (1, 12, 64, 64), "windows": (25, 12, 14, 64)}


def probe_fused_attention(ck: Check, shapes: dict[str, tuple[int, int, int, int]] = PROBE_SHAPES) -> None:
    """cuDNN's fused attention against XLA's on the encoder's shapes, forward, then backward.
    If a forward pass fails, the rest of the run (unless a path was forced) takes the blocked
    path, so the encoder rows still measure something; a failed backward pass is recorded
    (the training rows then fall back on their own)."""
    if attention_kernels.cuda_compute_capability() is None:
        ck.rec.skip("environment", "cuDNN fused attention probe", "no NVIDIA GPU")
        return
    for label, (b, heads, side, d) in shapes.items():
        what = f"cuDNN fused attention probe, {label} {(b, heads, side * side, d)}"
        keys = jax.random.split(jax.random.key(7), 5)
        q, k, v = (jax.random.normal(key, (b, heads, side * side, d), jnp.bfloat16) for key in keys[:3])
        rel = tuple(jax.random.normal(key, (b, heads, side, side, side), jnp.bfloat16) for key in keys[3:])

        def loss(q: jax.Array, path: str, k: jax.Array = k, v: jax.Array = v, rel: tuple = rel) -> jax.Array:
            return jnp.sum(attention_kernels.fused_attention(q, k, v, rel, path).astype(jnp.float32) ** 2)

        for stage in ("forward", "backward"):
            try:
                results = []
                for path in ("fused-cudnn", "fused-xla"):
                    if stage == "forward":
                        fn = jax.jit(
                            lambda q, p=path, k=k, v=v, rel=rel: attention_kernels.fused_attention(q, k, v, rel, p)
                        )
                    else:
                        fn = jax.jit(jax.grad(lambda q, p=path: loss(q, p)))
                    results.append(np.asarray(fn(q), np.float32))
                err = float(np.abs(results[0] - results[1]).max() / np.abs(results[1]).max())
                limit = 2e-2 if stage == "forward" else 5e-2  # bfloat16 inputs, two summation orders
                ck.rec.row(
                    "environment",
                    f"{what} {stage}",
                    "",
                    None,
                    err,
                    status="pass" if err < limit else "FAIL",
                    measure="worst error vs XLA / max magnitude",
                    limit=limit,
                )
            except Exception as e:
                traceback.print_exc()
                note = ""
                if stage == "forward" and attention_kernels.forced_path is None:
                    attention_kernels.set_attention_path("blocked")
                    ck.rec.meta["attention_forced"] = "blocked (the cuDNN probe failed)"
                    note = "; the run continues with the blocked path"
                ck.rec.row(
                    "environment",
                    f"{what} {stage}",
                    "",
                    None,
                    None,
                    status=f"error: {type(e).__name__}: {str(e)[:300]}{note}",
                )
                break
        if ck.rec.meta.get("attention_forced"):
            return


def part_peak(ck: Check) -> None:
    """Matmul rates on random data (JAX and torch): the ceilings to read the encoder rows against."""
    n = ck.plan.matmul_side
    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    for dtype, precision in [("bfloat16", None), ("float32", "highest"), ("float32", None)]:
        label = f"{dtype} {n}^3 matmul" + (", precision highest" if precision else "")

        def run(dtype: str = dtype, precision: str | None = precision, label: str = label) -> None:
            x, y = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
            fn = jax.jit(lambda u, v: jnp.matmul(u, v, precision=precision))
            _, ours = timed(lambda: fn(x, y), ck.plan.repeats, ck.plan.min_seconds)
            ref = None
            if dtype == "bfloat16" or precision:  # torch's float32 is full precision here (TF32 off)
                tx, ty = (torch.as_tensor(m).to(torch_device(), getattr(torch, dtype)) for m in (a, b))
                _, ref_s = timed(lambda: torch.matmul(tx, ty), ck.plan.repeats, ck.plan.min_seconds)
                ref = flops / ref_s / 1e12
            note = {} if precision or dtype == "bfloat16" else {"note": "XLA default: TF32 on NVIDIA"}
            ck.rec.row("peak", label, "TFLOP/s", ref, flops / ours / 1e12, **note)
            if dtype == "bfloat16":
                ck.rec.meta["measured_bf16_TFLOPs"] = max(flops / ours / 1e12, ref or 0.0)

        ck.measure("peak", label, "peak", 2.0, run)


def bf16_peaks(ck: Check) -> dict[str, float]:
    """The bfloat16 peaks (TFLOP/s) the encoder rows are read against, by source."""
    name = ck.rec.meta.get("device_name", "")
    peaks = {}
    for source, table in [("nominal", NOMINAL_BF16_TFLOPS), ("documented", DOCUMENTED_BF16_TFLOPS)]:
        for fragment, tflops in table.items():
            if fragment in name:
                peaks[f"{source}_bf16_peak"] = tflops
    if ck.rec.meta.get("measured_bf16_TFLOPs"):
        peaks["measured_bf16_peak"] = ck.rec.meta["measured_bf16_TFLOPs"]
    return peaks


def part_parity(ck: Check) -> None:
    """The parity model end to end (encode + decode, masks at the image size) in float32
    against the reference on the same device, both with full-precision matmuls; the
    project's tolerances (tests/reference.py PARITY_LIMITS). Then our bfloat16, for information."""
    ref_model, params = ck.parity_models()
    image = make_image(427, 640, seed=1067)
    h, w = image.shape[:2]
    pts = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h], [0.5 * w, 0.2 * h]])
    box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
    cases = {
        "one point, 3 masks": (dict(point_coords=pts[:1], point_labels=np.array([1])), True),
        "2 points + box, 3 masks": (dict(point_coords=pts[:2], point_labels=np.array([1, 0]), box=box), True),
        "3 points fg/bg, 1 mask": (dict(point_coords=pts, point_labels=np.array([1, 0, 1])), False),
        "box, 1 mask": (dict(box=box), False),
    }
    name = ck.plan.parity_model
    predictor = SamPredictor(ref_model)
    predictor.set_image(image)
    ref_emb = predictor.features[0].permute(1, 2, 0).float().cpu().numpy()
    holds = True

    def check(label: str, expected: tuple, got: tuple) -> None:
        nonlocal holds
        figures = parity_figures(expected, got, label)
        holds &= parity_holds(figures)
        ck.rec.row(
            "parity",
            f"{name} float32 {label}",
            "",
            None,
            None,
            status="pass" if parity_holds(figures) else "FAIL",
            **figures,
        )

    emb = sam_jax.encode(params, image)
    err = float(np.abs(np.asarray(emb.image_embedding) - ref_emb).max() / np.abs(ref_emb).max())
    holds &= err <= 1e-3
    ck.rec.row(
        "parity",
        f"{name} float32 embedding: worst error / max magnitude",
        "",
        None,
        err,
        limit=1e-3,
        status="pass" if err <= 1e-3 else "FAIL",
        attention=attention_path_of(params.config, "float32"),
    )
    for label, (case, multimask) in list(cases.items())[: ck.plan.parity_cases]:
        expected = predictor.predict(**case, multimask_output=multimask)
        got = sam_jax.decode(
            params,
            emb,
            case.get("point_coords"),
            case.get("point_labels"),
            box=case.get("box"),
            multimask_output=multimask,
        )
        check(label, expected, got)
    case = cases["one point, 3 masks"][0]
    first = predictor.predict(**case, multimask_output=True)
    mask_input = first[2][np.argmax(first[1])][None]  # fed back, as in interactive use
    expected = predictor.predict(**case, mask_input=mask_input, multimask_output=False)
    got = sam_jax.decode(
        params, emb, case["point_coords"], case["point_labels"], mask_input=mask_input, multimask_output=False
    )
    check("one point + mask_input, 1 mask", expected, got)
    ck.rec.meta["parity_holds"] = bool(holds)
    # bfloat16: no project tolerance applies; the figures say how far it lies.
    p16 = params.with_compute_dtype("bfloat16")
    emb16 = sam_jax.encode(p16, image)
    err16 = float(np.abs(np.asarray(emb16.image_embedding) - ref_emb).max() / np.abs(ref_emb).max())
    ck.rec.row(
        "parity",
        f"{name} bfloat16 embedding vs reference float32",
        "",
        None,
        err16,
        status="info",
        attention=attention_path_of(params.config, "bfloat16"),
    )
    expected = predictor.predict(**case, multimask_output=True)
    got = sam_jax.decode(p16, emb16, case["point_coords"], case["point_labels"], multimask_output=True)
    ck.rec.row(
        "parity",
        f"{name} bfloat16 one point vs reference float32",
        "",
        None,
        None,
        status="info",
        **parity_figures(expected, got, "bfloat16"),
    )


def reference_encoder_rate(
    ck: Check, refs: dict[str, torch.nn.Module], name: str, dtype: str, batch: int, notes: dict[str, Any]
) -> float | None:
    """The reference encoder's images/s on the same device (None, noted why, where it would not fit)."""
    config = model_config(name)
    elt = 2 if dtype == "bfloat16" else 4
    # Per global block it holds logits, biased logits and softmax of (B, heads, HW, HW).
    estimate = 3 * batch * config.encoder_num_heads * config.embedding_size**4 * elt / 1e9
    if estimate > ck.plan.reference_memory_gb:
        notes["reference"] = f"not run (~{estimate:.0f} GB of attention)"
        return None
    key = f"{name} {dtype}"
    if key not in refs:
        for other in [k for k in refs if not k.startswith(name + " ")]:
            del refs[other]  # one model's encoders on the device at a time
        release_torch_memory()
        base = refs.get(f"{name} float32") or ck.reference_encoder(name)
        refs[f"{name} float32"] = base
        refs[key] = base if dtype == "float32" else copy.deepcopy(base).to(torch.bfloat16)
    encoder = refs[key]
    size = config.image_size
    x = torch.randn(batch, 3, size, size, device=torch_device()).to(next(encoder.parameters()).dtype)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _, ref_s = timed(lambda: encoder(x), ck.plan.repeats, ck.plan.min_seconds)
    except torch.cuda.OutOfMemoryError:
        notes["reference"] = "out of memory"
        return None
    finally:
        if torch.cuda.is_available():
            notes["ref_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
        release_torch_memory()
    return batch / ref_s


def encoder_row(ck: Check, part: str, what: str, name: str, dtype: str, batch: int, refs: dict | None) -> None:
    """Our encoder's images/s (a fresh program, AOT-compiled and timed), beside the reference's
    when `refs` is given."""
    config = model_config(name)
    flops = encoder_flops(config)
    params = ck.params(name).with_compute_dtype(dtype)
    compiled, args, info = compiled_encoder(params, batch)
    _, ours = timed(lambda: compiled(*args), ck.plan.repeats, ck.plan.min_seconds)
    rate = batch / ours
    notes: dict[str, Any] = {"attention": attention_path_of(config, dtype), **info, "TFLOP/s": flops * rate / 1e12}
    for label, peak in bf16_peaks(ck).items():
        notes[f"of_{label}"] = flops * rate / (peak * 1e12)
    if name in TARGETS_IMG_S and dtype == "bfloat16" and ck.plan.name == "gpu":
        notes["target"] = f">= {TARGETS_IMG_S[name]:.0f} img/s: {'met' if rate >= TARGETS_IMG_S[name] else 'not met'}"
    ref_rate = None if refs is None else reference_encoder_rate(ck, refs, name, dtype, batch, notes)
    ck.rec.row(part, what, "img/s", ref_rate, rate, **notes)


def part_encoder(ck: Check) -> None:
    """Images/s of the image encoder on preprocessed uint8 batches, ours beside the reference's
    (the same device; the reference's bfloat16 is its model cast with `.to(torch.bfloat16)`).
    The parity model has the parity weights on both sides, the others random ones (speed only)."""
    refs: dict[str, torch.nn.Module] = {}
    first = ck.plan.encoder_models[0]
    for dtype in ck.plan.dtypes:
        for name in ck.plan.encoder_models:
            # A model's first row is estimated from the first model's first row, by the square
            # root of their FLOPs (compiling grows with depth, running with depth and width).
            scale = math.sqrt(encoder_flops(model_config(name)) / encoder_flops(model_config(first)))
            default = ck.costs.get(f"encoder first {first}", 5.0) * scale
            for batch in ck.plan.batches:
                key = f"encoder {name}" if f"encoder {name}" in ck.costs else f"encoder first {name}"

                def run(name: str = name, dtype: str = dtype, batch: int = batch) -> None:
                    what = f"{name} {dtype} batch {batch}"
                    try:
                        encoder_row(ck, "encoder", what, name, dtype, batch, refs)
                    except Exception as e:
                        if attention_path_of(model_config(name), dtype) == "blocked":
                            raise
                        # The fused attention failed here: record why, and measure the blocked path.
                        traceback.print_exc()
                        ck.rec.row("encoder", what, "", None, None, status=f"error: {type(e).__name__}: {str(e)[:300]}")
                        with attention_forced("blocked"):
                            encoder_row(ck, "encoder", f"{what}, blocked (fused failed)", name, dtype, batch, refs)

                ck.measure("encoder", f"{name} {dtype} batch {batch}", key, default, run)
                if key.startswith("encoder first") and key in ck.costs:
                    ck.costs[f"encoder {name}"] = ck.costs[key]
    refs.clear()
    release_torch_memory()


def part_attention(ck: Check) -> None:
    """The encoder's attention paths side by side (attention_kernels): one model at one batch
    size, each path forced; the row marked default is what this backend picks."""
    name, batch = ck.plan.attention_model, ck.plan.attention_batch
    config = model_config(name)
    cudnn = attention_kernels.cuda_compute_capability() is not None
    for dtype in ("bfloat16", "float32"):
        default = attention_path_of(config, dtype)
        order = [default] + [p for p in ("blocked", "fused-cudnn", "fused-cudnn-bias", "fused-xla") if p != default]
        if dtype == "float32":
            order = [default] + [p for p in ("fused-xla",) if p != default]
        for path in order:
            what = f"{name} {dtype} batch {batch}, {path}" + (" (default)" if path == default else "")
            if "cudnn" in path and not cudnn:
                ck.rec.skip("attention", what, "cuDNN needs an NVIDIA GPU")
                continue

            def run(path: str = path, dtype: str = dtype, what: str = what) -> None:
                with attention_forced(path):
                    encoder_row(ck, "attention", what, name, dtype, batch, None)

            ck.measure("attention", what, "attention", ck.costs.get(f"encoder {name}", 5.0), run)


def part_decode(ck: Check) -> None:
    """Prompts against a ready embedding, masks post-processed to the image size: one point
    (masks to the host, as `SamPredictor.predict` returns them) and 64 points in one call."""
    ref_model, params = ck.parity_models()
    name = ck.plan.parity_model
    image = scene(params.config.image_size)
    h, w = image.shape[:2]
    predictor = SamPredictor(ref_model)
    predictor.set_image(image)
    emb = sam_jax.encode(params, image)
    point = np.array([[w * 0.4, h * 0.6]])
    repeats = max(ck.plan.repeats, 3 if ck.plan.name == "gpu" else 1)

    def one_point() -> None:
        _, ref_s = timed(lambda: predictor.predict(point, np.array([1])), repeats, ck.plan.min_seconds)
        first, ours = timed(lambda: np.asarray(sam_jax.decode(params, emb, point)[0]), repeats, ck.plan.min_seconds)
        ck.rec.row("decode", f"{name} one point, 3 masks at {h}x{w}", "ms", ref_s, ours, first_s=first)

    def many_points() -> None:
        points = np.random.default_rng(0).uniform(0, 1, (64, 1, 2)) * [w, h]
        coords = predictor.transform.apply_coords(points, (h, w))
        tp = torch.as_tensor(coords, dtype=torch.float, device=torch_device())
        tl = torch.ones(64, 1, device=torch_device())
        _, ref_s = timed(lambda: predictor.predict_torch(tp, tl), repeats, ck.plan.min_seconds)
        first, ours = timed(lambda: sam_jax.decode(params, emb, points)[0], repeats, ck.plan.min_seconds)
        ck.rec.row(
            "decode", f"{name} 64 points, 3 masks each at {h}x{w} (on the device)", "ms", ref_s, ours, first_s=first
        )

    ck.measure("decode", "one point", "decode", 5.0, one_point)
    ck.measure("decode", "64 points", "decode", 5.0, many_points)


def part_interactive(ck: Check) -> None:
    """An interactive session: encode, then `plan.clicks` clicks (the first with 3 masks, each
    later one adding a point and feeding back the best low-res logits, 1 mask), the best mask
    to the host after every click. The first session includes our compilations (one decoder
    program per number of points)."""
    ref_model, params = ck.parity_models()
    name = ck.plan.parity_model
    image = scene(params.config.image_size, seed=11)
    h, w = image.shape[:2]
    n = ck.plan.clicks
    clicks = np.random.default_rng(5).uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], (n, 2))
    labels = (np.arange(n) % 2 == 0).astype(np.int64)  # foreground, then background and foreground in turn
    predictor = SamPredictor(ref_model)

    def ours() -> tuple[list[float], np.ndarray]:
        t0 = time.perf_counter()
        emb = sam_jax.encode(params, image)
        mask_input, times = None, [time.perf_counter() - t0]
        for k in range(len(clicks)):
            t0 = time.perf_counter()
            masks, scores, low = sam_jax.decode(
                params, emb, clicks[: k + 1], labels[: k + 1], mask_input=mask_input, multimask_output=k == 0
            )
            best = int(np.argmax(np.asarray(scores)))
            shown = np.asarray(masks[best])
            mask_input = low[best][None]
            times.append(time.perf_counter() - t0)
        return times, shown

    def reference() -> tuple[list[float], np.ndarray]:
        t0 = time.perf_counter()
        predictor.set_image(image)
        settle(None)
        mask_input, times = None, [time.perf_counter() - t0]
        for k in range(len(clicks)):
            t0 = time.perf_counter()
            masks, scores, low = predictor.predict(
                clicks[: k + 1], labels[: k + 1], mask_input=mask_input, multimask_output=k == 0
            )
            best = int(np.argmax(scores))
            shown, mask_input = masks[best], low[best][None]
            times.append(time.perf_counter() - t0)
        return times, shown

    def sessions() -> None:
        ref_cold, _ = reference()
        ours_cold, _ = ours()
        ck.rec.row(
            "interactive",
            f"{name} session, first: encode + {n} clicks (ours compiles)",
            "s",
            sum(ref_cold),
            sum(ours_cold),
        )
        warm = [(reference(), ours()) for _ in range(max(1, ck.plan.repeats // 2))]
        (ref_t, ref_mask), (our_t, our_mask) = warm[-1]
        ref_total = statistics.median(sum(r[0]) for r, _ in warm)
        our_total = statistics.median(sum(o[0]) for _, o in warm)
        ck.rec.row(
            "interactive",
            f"{name} session, warm: encode + {n} clicks at {h}x{w}",
            "s",
            ref_total,
            our_total,
            last_mask_agreement=float((ref_mask == our_mask).mean()),
        )
        ck.rec.row("interactive", f"{name} first click (3 masks), warm", "ms", ref_t[1], our_t[1])
        ck.rec.row(
            "interactive",
            f"{name} follow-up click (mask_input, 1 mask), warm median",
            "ms",
            statistics.median(ref_t[2:]),
            statistics.median(our_t[2:]),
        )

    ck.measure("interactive", f"{n}-click session", "interactive", 10.0, sessions)


def part_amg(ck: Check) -> None:
    """Automatic masks per image, the reference's generator against ours, same options: the
    reference defaults (on random weights nothing passes pred_iou_thresh, so we stop at the
    IoU filter while the reference scores every candidate) and every candidate passing."""
    ref_model, params = ck.parity_models()
    name, pps = ck.plan.parity_model, ck.plan.amg_points
    image = scene(params.config.image_size, seed=31)
    h, w = image.shape[:2]
    cases = {
        "reference defaults": {},
        "every candidate passing": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    }
    for label, options in cases.items():
        options = {"points_per_side": pps, **options}

        def run(label: str = label, options: dict = options) -> None:
            ref_gen = SamAutomaticMaskGenerator(ref_model, **options)
            ours_gen = sam_jax.SamAutomaticMaskGenerator(params, **options)
            found: dict[str, int] = {}

            def ref_call() -> None:
                found["ref"] = len(ref_gen.generate(image))

            def ours_call() -> None:
                found["ours"] = len(ours_gen.generate(image))

            repeats = 2 if ck.plan.name == "gpu" else 1
            _, ref_s = timed(ref_call, repeats)
            first, ours = timed(ours_call, repeats)
            ck.rec.row(
                "amg",
                f"{name} {label}, {pps}x{pps} points, {h}x{w}: per image",
                "s",
                ref_s,
                ours,
                first_s=first,
                masks=f"{found['ref']}/{found['ours']}",
            )

        ck.measure("amg", label, "amg", 20.0, run)


def part_train(ck: Check) -> None:
    """Fine-tuning steps (`sam_jax.train.train_step`: simulated clicks, losses, AdamW) on
    synthetic scenes: the image encoder frozen, and everything trained with remat."""
    name = ck.plan.train_model
    config = model_config(name)
    params = ck.params(name)
    b, p, r = ck.plan.train_batch, ck.plan.train_prompts, ck.plan.train_rounds
    data = SyntheticShapes(size=config.image_size, length=8 * b, seed=0)
    batches: list[train.Batch] = []  # one batch for every case (the data do not depend on the case)
    for label, options in TRAIN_CASES[: ck.plan.train_cases]:
        cfg = train.TrainConfig(batch_size=b, prompts_per_image=p, correction_rounds=r, warmup_steps=5, **options)
        what = f"{name} {label}, {cfg.compute_dtype}: {b} images x {p} prompts, {r + 1} round{'s' if r else ''}"

        def run(cfg: train.TrainConfig = cfg, what: str = what) -> None:
            if not batches:
                batches.append(jax.device_put(train.BatchStream([data], config, cfg).next_batch()[0]))
            batch = batches[0]
            trainable, frozen = train.partition(params.weights, cfg.freeze)
            trainable = jax.tree.map(jnp.copy, trainable)  # the step donates them
            state = {"trainable": trainable, "opt": train.make_optimizer(cfg).init(trainable), "step": 0}

            def step() -> dict[str, jax.Array]:
                state["trainable"], state["opt"], metrics = train.train_step(
                    state["trainable"], frozen, state["opt"], batch, jnp.int32(state["step"]), config, cfg, False
                )
                state["step"] += 1
                return metrics

            first, seconds = timed(step, ck.plan.repeats, ck.plan.min_seconds)
            loss = float(step()["loss"])
            ck.rec.row("train", what, "img/s", None, b / seconds, step_s=seconds, first_s=first, loss=loss)

        def run_or_fall_back(run: Callable[..., None] = run, cfg: train.TrainConfig = cfg, what: str = what) -> None:
            try:
                run()
            except Exception as e:
                if attention_path_of(config, cfg.compute_dtype) == "blocked":
                    raise
                # The fused attention failed here (its backward pass, say): record why, train blocked.
                traceback.print_exc()
                ck.rec.row("train", what, "", None, None, status=f"error: {type(e).__name__}: {str(e)[:300]}")
                previous = attention_kernels.forced_path
                attention_kernels.set_attention_path("blocked")  # train_step is cached by shapes: clear it
                try:
                    run(what=f"{what}, blocked (fused failed)")
                finally:
                    attention_kernels.set_attention_path(previous)

        ck.measure("train", what, "train", 30.0, run_or_fall_back)


def part_compile(ck: Check) -> None:
    """Compile times gathered from the other parts: the encoders' ahead-of-time compiles, and
    first call minus a later call elsewhere (tracing, compiling and autotuning included)."""
    for r in [r for r in ck.rec.rows if r["part"] in ("encoder", "attention") and "compile_s" in r["notes"]]:
        ck.rec.row("compile", f"{r['part']}: {r['what']}", "s", None, float(r["notes"]["compile_s"]))
    for r in [r for r in ck.rec.rows if r["part"] in ("decode", "amg", "train") and "first_s" in r["notes"]]:
        steady = r["notes"].get("step_s") if r["part"] == "train" else r["ours"]
        if isinstance(steady, float):
            ck.rec.row(
                "compile",
                f"{r['part']}: {r['what']} (first call - steady call)",
                "s",
                None,
                max(float(r["notes"]["first_s"]) - steady, 0.0),
            )
    if not any(r["part"] == "compile" for r in ck.rec.rows):
        ck.rec.skip("compile", "compile times", "no part that compiles ran")


def part_memory(ck: Check) -> None:
    """Peak device memory: JAX's allocator after each part, XLA's own account of each encoder
    program, and the reference's peak (torch) per encoder row."""
    for part, info in ck.rec.parts.items():
        if info.get("jax_peak_GB") is not None:
            ck.rec.row("memory", f"JAX peak after {part}", "GB", None, float(info["jax_peak_GB"]))
    for r in [r for r in ck.rec.rows if r["part"] == "encoder" and r["status"] == "ok"]:
        notes = r["notes"]
        ours, ref = notes.get("xla_total_GB"), notes.get("ref_peak_GB")
        if ours is not None or ref is not None:
            ck.rec.row("memory", f"encoder {r['what']}: program (XLA) / reference peak (torch)", "GB", ref, ours)
    if not any(r["part"] == "memory" for r in ck.rec.rows):
        ck.rec.row("memory", "no device memory figures on this backend", "", None, None, status="info")


PART_FUNCTIONS: dict[str, Callable[[Check], None]] = {
    "environment": part_environment,
    "peak": part_peak,
    "parity": part_parity,
    "encoder": part_encoder,
    "attention": part_attention,
    "decode": part_decode,
    "interactive": part_interactive,
    "amg": part_amg,
    "train": part_train,
    "compile": part_compile,
    "memory": part_memory,
}


TRAIN_CASES = (
    ("image encoder frozen", {"freeze": ("image_encoder",), "compute_dtype": "bfloat16"}),
    ("full, remat", {"remat": True, "compute_dtype": "bfloat16"}),
    ("image encoder frozen", {"freeze": ("image_encoder",), "compute_dtype": "float32"}),
)


# ----------------------------------------------------------------------------- main


def summary(ck: Check) -> list[str]:
    """The lines to read first: part statuses, parity, the encoder's best rates."""
    lines = ["", "== device check summary =="]
    lines.append("parts: " + ", ".join(f"{p} {i['status']}" for p, i in ck.rec.parts.items()))
    if "parity_holds" in ck.rec.meta:
        lines.append(f"parity (float32, project tolerances): {'HOLDS' if ck.rec.meta['parity_holds'] else 'FAILS'}")
    for r in ck.rec.rows:
        if r["what"].startswith("cuDNN fused attention probe"):
            lines.append(f"{r['what']}: {r['status']}")
    if ck.rec.meta.get("attention_forced"):
        lines.append(f"attention forced: {ck.rec.meta['attention_forced']}")
    for dtype in ("bfloat16", "float32"):
        paths = [r for r in ck.rec.rows if r["part"] == "attention" and dtype in r["what"] and r["ours"]]
        if paths:
            fastest = max(paths, key=lambda r: r["ours"])
            lines.append(
                f"attention {dtype}: fastest {fastest['notes']['attention']} ({fastest['ours']:.1f} img/s; "
                + ", ".join(f"{r['notes']['attention']} {r['ours']:.1f}" for r in paths)
                + ")"
            )
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ck.rec.rows:
        if r["part"] == "encoder" and isinstance(r["ours"], float):
            model, dtype = r["what"].split()[:2]
            if (model, dtype) not in best or r["ours"] > best[(model, dtype)]["ours"]:
                best[(model, dtype)] = r
    for (model, dtype), r in sorted(best.items()):
        ref = f", reference {r['reference']:.1f}" if r["reference"] else ""
        target = f"  target {r['notes']['target']}" if "target" in r["notes"] else ""
        lines.append(f"encoder {model} {dtype}: best {r['ours']:.1f} img/s ({r['what'].split(' ', 2)[2]}{ref}){target}")
    lines.append(f"elapsed {ck.clock.elapsed():.0f} s; results: {ck.rec.results_dir / ck.rec.stem()}.md")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="every part with small models (CPU), results in a temp dir"
    )
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: the plan's, 390 on a GPU)")
    parser.add_argument("--results-dir", type=Path, help="default: benchmarks/results (a temp dir with --dry-run)")
    parser.add_argument("--attention", choices=attention_kernels.PATHS, help="force the encoder's attention path")
    parser.add_argument("--tag", default="", help="appended to the results' file names (e.g. rerun)")
    args = parser.parse_args(argv)
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    budget = args.budget if args.budget is not None else plan.budget
    if budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, got {budget}")
    results_dir = args.results_dir or (
        Path(tempfile.mkdtemp(prefix="device-check-")) if args.dry_run else REPO / "benchmarks" / "results"
    )
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    rec = Recorder(
        plan, results_dir, out_dir, ["device_check.py", *(argv if argv is not None else sys.argv[1:])], budget
    )
    clock = Clock(budget)
    rec.meta["tag"] = args.tag
    if args.attention:
        attention_kernels.set_attention_path(args.attention)
    if not args.dry_run:  # a rerun on the same (warm) machine reuses the compiled programs
        cached = len(list(COMPILE_CACHE.glob("*"))) if COMPILE_CACHE.is_dir() else 0
        jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
        rec.meta["compile_cache"] = f"{COMPILE_CACHE} ({cached} entries at start)"
    ck = Check(plan, rec, clock)
    rec.meta["device_name"] = device_name(plan)
    with contextlib.suppress(OSError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        rec.meta["commit"] = commit.stdout.strip() or "unknown (no git checkout)"
    rec.say(
        f"device check ({plan.name}): budget {budget:.0f} s, results in {results_dir}"
        + (f" and {out_dir}" if out_dir else "")
    )
    selected = args.only or PARTS
    for part in PARTS:
        if part not in selected:
            continue
        if clock.run_left() < 1:
            rec.parts[part] = {"status": "skipped: out of time", "seconds": 0.0}
            rec.skip(part, part, "out of time")
            continue
        rec.say(f"-- {part} ({clock.elapsed():.0f} s elapsed)")
        clock.begin_part(plan.shares.get(part, 10.0))
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            PART_FUNCTIONS[part](ck)
            status = "ok"
        except Exception as e:
            traceback.print_exc()
            status = f"error: {type(e).__name__}: {str(e)[:300]}"
            release_torch_memory()
        rec.parts[part] = {
            "status": status,
            "seconds": time.perf_counter() - t0,
            "cpu_s": time.process_time() - cpu0,
            "jax_peak_GB": jax_peak_gb(),
        }
        rec.meta["elapsed_s"] = clock.elapsed()
        rec.write()
    for line in summary(ck):
        rec.say(line)
    rec.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
