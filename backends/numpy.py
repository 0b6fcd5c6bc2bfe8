"""NumPy arrays on the host CPU: the default backend when there is no GPU."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import array_api_compat

from xplstm.backends._base import Backend


class NumPyBackend(Backend):
    name = "numpy"
    library = "numpy"

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_numpy_array(x)

    def namespace(self) -> Any:
        import array_api_compat.numpy

        return array_api_compat.numpy

    def fast_path(self, forward: Callable, backward: Callable, kernels: Any) -> Any:
        """Reused workspaces and a compiled time loop (numba) or one of in-place ufuncs, by
        size: see ``_numpy_fast``. ``$XPLSTM_NUMPY_LOOP`` (auto, compiled, ufuncs) forces one."""
        from xplstm.backends._numpy_fast import NumPyFastPath

        return NumPyFastPath(kernels, _loop())

    def stack_path(
        self, stack: tuple[Callable, Callable], recurrence: tuple[Callable, Callable], kernels: Any
    ) -> Any:
        """Rows of their own lengths packed, every recurrence over the steps that count (see
        ``_numpy_stack``); none without numba, or where ``$XPLSTM_NUMPY_LOOP`` forces a loop."""
        from xplstm.backends._numpy_fast import numba_installed
        from xplstm.backends._numpy_stack import NumPyStackPath

        return NumPyStackPath(kernels) if numba_installed() and _loop() == "auto" else None


def _loop() -> str:
    """The loop ``$XPLSTM_NUMPY_LOOP`` asks for: "auto" unless set."""
    from xplstm.backends._numpy_fast import LOOP_ENV

    return os.environ.get(LOOP_ENV, "auto").strip().lower() or "auto"


BACKEND = NumPyBackend()
