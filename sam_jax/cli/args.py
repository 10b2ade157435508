"""Argument helpers shared by the `sam-jax` commands: one-line errors, bounded numbers."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line and exit status 1, like every other refusal of the command:
    `<name>: error: argument --keep: must be an integer >= 1, got 0`."""

    error_name = ""  # default: the first word of `prog` ("sam-jax" for "sam-jax embed")

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.error_name or self.prog.split()[0]}: error: {message}\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def number_in(low: float, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (in (low, high] with `above`)."""

    def parse(text: str) -> float:
        bounds = f"{'>' if above else '>='} {low}" + (f" and <= {high}" if high < math.inf else "")
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
        return value

    return parse
