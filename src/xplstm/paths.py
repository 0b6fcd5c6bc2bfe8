"""Which code runs a stack: the two seams of ``backends/``.

A backend may run a whole stack in one call (its :class:`~xplstm.backends.StackPath`: every
layer and direction, lengths and masks included; JAX compiles it into one program), and each
recurrence on its own (its :class:`~xplstm.backends.FastPath`). Each declares what it covers;
a call that uses anything else falls back by itself: from the whole stack to
:class:`PerRecurrence`, and there from a recurrence's fast path to the written-once functions
of :mod:`xplstm.sequence`. Every route runs the one description of :mod:`xplstm.stack`.
"""

from __future__ import annotations

import copy
import os
from functools import partial
from typing import Any

from xplstm import cell, sequence, stack
from xplstm.backends import Backend, FastPath, StackPath
from xplstm.types import Array

#: Set to 0 to run the written-once path even where a backend has a fast path.
FAST_PATH_ENV = "XPLSTM_FAST_PATH"
_OFF = ("0", "false", "off", "no")


def switched_on(fast_path: bool) -> bool:
    """Whether fast paths may run: the layer's ``fast_path`` and ``$XPLSTM_FAST_PATH``."""
    return fast_path and os.environ.get(FAST_PATH_ENV, "1").strip().lower() not in _OFF


def fast_path_of(backend: Backend) -> FastPath | None:
    """A new per-recurrence fast path of ``backend`` over the written-once functions, or
    ``None``."""
    return backend.fast_path(sequence.forward, sequence.backward, cell.KERNELS)


def stack_path_of(backend: Backend) -> StackPath | None:
    """``backend``'s whole-stack path over the written-once stack and recurrence, or
    ``None``."""
    recurrence = (sequence.forward, sequence.backward)
    return backend.stack_path((stack.forward, stack.backward), recurrence, cell.KERNELS)


class Routes:
    """A layer's choice of route per call, over its backend's paths, made once per backend."""

    def __init__(self) -> None:
        self._fast: tuple[Backend, list[FastPath | None]] | None = None
        self._whole: StackPath | None = None

    def choose(
        self,
        xp: Any,
        backend: Backend,
        count: int,
        uses: frozenset[str],
        size: tuple[int, int],
        *,
        fast: bool,
        whole: bool,
    ) -> Any:
        """For a stack of ``count`` recurrences on ``backend``: its whole-stack path when
        ``whole``, it covers what the call ``uses`` (see :func:`xplstm.stack.uses`), the call
        uses what it requires and it fits the call's ``size`` (batch, hidden), else
        :class:`PerRecurrence`; no fast path at all unless ``fast`` (see
        :func:`switched_on`)."""
        on = switched_on(fast)
        if on and (self._fast is None or self._fast[0] is not backend):
            self._fast = (backend, [fast_path_of(backend) for _ in range(count)])
            self._whole = stack_path_of(backend)
        stack_path = self._whole if on and whole else None
        if stack_path is not None and covers(stack_path, uses, size):
            return stack_path
        per = self._fast[1] if on and self._fast else [None] * count
        return PerRecurrence(xp, backend, per)


def covers(stack_path: StackPath, uses: frozenset[str], size: tuple[int, int]) -> bool:
    """Whether ``stack_path`` runs a call that ``uses`` these features at this (batch,
    hidden) ``size``."""
    return stack_path.requires <= uses <= stack_path.features and stack_path.fits(*size)


class PerRecurrence:
    """The stack run recurrence by recurrence, each on its fast path (``fast[index]``) where
    that covers what the call gives it, else on the written-once functions; one object per
    forward, so that backward takes the route each recurrence's forward took (``taken``)."""

    def __init__(self, xp: Any, backend: Backend, fast: list[FastPath | None]) -> None:
        self.xp, self.backend, self.fast = xp, backend, fast
        self.taken: list[FastPath | None] = [None] * len(fast)

    def __deepcopy__(self, memo: dict) -> PerRecurrence:
        """Copies of the paths (which may keep workspaces); the namespace and backend shared."""
        copied = PerRecurrence(self.xp, self.backend, copy.deepcopy(self.fast, memo))
        copied.taken = copy.deepcopy(self.taken, memo)
        return copied

    def forward(
        self, params: list[stack.Params], plan: stack.Plan, x: Array, h0s: Any, c0s: Any
    ) -> tuple[Array, list[Array], list[Array], list[Any]]:
        return stack.forward(self.xp, params, plan, x, h0s, c0s, self._choose)

    def backward(
        self, params: list[stack.Params], plan: stack.Plan, saved: Any, dy: Any, dh: Any, dc: Any
    ) -> tuple[Array, list[Array], list[Array], list[Any]]:
        return stack.backward(self.xp, params, plan, saved, dy, dh, dc, self._replay)

    def _choose(self, index: int, names: frozenset[str]) -> stack.Path:
        path = self.fast[index]
        self.taken[index] = path if path is not None and names <= path.features else None
        return self._replay(index, names)

    def _replay(self, index: int, names: frozenset[str]) -> stack.Path:
        path = self.taken[index]
        if path is not None:
            return path.forward, path.backward
        return partial(_written_once, self.backend, self.xp), partial(
            _written_once_backward, self.backend, self.xp
        )


def _written_once(
    backend: Backend, xp: Any, *args: Any, **optional: Any
) -> tuple[Array, Array, Array, sequence.Cache]:
    """:func:`xplstm.sequence.forward`, computed at once by a lazy library (Dask), so that
    graphs stay one recurrence deep."""
    y, h, c, saved = sequence.forward(xp, *args, **optional)
    y, h, c, *fields = backend.persist([y, h, c, *saved])
    return y, h, c, sequence.Cache(*fields)


def _written_once_backward(backend: Backend, xp: Any, *args: Any, **optional: Any) -> tuple:
    """:func:`xplstm.sequence.backward`, computed at once by a lazy library."""
    return tuple(backend.persist(list(sequence.backward(xp, *args, **optional))))
