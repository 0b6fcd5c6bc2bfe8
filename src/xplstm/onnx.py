"""Export an ``LSTM``, or a ``Sequential`` of ``LSTM``, ``LastStep`` and ``Linear``, to ONNX.

The graph computes what ``model.forward`` computes, with ONNX's own ``LSTM`` operator (one node
per stacked layer, ``direction="bidirectional"`` for two directions, W, R and B stacked forward
direction first) and a few standard operators around it, so any ONNX runtime runs it (ONNX
Runtime on servers, in C++, on phones, in the browser):

- input ``x``: (batch, seq, input_size), batch-first as in xplstm. The graph transposes it to
  the time-major layout around the operators, because ONNX Runtime's CPU kernel refuses
  ``layout=1``; each stacked layer reads the one below's outputs, both directions side by side;
  with an ``Embedding`` first (a tagger), ``x`` is (batch, seq) int64 token ids, looked up
  with ``Gather``;
- optional inputs ``h0`` and ``c0``: the LSTM's initial state, shaped as ``LSTM.forward`` takes
  it: (batch, hidden_size) for one layer in one direction, else
  (num_layers * num_directions, batch, hidden_size), layer-major, forward direction first, as
  torch's. They are ONNX optional inputs: leave them out of the feed (or feed ``None``) for
  zeros;
- optional input ``sequence_lens``: (batch,) int32, each row's length in 1..seq (right
  padding), as ``lengths=`` of ``forward``, with torch's ``pack_padded_sequence`` semantics: y
  is zero past each length, ``h_n`` and ``c_n`` are each row's state at its last valid step, a
  reverse direction starts there, and ``LastStep`` keeps each row's last valid step. Left out,
  every row is ``seq`` steps long. A model without an LSTM or a LastStep has no such input;
- outputs ``y``, what ``model.forward`` returns (an LSTM's output sequence, or the last layer's
  output of a Sequential), then ``h_n`` and ``c_n``, the LSTM's final state, shaped as ``h0``.

A model with several LSTMs names the states of its layer ``i`` ``h0_i``, ``c0_i``, ``h_n_i`` and
``c_n_i``; they share ``sequence_lens``. Batch and sequence length are free in the graph; sizes
and weights are fixed.

ONNX Runtime's CPU LSTM kernel runs float32 only (checked with onnxruntime 1.32: a double graph
loads, then fails with "LSTM operator does not support double yet"). A float64 model is therefore
exported only with an explicit ``dtype``: ``"float32"`` casts its parameters, ``"float64"``
writes a double graph for runtimes that run one (ONNX's reference evaluator does).

What the graph leaves out or cannot do:

- dropout (``dropout``, ``recurrent_dropout``): the graph computes inference, as
  ``model.eval()`` does, whatever the model's mode;
- masks: Keras's ``mask=`` (any pattern of skipped steps, carried states) has no counterpart
  in ONNX's ``LSTM``, which knows only right padding; pass ``sequence_lens`` for that;
- a projection (``proj_size``) has no counterpart in ONNX's ``LSTM``: such a layer is refused
  with a ``ValueError``.
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
from xplstm import checks, interop
from xplstm.checkpoint import Model
from xplstm.embedding import Embedding
from xplstm.files import check_target, write_whole
from xplstm.layer import dtype_name
from xplstm.linear import Linear
from xplstm.lstm import LSTM
from xplstm.resolver import to_numpy
from xplstm.sequential import LastStep, Sequential
from xplstm.steps import reads_steps

#: The opset written by default, and the lowest one this exporter writes: from opset 18 on,
#: ``OptionalHasElement`` accepts an optional input that was not fed.
DEFAULT_OPSET = 18

#: The graph input of each row's length, as ONNX's ``LSTM`` names it.
LENGTHS = "sequence_lens"

__all__ = ["DEFAULT_OPSET", "LENGTHS", "export", "summary", "to_onnx"]


def export(
    model: Model,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dtype: str | None = None,
) -> onnx.ModelProto:
    """Write ``model`` to ``path`` as an ONNX graph (see :func:`to_onnx`); returns the graph.

    The file is replaced only once it is complete; a failed write leaves the old one as it
    was (see :mod:`xplstm.files`).

    >>> import os, tempfile
    >>> from xplstm import LastStep, Linear, LSTM, Sequential, onnx
    >>> model = Sequential(
    ...     LSTM(2, 4, backend="numpy", seed=0), LastStep(), Linear(4, 1, backend="numpy", seed=1)
    ... )
    >>> graph = onnx.export(model, os.path.join(tempfile.mkdtemp(), "model.onnx"))
    >>> [i.name for i in graph.graph.input]  # h0, c0 and sequence_lens may be left out
    ['x', 'h0', 'c0', 'sequence_lens']
    """
    check_target(path)
    proto = to_onnx(model, opset=opset, dtype=dtype)
    write_whole(path, lambda file: onnx.save_model(proto, file))
    return proto


def to_onnx(
    model: Model, *, opset: int = DEFAULT_OPSET, dtype: str | None = None
) -> onnx.ModelProto:
    """The ONNX graph of ``model`` (an LSTM, a Linear, or a Sequential of LSTM, LastStep and
    Linear, after an optional Embedding), checked by ``onnx.checker`` with shape inference.

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
    lengths = _lengths_input(graph, x) if any(reads_steps(layer) for layer in layers) else None
    for index, layer in enumerate(layers):
        _check_input(index, layer, shape)
        if isinstance(layer, LSTM):
            x = _lstm(graph, layer, x, lengths, "" if lstm_count == 1 else f"_{index}")
            shape = (*shape[:-1], layer.directions * layer.hidden_size)
        elif isinstance(layer, Embedding):
            x = _embedding(graph, layer, x, f"layers.{index}")
            shape = (*shape, layer.embedding_dim)
        elif isinstance(layer, Linear):
            x = _linear(graph, layer, x, f"layers.{index}")
            shape = (*shape[:-1], layer.out_features)
        else:
            x = _last_step(graph, x, lengths)
            shape = (shape[0], shape[2])
    # sequence_lens goes after the states, so that the inputs read as forward's arguments.
    graph.inputs.sort(key=lambda value: value.name == LENGTHS)
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
            default = "every row seq steps long" if value.name == LENGTHS else "zeros"
            note = f" (optional: {default} when not fed)" if optional else ""
            lines.append(f"  {kind:6s} {value.name:6s} {elem} ({dims}){note}")
    return "\n".join(lines)


# -- the model's layers, checked ---------------------------------------------------------
def _graph_dtype(layers: list[Any], wanted: str | None) -> str:
    """The graph's float type: ``wanted``, else the model's, which must then be float32."""
    for index, layer in enumerate(layers):
        first_embedding = isinstance(layer, Embedding) and index == 0
        if not (isinstance(layer, LSTM | Linear | LastStep) or first_embedding):
            raise TypeError(
                f"layer {index} is a {type(layer).__name__}; xplstm.onnx exports LSTM, LastStep "
                "and Linear layers, alone or in a Sequential, and an Embedding as its first layer"
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
    """The graph input ``x`` (batch, seq, features), sized by the first layer with a size;
    int64 token ids (batch, seq) before an Embedding."""
    first = next(layer for layer in layers if layer.parameters())
    if isinstance(first, Embedding):
        ids = helper.make_tensor_type_proto(onnx.TensorProto.INT64, ["batch", "seq"])
        return graph.input("x", ids), ("batch", "seq")
    shape = ("batch", "seq", first.input_size if isinstance(first, LSTM) else first.in_features)
    return graph.input("x", graph.tensor_type(shape)), shape


def _check_input(index: int, layer: Any, shape: tuple[Any, ...]) -> None:
    """A ValueError unless ``layer`` takes inputs of ``shape``."""
    name = f"the input of layer {index} ({type(layer).__name__})"
    if isinstance(layer, Embedding):
        checks.shape(name, shape, (None, None), "(batch, seq) token ids")
    elif isinstance(layer, LSTM | LastStep):
        size = layer.input_size if isinstance(layer, LSTM) else None
        checks.sequences(name, shape, size)
    else:
        expected = (*[None] * (len(shape) - 1), layer.in_features)
        checks.shape(name, shape, expected, "(..., in_features)")


def _check_exportable(layer: LSTM) -> None:
    """A ValueError for an LSTM that ONNX's ``LSTM`` operator cannot express."""
    if layer.proj_size:
        raise ValueError(
            f"xplstm.onnx cannot export an LSTM with proj_size={layer.proj_size!r}: ONNX's LSTM "
            "operator has no projection; export a layer with proj_size=0"
        )


def _onnx_parameters(layer: LSTM, stacked: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host ``(W, R, B)`` of stacked layer ``stacked`` for one ``LSTM`` node: its recurrences
    (forward direction first, as in ``layer.recurrences``) stacked on the first axis."""
    directions = layer.directions
    inputs = layer.input_size if stacked == 0 else directions * layer.hidden_size
    per_direction = []
    for recurrence in layer.recurrences[stacked * directions : (stacked + 1) * directions]:
        weights = to_numpy(recurrence.weights.values)
        # use_bias=False: ONNX's B is optional, but zeros keep one graph for both.
        bias = recurrence.bias
        bias = np.zeros(4 * layer.hidden_size, weights.dtype) if bias is None else bias.values
        per_direction.append(interop.to_onnx(weights, to_numpy(bias), inputs))
    w, r, b = (np.stack(arrays) for arrays in zip(*per_direction, strict=True))
    return w, r, b


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

    def input(self, name: str, kind: onnx.TypeProto) -> str:
        name = self.name(name)
        self.inputs.append(helper.make_value_info(name, kind))
        return name

    def output(self, value: str, shape: tuple[Any, ...], first: bool = False) -> None:
        info = helper.make_value_info(value, self.tensor_type(shape))
        self.outputs.insert(0 if first else len(self.outputs), info)


def _run_time_shape(graph: _Graph, x: str, *sizes: int | str) -> str:
    """A 1-D int64 shape of ``sizes``, where ``"batch"`` and ``"seq"`` are read from ``x``
    (batch, seq, ...) at run time."""
    axes = {"batch": 0, "seq": 1}
    parts = [
        graph.op("Shape", x, name=size, start=axes[size], end=axes[size] + 1)
        if isinstance(size, str)
        else graph.constant("size", np.array([size]))
        for size in sizes
    ]
    return graph.op("Concat", *parts, axis=0)


def _optional_input(graph: _Graph, name: str, kind: onnx.TypeProto, default: onnx.NodeProto) -> str:
    """An optional graph input ``name`` of type ``kind``: the fed value, else the output of
    the node ``default`` (which may read values of the graph around it)."""
    name = graph.input(name, helper.make_optional_type_proto(kind))
    fed = graph.name(f"{name}_fed")
    branch = {
        "then_branch": helper.make_graph(
            [helper.make_node("OptionalGetElement", [name], [fed])],
            fed,
            [],
            [helper.make_value_info(fed, kind)],
        ),
        "else_branch": helper.make_graph(
            [default], default.output[0], [], [helper.make_value_info(default.output[0], kind)]
        ),
    }
    return graph.op("If", graph.op("OptionalHasElement", name), name=f"{name}_or_default", **branch)


def _lengths_input(graph: _Graph, x: str) -> str:
    """The optional input ``sequence_lens`` (batch,) int32, each row's length as xplstm's
    ``lengths=``; when not fed, every row is ``seq`` long."""
    kind = helper.make_tensor_type_proto(onnx.TensorProto.INT32, ["batch"])
    seq = graph.op(
        "Cast", graph.op("Shape", x, name="seq", start=1, end=2), to=onnx.TensorProto.INT32
    )
    full = graph.name(f"{LENGTHS}_full")
    default = helper.make_node("Expand", [seq, _run_time_shape(graph, x, "batch")], [full])
    return _optional_input(graph, LENGTHS, kind, default)


def _initial_state(graph: _Graph, name: str, shape: tuple[Any, ...], zeros_shape: str) -> str:
    """The optional input ``name`` of ``shape``: the fed state, else zeros."""
    zeros = graph.name(f"{name}_zeros")
    zero = numpy_helper.from_array(np.zeros(1, dtype=graph.dtype))
    default = helper.make_node("ConstantOfShape", [zeros_shape], [zeros], value=zero)
    return _optional_input(graph, name, graph.tensor_type(shape), default)


def _lstm(graph: _Graph, layer: LSTM, x: str, lengths: str | None, suffix: str) -> str:
    """ONNX's LSTM on ``x`` (batch, seq, input), one node per stacked layer: returns y
    (batch, seq, directions * hidden) and adds the state inputs ``h0``, ``c0`` and outputs
    ``h_n``, ``c_n`` (names ending in ``suffix``), shaped as ``layer.forward``'s states."""
    _check_exportable(layer)
    hidden, directions = layer.hidden_size, layer.directions
    count = len(layer.recurrences)
    # One recurrence: states (batch, hidden); else (num_layers * directions, batch, hidden).
    shape: tuple[Any, ...] = ("batch", hidden) if count == 1 else (count, "batch", hidden)
    zeros_shape = _run_time_shape(graph, x, *shape)
    states = [
        _initial_state(graph, f"{state}{suffix}", shape, zeros_shape) for state in ("h0", "c0")
    ]
    if count == 1:
        states = [graph.op("Unsqueeze", s, graph.constant("axis_0", np.array([0]))) for s in states]
    y = graph.op("Transpose", x, perm=[1, 0, 2])  # time-major: (seq, batch, features)
    h_n, c_n = [], []
    for stacked in range(layer.num_layers):
        prefix = f"lstm{suffix}" if layer.num_layers == 1 else f"lstm{suffix}.{stacked}"
        w, r, b = (
            graph.constant(f"{prefix}.{part}", array)
            for part, array in zip("WRB", _onnx_parameters(layer, stacked), strict=True)
        )
        given = states
        if count > 1:  # this stacked layer's directions of the (count, batch, hidden) states
            start = graph.constant("start", np.array([stacked * directions]))
            end = graph.constant("end", np.array([(stacked + 1) * directions]))
            given = [graph.op("Slice", s, start, end) for s in states]
        outputs = [graph.name(f"{prefix}.{part}") for part in ("Y", "Y_h", "Y_c")]
        graph.nodes.append(
            helper.make_node(
                "LSTM",
                [y, w, r, b, lengths or "", *given],
                outputs,
                hidden_size=hidden,
                direction="forward" if directions == 1 else "bidirectional",
            )
        )
        # Y is (seq, directions, batch, hidden): to (seq, batch, directions * hidden).
        y = graph.op("Transpose", outputs[0], perm=[0, 2, 1, 3])
        y = graph.op("Reshape", y, graph.constant("seq_batch_rest", np.array([0, 0, -1])))
        h_n.append(outputs[1])
        c_n.append(outputs[2])
    for state, values in (("h_n", h_n), ("c_n", c_n)):
        name = f"{state}{suffix}"
        if count == 1:
            value = graph.op(
                "Squeeze", values[0], graph.constant("axis_0", np.array([0])), name=name
            )
        else:
            value = graph.op("Concat", *values, axis=0, name=name)
        graph.output(value, shape)
    return graph.op("Transpose", y, perm=[1, 0, 2])


def _last_step(graph: _Graph, y: str, lengths: str) -> str:
    """Each row's last valid step of ``y`` (batch, seq, features), ``y[b, lengths[b] - 1]``, as
    :class:`~xplstm.sequential.LastStep` with ``lengths`` (the last step when not fed)."""
    last = graph.op(
        "Sub",
        graph.op("Cast", lengths, to=onnx.TensorProto.INT64),
        graph.constant("one", np.array(1)),
    )
    index = graph.op("Unsqueeze", last, graph.constant("axis_1", np.array([1])))
    return graph.op("GatherND", y, index, batch_dims=1)


def _embedding(graph: _Graph, layer: Embedding, tokens: str, prefix: str) -> str:
    """The rows of the table for ``tokens`` (batch, seq): (batch, seq, embedding_dim)."""
    table = graph.constant(f"{prefix}.weights", to_numpy(layer.weights.values))
    return graph.op("Gather", table, tokens, axis=0)


def _linear(graph: _Graph, layer: Linear, x: str, prefix: str) -> str:
    """``x @ W + b`` over the last axis of ``x``."""
    weights = graph.constant(f"{prefix}.weights", to_numpy(layer.weights.values))
    bias = graph.constant(f"{prefix}.bias", to_numpy(layer.bias.values))
    return graph.op("Add", graph.op("MatMul", x, weights), bias)
