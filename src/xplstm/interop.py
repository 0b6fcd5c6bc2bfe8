"""Exact conversion of LSTM weights between xplstm's layout and PyTorch's or ONNX's, on the
host; Keras's is in :mod:`xplstm.interop_keras` (importable from here too).

xplstm's own layout, the :class:`Host` triple every conversion goes through, is described in
:mod:`xplstm.layout`. The others differ only in arrangement:

- ``torch.nn.LSTM``: per layer ``k`` and direction (suffix ``""`` or ``"_reverse"``),
  ``weight_ih_l{k}`` (4H, in) and ``weight_hh_l{k}`` (4H, out), gate row blocks i, f, g, o, two
  biases ``bias_ih_l{k}``, ``bias_hh_l{k}`` that are always added together, and with
  ``proj_size`` ``weight_hr_l{k}`` (P, H).
- ONNX's ``LSTM`` operator (one direction): ``W`` (4H, input_size), ``R`` (4H, H), gate row blocks
  i, o, f, c, and ``B`` (8H,) holding the input and the recurrent biases, added together.

Torch's order is i, f, g, o (as Keras's): swapping the last two blocks maps either way. ONNX's
is i, o, f, c: swapping the middle two maps either way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xplstm import backends
from xplstm.interop_keras import (  # noqa: F401  (re-exported: xplstm.interop's public API)
    KerasInterop,
    from_keras,
    keras_layer,
    keras_layers,
    keras_options,
    to_keras,
)
from xplstm.layout import Host, Imported, expect, gate_order, placed_like  # noqa: F401
from xplstm.resolver import to_numpy
from xplstm.types import Array

_TORCH_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(_l(\d+))?(_reverse)?")


def from_torch(source: Any) -> Imported:
    """The parameters of a ``torch.nn.LSTM`` (any ``num_layers``, ``bidirectional``,
    ``proj_size``, ``bias``), an ``nn.LSTMCell``, or the ``state_dict()`` of either; each
    recurrence's two biases are summed."""
    state = torch_state(source, "rnn.LSTM", "rnn.LSTMCell")
    matches = {key: _TORCH_KEY.fullmatch(key) for key in state}
    strange = sorted(key for key, match in matches.items() if match is None)
    if strange or ("weight_ih_l0" not in state and "weight_ih" not in state):
        raise ValueError(
            f"expected torch.nn.LSTM weights 'weight_ih_l0', 'weight_hh_l0', ... (or an "
            f"LSTMCell's 'weight_ih', 'weight_hh'), got keys {sorted(state)}"
        )
    layers = 1 + max(int(m.group(3) or 0) for m in matches.values() if m is not None)
    directions = ("", "_reverse") if any(m and m.group(4) for m in matches.values()) else ("",)
    cell = "weight_ih" in state
    use_bias = any(k.startswith("bias_") for k in state)
    projected = any(k.startswith("weight_hr") for k in state)
    recurrences = []
    for layer in range(layers):
        for direction in directions:
            suffix = "" if cell else f"_l{layer}{direction}"
            recurrences.append(_from_torch_recurrence(state, suffix, use_bias, projected))
    first = recurrences[0]
    hidden = first.weights.shape[1] // 4
    config = {
        "input_size": first.weights.shape[0] - (first.projection.shape[1] if projected else hidden),
        "hidden_size": hidden,
        "num_layers": layers,
        "bidirectional": len(directions) == 2,
        "proj_size": first.projection.shape[1] if projected else 0,
        "use_bias": use_bias,
    }
    for attribute, found in (
        ("num_layers", layers),
        ("bidirectional", len(directions) == 2),
        ("proj_size", config["proj_size"]),
        ("bias", use_bias),
    ):
        if getattr(source, attribute, found) != found:
            raise ValueError(
                f"the module says {attribute}={getattr(source, attribute)!r} but its state "
                f"holds weights for {attribute}={found!r}"
            )
    return Imported(recurrences, config, state["weight_ih" if cell else "weight_ih_l0"])


def torch_state(source: Any, *kinds: str) -> Mapping[str, Any]:
    """The ``state_dict()`` of ``source``, a TypeError unless it is one of the torch modules
    ``kinds`` (named in ``torch.nn.modules``, e.g. ``"rnn.LSTM"``) or already a state dict:
    another module's weights have other shapes and another meaning."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(source).__mro__}
    if names & {f"torch.nn.modules.{kind}" for kind in kinds}:
        return source.state_dict()
    if isinstance(source, Mapping):
        return source
    wanted = ", ".join(f"torch.nn.{kind.split('.')[-1]}" for kind in kinds)
    given = type(source)
    raise TypeError(
        f"from_torch takes a {wanted} or the state_dict() of one; got a "
        f"{given.__module__}.{given.__qualname__}, which is not a {wanted.split(',')[0]}"
    )


def _from_torch_recurrence(
    state: Mapping[str, Any], suffix: str, use_bias: bool, projected: bool
) -> Host:
    """One recurrence's parameters from the torch arrays named with ``suffix``."""
    names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
    names += [f"bias_ih{suffix}", f"bias_hh{suffix}"] if use_bias else []
    names += [f"weight_hr{suffix}"] if projected else []
    missing = [name for name in names if name not in state]
    if missing:
        raise ValueError(f"the torch state lacks {missing}; it holds {sorted(state)}")
    w_ih, w_hh = to_numpy(state[names[0]]), to_numpy(state[names[1]])
    if w_ih.ndim != 2 or w_ih.shape[0] % 4 or w_ih.shape[0] == 0:
        raise ValueError(
            f"{names[0]} must have shape (4 * hidden_size, input_size), got {w_ih.shape}"
        )
    hidden = w_ih.shape[0] // 4
    projection = None
    if projected:
        w_hr = to_numpy(state[names[-1]])
        if w_hr.ndim != 2 or w_hr.shape[1] != hidden:
            raise ValueError(
                f"{names[-1]} must have shape (proj_size, hidden_size) = (?, {hidden}), "
                f"got {w_hr.shape}"
            )
        projection = np.ascontiguousarray(w_hr.T)
    out = hidden if projection is None else projection.shape[1]
    expect(names[1], w_hh, (4 * hidden, out), "(4 * hidden_size, hidden_size or proj_size)")
    gates = gate_order(hidden)
    bias = None
    if use_bias:
        terms = [to_numpy(state[name]) for name in names[2:4]]
        for name, term in zip(names[2:4], terms, strict=True):
            expect(name, term, (4 * hidden,), "(4 * hidden_size,)")
        bias = (terms[0] + terms[1])[gates]
    return Host(np.concatenate([w_ih.T, w_hh.T])[:, gates], bias, projection)


def to_torch(recurrences: Sequence[Host], bidirectional: bool) -> dict[str, np.ndarray]:
    """``torch.nn.LSTM`` state arrays (host) from xplstm's recurrences, in ``parameters()``
    order: each bias goes in ``bias_ih_l{k}``, zeros in ``bias_hh_l{k}``."""
    state = {}
    directions = ("", "_reverse") if bidirectional else ("",)
    for index, (weights, bias, projection) in enumerate(recurrences):
        suffix = f"_l{index // len(directions)}{directions[index % len(directions)]}"
        hidden = weights.shape[1] // 4
        inputs = weights.shape[0] - (hidden if projection is None else projection.shape[1])
        gates = gate_order(hidden)
        state[f"weight_ih{suffix}"] = np.ascontiguousarray(weights[:inputs, gates].T)
        state[f"weight_hh{suffix}"] = np.ascontiguousarray(weights[inputs:, gates].T)
        if bias is not None:
            state[f"bias_ih{suffix}"] = np.ascontiguousarray(bias[gates])
            state[f"bias_hh{suffix}"] = np.zeros_like(bias)
        if projection is not None:
            state[f"weight_hr{suffix}"] = np.ascontiguousarray(projection.T)
    # torch's state_dict order: weights, then biases, then the projection, per recurrence.
    order = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return dict(
        sorted(
            state.items(),
            key=lambda item: (
                int(_TORCH_KEY.fullmatch(item[0]).group(3)),
                bool(_TORCH_KEY.fullmatch(item[0]).group(4)),
                order.index(_TORCH_KEY.fullmatch(item[0]).group(1)),
            ),
        )
    )


def to_onnx(
    weights: np.ndarray, bias: np.ndarray, input_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, R, B)`` of one direction of ONNX's ``LSTM`` operator (host) from xplstm's: ``W``
    (4H, input_size), ``R`` (4H, H), gate blocks i, o, f, c; the bias in the first half of ``B``
    (8H,), zeros in the second."""
    gates = gate_order(bias.shape[0] // 4, (0, 2, 1, 3))
    return (
        np.ascontiguousarray(weights[:input_size, gates].T),
        np.ascontiguousarray(weights[input_size:, gates].T),
        np.concatenate([bias[gates], np.zeros_like(bias)]),
    )


def torch_tensors(arrays: dict[str, np.ndarray], layer: Any, device: Any) -> dict[str, Any]:
    """Host ``arrays`` as torch tensors on ``device``, by default the ``layer``'s own when it
    is on torch, else the CPU (a state dict for ``module.load_state_dict``)."""
    torch_backend = backends.get("torch")
    if device is None and layer.backend == "torch":
        device = layer.device
    where = torch_backend.parse_device(device)
    return {name: torch_backend.from_numpy(a, where) for name, a in arrays.items()}


def linear_from_torch(source: Any) -> tuple[np.ndarray, np.ndarray, Array]:
    """Host ``(weights (in, out), bias (out,))`` of a ``torch.nn.Linear`` or its state dict
    (zeros for a module without bias), and its weight tensor (to place the layer like it)."""
    state = torch_state(source, "linear.Linear")
    if "weight" not in state or set(state) - {"weight", "bias"}:
        raise ValueError(
            f"expected torch.nn.Linear weights 'weight' and 'bias', got keys {sorted(state)}"
        )
    weight = to_numpy(state["weight"])
    if weight.ndim != 2:
        raise ValueError(f"weight must have shape (out_features, in_features), got {weight.shape}")
    bias = to_numpy(state["bias"]) if "bias" in state else np.zeros(weight.shape[0], weight.dtype)
    return np.ascontiguousarray(weight.T), bias, state["weight"]


def linear_to_torch(weights: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """``torch.nn.Linear`` state arrays (host) from xplstm's ``weights`` (in, out) and bias."""
    return {"weight": np.ascontiguousarray(weights.T), "bias": bias}


def embedding_from_torch(source: Any) -> tuple[np.ndarray, int | None, Array]:
    """The host table (num_embeddings, embedding_dim) of a ``torch.nn.Embedding`` or its state
    dict, the module's ``padding_idx``, and the weight tensor; options without a counterpart
    in xplstm (``max_norm``, ``scale_grad_by_freq``) are refused."""
    state = torch_state(source, "sparse.Embedding")
    if set(state) != {"weight"}:
        raise ValueError(f"expected torch.nn.Embedding's 'weight', got keys {sorted(state)}")
    for option in ("max_norm", "scale_grad_by_freq"):
        if getattr(source, option, None):
            raise ValueError(
                f"the torch.nn.Embedding has {option}={getattr(source, option)!r}, which "
                "xplstm.Embedding does not have: build it without"
            )
    weight = to_numpy(state["weight"])
    if weight.ndim != 2:
        raise ValueError(
            f"weight must have shape (num_embeddings, embedding_dim), got {weight.shape}"
        )
    padding = getattr(source, "padding_idx", None)
    return weight, None if padding is None else int(padding), state["weight"]


class Interop(KerasInterop):
    """The conversions as methods of :class:`~xplstm.LSTM`: torch's here, Keras's from
    :class:`~xplstm.interop_keras.KerasInterop`."""

    @classmethod
    def from_torch(cls, source: Any, **layer_kwargs: Any) -> Any:
        """A layer with the parameters of a ``torch.nn.LSTM`` (any ``num_layers``,
        ``bidirectional``, ``proj_size``, ``bias``), an ``nn.LSTMCell``, or a ``state_dict()``.

        torch's two biases are summed. ``layer_kwargs`` go to :class:`~xplstm.LSTM` (``backend``,
        ``device``, ``dtype``, ``dropout``, ...); by default the layer lands where the tensors
        are, in their dtype. Feed it batch-first inputs whatever the module's ``batch_first``.
        A layer made from a module takes its mode (``module.training``: ``eval()`` or
        ``train()``) and its ``dropout``; one made from a state dict is in training mode.
        """
        imported = from_torch(source)
        if "dropout" not in layer_kwargs and getattr(source, "dropout", 0.0):
            layer_kwargs["dropout"] = float(source.dropout)
        layer = cls._imported(imported, layer_kwargs)
        return layer.train(bool(getattr(source, "training", True)))

    def to_torch_state_dict(self, device: Any = None) -> dict[str, Any]:
        """The parameters as the state dict of ``torch.nn.LSTM(input_size, hidden_size,
        num_layers=..., bidirectional=..., proj_size=..., bias=use_bias)`` (torch tensors on
        ``device``, default the layer's own when it is on torch, else the CPU), for
        ``module.load_state_dict``; each bias goes in ``bias_ih_l{k}``, zeros in
        ``bias_hh_l{k}``."""
        arrays = to_torch(self._host_recurrences(), self.bidirectional)
        return torch_tensors(arrays, self, device)
