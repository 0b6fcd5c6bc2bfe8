"""Forward and backward over a whole sequence, written once, with the time loop as a parameter.

The loop is a ``scan`` with the semantics of ``jax.lax.scan``: ``scan(step, xp, consts, carry,
xs, reverse)`` calls ``carry, out = step(xp, consts, carry, x_t)`` for every ``x_t`` along the
leading (time) axis of the arrays in ``xs``, and returns the last carry and each output stacked
along a new leading axis, in the order of ``xs`` (also when ``reverse``). :func:`python_scan` is
the plain loop every backend can run; a backend's fast path may pass a compiled scan (JAX's
``lax.scan``), and fused element-wise functions as ``kernels`` (see :class:`xplstm.cell.Kernels`),
so the math below and in :mod:`xplstm.cell` is never restated. Inside, sequences are time-major,
(seq, batch, features).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from xplstm.cell import Kernels, step_backward, step_forward
from xplstm.types import Array

Scan = Callable[..., tuple[Any, tuple[Array, ...]]]


class Cache(NamedTuple):
    """What the backward needs from the forward (a NamedTuple, so JAX can return it from jit)."""

    x: Array  # (batch, seq, input): the input as given
    h0: Array  # (batch, hidden)
    c0: Array  # (batch, hidden)
    hs: Array  # (seq, batch, hidden): h_1 .. h_T
    gates: Array  # (seq, batch, 4*hidden): i, f, o, g activations
    cells: Array  # (seq, batch, hidden): c_1 .. c_T


def python_scan(
    step: Callable, xp: Any, consts: Any, carry: Any, xs: tuple[Array, ...], reverse: bool = False
) -> tuple[Any, tuple[Array, ...]]:
    """The time loop in Python: works on every array-API library."""
    seq = xs[0].shape[0]
    outs = []
    for t in range(seq - 1, -1, -1) if reverse else range(seq):
        carry, out = step(xp, consts, carry, tuple(a[t, ...] for a in xs))
        outs.append(out)
    if reverse:
        outs.reverse()
    return carry, tuple(xp.stack(list(column), axis=0) for column in zip(*outs, strict=True))


def forward_step(
    xp: Any,
    w_h: Array,
    carry: tuple[Array, Array],
    xs_t: tuple[Array],
    kernels: Kernels | None = None,
) -> tuple[tuple[Array, Array], tuple[Array, Array, Array]]:
    """One step of the recurrence: the hidden-state product, then the cell's gate math."""
    h, c = carry
    (z_x,) = xs_t
    h, c, ifog = step_forward(xp, z_x + h @ w_h, c, kernels)
    return (h, c), (h, c, ifog)


def backward_step(
    xp: Any,
    w_h_t: Array,
    carry: tuple[Array, Array],
    xs_t: tuple[Array, ...],
    kernels: Kernels | None = None,
) -> tuple[tuple[Array, Array], tuple[Array]]:
    """One step back: ``xs_t`` is ``(ifog, c, c_prev)`` or ``(ifog, c, c_prev, dy_t)``."""
    dh, dc = carry
    ifog, c, c_prev = xs_t[:3]
    if len(xs_t) == 4:
        dh = dh + xs_t[3]
    dz, dc = step_backward(xp, dh, dc, ifog, c, c_prev, kernels)
    return (dz @ w_h_t, dc), (dz,)


def forward(
    xp: Any,
    w: Array,
    b: Array,
    x: Array,
    h0: Array,
    c0: Array,
    scan: Scan = python_scan,
    kernels: Kernels | None = None,
) -> tuple[Array, Array, Array, Cache]:
    """Run ``x`` (batch, seq, input) from ``(h0, c0)``: returns ``(y, h_n, c_n, cache)``.

    ``scan`` runs the time loop; ``kernels`` replace the cell's element-wise functions.
    """
    batch, seq, inputs = x.shape
    four_h = w.shape[1]
    x_flat = xp.reshape(x, (batch * seq, inputs))
    z_x = xp.reshape(x_flat @ w[:inputs, :] + b, (batch, seq, four_h))
    step = partial(forward_step, kernels=kernels)
    (h, c), (hs, cells, gates) = scan(
        step, xp, w[inputs:, :], (h0, c0), (xp.permute_dims(z_x, (1, 0, 2)),)
    )
    y = xp.permute_dims(hs, (1, 0, 2))
    return y, h, c, Cache(x, h0, c0, hs, gates, cells)


def backward(
    xp: Any,
    w: Array,
    cache: Cache,
    dy: Array | None,
    dh_n: Array,
    dc_n: Array,
    scan: Scan = python_scan,
    kernels: Kernels | None = None,
) -> tuple[Array, Array, Array, Array, Array]:
    """Back-propagate: returns ``(dx, dh0, dc0, d_w, d_b)`` for the forward that gave ``cache``.

    ``scan`` and ``kernels`` as for :func:`forward`.
    """
    batch, seq, inputs = cache.x.shape
    hidden = cache.h0.shape[-1]
    c_prev = xp.concat([xp.expand_dims(cache.c0, axis=0), cache.cells[:-1, ...]], axis=0)
    xs = (cache.gates, cache.cells, c_prev)
    if dy is not None:
        xs = (*xs, xp.permute_dims(dy, (1, 0, 2)))
    step = partial(backward_step, kernels=kernels)
    (dh, dc), (dz,) = scan(step, xp, w[inputs:, :].T, (dh_n, dc_n), xs, reverse=True)
    dz_flat = xp.reshape(dz, (seq * batch, 4 * hidden))
    x_flat = xp.reshape(xp.permute_dims(cache.x, (1, 0, 2)), (seq * batch, inputs))
    h_prev = xp.concat([xp.expand_dims(cache.h0, axis=0), cache.hs[:-1, ...]], axis=0)
    h_prev_flat = xp.reshape(h_prev, (seq * batch, hidden))
    d_w = xp.concat([x_flat.T @ dz_flat, h_prev_flat.T @ dz_flat], axis=0)
    d_b = xp.sum(dz_flat, axis=0)
    dx = xp.permute_dims(xp.reshape(dz_flat @ w[:inputs, :].T, (seq, batch, inputs)), (1, 0, 2))
    return dx, dh, dc, d_w, d_b
