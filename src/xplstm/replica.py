"""The model on a Dask worker: what it needs to rebuild the model (:class:`Replica`), and the
two tasks it runs on it, a block's prediction and a shard's loss and gradients.

A replica is the model's description and host parameters, as a checkpoint holds them
(:func:`xplstm.checkpoint.model_arrays`); it travels through the task graph, so a task lost
with its worker is recomputed elsewhere from its lineage. A worker builds it on the model's
backend, on its first device of the kind the model is on (see :meth:`Replica.build`).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xplstm import backends, batched, checkpoint
from xplstm.resolver import to_numpy
from xplstm.sequential import Sequential
from xplstm.types import Array

Model = Any
#: A loss as in :mod:`xplstm.losses`: ``(prediction, target) -> (loss, d_prediction)``.
Loss = Callable[[Array, Array], tuple[Array, Array]]


@dataclass(frozen=True)
class Replica:
    """What a worker needs to rebuild a model: its description and host parameters (as in a
    checkpoint), its backend's name, and the kind of device it lives on (see :meth:`build`)."""

    description: dict[str, Any]
    arrays: dict[str, np.ndarray]
    backend: str
    device_kind: str
    training: bool  # any layer in training mode: dropout acts in the shards' forward

    @classmethod
    def of(cls, model: Model) -> Replica:
        """The replica of ``model`` as it stands now."""
        if model.backend == "dask":
            raise ValueError(
                "the model is on the dask backend; xplstm.distributed runs its own Dask tasks "
                "over NumPy (or CuPy) models: move the model with model.to('numpy')"
            )
        description, arrays = checkpoint.model_arrays(model)
        layers = model.layers if isinstance(model, Sequential) else [model]
        training = any(getattr(layer, "training", False) for layer in layers)
        return cls(description, arrays, model.backend, _kind(model.device), training)

    def build(self) -> Model:
        """The model, here, on the first device of the kind the original lives on: a GPU
        for a model on a GPU (under ``dask_cuda.LocalCUDACluster`` a worker's first GPU is its
        own), the host for one on the host; the backend's default device if there is none."""
        backend = backends.get(self.backend)
        same = [d for d in backend.devices() if _kind(d) == self.device_kind]
        device = same[0] if same else backend.default_device()
        return checkpoint.model_from_arrays(self.description, self.arrays, backend, device)


def _kind(device: Any) -> str:
    """A device's name without its numbers: ``cuda:1`` -> ``cuda:``; ``<CUDA Device 1>`` ->
    ``<CUDA Device >``; ``cpu`` stays ``cpu``."""
    return re.sub(r"\d+", "", str(device))


#: Per worker thread: the model :func:`kept` last built, what it was built from, and the replica
#: whose parameters it holds.
_kept = threading.local()


def kept(replica: Replica) -> Model:
    """On a worker: a model of ``replica``'s description, built once per worker thread and kept
    while the description (and backend, device kind) stays the same, with ``replica``'s
    parameters (loaded again only when another replica comes: a fit step's, or a predict's of
    changed parameters). So the workspaces its layers keep are reused from task to task: a
    fresh model's first forward touches fresh memory, a page fault per 4 KiB, and Dask's
    workers hand freed memory back to the system at once (``MALLOC_TRIM_THRESHOLD_``); at
    LSTM(64, 256) over 256 x 100 steps a fresh model's predict took 1.05-1.5x the CPU time of
    a kept one's, its forward and backward 1.4-1.75x (``benchmarks/kept_model.py``). One model
    per thread (a layer's workspaces serve one call at a time); the last one stays, with its
    memory, until the thread gets another description.

    Loaded parameters are copied when they are not aligned: unpickled from a Dask message, an
    array may start at any byte, and a forward with such weights took 1.27x the CPU time of
    aligned ones (LSTM(64, 256), 256 x 100 steps, one process with the workers'
    ``MALLOC_TRIM_THRESHOLD_=65536``; 1.06x without it)."""
    built_from = (replica.description, replica.backend, replica.device_kind)
    if getattr(_kept, "built_from", None) != built_from:
        _kept.model = None  # free the old model's memory before building the new one
        _kept.model, _kept.built_from = replica.build(), built_from
    elif _kept.holds() is not replica:
        layers = _kept.model.layers if isinstance(_kept.model, Sequential) else [_kept.model]
        for index, layer in enumerate(layers):
            for name, param in layer.named_parameters() if layer.parameters() else ():
                values = np.require(replica.arrays[f"layers.{index}.{name}"], requirements="CA")
                param.values = batched.on_model(layer, values)
    _kept.holds = weakref.ref(replica)
    return _kept.model


def predict_block(
    replica: Replica, block: Any, batch_size: int, steps: dict[str, np.ndarray]
) -> np.ndarray:
    """On a worker: the model's output for ``block`` with its rows' ``lengths`` or ``mask``
    (``steps``), run ``batch_size`` rows at a time, on the model :func:`kept` for ``replica``."""
    return batched.predict(kept(replica), block, batch_size, **steps)


def shard_gradients(
    replica: Replica, loss: Loss, x: Any, y: Any, dropout_seed: int, per_row: dict[str, Any]
) -> tuple[float, list[np.ndarray]]:
    """On a worker: the loss of one shard (with its rows' ``lengths`` or ``mask`` in
    ``per_row``) and its parameter gradients, on the host. Dropout masks (in training mode) are
    drawn from ``dropout_seed``, so a recomputed shard draws the same ones."""
    model = kept(replica)
    for layer in model.layers if isinstance(model, Sequential) else [model]:
        if hasattr(layer, "dropout_seed"):
            layer.train(replica.training)
            layer.dropout_seed(dropout_seed)
    prediction = batched.output(model(batched.on_model(model, x), **_on_model(model, per_row)))
    value, d_prediction = loss(prediction, batched.on_model(model, y))
    model.backward(d_prediction)
    # Each backward replaces deltas (Weights): the next shard's on the kept model leaves these be.
    return float(value), [to_numpy(param.deltas) for param in model.parameters()]


def _on_model(model: Model, per_row: dict[str, Any]) -> dict[str, Any]:
    """``lengths`` as host NumPy (read on the host anyway), ``mask`` on the model's device."""
    return {
        name: np.asarray(values) if name == "lengths" else batched.on_model(model, values)
        for name, values in per_row.items()
    }


__all__ = ["Loss", "Replica", "kept", "predict_block", "shard_gradients"]
