"""Export an ``LSTM``, or a ``Sequential`` of ``LSTM``, ``LastStep`` and ``Linear``, to ONNX.

The graph computes what ``model.forward`` computes, with ONNX's own ``LSTM`` operator and a few
standard operators around it, so any ONNX runtime runs it (ONNX Runtime on servers, in C++, on
phones, in the browser):

- input ``x``: (batch, seq, input_size), batch-first as in xplstm. The graph transposes it to
  the time-major layout around the operator, because ONNX Runtime's CPU kernel refuses
  ``layout=1``;
- optional inputs ``h0`` and ``c0``: (batch, hidden_size), the LSTM's initial state. They are
  ONNX optional inputs: leave them out of the feed (or feed ``None``) for zeros;
- outputs ``y``, what ``model.forward`` returns (an LSTM's output sequence, or the last layer's
  output of a Sequential), then ``h_n`` and ``c_n``, the LSTM's final state.

A model with several LSTMs names the states of its layer ``i`` ``h0_i``, ``c0_i``, ``h_n_i`` and
``c_n_i``. Batch and sequence length are free in the graph; sizes and weights are fixed.

ONNX Runtime's CPU LSTM kernel runs float32 only (checked with onnxruntime 1.32: a double graph
loads, then fails with "LSTM operator does not support double yet"). A float64 model is therefore
exported only with an explicit ``dtype``: ``"float32"`` casts its parameters, ``"float64"``
writes a double graph for runtimes that run one (ONNX's reference evaluator does).

An LSTM the operator cannot run as xplstm does is refused with a ``ValueError``: a projection
(``proj_size``) has no counterpart in ONNX's ``LSTM``, and stacked or bidirectional layers are
not exported yet (:func:`_recurrences` is where they plug in: one ``LSTM`` node per stacked
layer, with ``direction="bidirectional"`` for two directions).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# Absolute import: this is the onnx package, not this module (xplstm.onnx).
try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError as error:
    raise ImportError(
        f"xplstm.onnx needs the onnx package ({error}): pip install 'xplstm[onnx]'"
    ) from error

import xplstm
from xplstm import interop
from xplstm.checkpoint import Model
from xplstm.layer import dtype_name
from xplstm.linear import Linear
from xplstm.lstm import LSTM
from xplstm.resolver import to_numpy
from xplstm.sequential import LastStep, Sequential

#: The opset written by default, and the lowest one this exporter writes: from opset 18 on,
#: ``OptionalHasElement`` accepts an optional input that was not fed.
DEFAULT_OPSET = 18

__all__ = ["DEFAULT_OPSET", "export", "summary", "to_onnx"]


def export(
    model: Model,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dtype: str | None = None,
) -> onnx.ModelProto:
    """Write ``model`` to ``path`` as an ONNX graph (see :func:`to_onnx`); returns the graph.

    The file is replaced only once it is complete.
    """
    proto = to_onnx(model, opset=opset, dtype=dtype)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)}: there is no folder {folder}")
    partial = f"{os.fspath(path)}.partial"
    onnx.save_model(proto, partial)
    os.replace(partial, path)
    return proto


def to_onnx(
    model: Model, *, opset: int = DEFAULT_OPSET, dtype: str | None = None
) -> onnx.ModelProto:
    """The ONNX graph of ``model`` (an LSTM, a Linear, or a Sequential of LSTM, LastStep and
    Linear), checked by ``onnx.checker`` with shape inference.

    Args:
        model: the model, on any backend and device (its parameters are copied to the host).
        opset: the ONNX opset to write, from :data:`DEFAULT_OPSET` to the newest the installed
            onnx package knows.
        dtype: ``"float32"`` or ``"float64"``, the graph's float type. By default the model's,
            except that a float64 model needs it said (ONNX Runtime's CPU LSTM runs float32 only).
    """
    newest = onnx.defs.onnx_opset_version()
    if (
        isinstance(opset, bool)
        or not isinstance(opset, int)
        or not DEFAULT_OPSET <= opset <= newest
    ):
        raise ValueError(
            f"opset must be an int from {DEFAULT_OPSET} to {newest} (the newest that onnx "
            f"{onnx.__version__} knows), got {opset!r}"
        )
    layers = model.layers if isinstance(model, Sequential) else [model]
    dtype = _graph_dtype(layers, dtype)
    graph = _Graph(dtype)
    lstm_count = sum(isinstance(layer, LSTM) for layer in layers)
    x, shape = _model_input(graph, layers)
    for index, layer in enumerate(layers):
        _check_input(index, layer, shape)
        if isinstance(layer, LSTM):
            x = _lstm(graph, layer, x, "" if lstm_count == 1 else f"_{index}")
            shape = (*shape[:-1], layer.hidden_size)
        elif isinstance(layer, Linear):
            x = _linear(graph, layer, x, f"layers.{index}")
            shape = (*shape[:-1], layer.out_features)
        else:
            x = graph.op("Gather", x, graph.constant("last", np.array(-1)), axis=1)
            shape = (shape[0], shape[2])
    graph.output(graph.op("Identity", x, name="y"), shape, first=True)
    ids = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        helper.make_graph(graph.nodes, "xplstm", graph.inputs, graph.outputs, graph.constants),
        opset_imports=ids,
        ir_version=helper.find_min_ir_version_for(ids),
        producer_name="xplstm",
        producer_version=xplstm.__version__,
        doc_string=f"xplstm {type(model).__name__}, exported by xplstm.onnx",
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def summary(proto: onnx.ModelProto) -> str:
    """One line per graph input and output: name, whether it is optional, dtype and shape."""
    lines = []
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            optional = value.type.HasField("optional_type")
            tensor = value.type.optional_type.elem_type if optional else value.type
            dims = ", ".join(d.dim_param or str(d.dim_value) for d in tensor.tensor_type.shape.dim)
            elem = helper.tensor_dtype_to_np_dtype(tensor.tensor_type.elem_type).name
            note = " (optional: zeros when not fed)" if optional else ""
            lines.append(f"  {kind:6s} {value.name:6s} {elem} ({dims}){note}")
    return "\n".join(lines)


# -- the model's layers, checked ---------------------------------------------------------
def _graph_dtype(layers: list[Any], wanted: str | None) -> str:
    """The graph's float type: ``wanted``, else the model's, which must then be float32."""
    for index, layer in enumerate(layers):
        if not isinstance(layer, LSTM | Linear | LastStep):
            raise TypeError(
                f"layer {index} is a {type(layer).__name__}; xplstm.onnx exports LSTM, LastStep "
                "and Linear layers, alone or in a Sequential"
            )
    names = {dtype_name(layer.dtype) for layer in layers if layer.parameters()}
    if not names:
        raise ValueError("the model has no LSTM or Linear layer: there is nothing to export")
    if len(names) > 1:
        raise ValueError(f"the model mixes dtypes {sorted(names)}; move its layers to one dtype")
    if wanted is not None:
        return dtype_name(wanted)
    (name,) = names
    if name == "float64":
        raise ValueError(
            "the model is float64, and ONNX Runtime's CPU LSTM runs float32 only: pass "
            "dtype='float32' (CLI: --dtype float32) to cast the parameters, or dtype='float64' "
            "for a runtime that runs double LSTMs"
        )
    return name


def _model_input(graph: _Graph, layers: list[Any]) -> tuple[str, tuple[Any, ...]]:
    """The graph input ``x`` (batch, seq, features), sized by the first layer with a size."""
    first = next(layer for layer in layers if layer.parameters())
    shape = ("batch", "seq", first.input_size if isinstance(first, LSTM) else first.in_features)
    return graph.input("x", shape), shape


def _check_input(index: int, layer: Any, shape: tuple[Any, ...]) -> None:
    """A ValueError unless ``layer`` takes inputs of ``shape``."""
    name = f"layer {index} ({type(layer).__name__})"
    if isinstance(layer, LSTM | LastStep) and len(shape) != 3:
        raise ValueError(f"{name} needs (batch, seq, features), but it gets {shape}")
    size = layer.input_size if isinstance(layer, LSTM) else getattr(layer, "in_features", None)
    if size is not None and size != shape[-1]:
        raise ValueError(f"{name} takes {size} features, but it gets {shape[-1]}: {shape}")


def _recurrences(layer: LSTM) -> list[tuple[np.ndarray, np.ndarray]]:
    """The host ``(weights, bias)`` of each recurrence the layer runs, in torch's state order
    (layer-major, forward direction first): one for the layer xplstm has today.

    Stacked and bidirectional layers go here: their recurrences, grouped by stacked layer, each
    group one ``LSTM`` node whose W, R, B stack the directions (see :func:`_lstm`).
    """
    for attribute, plain in (("num_layers", 1), ("bidirectional", False), ("proj_size", 0)):
        if getattr(layer, attribute, plain) != plain:
            raise ValueError(
                f"xplstm.onnx exports a one-layer, one-direction LSTM without projection; this "
                f"one has {attribute}={getattr(layer, attribute)!r} (ONNX's LSTM operator has no "
                "projection; stacked and bidirectional layers are not exported yet)"
            )
    weights = to_numpy(layer.weights.values)
    # use_bias=False: ONNX's B is optional, but zeros keep one graph for both.
    bias = np.zeros(4 * layer.hidden_size, weights.dtype) if layer.bias is None else None
    return [(weights, to_numpy(layer.bias.values) if bias is None else bias)]


# -- graph building ----------------------------------------------------------------------
class _Graph:
    """The nodes, constants, inputs and outputs of one ONNX graph, with unique value names."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._shared: dict[tuple[str, bytes], str] = {}

    def name(self, wanted: str) -> str:
        """``wanted``, or ``wanted_2``, ``wanted_3``, ... if taken: ONNX names each value once."""
        name, count = wanted, 1
        while name in self._names:
            count += 1
            name = f"{wanted}_{count}"
        self._names.add(name)
        return name

    def constant(self, wanted: str, array: np.ndarray) -> str:
        """A named constant (an initializer), made once per name and value; float arrays take
        the graph's dtype."""
        if array.dtype.kind == "f":
            array = array.astype(self.dtype)
        key = (wanted, array.dtype.str.encode() + repr(array.shape).encode() + array.tobytes())
        if key not in self._shared:
            self._shared[key] = self.name(wanted)
            self.constants.append(numpy_helper.from_array(array, self._shared[key]))
        return self._shared[key]

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attributes: Any) -> str:
        """Append one node with one output, named ``name`` or after the operator."""
        output = self.name(name or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def tensor_type(self, shape: tuple[Any, ...]) -> onnx.TypeProto:
        return helper.make_tensor_type_proto(self.elem_type, list(shape))

    def input(self, name: str, shape: tuple[Any, ...], optional: bool = False) -> str:
        kind = self.tensor_type(shape)
        if optional:
            kind = helper.make_optional_type_proto(kind)
        name = self.name(name)
        self.inputs.append(helper.make_value_info(name, kind))
        return name

    def output(self, value: str, shape: tuple[Any, ...], first: bool = False) -> None:
        info = helper.make_value_info(value, self.tensor_type(shape))
        self.outputs.insert(0 if first else len(self.outputs), info)


def _batch_and(graph: _Graph, x: str, size: int) -> str:
    """The 1-D shape ``(batch, size)``, with the batch read from ``x`` (batch, ...) at run
    time."""
    batch = graph.op("Shape", x, name="batch", start=0, end=1)
    return graph.op("Concat", batch, graph.constant("size", np.array([size])), axis=0)


def _initial_state(graph: _Graph, name: str, hidden: int, shape: str) -> str:
    """An optional graph input ``name`` (batch, hidden): the fed value, else zeros of ``shape``;
    returned as the (1, batch, hidden) the LSTM operator takes."""
    graph.input(name, ("batch", hidden), optional=True)
    fed, zeros = graph.name(f"{name}_fed"), graph.name(f"{name}_zeros")
    zero = numpy_helper.from_array(np.zeros(1, dtype=graph.dtype))
    branch = {
        "then_branch": helper.make_graph(
            [helper.make_node("OptionalGetElement", [name], [fed])],
            fed,
            [],
            [helper.make_value_info(fed, graph.tensor_type(("batch", hidden)))],
        ),
        "else_branch": helper.make_graph(
            [helper.make_node("ConstantOfShape", [shape], [zeros], value=zero)],
            zeros,
            [],
            [helper.make_value_info(zeros, graph.tensor_type(("batch", hidden)))],
        ),
    }
    state = graph.op("If", graph.op("OptionalHasElement", name), name=f"{name}_or_zeros", **branch)
    return graph.op("Unsqueeze", state, graph.constant("axis_0", np.array([0])))


def _lstm(graph: _Graph, layer: LSTM, x: str, suffix: str) -> str:
    """ONNX's LSTM on ``x`` (batch, seq, input): returns y (batch, seq, hidden) and adds the
    state inputs ``h0``, ``c0`` and outputs ``h_n``, ``c_n`` (names ending in ``suffix``)."""
    hidden = layer.hidden_size
    directions = _recurrences(layer)  # one stacked layer's directions (one, today)
    onnx_weights = [interop.to_onnx(w, b, layer.input_size) for w, b in directions]
    w, r, b = (
        graph.constant(f"lstm{suffix}.{part}", np.stack(arrays))
        for part, arrays in zip("WRB", zip(*onnx_weights, strict=True), strict=True)
    )
    zeros_shape = _batch_and(graph, x, hidden)
    h0, c0 = (
        _initial_state(graph, f"{state}{suffix}", hidden, zeros_shape) for state in ("h0", "c0")
    )
    time_major = graph.op("Transpose", x, perm=[1, 0, 2])
    node_outputs = [graph.name(f"lstm{suffix}.{part}") for part in ("Y", "Y_h", "Y_c")]
    graph.nodes.append(
        helper.make_node(
            "LSTM",
            [time_major, w, r, b, "", h0, c0],
            node_outputs,
            hidden_size=hidden,
            direction="forward" if len(directions) == 1 else "bidirectional",
        )
    )
    y_time_major, h_n, c_n = node_outputs
    # Y is (seq, directions, batch, hidden): to (batch, seq, directions * hidden).
    y = graph.op("Transpose", y_time_major, perm=[2, 0, 1, 3])
    y = graph.op("Reshape", y, graph.constant("batch_seq_rest", np.array([0, 0, -1])))
    axis_0 = graph.constant("axis_0", np.array([0]))
    for state, value in (("h_n", h_n), ("c_n", c_n)):
        name = f"{state}{suffix}"
        graph.output(graph.op("Squeeze", value, axis_0, name=name), ("batch", hidden))
    return y


def _linear(graph: _Graph, layer: Linear, x: str, prefix: str) -> str:
    """``x @ W + b`` over the last axis of ``x``."""
    weights = graph.constant(f"{prefix}.weights", to_numpy(layer.weights.values))
    bias = graph.constant(f"{prefix}.bias", to_numpy(layer.bias.values))
    return graph.op("Add", graph.op("MatMul", x, weights), bias)
