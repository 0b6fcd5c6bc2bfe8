"""Exact conversion of LSTM weights between xplstm's layout and PyTorch's, Keras's or ONNX's, on the
host.

Per recurrence (one layer and direction) xplstm keeps one matrix ``weights`` (in + out, 4H)
with rows ``[input; hidden]`` and gate column blocks i, f, o, g, one ``bias`` (4H,) unless
``use_bias=False``, and with ``proj_size`` P a ``projection`` (H, P); ``out`` is P when
projected, else H. Here a recurrence travels as a :class:`Host` triple. The others differ only
in arrangement:

- ``torch.nn.LSTM``: per layer ``k`` and direction (suffix ``""`` or ``"_reverse"``),
  ``weight_ih_l{k}`` (4H, in) and ``weight_hh_l{k}`` (4H, out), gate row blocks i, f, g, o, two
  biases ``bias_ih_l{k}``, ``bias_hh_l{k}`` that are always added together, and with
  ``proj_size`` ``weight_hr_l{k}`` (P, H).
- Keras ``LSTM`` (``layer.get_weights()``): ``kernel`` (input_size, 4u), ``recurrent_kernel``
  (u, 4u), ``bias`` (4u,), gate column blocks i, f, c, o (c is xplstm's g), with the default
  ``activation="tanh"`` and ``recurrent_activation="sigmoid"``.
- ONNX's ``LSTM`` operator (one direction): ``W`` (4H, input_size), ``R`` (4H, H), gate row blocks
  i, o, f, c, and ``B`` (8H,) holding the input and the recurrent biases, added together.

Torch's and Keras's orders are i, f, g, o: swapping the last two blocks maps either way. ONNX's
is i, o, f, c: swapping the middle two maps either way.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
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


def _expect(name: str, array: np.ndarray, shape: tuple[int, ...], meaning: str) -> None:
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {meaning} = {shape}, got {array.shape}")


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
    _expect(names[1], w_hh, (4 * hidden, out), "(4 * hidden_size, hidden_size or proj_size)")
    gates = gate_order(hidden)
    bias = None
    if use_bias:
        terms = [to_numpy(state[name]) for name in names[2:4]]
        for name, term in zip(names[2:4], terms, strict=True):
            _expect(name, term, (4 * hidden,), "(4 * hidden_size,)")
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


def from_keras(arrays: Sequence[Any]) -> Imported:
    """The parameters of Keras weights, as ``get_weights()`` returns them: of an ``LSTM``
    (``[kernel, recurrent_kernel, bias]``, or the first two for ``use_bias=False``), of a
    ``Bidirectional(LSTM)`` (the forward layer's, then the backward layer's), or a list of
    those for a stack."""
    if isinstance(arrays, Mapping) or not isinstance(arrays, Sequence) or not arrays:
        raise ValueError(_KERAS_FORMS)
    stack = arrays if isinstance(arrays[0], Sequence) else [arrays]
    recurrences, directions = [], set()
    for layer in stack:
        if isinstance(layer, Mapping) or len(layer) not in (2, 3, 4, 6):
            raise ValueError(_KERAS_FORMS)
        with_bias = len(layer) in (3, 6)
        per = 3 if with_bias else 2
        directions.add(len(layer) // per)
        for start in range(0, len(layer), per):
            recurrences.append(_from_keras_recurrence(layer[start : start + per]))
    if len(directions) != 1 or len({r.bias is None for r in recurrences}) != 1:
        raise ValueError(
            "the layers of a Keras stack must all be Bidirectional or all plain, all with bias "
            "or all without"
        )
    hidden = recurrences[0].weights.shape[1] // 4
    config = {
        "input_size": recurrences[0].weights.shape[0] - hidden,
        "hidden_size": hidden,
        "num_layers": len(stack),
        "bidirectional": directions == {2},
        "proj_size": 0,
        "use_bias": recurrences[0].bias is not None,
    }
    return Imported(recurrences, config, stack[0][0])


#: Keras LSTM options that change the outputs, and the only value xplstm computes.
_KERAS_COMPUTES = {"activation": "tanh", "recurrent_activation": "sigmoid", "go_backwards": False}
#: Keras LSTM options with no counterpart here that leave inference alone: the value that
#: needs no note, and what to do instead.
_KERAS_NOTES = {
    "dropout": (0.0, "Keras's dropout on the inputs (training only): add it before the layer"),
    "return_sequences": (True, "xplstm's LSTM returns every step: follow it with LastStep()"),
    "stateful": (False, "pass h_n, c_n of one call as h0, c0 of the next"),
    "zero_output_for_mask": (False, "a masked step outputs the carried h here"),
    **{
        f"{what}_{kind}": (None, "training only")
        for kind in ("regularizer", "constraint")
        for what in ("kernel", "recurrent", "bias")
    },
    "activity_regularizer": (None, "training only"),
}


def keras_layers(source: Any) -> list[Any] | None:
    """The Keras ``LSTM`` and ``Bidirectional(LSTM)`` layers that ``source`` is or holds (a
    layer, a model's LSTM layers in order, or a list of layers), or ``None`` when ``source``
    is not Keras objects (weights as arrays)."""
    if _is_keras_lstm(source):
        return [source]
    if hasattr(source, "layers") and hasattr(source, "get_config"):  # a Keras model
        found = [layer for layer in source.layers if _is_keras_lstm(layer)]
        if not found:
            kinds = [type(layer).__name__ for layer in source.layers]
            raise ValueError(f"the Keras model has no LSTM or Bidirectional(LSTM) layer: {kinds}")
        return found
    if isinstance(source, Sequence) and source and hasattr(source[0], "get_config"):
        strange = [type(layer).__name__ for layer in source if not _is_keras_lstm(layer)]
        if strange:
            raise ValueError(f"expected Keras LSTM or Bidirectional(LSTM) layers, got {strange}")
        return list(source)
    return None


def _is_keras_lstm(layer: Any) -> bool:
    kind = type(layer).__name__
    if kind == "Bidirectional":
        return type(getattr(layer, "forward_layer", None)).__name__ == "LSTM"
    return kind == "LSTM" and hasattr(layer, "get_config")


def keras_options(layers: Sequence[Any]) -> tuple[dict[str, Any], list[str]]:
    """The :class:`~xplstm.LSTM` options that Keras layers' configs set (``recurrent_dropout``)
    and notes on their options that have no counterpart here but leave inference alone; a
    ValueError for options that change the outputs (other activations, ``go_backwards`` on a
    plain layer, a ``merge_mode`` other than ``"concat"``)."""
    notes, dropouts = [], set()
    for index, layer in enumerate(layers):
        name = f"Keras layer {index} ({layer.name})"
        directions = [layer]
        if type(layer).__name__ == "Bidirectional":
            if layer.merge_mode != "concat":
                raise ValueError(
                    f"{name} has merge_mode={layer.merge_mode!r}; xplstm concatenates the two "
                    "directions (merge_mode='concat') and has no other"
                )
            directions = [layer.forward_layer, layer.backward_layer]
        for direction, cell in enumerate(directions):
            config = cell.get_config()
            computes = dict(_KERAS_COMPUTES, go_backwards=direction == 1)
            for option, value in computes.items():
                if config.get(option, value) != value:
                    raise ValueError(
                        f"{name} has {option}={config[option]!r}; xplstm's LSTM computes "
                        f"{option}={value!r} only"
                    )
            dropouts.add(float(config.get("recurrent_dropout", 0.0)))
            for option, (neutral, instead) in _KERAS_NOTES.items():
                bidirectional_output = option == "zero_output_for_mask" and len(directions) == 2
                if config.get(option, neutral) != neutral and not bidirectional_output:
                    note = f"{name}: {option}={config[option]!r} ({instead})"
                    notes += [] if note in notes else [note]
    if len(dropouts) > 1:
        raise ValueError(
            f"the Keras layers have recurrent_dropout {sorted(dropouts)}; one xplstm LSTM has one "
            "recurrent_dropout: convert them one by one"
        )
    return {"recurrent_dropout": dropouts.pop()}, notes


def keras_layer(
    keras: Any, hidden: int, inputs: int, bidirectional: bool, options: dict[str, Any]
) -> Any:
    """A built Keras ``LSTM`` (``Bidirectional`` when ``bidirectional``) returning sequences,
    for ``inputs`` features per step, with ``options`` (``use_bias``, ``recurrent_dropout``,
    ``dtype``)."""
    layer = keras.layers.LSTM(hidden, return_sequences=True, **options)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer, dtype=options["dtype"])
    layer.build((None, None, inputs))
    return layer


_KERAS_FORMS = (
    "expected Keras LSTM weights as get_weights() returns them: [kernel, recurrent_kernel, "
    "bias] (or without bias) for an LSTM, six (or four) arrays for a Bidirectional(LSTM), or a "
    "list of those for a stack"
)


def _from_keras_recurrence(arrays: Sequence[Any]) -> Host:
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
    gates = gate_order(units)
    bias = None
    if len(arrays) == 3:
        bias = to_numpy(arrays[2])
        _expect("bias", bias, (4 * units,), "(4 * units,)")
        bias = bias[gates]
    return Host(np.concatenate([kernel, recurrent])[:, gates], bias, None)


def to_keras(recurrences: Sequence[Host]) -> list[np.ndarray]:
    """Keras weights (host) for ``set_weights``: ``[kernel, recurrent_kernel, bias]`` per
    recurrence, concatenated in ``parameters()`` order (so a ``Bidirectional(LSTM)``'s list for
    a bidirectional layer); a stack's layers take consecutive slices."""
    arrays = []
    for weights, bias, projection in recurrences:
        if projection is not None:
            raise ValueError("Keras's LSTM has no projection: a proj_size layer cannot convert")
        hidden = weights.shape[1] // 4
        inputs, gates = weights.shape[0] - hidden, gate_order(hidden)
        arrays += [
            np.ascontiguousarray(weights[:inputs, gates]),
            np.ascontiguousarray(weights[inputs:, gates]),
        ]
        arrays += [] if bias is None else [np.ascontiguousarray(bias[gates])]
    return arrays


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


class Interop:
    """The conversions as methods of :class:`~xplstm.LSTM` (which supplies ``recurrences``,
    ``directions``, ``num_layers``, ``backend``, ``device`` and ``train``)."""

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

    @classmethod
    def from_keras(cls, source: Any, **layer_kwargs: Any) -> Any:
        """A layer from a Keras ``LSTM`` or ``Bidirectional(LSTM)`` layer, a list of them (a
        stack), or a Keras model (its LSTM layers, in order); or from weights as
        ``get_weights()`` returns them: an ``LSTM``'s ``[kernel, recurrent_kernel, bias]``, a
        ``Bidirectional(LSTM)``'s six arrays, or a list of those for a stack (gate order i, f,
        c, o; Keras's default tanh and sigmoid activations). ``layer_kwargs`` as for
        :meth:`from_torch`.

        From layers, the sizes, ``use_bias`` and ``recurrent_dropout`` come from their
        configs; options that would change the outputs (another ``activation``,
        ``go_backwards``, a ``merge_mode`` other than ``"concat"``) are refused, and options
        with no counterpart that leave inference alone (``dropout`` on the inputs,
        ``return_sequences=False``, regularizers, ...) are named in one ``UserWarning``.
        """
        layers = keras_layers(source)
        if layers is None:
            return cls._imported(from_keras(source), layer_kwargs)
        options, notes = keras_options(layers)
        if notes:
            warnings.warn(
                "Keras options with no counterpart in xplstm.LSTM: " + "; ".join(notes),
                UserWarning,
                stacklevel=2,
            )
        weights = [layer.get_weights() for layer in layers]
        imported = from_keras(weights if len(weights) > 1 else weights[0])
        return cls._imported(imported, options | layer_kwargs)

    def to_keras(self) -> Any:
        """The layer as Keras 3 layers with its weights: an ``LSTM`` (a ``Bidirectional(LSTM)``
        when bidirectional) returning sequences, built for ``(batch, seq, input_size)``; a list
        of them, one per stacked layer, for a stack. Needs keras (``KERAS_BACKEND`` set to
        ``jax`` or ``torch`` keeps it from importing TensorFlow)."""
        try:
            import keras
        except ImportError as error:
            raise ImportError(f"to_keras needs Keras 3 ({error}): pip install keras") from error
        weights = self.to_keras_weights()
        stacked = weights if self.num_layers > 1 else [weights]
        options = {
            "use_bias": self.use_bias,
            "recurrent_dropout": self.recurrent_dropout,
            "dtype": dtype_name(self.recurrences[0].weights.values.dtype),
        }
        layers = []
        for index, arrays in enumerate(stacked):
            inputs = self.input_size if index == 0 else self.directions * self.hidden_size
            layer = keras_layer(keras, self.hidden_size, inputs, self.bidirectional, options)
            layer.set_weights(arrays)
            layers.append(layer)
        return layers[0] if self.num_layers == 1 else layers

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

    def to_torch_state_dict(self, device: Any = None) -> dict[str, Any]:
        """The parameters as the state dict of ``torch.nn.LSTM(input_size, hidden_size,
        num_layers=..., bidirectional=..., proj_size=..., bias=use_bias)`` (torch tensors on
        ``device``, default the layer's own when it is on torch, else the CPU), for
        ``module.load_state_dict``; each bias goes in ``bias_ih_l{k}``, zeros in
        ``bias_hh_l{k}``."""
        arrays = to_torch(self._host_recurrences(), self.bidirectional)
        return torch_tensors(arrays, self, device)

    def to_keras_weights(self) -> list[Any]:
        """The parameters as Keras weights (NumPy arrays) for ``set_weights``: an ``LSTM``'s
        ``[kernel, recurrent_kernel, bias]``, a ``Bidirectional(LSTM)``'s forward then backward
        arrays, and for a stack a list with one such list per layer."""
        hosts = self._host_recurrences()
        step = self.directions
        layers = [to_keras(hosts[k : k + step]) for k in range(0, len(hosts), step)]
        return layers[0] if self.num_layers == 1 else layers

    def _host_recurrences(self) -> list[Host]:
        return [
            Host(*(None if p is None else to_numpy(p.values) for p in vars(r).values()))
            for r in self.recurrences
        ]
