"""What one run of the device check measures: the GPU plan, or the dry run's small stand-ins."""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures. Model names are registry names or names of common.SMALL_MODELS."""

    name: str
    parity_model: str
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
    train_cases: int  # the first this many of parts.train.TRAIN_CASES
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
