"""The device check's parts, by name, in the order they run (plan.PARTS)."""

from __future__ import annotations

from collections.abc import Callable

from ..harness import Check
from ..plan import PARTS
from .encoder import part_attention, part_encoder
from .environment import part_environment
from .parity import part_parity
from .peak import part_peak
from .predictor import part_amg, part_decode, part_interactive
from .tables import part_compile, part_memory
from .train import part_train

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
assert tuple(PART_FUNCTIONS) == PARTS, "plan.PARTS and the parts here must name the same parts in the same order"
