"""Files: the arrays of ``xplstm predict``, and every file xplstm writes, written whole.

Inputs ``x`` with optional ``lengths`` or ``mask`` come from ``.npy`` and ``.npz`` files,
outputs go to ``.npy`` or ``.npz``. Files are read with ``numpy.load(..., allow_pickle=False)``:
nothing in them is ever unpickled. An ``.npy`` input is memory-mapped, so only the rows being
run are read.

Checkpoints, ONNX graphs and predict's outputs are written by :func:`write_whole`: to
``NAME.partial`` beside the target, renamed over ``NAME`` only once complete, so a reader never
sees half a file; when anything fails (a full disk, a target that is a folder) the old file is
left as it was and the ``.partial`` file is removed.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

#: The arrays an ``.npz`` input may hold: ``x`` and at most one of the others.
NPZ_ARRAYS = ("x", "lengths", "mask")

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_ACCEPTED = (
    "an .npy of x (rows, seq, features), or an .npz holding x and optionally lengths (rows,) "
    "or mask (rows, seq)"
)


class Inputs(NamedTuple):
    """What a model runs on: ``x`` (rows, seq, features) and each row's steps, as ``lengths``
    (rows,) ints or ``mask`` (rows, seq) booleans, or neither."""

    x: Any
    lengths: np.ndarray | None
    mask: np.ndarray | None


def read_inputs(
    path: str | os.PathLike[str],
    *,
    lengths: str | os.PathLike[str] | None = None,
    mask: str | os.PathLike[str] | None = None,
    dtype: str | None = None,
) -> Inputs:
    """``x`` from ``path`` (an ``.npy``, or an ``.npz`` holding ``x`` with ``lengths`` or
    ``mask``), and lengths or a mask from the ``.npy`` files named by ``lengths`` and ``mask``.

    ``dtype`` (``"float32"``, ``"float64"``) converts ``x``; by default it keeps its own.
    Raises ``ValueError`` saying what is wrong and what is accepted for any other file.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        arrays = {"x": _load_npy(path, memory_map=True)}
    elif suffix == ".npz":
        arrays = _load_npz(path)
    else:
        raise ValueError(
            f"{os.fspath(path)}: predict reads {_ACCEPTED}, not {suffix or 'a file without a'} "
            "suffix; convert it first, e.g. np.save('x.npy', np.loadtxt(...).reshape(...))"
        )
    for name, flag in (("lengths", lengths), ("mask", mask)):
        if flag is None:
            continue
        if name in arrays:
            raise ValueError(
                f"{os.fspath(path)} holds {name} already; drop --{name} or the array in the file"
            )
        if Path(flag).suffix.lower() != ".npy":
            raise ValueError(f"--{name} must name an .npy file, got {os.fspath(flag)}")
        arrays[name] = _load_npy(flag, memory_map=False)
    if "lengths" in arrays and "mask" in arrays:
        raise ValueError(
            "give lengths (right padding, torch's semantics) or a mask (any pattern, Keras's "
            "semantics), not both"
        )
    x = arrays["x"]
    if dtype is not None and np.dtype(x.dtype).name != dtype:
        if np.dtype(x.dtype).kind not in "fiu":
            raise ValueError(f"{os.fspath(path)}: x has dtype {x.dtype}, not numbers")
        x = np.asarray(x, dtype=dtype)
    return Inputs(x, arrays.get("lengths"), arrays.get("mask"))


def write_outputs(path: str | os.PathLike[str], y: np.ndarray) -> None:
    """Write ``y`` to ``path``: an ``.npy``, or an ``.npz`` holding it as ``y``. The file is
    replaced only once it is complete."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(
            f"{os.fspath(path)}: predict writes .npy (the outputs alone) or .npz (the outputs "
            f"as 'y'), not a {suffix or 'file without a'} suffix"
        )
    if suffix == ".npy":
        write_whole(path, lambda file: np.save(file, y))
    else:
        write_whole(path, lambda file: np.savez(file, y=y))


def check_target(path: str | os.PathLike[str]) -> None:
    """A clear error, before anything is computed or written, when ``path`` cannot become a
    file: it is a folder, or its folder does not exist."""
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"cannot write {os.fspath(path)}: it is a folder; give a file name inside it"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)}: there is no folder {folder}")


def write_whole(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` with a binary file that becomes ``path`` once ``write`` returns; when
    anything fails, ``path`` is untouched and no ``.partial`` file remains."""
    check_target(path)
    partial = f"{os.fspath(path)}.partial"
    try:
        with open(partial, "wb") as file:
            write(file)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


def _load_npy(path: str | os.PathLike[str], *, memory_map: bool) -> np.ndarray:
    """One array from an ``.npy`` file, never unpickled."""
    _check_magic(path, _NPY_MAGIC, ".npy")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if memory_map else None)
    except ValueError as error:
        raise ValueError(_unreadable(path, error)) from None
    return array


def _load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` input, checked by name; ``x`` is required."""
    _check_magic(path, _ZIP_MAGIC, ".npz (a zip archive)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile) as error:
        raise ValueError(_unreadable(path, error)) from None
    with archive:
        names = sorted(archive.files)
        strange = [name for name in names if name not in NPZ_ARRAYS]
        if "x" not in names or strange:
            raise ValueError(
                f"{os.fspath(path)} holds arrays {names}; predict reads {_ACCEPTED} (save it "
                "with np.savez(path, x=x, lengths=lengths))"
            )
        arrays = {}
        for name in names:
            try:
                arrays[name] = archive[name]
            except ValueError as error:
                raise ValueError(_unreadable(f"{os.fspath(path)}: array {name!r}", error)) from None
    return arrays


def _check_magic(path: str | os.PathLike[str], magic: bytes, kind: str) -> None:
    """A ValueError naming what the file is unless it starts as ``kind`` files do."""
    with open(path, "rb") as file:
        start = file.read(len(magic))
    if start != magic:
        found = "it is empty" if not start else f"it starts with {start!r}"
        raise ValueError(
            f"{os.fspath(path)} is not an {kind} file ({found}); predict reads {_ACCEPTED}"
        )


def _unreadable(what: str | os.PathLike[str], error: Exception) -> str:
    """Why a file (or an array in one) cannot be read, and what would be read."""
    if any(word in str(error).lower() for word in ("pickle", "object")):
        return (
            f"{os.fspath(what)} holds Python objects (pickled data, such as an array of dtype "
            "object), which predict never loads: save numbers, e.g. np.save(path, "
            "np.asarray(x, dtype='float32'))"
        )
    return f"{os.fspath(what)} cannot be read as {_ACCEPTED}: {error}"
