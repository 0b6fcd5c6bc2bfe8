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
