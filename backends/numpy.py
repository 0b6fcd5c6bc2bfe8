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
        from xplstm.backends._numpy_fast import LOOP_ENV, NumPyFastPath

        return NumPyFastPath(kernels, os.environ.get(LOOP_ENV, "auto").strip().lower() or "auto")


BACKEND = NumPyBackend()
