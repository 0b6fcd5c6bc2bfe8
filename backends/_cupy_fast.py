"""CuPy's fast path: the core's element-wise functions, each fused into one CUDA kernel.

``cupy.fuse`` traces the cell's ``sigmoid``, ``cell_update`` and ``gates_backward`` (handed in
as ``kernels``, called with the ``cupy`` module as ``xp``) and compiles each into a single
kernel, so a step launches about 6 kernels instead of about 20. The products stay with cuBLAS;
the loop and every other line of the math are the written-once ``xplstm.sequence`` and
``xplstm.cell``, which receive the fused functions through their ``kernels`` seam. Nothing here
restates the math. ``tests/test_fast_paths.py`` runs this module on the CPU with a stand-in
``cupy`` (``fuse`` as the identity) and holds it equal to the written-once path on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _fused(cupy: Any, kernel: Callable, name: str) -> Callable:
    """``kernel(cupy, *arrays)`` compiled by ``cupy.fuse``, called as ``kernel(xp, *arrays)``."""

    @cupy.fuse(kernel_name=f"xplstm_{name}")
    def fused(*arrays: Any) -> Any:
        return kernel(cupy, *arrays)

    def run(xp: Any, *arrays: Any) -> Any:
        return fused(*arrays)

    return run


class CuPyFastPath:
    """The written-once forward and backward, run with fused element-wise kernels. Being the
    written-once functions, it covers every optional input (masks, projection, recurrent
    dropout)."""

    features = frozenset({"keep", "w_proj", "h_drop"})

    def __init__(
        self, cupy: Any, xp: Any, forward: Callable, backward: Callable, kernels: Any
    ) -> None:
        self._xp, self._forward, self._backward = xp, forward, backward
        self._kernels = type(kernels)(
            *(_fused(cupy, k, name) for name, k in zip(kernels._fields, kernels, strict=True))
        )

    def __deepcopy__(self, memo: dict) -> CuPyFastPath:
        return self  # stateless: shared by every copy of a layer

    def forward(self, w: Any, b: Any, x: Any, h0: Any, c0: Any, **optional: Any) -> tuple:
        return self._forward(self._xp, w, b, x, h0, c0, kernels=self._kernels, **optional)

    def backward(self, w: Any, cache: Any, dy: Any, dh_n: Any, dc_n: Any, **optional: Any) -> tuple:
        return self._backward(self._xp, w, cache, dy, dh_n, dc_n, kernels=self._kernels, **optional)
