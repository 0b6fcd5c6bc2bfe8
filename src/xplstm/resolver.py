"""Which backend runs the math: a name, else $XPLSTM_BACKEND, else the arrays, else auto."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xplstm import backends
from xplstm.backends import Backend

#: The environment variable that picks a backend when the code names none.
ENV_VAR = "XPLSTM_BACKEND"
#: Tried in order when nothing else decides: the GPU when there is one, else the host.
AUTO_ORDER = ("cupy", "numpy")


def resolve(backend: str | Backend | None = None, *arrays: Any) -> Backend:
    """Decide the backend.

    In order: ``backend`` when given (a name such as ``"torch"``, or a Backend); else the
    environment variable ``XPLSTM_BACKEND``; else the backend of the ``arrays`` given (``None``
    entries are ignored); else auto: CuPy when it imports and sees a CUDA device, otherwise
    NumPy. ``"auto"`` as a name or in the environment asks for the last rule explicitly.

    >>> import numpy as np
    >>> from xplstm import resolve
    >>> resolve("numpy").name
    'numpy'
    >>> resolve(None, np.zeros(3)).name  # the arrays' backend, unless $XPLSTM_BACKEND says
    'numpy'
    """
    if isinstance(backend, Backend):
        return backend
    if backend is not None and not isinstance(backend, str):
        raise TypeError(
            f"backend must be a name such as 'numpy' (see xplstm.backends.available()) or a "
            f"Backend, got {backend!r}"
        )
    name = backend or os.environ.get(ENV_VAR) or None
    if name is None:
        given = {backends.backend_of(a) for a in arrays if a is not None}
        if len(given) > 1:
            names = ", ".join(sorted(b.name for b in given))
            raise backends.BackendError(f"arrays from different backends were mixed: {names}")
        if given:
            return given.pop()
        name = "auto"
    if name == "auto":
        return backends.get(next(n for n in AUTO_ORDER if backends.unavailable_reason(n) is None))
    return backends.get(name)


def to_numpy(array: Any) -> np.ndarray:
    """Any supported array (CuPy, torch on CUDA, JAX, Dask, ...) as a NumPy array on the host.

    Like ``numpy.asarray``, the result may share memory with ``array`` when that already lives
    on the host (a NumPy array, a CPU torch tensor); copy it before writing into it.
    """
    return backends.backend_of(array).to_numpy(array)
