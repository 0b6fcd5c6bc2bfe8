"""xplstm's layout of a recurrence's parameters on the host, the one form every conversion
(:mod:`xplstm.interop` for torch and ONNX, :mod:`xplstm.interop_keras` for Keras) goes through,
and how a converted layer is placed and built from it.

Per recurrence (one layer and direction) xplstm keeps one matrix ``weights`` (in + out, 4H)
with rows ``[input; hidden]`` and gate column blocks i, f, o, g, one ``bias`` (4H,) unless
``use_bias=False``, and with ``proj_size`` P a ``projection`` (H, P); ``out`` is P when
projected, else H. Here a recurrence travels as a :class:`Host` triple.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from xplstm import backends
from xplstm.layer import dtype_name
from xplstm.resolver import to_numpy
from xplstm.types import Array


class Host(NamedTuple):
    """One recurrence's parameters as host arrays in xplstm's layout."""

    weights: np.ndarray  # (in + out, 4H)
    bias: np.ndarray | None  # (4H,), or None without biases
    projection: np.ndarray | None  # (H, P), or None without projection


class Imported(NamedTuple):
    """Parameters read from another library: the recurrences in ``LSTM.parameters()`` order,
    the constructor's configuration, and one source array (to place the layer like it)."""

    recurrences: list[Host]
    config: dict[str, Any]
    source: Array


def gate_order(hidden: int, blocks: tuple[int, int, int, int] = (0, 1, 3, 2)) -> np.ndarray:
    """Column indices that reorder the four gate blocks as ``blocks`` says: by default i, f, g, o
    into i, f, o, g and back (a swap of two blocks is its own inverse)."""
    return np.arange(4 * hidden).reshape(4, hidden)[list(blocks)].reshape(-1)


def expect(name: str, array: np.ndarray, shape: tuple[int, ...], meaning: str) -> None:
    """A ValueError naming ``name``, its ``meaning`` and ``shape`` unless ``array`` has it."""
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {meaning} = {shape}, got {array.shape}")


def placed_like(source: Array, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A layer's ``backend``, ``device`` and ``dtype`` arguments: ``kwargs``'s where given,
    else those of ``source`` (a foreign array: the layer lands where the tensors are, not on
    ``$XPLSTM_BACKEND``); ``kwargs`` keeps the rest."""
    owner = backends.backend_of(source)
    where = kwargs.pop("device", None)
    if "backend" not in kwargs and where is None:
        where = array_api_compat.device(source)
    return {
        "backend": kwargs.pop("backend", owner),
        "device": where,
        "dtype": dtype_name(kwargs.pop("dtype", source.dtype)),
    }


class Converted:
    """What every conversion of :class:`~xplstm.LSTM` shares: building the layer from
    :class:`Imported` parameters and reading its recurrences back as :class:`Host` triples
    (``LSTM`` supplies the attributes below)."""

    recurrences: list[Any]
    directions: int
    num_layers: int
    input_size: int
    hidden_size: int
    bidirectional: bool
    use_bias: bool
    recurrent_dropout: float
    backend: str
    device: Any

    @classmethod
    def _imported(cls, imported: Imported, kwargs: dict[str, Any]) -> Any:
        """The layer from host parameters placed like ``imported.source`` (a foreign array)
        unless ``kwargs`` say otherwise, in its dtype unless ``kwargs`` name one."""
        placed = placed_like(imported.source, kwargs)
        values: dict[str, list[Any]] = {"weights": [], "bias": [], "projection": []}
        for recurrence in imported.recurrences:
            for name, host in zip(values, recurrence, strict=True):
                if host is not None:
                    values[name].append(host.astype(placed["dtype"]))
        arguments = {k: v if len(v) > 1 else v[0] for k, v in values.items() if v}
        config = dict(imported.config)
        return cls(
            config.pop("input_size"),
            config.pop("hidden_size"),
            **config,
            **arguments,
            **placed,
            **kwargs,
        )

    def _host_recurrences(self) -> list[Host]:
        """The layer's recurrences as host triples, in ``parameters()`` order."""
        return [
            Host(*(None if p is None else to_numpy(p.values) for p in vars(r).values()))
            for r in self.recurrences
        ]
