"""CuPy's fast path: the core's element-wise functions, each fused into one CUDA kernel.

``cupy.fuse`` traces ``sigmoid``, ``cell_update`` and ``gates_backward`` from ``xplstm.cell``
(called with the ``cupy`` module as ``xp``) and compiles each into a single kernel, so a step
launches about 6 kernels instead of about 20. The products stay with cuBLAS, and the loop is the
written-once ``xplstm.sequence`` driver; only the step's slicing is restated here. Imported
only when CuPy can run (``CuPyBackend.fast_path``); ``tests/test_fast_paths.py`` holds it equal
to the written-once path on a GPU machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy

from xplstm import cell, sequence


@cupy.fuse(kernel_name="xplstm_sigmoid")
def _sigmoid(z: Any) -> Any:
    return cell.sigmoid(cupy, z)


@cupy.fuse(kernel_name="xplstm_cell_update")
def _cell_update(i: Any, f: Any, o: Any, g: Any, c_prev: Any) -> Any:
    return cell.cell_update(cupy, i, f, o, g, c_prev)


@cupy.fuse(kernel_name="xplstm_gates_backward")
def _gates_backward(dh: Any, dc: Any, i: Any, f: Any, o: Any, g: Any, c: Any, c_prev: Any) -> Any:
    return cell.gates_backward(cupy, dh, dc, i, f, o, g, c, c_prev)


def _forward_step(xp: Any, w_h: Any, carry: tuple, xs_t: tuple) -> tuple[tuple, tuple]:
    """``sequence.forward_step`` with ``step_forward``'s element-wise work fused."""
    h, c = carry
    (z_x,) = xs_t
    z = z_x + h @ w_h
    hidden = c.shape[-1]
    ifo, g = _sigmoid(z[:, : 3 * hidden]), cupy.tanh(z[:, 3 * hidden :])
    i, f, o = ifo[:, :hidden], ifo[:, hidden : 2 * hidden], ifo[:, 2 * hidden :]
    h, c = _cell_update(i, f, o, g, c)
    return (h, c), (h, c, cupy.concatenate([ifo, g], axis=1))


def _backward_step(xp: Any, w_h_t: Any, carry: tuple, xs_t: tuple) -> tuple[tuple, tuple]:
    """``sequence.backward_step`` with ``step_backward``'s element-wise work fused."""
    dh, dc = carry
    ifog, c, c_prev = xs_t[:3]
    if len(xs_t) == 4:
        dh = dh + xs_t[3]
    hidden = c.shape[-1]
    gates = (ifog[:, k * hidden : (k + 1) * hidden] for k in range(4))
    di, df, do, dg, dc = _gates_backward(dh, dc, *gates, c, c_prev)
    dz = cupy.concatenate([di, df, do, dg], axis=1)
    return (dz @ w_h_t, dc), (dz,)


_FUSED = {sequence.forward_step: _forward_step, sequence.backward_step: _backward_step}


def _fused_scan(
    step: Callable, xp: Any, consts: Any, carry: Any, xs: tuple, reverse: bool = False
) -> tuple[Any, tuple]:
    """The written-once Python loop, over the fused version of ``step``."""
    return sequence.python_scan(_FUSED[step], xp, consts, carry, xs, reverse)


class CuPyFastPath:
    """The written-once forward and backward, run with fused steps."""

    def __init__(self, forward: Callable, backward: Callable) -> None:
        import array_api_compat.cupy as xp

        self._xp, self._forward, self._backward = xp, forward, backward

    def __deepcopy__(self, memo: dict) -> CuPyFastPath:
        return self  # stateless: shared by every copy of a layer

    def forward(self, w: Any, b: Any, x: Any, h0: Any, c0: Any) -> tuple:
        return self._forward(self._xp, w, b, x, h0, c0, scan=_fused_scan)

    def backward(self, w: Any, cache: Any, dy: Any, dh_n: Any, dc_n: Any) -> tuple:
        return self._backward(self._xp, w, cache, dy, dh_n, dc_n, scan=_fused_scan)
