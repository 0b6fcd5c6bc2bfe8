"""Exact conversion of LSTM weights between xplstm's layout and PyTorch's, Keras's or ONNX's, on the
host.

xplstm keeps one matrix ``weights`` (input_size + hidden_size, 4H) with rows ``[input; hidden]``
and gate column blocks i, f, o, g, and one ``bias`` (4H,). The others differ only in
arrangement:

- ``torch.nn.LSTM``: ``weight_ih_l0`` (4H, input_size) and ``weight_hh_l0`` (4H, H), gate row
  blocks i, f, g, o, and two biases ``bias_ih_l0``, ``bias_hh_l0`` that are always added together.
- Keras ``LSTM`` (``layer.get_weights()``): ``kernel`` (input_size, 4u), ``recurrent_kernel``
  (u, 4u), ``bias`` (4u,), gate column blocks i, f, c, o (c is xplstm's g), with the default
  ``activation="tanh"`` and ``recurrent_activation="sigmoid"``.

- ONNX's ``LSTM`` operator (one direction): ``W`` (4H, input_size), ``R`` (4H, H), gate row blocks
  i, o, f, c, and ``B`` (8H,) holding the input and the recurrent biases, added together.

Torch's and Keras's orders are i, f, g, o: swapping the last two blocks maps either way. ONNX's
is i, o, f, c: swapping the middle two maps either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xplstm.resolver import to_numpy
from xplstm.types import Array


def _gates(hidden: int, blocks: tuple[int, int, int, int] = (0, 1, 3, 2)) -> np.ndarray:
    """Column indices that reorder the four gate blocks as ``blocks`` says: by default i, f, g, o
    into i, f, o, g and back (a swap of two blocks is its own inverse)."""
    return np.arange(4 * hidden).reshape(4, hidden)[list(blocks)].reshape(-1)


def _expect(name: str, array: np.ndarray, shape: tuple[int, ...], meaning: str) -> None:
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {meaning} = {shape}, got {array.shape}")


def from_torch(source: Any) -> tuple[np.ndarray, np.ndarray, Array]:
    """``(weights, bias, a source tensor)`` from a one-layer, one-direction ``torch.nn.LSTM``
    (or ``nn.LSTMCell``) or its ``state_dict()``; the biases are summed."""
    for attribute, plain in (("num_layers", 1), ("bidirectional", False), ("proj_size", 0)):
        if getattr(source, attribute, plain) != plain:
            raise ValueError(
                f"only a single-layer, one-direction LSTM without projection converts; this one "
                f"has {attribute}={getattr(source, attribute)!r}"
            )
    state: Mapping[str, Any] = source.state_dict() if hasattr(source, "state_dict") else source
    extra = [k for k in state if "_l1" in k or "_reverse" in k or k.startswith("weight_hr")]
    if extra:
        raise ValueError(
            f"only a single-layer, one-direction LSTM without projection converts; the state "
            f"has {extra}"
        )
    suffix = "_l0" if "weight_ih_l0" in state else ""
    if f"weight_ih{suffix}" not in state or f"weight_hh{suffix}" not in state:
        raise ValueError(
            f"expected torch.nn.LSTM weights 'weight_ih_l0' and 'weight_hh_l0', got keys "
            f"{sorted(state)}"
        )
    w_ih, w_hh = to_numpy(state[f"weight_ih{suffix}"]), to_numpy(state[f"weight_hh{suffix}"])
    hidden = w_hh.shape[-1]
    _expect(f"weight_hh{suffix}", w_hh, (4 * hidden, hidden), "(4 * hidden_size, hidden_size)")
    if w_ih.ndim != 2 or w_ih.shape[0] != 4 * hidden:
        raise ValueError(
            f"weight_ih{suffix} must have shape (4 * hidden_size, input_size) = "
            f"({4 * hidden}, ?), got {w_ih.shape}"
        )
    bias = np.zeros(4 * hidden, dtype=w_ih.dtype)
    for name in (f"bias_ih{suffix}", f"bias_hh{suffix}"):
        if name in state:
            term = to_numpy(state[name])
            _expect(name, term, (4 * hidden,), "(4 * hidden_size,)")
            bias = bias + term
    gates = _gates(hidden)
    weights = np.concatenate([w_ih.T, w_hh.T])[:, gates]
    return weights, bias[gates], state[f"weight_ih{suffix}"]


def to_torch(weights: np.ndarray, bias: np.ndarray, input_size: int) -> dict[str, np.ndarray]:
    """``torch.nn.LSTM`` state arrays (host) from xplstm's: the bias goes in ``bias_ih_l0``,
    zeros in ``bias_hh_l0``."""
    gates = _gates(bias.shape[0] // 4)
    return {
        "weight_ih_l0": np.ascontiguousarray(weights[:input_size, gates].T),
        "weight_hh_l0": np.ascontiguousarray(weights[input_size:, gates].T),
        "bias_ih_l0": np.ascontiguousarray(bias[gates]),
        "bias_hh_l0": np.zeros_like(bias),
    }


def from_keras(arrays: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, Array]:
    """``(weights, bias, the kernel)`` from Keras LSTM weights ``[kernel, recurrent_kernel,
    bias]`` (or the first two, for ``use_bias=False``)."""
    if isinstance(arrays, Mapping) or len(arrays) not in (2, 3):
        raise ValueError(
            "expected Keras LSTM weights as a list [kernel, recurrent_kernel, bias] "
            "(layer.get_weights()), or [kernel, recurrent_kernel] without bias"
        )
    kernel, recurrent = to_numpy(arrays[0]), to_numpy(arrays[1])
    if recurrent.ndim != 2 or recurrent.shape[1] != 4 * recurrent.shape[0]:
        raise ValueError(
            f"recurrent_kernel must have shape (units, 4 * units), got {recurrent.shape}"
        )
    units = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 4 * units:
        raise ValueError(
            f"kernel must have shape (input_size, 4 * units) = (?, {4 * units}), got {kernel.shape}"
        )
    bias = np.zeros(4 * units, dtype=kernel.dtype)
    if len(arrays) == 3:
        bias = to_numpy(arrays[2])
        _expect("bias", bias, (4 * units,), "(4 * units,)")
    gates = _gates(units)
    return np.concatenate([kernel, recurrent])[:, gates], bias[gates], arrays[0]


def to_keras(weights: np.ndarray, bias: np.ndarray, input_size: int) -> list[np.ndarray]:
    """Keras ``[kernel, recurrent_kernel, bias]`` (host) from xplstm's, for ``set_weights``."""
    gates = _gates(bias.shape[0] // 4)
    return [
        np.ascontiguousarray(weights[:input_size, gates]),
        np.ascontiguousarray(weights[input_size:, gates]),
        np.ascontiguousarray(bias[gates]),
    ]


def to_onnx(
    weights: np.ndarray, bias: np.ndarray, input_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, R, B)`` of one direction of ONNX's ``LSTM`` operator (host) from xplstm's: ``W``
    (4H, input_size), ``R`` (4H, H), gate blocks i, o, f, c; the bias in the first half of ``B``
    (8H,), zeros in the second."""
    gates = _gates(bias.shape[0] // 4, (0, 2, 1, 3))
    return (
        np.ascontiguousarray(weights[:input_size, gates].T),
        np.ascontiguousarray(weights[input_size:, gates].T),
        np.concatenate([bias[gates], np.zeros_like(bias)]),
    )
