"""Argument checks shared by the layers, the tasks and the command line.

Each error names the argument as its caller spells it (``hidden_size`` for a layer, ``--steps``
on the command line), so one check serves every place an integer is taken.
"""

from __future__ import annotations

from typing import Any


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an int of at least ``minimum`` (1: positive), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int of at least {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value
