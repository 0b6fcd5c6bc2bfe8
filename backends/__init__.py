"""The registry of backends: the only part of xplstm that knows array libraries by name.

Each module in this package (not starting with ``_``) defines ``BACKEND``, one instance of a
:class:`~xplstm.backends._base.Backend` subclass. Adding a backend means adding one such file.
Arrays of a library with no module here are served by a generic fallback built from their
``__array_namespace__``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from xplstm.backends._base import Backend, BackendError, FastPath, StackPath
from xplstm.backends._generic import GenericBackend

__all__ = [
    "Backend",
    "BackendError",
    "FastPath",
    "StackPath",
    "available",
    "backend_of",
    "get",
    "known",
    "unavailable",
    "unavailable_reason",
]


@functools.cache
def known() -> dict[str, Backend]:
    """Every backend xplstm has a module for, whether or not it can run here."""
    found = {}
    for module_info in pkgutil.iter_modules(__path__):
        if not module_info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{module_info.name}")
            found[module.BACKEND.name] = module.BACKEND
    return found


@functools.cache
def unavailable_reason(name: str) -> str | None:
    """Why the backend ``name`` cannot run here, or ``None`` when it can (imports only it)."""
    return known()[name].unavailable_reason()


def available() -> list[str]:
    """The names of the backends that can run on this machine."""
    return [name for name in known() if unavailable_reason(name) is None]


def unavailable() -> dict[str, str]:
    """The backends that cannot run here, each with the reason why."""
    return {name: reason for name in known() if (reason := unavailable_reason(name)) is not None}


def summary(said: str | None = None) -> str:
    """One line for error messages: what is available here and why the rest is not (but for
    the backend ``said``, whose reason the message gives already)."""
    missing = "; ".join(
        f"{name}: {reason}" for name, reason in unavailable().items() if name != said
    )
    return f"available here: {', '.join(available())}" + (
        f" (missing: {missing})" if missing else ""
    )


def get(name: str) -> Backend:
    """The backend called ``name``, checked to be able to run here."""
    backend = known().get(name)
    if backend is None:
        raise BackendError(f"unknown backend {name!r}; {summary()}")
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendError(f"backend {name!r} cannot run here: {reason}; {summary(name)}")
    return backend


_BY_TYPE: dict[type, Backend] = {}


def backend_of(x: Any) -> Backend:
    """The backend whose arrays include ``x`` (cached per type after the first look)."""
    backend = _BY_TYPE.get(type(x))
    if backend is None:
        backend = next((b for b in known().values() if b.is_array(x)), None)
        if backend is None and getattr(x, "__array_namespace__", None) is not None:
            import array_api_compat

            backend = GenericBackend(array_api_compat.array_namespace(x))
        if backend is None:
            raise TypeError(
                f"expected an array (NumPy, CuPy, PyTorch, JAX, Dask or any array-API "
                f"library), got {type(x).__name__}"
            )
        _BY_TYPE[type(x)] = backend
    return backend
