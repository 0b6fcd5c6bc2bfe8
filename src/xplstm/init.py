"""Initialisation schemes: how a layer's parameters are drawn when no values are given.

Every draw happens on the host with a ``numpy.random.Generator`` (the one exception to "no
array library in the core": a seed then gives the same parameters on every backend and
device). A scheme is a :data:`Draw`, ``draw(rng, name, shape)``, where ``name`` is the last part
of the parameter's registry name (``weights``, ``bias``, ``projection``); layers create their
parameters through :meth:`xplstm.layer.Layer._init_parameters`, which calls it in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from xplstm.layout import gate_order

Draw = Callable[[np.random.Generator, str, tuple[int, ...]], np.ndarray]


def uniform(bound: float) -> Draw:
    """Every parameter from U(-bound, bound): torch's ``nn.Linear`` and ``nn.LSTM`` (with
    bound 1/sqrt(fan_in) and 1/sqrt(hidden_size))."""

    def draw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(-bound, bound, size=shape)

    return draw


def torch_lstm(hidden: int, out: int) -> Draw:
    """torch.nn.LSTM's initialisation: U(-1/sqrt(H), 1/sqrt(H)) for every parameter."""
    return uniform(1.0 / math.sqrt(hidden))


def keras_lstm(hidden: int, out: int) -> Draw:
    """Keras's LSTM initialisation in xplstm's layout (gate blocks i, f, o, g): glorot-uniform
    input kernel and projection, orthogonal recurrent kernel (``out`` rows), zero bias with the
    forget block at 1 (``unit_forget_bias``)."""

    def draw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name == "bias":
            bias = np.zeros(shape)
            bias[hidden : 2 * hidden] = 1.0  # the forget block, the same in both gate orders
            return bias
        if name == "projection":
            return glorot(rng, shape)
        kernel = glorot(rng, (shape[0] - out, shape[1]))
        recurrent = orthogonal(rng, (out, shape[1]))
        return np.concatenate([kernel, recurrent])[:, gate_order(hidden)]

    return draw


def glorot(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Glorot (Xavier) uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-limit, limit, size=shape)


def orthogonal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Keras's ``Orthogonal`` initializer: Q of a QR of a normal matrix, signs fixed."""
    rows, cols = shape
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diag(r))
    return q.T if rows < cols else q


#: The schemes of ``LSTM(init=...)``, each made from ``(hidden_size, out)``.
LSTM_SCHEMES: dict[str, Callable[[int, int], Draw]] = {"torch": torch_lstm, "keras": keras_lstm}


#: A parameter's registry name, and its given values (or None), shape and shape in words.
Specs = dict[str, tuple[Any, tuple[int, ...], str]]


def lstm_specs(config: dict[str, Any], weights: Any, bias: Any, projection: Any) -> Specs:
    """Each parameter of an LSTM of ``config`` (see ``LSTM.config``) with its given values,
    in ``parameters()`` order: per recurrence, weights, bias, projection."""
    if not config["use_bias"] and bias is not None:
        raise ValueError("bias values were given but use_bias=False: drop one of the two")
    if not config["proj_size"] and projection is not None:
        raise ValueError("projection values were given but proj_size=0: set proj_size")
    directions = 2 if config["bidirectional"] else 1
    count, hidden = config["num_layers"] * directions, config["hidden_size"]
    out = config["proj_size"] or hidden
    given = {
        name: _per_recurrence(name, values, count)
        for name, values in (("weights", weights), ("bias", bias), ("projection", projection))
    }
    kept = "proj_size" if config["proj_size"] else "hidden_size"
    specs = {}
    for index in range(count):
        prefix = f"recurrences.{index}." if count > 1 else ""
        rows = (config["input_size"] if index < directions else directions * out) + out
        reads = "input_size" if index < directions else f"{directions} * {kept}"
        reads = reads.replace("1 * ", "")
        wanted = {
            "weights": ((rows, 4 * hidden), f"({reads} + {kept}, 4 * hidden_size)"),
            "bias": ((4 * hidden,), "(4 * hidden_size,)") if config["use_bias"] else None,
            "projection": ((hidden, out), "(hidden_size, proj_size)") if out != hidden else None,
        }
        for name, spec in wanted.items():
            if spec is not None:
                specs[prefix + name] = (given[name][index], *spec)
    return specs


def _per_recurrence(name: str, values: Any, count: int) -> list[Any]:
    """Given values as one entry per recurrence (``None`` where to draw)."""
    if values is None:
        return [None] * count
    if isinstance(values, (list, tuple)):
        if len(values) != count:
            raise ValueError(
                f"{name} must list one array per recurrence (num_layers * num_directions = "
                f"{count}), got {len(values)}"
            )
        return list(values)
    if count != 1:
        raise ValueError(
            f"this LSTM has {count} recurrences (num_layers * num_directions): pass {name} "
            f"as a list of {count} arrays, in layer.recurrences order"
        )
    return [values]
