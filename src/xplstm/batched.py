"""A model's outputs for many rows, a bounded batch at a time, from the host and back to it:
what ``xplstm predict`` runs in this process, and each Dask worker runs on its blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from xplstm import backends, checks, steps
from xplstm.layer import dtype_name
from xplstm.resolver import to_numpy
from xplstm.sequential import Sequential, output
from xplstm.types import Array


def on_model(model: Any, a: Any) -> Array:
    """``a`` on the model's backend and device: as it is when it is there already, else copied
    from the host (or from another backend through the host)."""
    backend = backends.backend_of(model.parameters()[0].values)
    if backend.is_array(a) and backends.backend_of(a) is backend:
        return a
    return backend.from_numpy(np.ascontiguousarray(to_numpy(a)), model.device)


def check_inputs(model: Any, x: Any, name: str, lengths: Any = None, mask: Any = None) -> None:
    """A clear error unless ``x`` (any array with ``shape`` and ``dtype``: NumPy, a memory
    map, Dask) is (rows, seq, features), with the model's features and dtype, and not empty
    (:func:`xplstm.checks.sequences`); and unless ``lengths`` (rows,) ints in 1..seq or
    ``mask`` (rows, seq) booleans, when given, fit ``x`` and a model that reads them."""
    first = model.layers[0] if isinstance(model, Sequential) else model
    features = getattr(first, "input_size", getattr(first, "in_features", None))
    checks.sequences(name, tuple(getattr(x, "shape", ())), features, "(rows, seq, features)")
    dtype = dtype_name(model.dtype)
    if np.dtype(x.dtype).name != dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype} but the model computes in {dtype}; convert it first "
            f"(x.astype({dtype!r})), or load the model with that dtype"
        )
    if lengths is None and mask is None:
        return
    steps.one_of(lengths, mask)
    layers = model.layers if isinstance(model, Sequential) else [model]
    if not any(steps.reads_steps(layer) for layer in layers):
        raise ValueError("the model has no LSTM or LastStep layer to read lengths or a mask")
    rows, seq = x.shape[0], x.shape[1]
    if lengths is not None:
        steps.check_lengths(lengths, rows, seq)
    if mask is not None and (np.dtype(mask.dtype).kind != "b" or tuple(mask.shape) != (rows, seq)):
        raise ValueError(
            f"mask must be booleans of shape (rows, seq) = {(rows, seq)} like {name}'s first two "
            f"axes, got {mask.dtype} of shape {tuple(mask.shape)}; save it as mask != 0"
        )


def predict(
    model: Any, x: Any, batch_size: int, *, lengths: Any = None, mask: Any = None
) -> np.ndarray:
    """``model(x, lengths=lengths, mask=mask)`` in evaluation mode (no dropout: a prediction
    is not random) on the host, run ``batch_size`` rows of ``x`` (and of ``lengths`` or
    ``mask``, host arrays) at a time so that memory stays bounded however many rows there are.
    Each layer's training mode is restored afterwards."""
    checks.positive_int("batch_size", batch_size)
    layers = model.layers if isinstance(model, Sequential) else [model]
    modes = [(layer, layer.training) for layer in layers if hasattr(layer, "training")]
    for layer, _ in modes:
        layer.eval()
    try:
        parts = []
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            steps = {} if lengths is None else {"lengths": np.asarray(lengths[rows])}
            steps |= {} if mask is None else {"mask": on_model(model, mask[rows])}
            parts.append(to_numpy(output(model(on_model(model, x[rows]), **steps))))
    finally:
        for layer, training in modes:
            layer.train(training)
    return np.concatenate(parts)
