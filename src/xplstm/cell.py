"""The LSTM cell, one time step at a time, as small pure functions of ``xp`` and arrays.

Gate blocks along the last axis are ordered input, forget, output, candidate (i, f, o, g):

    z = x_t @ W_x + h_{t-1} @ W_h + b            (batch, 4H)
    i, f, o = sigmoid(z[:, :3H]);  g = tanh(z[:, 3H:])
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

These functions hold the math once. :mod:`xplstm.sequence` drives them over time; a backend's
fast path may jit or scan the same functions, or hand the steps fused versions of the
element-wise :data:`KERNELS` (``sigmoid``, ``cell_update``, ``gates_backward``: a GPU library
can compile each into one kernel) instead of restating them. The one documented restatement is
NumPy's fast path (``backends/_numpy_fast.py``): plain NumPy has no transformation to apply, so
it rewrites this math with in-place ufuncs, and ``tests/test_fast_paths.py`` holds it equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from xplstm.types import Array


def sigmoid(xp: Any, z: Array) -> Array:
    """Logistic function that never overflows: exp is only ever taken of -|z|."""
    e = xp.exp(-xp.abs(z))
    r = 1.0 / (1.0 + e)
    return xp.where(z >= 0, r, e * r)


def cell_update(
    xp: Any, i: Array, f: Array, o: Array, g: Array, c_prev: Array
) -> tuple[Array, Array]:
    """The element-wise cell and output update from the four gates: returns ``(h, c)``."""
    c = f * c_prev + i * g
    return o * xp.tanh(c), c


class Kernels(NamedTuple):
    """The element-wise functions the steps are built from, each called as ``f(xp, *arrays)``.

    The seam for fast paths: a backend passes its own versions (fused, compiled) of these to
    :func:`step_forward` and :func:`step_backward` through :mod:`xplstm.sequence`, and every
    other line of the math stays the written-once one.
    """

    sigmoid: Callable[..., Array]
    cell_update: Callable[..., tuple[Array, Array]]
    gates_backward: Callable[..., tuple[Array, Array, Array, Array, Array]]


def step_forward(
    xp: Any, z: Array, c_prev: Array, kernels: Kernels | None = None
) -> tuple[Array, Array, Array]:
    """One step from pre-activations ``z`` (batch, 4H): returns ``(h, c, ifog)``.

    ``ifog`` (batch, 4H) holds the gate activations, kept for the backward step.
    """
    k = kernels or KERNELS
    hidden = c_prev.shape[-1]
    ifo = k.sigmoid(xp, z[:, : 3 * hidden])
    g = xp.tanh(z[:, 3 * hidden :])
    i, f, o = ifo[:, :hidden], ifo[:, hidden : 2 * hidden], ifo[:, 2 * hidden :]
    h, c = k.cell_update(xp, i, f, o, g, c_prev)
    return h, c, xp.concat([ifo, g], axis=-1)


def gates_backward(
    xp: Any, dh: Array, dc: Array, i: Array, f: Array, o: Array, g: Array, c: Array, c_prev: Array
) -> tuple[Array, Array, Array, Array, Array]:
    """Element-wise backward through one step's gates: returns ``(di, df, do, dg, dc_prev)``.

    ``di .. dg`` are the gradients of the gates' pre-activations.
    """
    tanh_c = xp.tanh(c)
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    di = dc * g * i * (1.0 - i)
    df = dc * c_prev * f * (1.0 - f)
    do = dh * tanh_c * o * (1.0 - o)
    dg = dc * i * (1.0 - g * g)
    return di, df, do, dg, dc * f


def step_backward(
    xp: Any,
    dh: Array,
    dc: Array,
    ifog: Array,
    c: Array,
    c_prev: Array,
    kernels: Kernels | None = None,
) -> tuple[Array, Array]:
    """Backward through one step's gates: returns ``(dz, dc_prev)``.

    ``dh`` and ``dc`` are the gradients reaching h_t and c_t from the output and the next
    step; ``dz`` (batch, 4H) is the gradient of the pre-activations, from which the caller
    gets dh_{t-1} = dz @ W_h.T and the parameter gradients.
    """
    hidden = c.shape[-1]
    i, f = ifog[:, :hidden], ifog[:, hidden : 2 * hidden]
    o, g = ifog[:, 2 * hidden : 3 * hidden], ifog[:, 3 * hidden :]
    di, df, do, dg, dc_prev = (kernels or KERNELS).gates_backward(xp, dh, dc, i, f, o, g, c, c_prev)
    return xp.concat([di, df, do, dg], axis=-1), dc_prev


#: The written-once element-wise functions of this module: the default kernels of every step.
KERNELS = Kernels(sigmoid, cell_update, gates_backward)
