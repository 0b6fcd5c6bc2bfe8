"""Argument checks shared by the layers, the optimizers, the tasks and the command line.

Each error names the argument as its caller spells it (``hidden_size`` for a layer, ``--steps``
on the command line), says what was expected and what came, so one check serves every place
such an argument is taken, with one message.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an int of at least ``minimum`` (1: positive), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int of at least {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` when it is ``True`` or ``False`` (not 1, not None), else a ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def probability(name: str, value: Any) -> float:
    """``value`` as a float when it is a probability in [0, 1), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def in_range(name: str, value: Any, low: float, high: float, *, low_open: bool) -> float:
    """``value`` as a float when it is a real number in [low, high) (or (low, high) when
    ``low_open``), else a ValueError; ``high`` itself is never accepted, so ``(0.0, inf)``
    means a positive finite number."""
    bracket = "(" if low_open else "["
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {bracket}{low}, {high}), got {value!r}")
    value = float(value)
    above = value > low if low_open else value >= low
    if not (above and value < high):
        raise ValueError(f"{name} must be in {bracket}{low}, {high}), got {value}")
    return value


def positive(name: str, value: Any) -> float:
    """``value`` as a float when it is a positive finite number, else a ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < float(value) < math.inf
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def seed(value: Any, name: str = "seed") -> int | None:
    """``value`` when it is ``None`` (fresh entropy) or an int >= 0, else a ValueError that
    names ``name``, instead of NumPy's own words from deep inside the call."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
    return int(value)


def shape(name: str, got: tuple[Any, ...], expected: tuple[int | None, ...], meaning: str) -> None:
    """A ValueError unless ``got`` matches ``expected`` (``None``: any size) and has no empty
    axis; ``meaning`` spells ``expected`` in words, e.g. ``"(batch, seq, input_size)"``."""
    got = tuple(got)
    if len(got) != len(expected) or any(
        s is not None and s != n for s, n in zip(expected, got, strict=False)
    ):
        wanted = "(" + ", ".join("?" if s is None else str(s) for s in expected) + ")"
        if len(expected) == 1:
            wanted = wanted[:-1] + ",)"
        raise ValueError(f"{name} must have shape {meaning} = {wanted}, got {got}")
    if any(n == 0 for n in got):
        raise ValueError(f"{name} has an empty axis: shape {got}")


def sequences(
    name: str,
    got: tuple[Any, ...],
    features: int | None = None,
    meaning: str = "(batch, seq, features)",
) -> None:
    """The one check of a batch of sequences: a ValueError unless ``got`` is (batch, seq,
    features), with ``features`` per step when given, and no empty axis."""
    shape(name, got, (None, None, features), meaning)


#: ``LSTM``'s options beyond the sizes, with their defaults (for repr and checkpoints).
LSTM_OPTIONS = {
    "num_layers": 1,
    "bidirectional": False,
    "proj_size": 0,
    "use_bias": True,
    "dropout": 0.0,
    "recurrent_dropout": 0.0,
}


def lstm_options(
    input_size: Any, hidden_size: Any, num_layers: Any, bidirectional: Any, proj_size: Any,
    use_bias: Any, dropout: Any, recurrent_dropout: Any, init: Any, schemes: Collection[str],
) -> dict[str, Any]:  # fmt: skip
    """``LSTM``'s sizes and options, each checked, by attribute name; ``init`` is one of
    ``schemes``."""
    options = {
        "input_size": positive_int("input_size", input_size),
        "hidden_size": positive_int("hidden_size", hidden_size),
        "num_layers": positive_int("num_layers", num_layers),
        "bidirectional": flag("bidirectional", bidirectional),
        "use_bias": flag("use_bias", use_bias),
        "dropout": probability("dropout", dropout),
        "recurrent_dropout": probability("recurrent_dropout", recurrent_dropout),
    }
    if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(f"proj_size must be an int >= 0 (0: no projection), got {proj_size!r}")
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}; "
            "use proj_size=0 for no projection"
        )
    if options["dropout"] and num_layers == 1:
        raise ValueError(
            "dropout acts between stacked layers (on the outputs of all but the last), so "
            "it needs num_layers > 1; for dropout on the outputs of a single layer add it "
            "after the layer, or use recurrent_dropout"
        )
    if init not in schemes:
        raise ValueError(f"init must be one of {sorted(schemes)}, got {init!r}")
    return options | {"proj_size": proj_size, "init": init}
