"""Exact conversion of LSTM weights between xplstm's layout (:mod:`xplstm.layout`) and
Keras's, on the host, and the Keras layers, models and options that come with them.

Keras ``LSTM`` (``layer.get_weights()``): ``kernel`` (input_size, 4u), ``recurrent_kernel``
(u, 4u), ``bias`` (4u,), gate column blocks i, f, c, o (c is xplstm's g), with the default
``activation="tanh"`` and ``recurrent_activation="sigmoid"``. Keras's order is i, f, g, o:
swapping the last two blocks maps either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xplstm.layer import dtype_name
from xplstm.layout import Converted, Host, Imported, expect, gate_order
from xplstm.resolver import to_numpy


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
        expect("bias", bias, (4 * units,), "(4 * units,)")
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


class KerasInterop(Converted):
    """The Keras conversions as methods of :class:`~xplstm.LSTM`."""

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

    def to_keras_weights(self) -> list[Any]:
        """The parameters as Keras weights (NumPy arrays) for ``set_weights``: an ``LSTM``'s
        ``[kernel, recurrent_kernel, bias]``, a ``Bidirectional(LSTM)``'s forward then backward
        arrays, and for a stack a list with one such list per layer."""
        hosts = self._host_recurrences()
        step = self.directions
        layers = [to_keras(hosts[k : k + step]) for k in range(0, len(hosts), step)]
        return layers[0] if self.num_layers == 1 else layers
