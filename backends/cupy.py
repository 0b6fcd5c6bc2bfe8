"""CuPy arrays on NVIDIA GPUs: the default backend when a CUDA device is present."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from xplstm.backends._base import Backend, BackendError


class CuPyBackend(Backend):
    name = "cupy"
    library = "cupy"
    install = "pip install 'xplstm[cupy]' (cupy-cuda12x; cupy-cuda13x for CUDA 13)"

    def unavailable_reason(self) -> str | None:
        missing = super().unavailable_reason()
        if missing:
            return missing
        import cupy

        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as error:  # CUDA raises its own error types when no driver is found
            return f"installed, but no CUDA device found ({error})"
        return None if count > 0 else "installed, but no CUDA device found"

    def version(self) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return None
        import cupy

        return cupy.__version__

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_cupy_array(x)

    def precision(self) -> str:
        if os.environ.get("CUPY_TF32", "0") != "0":
            return "float32 matrix products in TF32 (CUPY_TF32 is set)"
        return "full float32 matrix products (TF32 off unless CUPY_TF32=1, CuPy's default)"

    def namespace(self) -> Any:
        import array_api_compat.cupy

        return array_api_compat.cupy

    def default_device(self) -> Any:
        import cupy

        return cupy.cuda.Device()

    def devices(self) -> list[Any]:
        import cupy

        return [cupy.cuda.Device(i) for i in range(cupy.cuda.runtime.getDeviceCount())]

    def parse_device(self, device: Any) -> Any:
        if isinstance(device, str):
            index = device.removeprefix("cuda").removeprefix(":") or "0"
            if not index.isdigit():
                raise BackendError(f"device {device!r} is not a CUDA device; write 'cuda:0'")
            device = int(index)
        if isinstance(device, int):
            import cupy

            device = cupy.cuda.Device(device)
        return super().parse_device(device)

    def from_numpy(self, host: np.ndarray, device: Any) -> Any:
        import cupy

        # CuPy allocates on the current device, whatever `device=` says: make it current.
        with device:
            return cupy.asarray(host)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.get()

    def synchronize(self, device: Any = None) -> None:
        import cupy

        with device or cupy.cuda.Device():
            cupy.cuda.Device().synchronize()

    def fast_path(self, forward: Callable, backward: Callable, kernels: Any) -> Any:
        """The core's element-wise functions fused by ``cupy.fuse``: see ``_cupy_fast``."""
        import cupy

        from xplstm.backends._cupy_fast import CuPyFastPath

        return CuPyFastPath(cupy, self.namespace(), forward, backward, kernels)

    def peak_memory(self, device: Any) -> int | None:
        import cupy

        # The pool keeps every block it was given since the reset: its size is the peak.
        with device:
            return cupy.get_default_memory_pool().total_bytes()

    def reset_peak_memory(self, device: Any) -> None:
        import cupy

        with device:
            cupy.get_default_memory_pool().free_all_blocks()


BACKEND = CuPyBackend()
