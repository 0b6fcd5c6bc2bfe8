"""Checkpoints: a model's parameters and a small JSON description in one ``.npz`` file.

The file holds one host array per parameter, named ``layers.<i>.<name>`` with the names of
``layer.named_parameters()`` (``weights``, ``bias``, ``projection``; for an LSTM of several
recurrences ``recurrences.<k>.weights`` and so on), and the description under ``__xplstm__``
as a 0-d string array, e.g.::

    {"format": "xplstm-checkpoint", "version": 1, "model": "Sequential", "dtype": "float32",
     "layers": [{"type": "LSTM", "input_size": 2, "hidden_size": 32, "num_layers": 2,
                 "bidirectional": false, "proj_size": 0, "use_bias": true, "dropout": 0.1,
                 "recurrent_dropout": 0.0, "training": false},
                {"type": "LastStep"}, {"type": "Linear", "in_features": 32, "out_features": 1}]}

A layer with a training mode (an LSTM) records it as ``training``, and :func:`load` gives the
model back in that mode (a model saved after ``model.eval()`` loads in evaluation mode).
Options missing from a description take their defaults (training mode), so older files still
load.

Files are read with ``numpy.load(..., allow_pickle=False)``: nothing in them is ever unpickled,
so a checkpoint from an untrusted source cannot run code. Its description is untrusted too:
each array's header is checked against the bytes that back it, and the description against
the arrays present, before anything is allocated or built from them; a NaN or infinite array
is refused (``save`` refuses to write one); :mod:`xplstm.archive` does this reading and
checking. Parameters are stored on the host,
so a model trained on one backend loads on any other and computes the same outputs.

A training checkpoint (``save(path, model, optimizer=..., training=...)``) adds the optimizer's
state as arrays ``optimizer.<i>.<buffer>`` (one per parameter ``i``), its type and step count
under ``"optimizer"``, and the training loop's own JSON under ``"training"``; :func:`load` reads
the model from it as from any checkpoint, :func:`restore` puts everything back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from xplstm import archive, backends
from xplstm.archive import DESCRIPTION_KEY, FORMAT, LAYERS, VERSION, CheckpointError
from xplstm.backends import Backend, BackendError
from xplstm.embedding import Embedding
from xplstm.files import write_whole
from xplstm.layer import dtype_name
from xplstm.linear import Linear
from xplstm.lstm import LSTM
from xplstm.optim import Optimizer
from xplstm.resolver import resolve, to_numpy
from xplstm.sequential import LastStep, Sequential

#: The prefix of the optimizer's arrays in a training checkpoint.
_OPTIMIZER = "optimizer."
#: Further constructor options a layer type records (any JSON value; the layer checks them).
OPTIONS: dict[str, tuple[str, ...]] = {
    "LSTM": (
        "num_layers",
        "bidirectional",
        "proj_size",
        "use_bias",
        "dropout",
        "recurrent_dropout",
    ),
    "Embedding": ("padding_idx",),
}

Model = LSTM | Linear | Embedding | Sequential


def _layers_of(model: Any) -> list[Any]:
    layers = model.layers if isinstance(model, Sequential) else [model]
    for index, layer in enumerate(layers):
        known = LAYERS.get(type(layer).__name__)
        if known is None or not isinstance(layer, known[0]):
            raise TypeError(
                f"layer {index} is a {type(layer).__name__}; checkpoints hold "
                f"{', '.join(LAYERS)} layers, alone or in a Sequential"
            )
    return layers


def model_arrays(model: Model) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON description of ``model`` and its parameters as host NumPy arrays, by name.

    What :func:`save` writes; :func:`model_from_arrays` builds the model back from them on any
    backend (``xplstm.distributed`` sends them to its workers this way).
    """
    layers = _layers_of(model)
    arrays: dict[str, np.ndarray] = {}
    description: list[dict[str, Any]] = []
    for index, layer in enumerate(layers):
        kind = type(layer).__name__
        recorded = (*LAYERS[kind][1], *OPTIONS.get(kind, ()))
        description.append({"type": kind} | {k: getattr(layer, k) for k in recorded})
        if hasattr(layer, "training"):
            description[-1]["training"] = layer.training
        if layer.parameters():
            for name, param in layer.named_parameters():
                arrays[f"layers.{index}.{name}"] = to_numpy(param.values)
    dtypes = sorted({a.dtype.name for a in arrays.values()})
    if len(dtypes) > 1:
        raise TypeError(f"the model mixes dtypes {dtypes}; move its layers to one dtype first")
    header = {
        "format": FORMAT,
        "version": VERSION,
        # A Sequential subclass is saved, and loads, as the Sequential it is built on.
        "model": "Sequential" if isinstance(model, Sequential) else type(model).__name__,
        "dtype": dtypes[0] if dtypes else None,
        "layers": description,
    }
    return header, arrays


def save(
    path: str | os.PathLike[str],
    model: Model,
    *,
    optimizer: Optimizer | None = None,
    training: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` (an LSTM, a Linear, an Embedding, or a Sequential of those and LastStep) to
    ``path`` as one ``.npz``; the file is replaced only once it is complete, and a failed write
    leaves the old one as it was (see :mod:`xplstm.files`).

    With ``optimizer`` (built on ``model.parameters()``) its state is saved too, and with
    ``training`` a JSON-serialisable dict of the training loop's progress: :func:`restore`
    reads both back.

    >>> import os, tempfile
    >>> from xplstm import LSTM, checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> checkpoint.save(path, LSTM(2, 4, num_layers=2, backend="numpy", seed=0))
    >>> checkpoint.load(path, backend="numpy")
    LSTM(input_size=2, hidden_size=4, num_layers=2, backend='numpy', device='cpu', dtype='float32')
    """
    header, arrays = model_arrays(model)
    problem = archive.non_finite(arrays)
    if problem:
        raise ValueError(
            f"not saved to {os.fspath(path)}: {problem}; the model would compute NaN (a diverged "
            "run): save it from before it diverged"
        )
    if optimizer is not None:
        state = optimizer.state_dict()
        header["optimizer"] = {"type": state["type"], "steps": state["steps"]}
        for index, buffers in enumerate(state["buffers"]):
            for key, value in buffers.items():
                arrays[f"{_OPTIMIZER}{index}.{key}"] = value
    if training is not None:
        header["training"] = training
    arrays[DESCRIPTION_KEY] = np.array(json.dumps(header))
    write_whole(path, lambda file: np.savez(file, **arrays))


def load(
    path: str | os.PathLike[str],
    backend: str | Backend | None = None,
    device: Any = None,
    dtype: str | None = None,
) -> Model:
    """Read a checkpoint written by :func:`save` onto ``backend`` and ``device``, in the
    training or evaluation mode it was saved in.

    ``backend`` defaults as for a new layer: ``$XPLSTM_BACKEND``, else CuPy with a GPU, else
    NumPy. ``dtype`` (``"float32"``, ``"float64"``) converts the parameters; by default they
    keep the file's. Raises :class:`CheckpointError` saying what is wrong when the file is not an
    ``.npz``, is truncated or corrupt, lacks an array, has another layout version, or holds
    arrays that do not fit the layers it describes.

    >>> import os, tempfile
    >>> from xplstm import Linear, checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "head.npz")
    >>> checkpoint.save(path, Linear(4, 1, backend="numpy", seed=0))
    >>> checkpoint.load(path, backend="numpy", dtype="float64")
    Linear(in_features=4, out_features=1, backend='numpy', device='cpu', dtype='float64')
    """
    chosen = resolve(backend)
    device = chosen.parse_device(device)
    arrays = archive.read(path)
    header = archive.description(path, arrays)
    _optimizer_arrays(arrays)
    if dtype is not None:
        described, header = header["dtype"], header | {"dtype": dtype_name(dtype)}
        # Only arrays of the dtype described: the layer refuses any other as it is.
        with np.errstate(over="ignore"):  # float64 beyond float32's range: refused below
            arrays = {
                name: a.astype(header["dtype"]) if a.dtype.name == described else a
                for name, a in arrays.items()
            }
    archive.check_finite(path, arrays)
    return model_from_arrays(header, arrays, chosen, device, source=os.fspath(path))


def model_from_arrays(
    header: dict[str, Any],
    arrays: dict[str, np.ndarray],
    backend: str | Backend | None = None,
    device: Any = None,
    *,
    source: str = "the description",
) -> Model:
    """The model that ``header`` (a checked description) and ``arrays`` (its parameters on the
    host, as :func:`model_arrays` gives them) describe, on ``backend`` and ``device``.

    ``source`` names where they came from in error messages (a file's path).
    """
    chosen = resolve(backend)
    device = chosen.parse_device(device)
    arrays = dict(arrays)
    layers = []
    for index, spec in enumerate(header["layers"]):
        cls, sizes = LAYERS[spec["type"]]
        if cls is LastStep:
            layers.append(LastStep())
            continue
        kwargs = {k: spec[k] for k in (*sizes, *OPTIONS.get(spec["type"], ())) if k in spec}
        found = _pop_prefixed(arrays, f"layers.{index}.")
        try:
            names = _parameter_names(spec["type"], kwargs, len(found))
            missing = [name for name in names if name not in found]
            if missing:
                raise CheckpointError(
                    f"{source}: array 'layers.{index}.{missing[0]}' of layer {index} "
                    f"({spec['type']}) is missing; the file is incomplete"
                )
            arrays |= {f"layers.{index}.{k}": v for k, v in found.items() if k not in names}
            kwargs |= _values_by_argument({name: found[name] for name in names})
            # Every parameter is given: the layer checks each array's shape against the sizes
            # described and draws nothing, so no memory goes to sizes the arrays do not back.
            layer = cls(**kwargs, backend=chosen, device=device, dtype=header["dtype"])
            if "training" in spec:
                layer.train(spec["training"])
        except BackendError:
            raise  # the backend cannot hold these arrays (JAX without 64-bit floats): not the file
        except (ValueError, TypeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{source}: layer {index} ({spec['type']}): {exc}") from None
        layers.append(layer)
    if arrays:
        raise CheckpointError(
            f"{source}: arrays {sorted(arrays)} belong to no layer the description lists"
        )
    return Sequential(*layers) if header["model"] == "Sequential" else layers[0]


#: Sizes of a small layer of each type, and the options that decide which parameters a layer
#: has (stacking, directions, bias, projection): never its sizes.
_SMALL: dict[str, dict[str, int]] = {
    "LSTM": {"input_size": 1, "hidden_size": 2},
    "Linear": {"in_features": 1, "out_features": 1},
    "Embedding": {"num_embeddings": 1, "embedding_dim": 1},
}
_STRUCTURE: dict[str, tuple[str, ...]] = {
    "LSTM": ("num_layers", "bidirectional", "proj_size", "use_bias"),
}


def _parameter_names(kind: str, kwargs: dict[str, Any], present: int) -> list[str]:
    """The names of the parameters of the layer ``kwargs`` describe, read from a small layer
    of the same structure: the description is untrusted, so nothing is built at its sizes
    before the arrays present are checked against them. Raises ``ValueError`` for structure
    options the layer refuses (the layer built from the arrays checks the others)."""
    small = _SMALL[kind] | {k: kwargs[k] for k in _STRUCTURE.get(kind, ()) if k in kwargs}
    proj_size, num_layers = kwargs.get("proj_size"), kwargs.get("num_layers", 1)
    if archive.is_int(proj_size) and proj_size > 0:
        if archive.is_int(kwargs["hidden_size"]) and proj_size < kwargs["hidden_size"]:
            small["proj_size"] = 1
        else:  # the layer refuses it, with the sizes described, before building anything
            small["hidden_size"] = kwargs["hidden_size"]
    if archive.is_int(num_layers) and num_layers > present:
        raise ValueError(
            f"num_layers={num_layers} needs at least {num_layers} arrays, the file holds "
            f"{present} for this layer"
        )
    return list(LAYERS[kind][0](**small, backend="numpy", seed=0).named_parameters().keys())


def restore(
    path: str | os.PathLike[str],
    model: Model,
    optimizer: Optimizer | None = None,
    *,
    check: Callable[[dict[str, Any] | None], None] | None = None,
) -> dict[str, Any] | None:
    """Put the parameters of a checkpoint into ``model`` (where it lives: its backend and
    device) and, with ``optimizer``, the optimizer state saved with them; returns the
    ``training`` dict saved with them (``None`` when there is none).

    Raises :class:`CheckpointError` when the file describes other layers than ``model`` has,
    or holds no optimizer state, or another optimizer's, when ``optimizer`` asks for it.
    ``check`` is called with the ``training`` dict before anything is written, to refuse it
    by raising. A refused call changes nothing: everything is checked, then written.
    """
    arrays = archive.read(path)
    header = archive.description(path, arrays)
    archive.check_finite(path, arrays)
    saved = _optimizer_arrays(arrays)
    expected, _ = model_arrays(model)
    for key in ("model", "dtype", "layers"):
        if _without_modes(header[key]) != _without_modes(expected[key]):
            raise CheckpointError(
                f"{path} holds a {header['model']} {header['layers']} in {header['dtype']}, but "
                f"the model is a {expected['model']} {expected['layers']} in {expected['dtype']}; "
                "build the model as it was when the checkpoint was saved"
            )
    host = model_from_arrays(header, arrays, "numpy", source=os.fspath(path))
    state = None if optimizer is None else _optimizer_state(path, header, saved, optimizer)
    if check is not None:
        check(header.get("training"))
    placed = []
    for param, loaded in zip(model.parameters(), host.parameters(), strict=True):
        owner = backends.backend_of(param.values)
        placed.append(owner.from_numpy(loaded.values, array_api_compat.device(param.values)))
    if optimizer is not None:
        try:  # it checks everything before it changes anything
            optimizer.load_state_dict(state)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the optimizer state does not fit: {exc}") from None
    for param, values in zip(model.parameters(), placed, strict=True):
        param.values = values
    return header.get("training")


def _without_modes(described: Any) -> Any:
    """A description's ``layers`` without their training modes (which :func:`restore` leaves
    as the model has them); other entries as they are."""
    if not isinstance(described, list):
        return described
    return [{k: v for k, v in spec.items() if k != "training"} for spec in described]


def _optimizer_state(
    path: str | os.PathLike[str],
    header: dict[str, Any],
    saved: dict[str, np.ndarray],
    optimizer: Optimizer,
) -> dict[str, Any]:
    """The optimizer state a training checkpoint holds, as ``optimizer.load_state_dict``
    takes it, with every parameter's buffers named alike."""
    described = header.get("optimizer")
    if described is None:
        raise CheckpointError(f"{path} holds no optimizer state: it was saved without optimizer=")
    buffers: list[dict[str, np.ndarray]] = [{} for _ in optimizer.parameters]
    for key, value in saved.items():
        index, _, name = key.removeprefix(_OPTIMIZER).partition(".")
        if not index.isdigit() or int(index) >= len(buffers):
            raise CheckpointError(f"{path}: array {key!r} belongs to no parameter")
        buffers[int(index)][name] = value
    names = [sorted(b) for b in buffers]
    if any(n != names[0] for n in names):
        raise CheckpointError(
            f"{path}: the optimizer state is incomplete: parameter buffers {names}"
        )
    return described | {"buffers": buffers}


def _optimizer_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The optimizer's arrays of a training checkpoint, removed from ``arrays``."""
    return {key: arrays.pop(key) for key in list(arrays) if key.startswith(_OPTIMIZER)}


def _pop_prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with ``prefix`` (removed from ``arrays``), by the rest of
    their names."""
    return {k[len(prefix) :]: arrays.pop(k) for k in [k for k in arrays if k.startswith(prefix)]}


def _values_by_argument(named: dict[str, np.ndarray]) -> dict[str, Any]:
    """Constructor arguments from parameter names: ``weights`` gives ``weights=array``;
    ``recurrences.<k>.weights`` give ``weights=[array per k]``."""
    single: dict[str, Any] = {}
    per_recurrence: dict[str, dict[int, np.ndarray]] = {}
    for name, values in named.items():
        head, _, kind = name.rpartition(".")
        if head:
            per_recurrence.setdefault(kind, {})[int(head.split(".")[1])] = values
        else:
            single[kind] = values
    return single | {k: [v[i] for i in sorted(v)] for k, v in per_recurrence.items()}


__all__ = [
    "DESCRIPTION_KEY",
    "FORMAT",
    "LAYERS",
    "OPTIONS",
    "VERSION",
    "CheckpointError",
    "load",
    "model_arrays",
    "model_from_arrays",
    "restore",
    "save",
]
