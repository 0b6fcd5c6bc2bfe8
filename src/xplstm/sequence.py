"""Forward and backward over a whole sequence, written once, with the time loop as a parameter.

The loop is a ``scan`` with the semantics of ``jax.lax.scan``: ``scan(step, xp, consts, carry,
xs, reverse)`` calls ``carry, out = step(xp, consts, carry, x_t)`` for every ``x_t`` along the
leading (time) axis of the arrays in ``xs``, and returns the last carry and each output stacked
along a new leading axis, in the order of ``xs`` (also when ``reverse``). :func:`python_scan` is
the plain loop every backend can run; a backend's fast path may pass a compiled scan (JAX's
``lax.scan``), and fused element-wise functions as ``kernels`` (see :class:`xplstm.cell.Kernels`),
so the math below and in :mod:`xplstm.cell` is never restated. Inside, sequences are time-major,
(seq, batch, features).

Three optional inputs extend the one recurrence, each ``None`` when unused (a fast path that
does not cover one is not given it: the layer runs this module instead):

- ``keep`` (seq, batch, 1) booleans: where False, the step leaves h and c as they were (masks,
  and the padding past each row's length);
- ``w_proj`` (hidden, proj): the projection of LSTMP, ``h_t = (o_t * tanh(c_t)) @ w_proj``, so
  ``h`` has ``proj`` features and the hidden rows of ``w`` are ``proj`` rows;
- ``h_drop`` (batch, proj or hidden): a recurrent-dropout mask (already scaled), multiplied
  into ``h_{t-1}`` before the product with ``W_h`` at every step.
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
    h0: Array  # (batch, out): out is proj when projected, else hidden
    c0: Array  # (batch, hidden)
    hs: Array  # (seq, batch, out): h_1 .. h_T
    gates: Array  # (seq, batch, 4*hidden): i, f, o, g activations
    cells: Array  # (seq, batch, hidden): c_1 .. c_T
    keep: Array | None  # (seq, batch, 1) booleans, or None: every step counts
    h_drop: Array | None  # (batch, out) recurrent-dropout mask, or None


def python_scan(
    step: Callable, xp: Any, consts: Any, carry: Any, xs: tuple[Any, ...], reverse: bool = False
) -> tuple[Any, tuple[Array, ...]]:
    """The time loop in Python: works on every array-API library. Entries of ``xs`` that are
    ``None`` stay ``None`` at every step, as ``jax.lax.scan`` treats them."""
    seq = next(a for a in xs if a is not None).shape[0]
    outs = []
    for t in range(seq - 1, -1, -1) if reverse else range(seq):
        carry, out = step(xp, consts, carry, tuple(None if a is None else a[t, ...] for a in xs))
        outs.append(out)
    if reverse:
        outs.reverse()
    return carry, tuple(xp.stack(list(column), axis=0) for column in zip(*outs, strict=True))


def forward_step(
    xp: Any,
    consts: tuple[Array, Array | None, Array | None],
    carry: tuple[Array, Array],
    xs_t: tuple[Array, Array | None],
    kernels: Kernels | None = None,
) -> tuple[tuple[Array, Array], tuple[Array, Array, Array]]:
    """One step of the recurrence: the hidden-state product, then the cell's gate math.

    ``consts`` is ``(W_h, w_proj, h_drop)``, ``xs_t`` is ``(z_x_t, keep_t)``.
    """
    w_h, w_proj, h_drop = consts
    h, c = carry
    z_x, keep = xs_t
    z = z_x + (h if h_drop is None else h * h_drop) @ w_h
    h_new, c_new, ifog = step_forward(xp, z, c, kernels)
    if w_proj is not None:
        h_new = h_new @ w_proj
    if keep is not None:
        h_new, c_new = xp.where(keep, h_new, h), xp.where(keep, c_new, c)
    return (h_new, c_new), (h_new, c_new, ifog)


def backward_step(
    xp: Any,
    consts: tuple[Array, Array | None, Array | None],
    carry: tuple[Array, Array],
    xs_t: tuple[Array, ...],
    kernels: Kernels | None = None,
) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
    """One step back. ``consts`` is ``(W_h.T, w_proj.T, h_drop)``, ``xs_t`` is
    ``(ifog, c, c_prev, keep_t, dy_t)`` (``keep_t`` and ``dy_t`` may be ``None``).

    Returns ``(dz,)``, or ``(dz, dh)`` with a projection, where ``dh`` is the gradient reaching
    the projected output h_t: the projection's gradient is formed from it after the loop.
    """
    w_h_t, w_proj_t, h_drop = consts
    dh, dc = carry
    ifog, c, c_prev, keep, dy_t = xs_t
    if dy_t is not None:
        dh = dh + dy_t
    if keep is not None:  # a held step passes dh and dc straight on; its cell gets nothing
        zeros = xp.zeros_like(dh)
        dh, dh_held = xp.where(keep, dh, zeros), xp.where(keep, zeros, dh)
        zeros = xp.zeros_like(dc)
        dc, dc_held = xp.where(keep, dc, zeros), xp.where(keep, zeros, dc)
    dh_cell = dh if w_proj_t is None else dh @ w_proj_t
    dz, dc_prev = step_backward(xp, dh_cell, dc, ifog, c, c_prev, kernels)
    dh_prev = dz @ w_h_t
    if h_drop is not None:
        dh_prev = dh_prev * h_drop
    if keep is not None:
        dh_prev, dc_prev = dh_prev + dh_held, dc_prev + dc_held
    return (dh_prev, dc_prev), (dz,) if w_proj_t is None else (dz, dh)


def forward(
    xp: Any,
    w: Array,
    b: Array,
    x: Array,
    h0: Array,
    c0: Array,
    scan: Scan = python_scan,
    keep: Array | None = None,
    w_proj: Array | None = None,
    h_drop: Array | None = None,
    kernels: Kernels | None = None,
) -> tuple[Array, Array, Array, Cache]:
    """Run ``x`` (batch, seq, input) from ``(h0, c0)``: returns ``(y, h_n, c_n, cache)``.

    ``y`` holds h_t at every step (the carried h at a step that ``keep`` holds). ``scan`` runs
    the time loop; ``kernels`` replace the cell's element-wise functions.
    """
    batch, seq, inputs = x.shape
    four_h = w.shape[1]
    x_flat = xp.reshape(x, (batch * seq, inputs))
    z_x = xp.reshape(x_flat @ w[:inputs, :] + b, (batch, seq, four_h))
    (h, c), (hs, cells, gates) = scan(
        partial(forward_step, kernels=kernels),
        xp,
        (w[inputs:, :], w_proj, h_drop),
        (h0, c0),
        (xp.permute_dims(z_x, (1, 0, 2)), keep),
    )
    y = xp.permute_dims(hs, (1, 0, 2))
    return y, h, c, Cache(x, h0, c0, hs, gates, cells, keep, h_drop)


def backward(
    xp: Any,
    w: Array,
    cache: Cache,
    dy: Array | None,
    dh_n: Array,
    dc_n: Array,
    scan: Scan = python_scan,
    w_proj: Array | None = None,
    kernels: Kernels | None = None,
) -> tuple[Array, Array, Array, Array, Array, Array | None]:
    """Back-propagate: returns ``(dx, dh0, dc0, d_w, d_b, d_proj)`` for the forward that gave
    ``cache`` (``d_proj`` is ``None`` without a projection; pass the forward's ``w_proj``)."""
    batch, seq, inputs = cache.x.shape
    out = cache.h0.shape[-1]
    four_h = w.shape[1]
    c_prev = xp.concat([xp.expand_dims(cache.c0, axis=0), cache.cells[:-1, ...]], axis=0)
    dy_t = None if dy is None else xp.permute_dims(dy, (1, 0, 2))
    consts = (w[inputs:, :].T, None if w_proj is None else w_proj.T, cache.h_drop)
    xs = (cache.gates, cache.cells, c_prev, cache.keep, dy_t)
    step = partial(backward_step, kernels=kernels)
    (dh, dc), outs = scan(step, xp, consts, (dh_n, dc_n), xs, reverse=True)
    dz_flat = xp.reshape(outs[0], (seq * batch, four_h))
    x_flat = xp.reshape(xp.permute_dims(cache.x, (1, 0, 2)), (seq * batch, inputs))
    h_prev = xp.concat([xp.expand_dims(cache.h0, axis=0), cache.hs[:-1, ...]], axis=0)
    if cache.h_drop is not None:
        h_prev = h_prev * cache.h_drop
    h_prev_flat = xp.reshape(h_prev, (seq * batch, out))
    d_w = xp.concat([x_flat.T @ dz_flat, h_prev_flat.T @ dz_flat], axis=0)
    d_b = xp.sum(dz_flat, axis=0)
    dx = xp.permute_dims(xp.reshape(dz_flat @ w[:inputs, :].T, (seq, batch, inputs)), (1, 0, 2))
    d_proj = None
    if w_proj is not None:
        hidden = w_proj.shape[0]
        o = cache.gates[..., 2 * hidden : 3 * hidden]
        unprojected = xp.reshape(o * xp.tanh(cache.cells), (seq * batch, hidden))
        d_proj = unprojected.T @ xp.reshape(outs[1], (seq * batch, out))
    return dx, dh, dc, d_w, d_b, d_proj
