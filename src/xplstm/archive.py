"""Reading a checkpoint file that may come from anywhere: its arrays and its JSON description,
each checked before anything is allocated or built from it.

:func:`read` gives every array of an ``.npz`` archive through ``numpy.load(...,
allow_pickle=False)``, so nothing is ever unpickled, and only once the member's zip entry and
``.npy`` header agree with the bytes that back it: a header cannot make it allocate more memory
than the file holds. :func:`description` checks the description (format, layout version, known layer
types with integer sizes, a model type that fits them, a dtype, an optimizer's state) and
:func:`check_finite` refuses NaN and infinities. Every problem is a :class:`CheckpointError`
that names the file and what is wrong with it. The layout itself is described in
:mod:`xplstm.checkpoint`, which writes it.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from typing import Any

import numpy as np

from xplstm.embedding import Embedding
from xplstm.linear import Linear
from xplstm.lstm import LSTM
from xplstm.sequential import LastStep

#: What the ``format`` field says, and the layout this code writes and reads.
FORMAT = "xplstm-checkpoint"
VERSION = 1
#: The array holding the JSON description.
DESCRIPTION_KEY = "__xplstm__"
#: Layer types a checkpoint may hold, with the constructor arguments that size them.
LAYERS: dict[str, tuple[type, tuple[str, ...]]] = {
    "LSTM": (LSTM, ("input_size", "hidden_size")),
    "Linear": (Linear, ("in_features", "out_features")),
    "LastStep": (LastStep, ()),
    "Embedding": (Embedding, ("num_embeddings", "embedding_dim")),
}
_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


class CheckpointError(ValueError):
    """A file is not a readable xplstm checkpoint, or does not match what it describes."""


def is_int(value: Any) -> bool:
    """An int, and not a bool (which JSON keeps apart, and Python does not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def non_finite(arrays: dict[str, np.ndarray]) -> str | None:
    """Which floating-point array holds NaN or infinities, and how many, if one does."""
    for key, values in arrays.items():
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            count = int(values.size - np.count_nonzero(np.isfinite(values)))
            return f"array {key!r} holds {count} non-finite values (NaN or inf)"
    return None


def check_finite(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """A :class:`CheckpointError` when a parameter or optimizer array is not finite: such a
    model computes NaN, so it is refused rather than loaded (numpy.load reads the arrays)."""
    problem = non_finite(arrays)
    if problem:
        raise CheckpointError(
            f"{path}: {problem}; the model would compute NaN, so it is not loaded (inspect the "
            "arrays with numpy.load)"
        )


def read(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array in the archive, read without unpickling anything, each only once its
    ``.npy`` header is checked against the bytes that back it: memory stays bounded by what
    the file holds, whatever its headers claim."""
    with open(path, "rb") as file:
        magic = file.read(len(_NPY_MAGIC))
    if magic == _NPY_MAGIC:
        raise CheckpointError(
            f"{path} holds a single array (.npy), not an xplstm checkpoint (.npz archive)"
        )
    if not magic.startswith(_ZIP_MAGIC):
        found = "the file is empty" if not magic else f"it starts with {magic!r}"
        raise CheckpointError(
            f"{path} is not an xplstm checkpoint: not an .npz (zip) archive ({found})"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except _UNREADABLE as exc:
        raise CheckpointError(
            f"{path} is not a readable .npz archive ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt"
        ) from None
    with archive:
        arrays = {}
        for info in archive.zip.infolist():
            key = info.filename.removesuffix(".npy")
            try:
                problem = _member_problem(archive.zip, info)
                if problem:
                    raise CheckpointError(f"{path}: array {key!r} {problem}")
                arrays[key] = archive[key]
            except _UNREADABLE as exc:
                if isinstance(exc, CheckpointError):
                    raise
                raise CheckpointError(
                    f"{path}: array {key!r} cannot be read ({type(exc).__name__}: {exc}); the "
                    "file is truncated or corrupt, or holds pickled objects, which are never loaded"
                ) from None
    return arrays


#: The largest ratio of sizes that deflate reaches (long runs of one byte).
_DEFLATE_RATIO = 1032


def _member_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """What is wrong with the archive member ``info``, before its array is allocated: not an
    ``.npy`` array, or a header claiming more bytes than the member holds."""
    if info.compress_type == zipfile.ZIP_STORED:
        holds = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        holds = _DEFLATE_RATIO * info.compress_size
    else:
        return f"is compressed with zip method {info.compress_type}; .npz files use deflate"
    if info.file_size > holds:
        return (
            f"claims {info.file_size} bytes, more than its {info.compress_size} compressed "
            "bytes can hold; the file is corrupt"
        )
    with archive.open(info) as member:
        if member.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            return "is not an .npy array"
        member.seek(0)
        version = np.lib.format.read_magic(member)
        if version not in _NPY_HEADERS:
            return f"has .npy format version {version}; xplstm reads {sorted(_NPY_HEADERS)}"
        shape, _, dtype = _NPY_HEADERS[version](member)
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > info.file_size - member.tell():
            return (
                f"claims shape {shape} of {dtype} ({claimed} bytes) but the file holds "
                f"{info.file_size - member.tell()} bytes for it; the file is truncated or corrupt"
            )
    return None


_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def description(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The checked JSON description, removed from ``arrays``."""
    raw = arrays.pop(DESCRIPTION_KEY, None)
    if raw is None:
        raise CheckpointError(
            f"{path} has no xplstm description (array {DESCRIPTION_KEY!r}): it was not written "
            "by xplstm.checkpoint.save"
        )
    try:
        if raw.shape != () or raw.dtype.kind != "U":
            raise ValueError(f"a {raw.dtype} array of shape {raw.shape}")
        header = json.loads(str(raw))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT!r}")
    except ValueError as exc:
        raise CheckpointError(f"{path}: the description is not valid ({exc})") from None
    if header.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint layout version {header.get('version')!r}; this xplstm reads "
            f"version {VERSION}: load it with the xplstm that wrote it"
        )
    _check_description(path, header)
    return header


def _check_description(path: str | os.PathLike[str], header: dict[str, Any]) -> None:
    """The description names known layers with integer sizes, a model type that fits them, a
    dtype, and (in a training checkpoint) an optimizer's type and step count and a training
    dict: each check assumes the ones before it passed."""
    for problem_of in (_layers_problem, _model_problem, _dtype_problem, _training_problem):
        problem = problem_of(header)
        if problem:
            raise CheckpointError(f"{path}: the description is not valid: {problem}")


def _model_problem(header: dict[str, Any]) -> str | None:
    model = header.get("model")
    kinds = [spec["type"] for spec in header["layers"]]
    if model not in ("Sequential", *LAYERS) or (model != "Sequential" and kinds != [model]):
        return f"model {model!r} does not fit its layers"
    return None


def _training_problem(header: dict[str, Any]) -> str | None:
    described = header.get("optimizer")
    if described is not None and not (
        isinstance(described, dict)
        and isinstance(described.get("type"), str)
        and is_int(described.get("steps"))
    ):
        return f"'optimizer' must be an object with a 'type' and 'steps', got {described!r}"
    if not isinstance(header.get("training", {}), dict):
        return f"'training' must be an object, got {header['training']!r}"
    return None


def _dtype_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with the description's ``dtype``: one of the float dtypes, or ``null``
    for a model without parameters (LastStep alone)."""
    if "dtype" not in header:
        return "'dtype' is missing"
    dtype = header["dtype"]
    if dtype is None and any(spec["type"] != "LastStep" for spec in header["layers"]):
        return "'dtype' is null, but the layers have parameters"
    if dtype not in ("float32", "float64", None):
        return f"dtype {dtype!r} is not float32 or float64"
    return None


def _layers_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with the description's ``layers`` list, or ``None`` when it fits."""
    layers = header.get("layers")
    if not isinstance(layers, list) or not layers:
        return "'layers' must be a non-empty list"
    for index, spec in enumerate(layers):
        if not isinstance(spec, dict):
            return f"layer {index} must be an object with a 'type', got {spec!r}"
        kind = spec.get("type")
        if not isinstance(kind, str) or kind not in LAYERS:
            return f"layer {index} has unknown type {kind!r}; known: {', '.join(LAYERS)}"
        if any(not isinstance(spec.get(k), int) for k in LAYERS[kind][1]):
            return f"layer {index} ({kind}) needs integer {', '.join(LAYERS[kind][1])}"
    return None


__all__ = [
    "DESCRIPTION_KEY",
    "FORMAT",
    "LAYERS",
    "VERSION",
    "CheckpointError",
    "check_finite",
    "description",
    "is_int",
    "non_finite",
    "read",
]
