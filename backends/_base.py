"""The contract every backend module fulfils: one small subclass of :class:`Backend`.

A backend says how to recognise its arrays (without importing a library the user never
imported), which array-API namespace serves them, which devices exist, how to move host
NumPy arrays in and out, how to wait for queued work, and whether it can run here at all.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class BackendError(ValueError):
    """A backend or device was asked for that does not exist or cannot run here."""


class FastPath(Protocol):
    """A backend's faster route through a whole sequence, equal to the written-once path.

    ``forward`` and ``backward`` take and return what :func:`xplstm.sequence.forward` and
    :func:`xplstm.sequence.backward` do, less their ``xp`` and ``scan`` arguments; the cache is
    opaque to the layer and handed back to the same object's ``backward``. One object serves
    one recurrence of one layer (a layer and direction of a stack), so it may keep workspaces
    between calls.

    ``features`` names the optional inputs of the written-once functions it accepts: any of
    ``"keep"`` (a per-step mask), ``"w_proj"`` (a projection), ``"h_drop"`` (recurrent
    dropout). Where a call needs one it does not name, the layer runs the written-once path.
    """

    features: frozenset[str]

    def forward(
        self, w: Any, b: Any, x: Any, h0: Any, c0: Any, **optional: Any
    ) -> tuple[Any, Any, Any, Any]: ...

    def backward(
        self, w: Any, cache: Any, dy: Any, dh_n: Any, dc_n: Any, **optional: Any
    ) -> tuple[Any, Any, Any, Any, Any, Any]: ...


class StackPath(Protocol):
    """A backend's route through a whole stack (every layer and direction, with lengths,
    masks, projections and dropout) in one call, equal to the written-once stack.

    ``forward(params, plan, x, h0s, c0s)`` and ``backward(params, plan, saved, dy, dh_ns,
    dc_ns)`` take and return what :func:`xplstm.stack.forward` and :func:`xplstm.stack.backward`
    do, less their ``xp`` and ``path`` arguments. ``features`` names what it covers, any of
    ``"bidirectional"``, ``"lengths"``, ``"mask"``, ``"w_proj"`` (a projection), ``"h_drop"``
    (recurrent dropout), ``"dropout"`` (between layers); ``requires`` names what a call must
    use for it to run (NumPy's packs the rows of their own lengths: without lengths it has
    nothing to gain), and ``fits(batch, hidden)`` says whether it is the faster route at that
    size. A call that uses anything else, or not all it requires, or does not fit, runs
    recurrence by recurrence (each on its :class:`FastPath` where it has one).
    """

    features: frozenset[str]
    requires: frozenset[str]

    def fits(self, batch: int, hidden: int) -> bool: ...

    def forward(
        self, params: Any, plan: Any, x: Any, h0s: Any, c0s: Any
    ) -> tuple[Any, Any, Any, Any]: ...

    def backward(
        self, params: Any, plan: Any, saved: Any, dy: Any, dh_ns: Any, dc_ns: Any
    ) -> tuple[Any, Any, Any, Any]: ...


class Backend:
    """Defaults that suit most libraries; a backend module overrides only what differs."""

    #: The name users pass as ``backend=...``.
    name: str = ""
    #: The module to import; its presence decides whether the backend is installed.
    library: str = ""
    #: The distribution that provides the library, for version reports.
    distribution: str = ""
    #: The command that installs the library.
    install: str = ""

    def __repr__(self) -> str:
        return f"<xplstm backend {self.name!r}>"

    # -- availability -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """``None`` when this backend can run here, otherwise a sentence saying why not."""
        try:
            importlib.import_module(self.library)
        except ImportError:
            return f"not installed ({self.install})"
        return None

    def version(self) -> str | None:
        """The installed library's version, or ``None`` when it is not installed."""
        try:
            return importlib.metadata.version(self.distribution or self.library)
        except importlib.metadata.PackageNotFoundError:
            return None

    def precision(self) -> str | None:
        """What users should know about this library's floating-point precision, with the
        current settings (``xplstm info`` prints it), or ``None`` when there is nothing to say."""
        return None

    # -- arrays and namespaces ----------------------------------------------------------
    def is_array(self, x: Any) -> bool:
        """True when ``x`` is an array of this backend; never imports the library."""
        raise NotImplementedError

    def namespace(self) -> Any:
        """The array-API namespace for this backend's arrays (array-api-compat's wrapper)."""
        raise NotImplementedError

    # -- devices ------------------------------------------------------------------------
    def default_device(self) -> Any:
        """The device arrays land on when the user names none."""
        return "cpu"

    def devices(self) -> list[Any]:
        """Every device this backend can place arrays on here."""
        return [self.default_device()]

    def parse_device(self, device: Any) -> Any:
        """Turn what a user wrote (``None``, ``"cpu"``, ``"cuda:1"``, ...) into a device."""
        if device is None:
            return self.default_device()
        for known in self.devices():
            if device == known or str(device) == str(known):
                return known
        raise BackendError(
            f"device {device!r} is not available to the {self.name} backend; "
            f"choose one of {self.devices()}"
        )

    # -- host transfers and timing ------------------------------------------------------
    def from_numpy(self, host: np.ndarray, device: Any) -> Any:
        """Copy a host NumPy array onto ``device``."""
        return self.namespace().asarray(host, device=device)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Copy an array of this backend into a NumPy array on the host."""
        return np.asarray(x)

    def synchronize(self, device: Any = None) -> None:
        """Wait until queued work on ``device`` has finished (for honest timings).

        Libraries with no device-wide barrier (JAX) leave this a no-op and override
        :meth:`wait`, which waits for given arrays.
        """

    def persist(self, arrays: list[Any]) -> list[Any]:
        """The ``arrays`` computed now, together, when the library is lazy (Dask), so that values
        updated step after step (training) do not grow one ever longer graph; eager libraries
        return them as they are."""
        return arrays

    def wait(self, *arrays: Any) -> None:
        """Wait until ``arrays`` are computed; libraries that dispatch lazily override this."""
        import array_api_compat

        self.synchronize(array_api_compat.device(arrays[0]) if arrays else None)

    def peak_memory(self, device: Any) -> int | None:
        """Bytes at peak in this library's device memory pool since the last reset, if known.

        ``None`` (the default, and on the host) means the caller measures host memory itself.
        """
        return None

    def reset_peak_memory(self, device: Any) -> None:
        """Start a new peak for :meth:`peak_memory`."""

    # -- speed --------------------------------------------------------------------------
    def start_with_threads(self, count: int) -> str | None:
        """Start the library now with ``count`` threads for its own pools, where that can only
        be set before it starts, and say how (``None``: nothing of that kind to set).

        BLAS, OpenMP and torch pools can be changed at any time (threadpoolctl, torch) and are
        not set here.
        """
        return None

    def fast_path(self, forward: Callable, backward: Callable, kernels: Any) -> FastPath | None:
        """A new :class:`FastPath` for one layer, or ``None`` when this backend has none.

        ``forward`` and ``backward`` are the written-once functions of :mod:`xplstm.sequence`,
        ``kernels`` the cell's element-wise functions (:data:`xplstm.cell.KERNELS`): a fast path
        transforms them (jit, scan) or passes its own versions of the kernels (fused) rather
        than restate their math. The one exception is NumPy's (see ``_numpy_fast``): plain
        NumPy has nothing to transform with, so it restates the math, tested equal.
        """
        return None

    def stack_path(
        self, stack: tuple[Callable, Callable], recurrence: tuple[Callable, Callable], kernels: Any
    ) -> StackPath | None:
        """A :class:`StackPath` for one layer, or ``None`` when this backend has none.

        ``stack`` holds :func:`xplstm.stack.forward` and :func:`xplstm.stack.backward`,
        ``recurrence`` :func:`xplstm.sequence.forward` and :func:`xplstm.sequence.backward`,
        ``kernels`` the cell's element-wise functions: a whole-stack path transforms them (JAX
        compiles the stack into one program) rather than restate them; NumPy's, as its
        :meth:`fast_path`, restates the stack over packed rows and compiles the kernels.
        """
        return None
