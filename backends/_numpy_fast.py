"""NumPy's fast path: the written-once sequence with reused workspaces, and one of two loops.

The time loop is either compiled (``_numpy_jit``: numba, the core's own cell functions njit-ed,
one call for the whole loop) or made of in-place ufuncs and a BLAS call a step (below,
restating the math of ``xplstm.cell``). :meth:`NumPyFastPath.compiled_for` picks the compiled
loop where numba is installed and a step is small enough that compiled plain loops beat a
BLAS call plus ~20 NumPy calls (``COMPILED_MAX_*``, measured in docs/benchmarks.md). The
first point holds for both loops, the others for the ufunc loop:

- workspaces (gates, cells, gradients) live as long as the layer and are reused while the
  shape holds: fresh large buffers cost a page fault per 4 KiB on every call;
- every element-wise step writes with ``out=`` into those buffers (no temporaries, no stacks
  of per-step results, no concatenation of the gates);
- ``sigmoid(z) = 1 / (1 + exp(-z))`` (overflow to ``inf`` gives the exact limit 0; warnings
  are silenced for it) costs 4 ufunc calls instead of 8;
- the backward computes every factor that does not depend on the recurrence (``i(1-i)g``,
  ``o(1-tanh²c)``, ...) for the whole sequence at once, leaving 7 small calls per step.

Both loops take every optional input of the recurrence (a step mask, a projection, recurrent
dropout); a step the mask holds keeps its state by selection (``np.copyto(..., where=)``, a
branch in the compiled loop), so the backward never reads its gates. Every array is batch-major
(batch, seq, ...) as the user's are, so the input projection, the parameter gradients and
``dx`` are single large products without transposes. ``tests/test_fast_paths.py`` holds this
equal to the written-once path.
"""

from __future__ import annotations

import importlib.util
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

#: Where numba is installed the compiled loop runs at most this many units a step (batch *
#: hidden) at any hidden size (its products stream W_h from memory once a batch row, as
#: BLAS's do at small batches), ...
COMPILED_MAX_UNITS = 2048
#: ... and at up to this hidden size (W_h in float32, 256 KiB, stays in a core's L2 cache) at
#: most this many units. Above, BLAS's blocked products win (measured: docs/benchmarks.md).
COMPILED_MAX_HIDDEN, COMPILED_MAX_UNITS_SMALL_HIDDEN = 128, 16384
#: Which loop to run: "auto" (by the thresholds), "compiled" or "ufuncs"; the environment
#: variable overrides "auto" for new layers (for benchmarks and tests, or to avoid numba).
LOOPS = ("auto", "compiled", "ufuncs")
LOOP_ENV = "XPLSTM_NUMPY_LOOP"


def numba_installed() -> bool:
    """Whether the compiled loop can run here (``pip install xplstm[fast]`` installs numba)."""
    return importlib.util.find_spec("numba") is not None


class _Workspace:
    """Buffers for one (batch, seq, hidden, dtype, layout), and their per-step views, made once.

    The ufunc loop keeps them batch-major (batch, seq, ...) as the user's arrays are; the
    compiled loop time-major (seq, batch, ...), so that one step's rows lie together in memory
    (batch-major, a step touches one row every seq * 4H values: time-major made the compiled
    path 1.3x faster at (64,100,32,32)).
    """

    def __init__(
        self, batch: int, seq: int, hidden: int, dtype: np.dtype, time_major: bool
    ) -> None:
        self.key = (batch, seq, hidden, dtype, time_major)
        self.time_major = time_major
        lead = (seq, batch) if time_major else (batch, seq)
        self.gates = np.empty((*lead, 4 * hidden), dtype)
        self.cells = np.empty((*lead, hidden), dtype)
        self.dz = np.empty((*lead, 4 * hidden), dtype)
        self.a = np.empty((*lead, hidden), dtype)
        self.z_h = np.empty((batch, 4 * hidden), dtype)
        self.tmp = np.empty((batch, hidden), dtype)

    def steps(self, a: np.ndarray) -> np.ndarray:
        """A (seq, batch, ...) view of a workspace array, whatever its layout."""
        return a if self.time_major else a.swapaxes(0, 1)

    # Slicing costs as much as a small ufunc call: the ufunc loop takes every per-step view
    # once, when it first runs on this workspace (the compiled loop needs none).
    @cached_property
    def forward_steps(self) -> list[tuple[np.ndarray, ...]]:
        batch, seq, hidden, _, _ = self.key
        blocks = self.gates.reshape(batch, seq, 4, hidden)
        return [
            (z, z[:, : 3 * hidden], z[:, 3 * hidden :], *(blocks[:, t, k] for k in range(3)), c)
            for t, z, c in ((t, self.gates[:, t], self.cells[:, t]) for t in range(seq))
        ]

    @cached_property
    def backward_steps(self) -> list[tuple[np.ndarray, ...]]:
        batch, seq, hidden, _, _ = self.key
        blocks = self.gates.reshape(batch, seq, 4, hidden)
        dz, dz4 = self.dz, self.dz.reshape(batch, seq, 4, hidden)
        return [
            (self.a[:, t], dz4[:, t, :2], dz4[:, t, 2], dz4[:, t, 3], blocks[:, t, 1], dz[:, t])
            for t in range(seq - 1, -1, -1)
        ]

    def __deepcopy__(self, memo: dict) -> _Workspace:
        # The per-step views must view the copy's buffers, not be copies of their own.
        copied = _Workspace(*self.key)
        for name in ("gates", "cells", "dz", "a", "z_h", "tmp"):
            getattr(copied, name)[...] = getattr(self, name)
        memo[id(self)] = copied
        return copied


class NumPyFastPath:
    """Forward and backward for one recurrence of a layer; keeps its workspace between calls.

    ``kernels`` are the cell's element-wise functions (``xplstm.cell.KERNELS``), which the
    compiled loop compiles; ``loop`` picks the time loop: ``"auto"`` (the compiled one where
    :meth:`compiled_for` says so), ``"compiled"`` (numba must be installed) or ``"ufuncs"``.

    Both loops cover every optional input of the recurrence (``xplstm.sequence``): a per-step
    mask ``keep``, a projection ``w_proj``, recurrent dropout ``h_drop``. A step that ``keep``
    holds is selected away, never multiplied by 0: its gates are not read by the backward, so
    whatever the padding holds (NaN, inf) reaches no result.
    """

    features: frozenset[str] = frozenset({"keep", "w_proj", "h_drop"})

    def __init__(self, kernels: Any, loop: str = "auto") -> None:
        if loop not in LOOPS:
            raise ValueError(f"the NumPy loop must be one of {LOOPS} (${LOOP_ENV}), got {loop!r}")
        if loop == "compiled" and not numba_installed():
            raise ImportError(
                f"the compiled NumPy loop needs numba: pip install 'xplstm[fast]' (or unset "
                f"${LOOP_ENV})"
            )
        self.loop, self._kernels = loop, kernels
        self._numba = numba_installed()
        self._workspace: _Workspace | None = None

    def compiled_for(self, batch: int, hidden: int) -> bool:
        """Whether a sequence of this batch and hidden size runs the compiled loop.

        The one place that decides between NumPy's two loops, for one recurrence (one direction
        of one layer), whatever optional inputs it has.
        """
        if self.loop != "auto":
            return self.loop == "compiled"
        units = batch * hidden
        return self._numba and (
            units <= COMPILED_MAX_UNITS
            or (hidden <= COMPILED_MAX_HIDDEN and units <= COMPILED_MAX_UNITS_SMALL_HIDDEN)
        )

    def _get_workspace(self, *key: Any) -> _Workspace:
        """The workspace for (batch, seq, hidden, dtype, time_major), made anew only when the
        shape, dtype or layout changes."""
        if self._workspace is None or self._workspace.key != key:
            self._workspace = None  # free the old one before allocating the new one
            self._workspace = _Workspace(*key)
        return self._workspace

    def forward(
        self,
        w: np.ndarray,
        b: np.ndarray,
        x: np.ndarray,
        h0: np.ndarray,
        c0: np.ndarray,
        keep: np.ndarray | None = None,
        w_proj: np.ndarray | None = None,
        h_drop: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
        batch, seq, inputs = x.shape
        hidden = c0.shape[1]
        compiled = self.compiled_for(batch, hidden)
        ws = self._get_workspace(batch, seq, hidden, w.dtype, compiled)
        # The inputs as rows in the workspace's order, for the products over all steps.
        x_rows = (x.swapaxes(0, 1) if compiled else x).reshape(batch * seq, inputs)
        held = None if keep is None else ~np.asarray(keep, bool).reshape(seq, batch)
        given = Optional(held, w_proj, h_drop)
        if compiled:
            _project(ws, x_rows, w[:inputs], b)
            y, h, c = _compiled_forward(self._kernels, ws, w[inputs:], h0, c0, given)
        else:
            y = np.empty((batch, seq, h0.shape[1]), w.dtype)
            h, c = _ufunc_forward(ws, w, b, x_rows, h0, c0, y, given)
        return y, h, c, (x_rows, h0, c0, y, ws, given, compiled)

    def backward(
        self,
        w: np.ndarray,
        cache: tuple,
        dy: np.ndarray | None,
        dh_n: np.ndarray,
        dc_n: np.ndarray,
        w_proj: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        x_rows, h0, c0, y, ws, given, compiled = cache
        batch, seq, hidden, _, _ = ws.key
        inputs, out = x_rows.shape[1], h0.shape[1]
        given = given._replace(w_proj=w_proj)
        # With a projection: the gradient reaching each projected h_t, for d_proj.
        dh_out = None if w_proj is None else np.empty((seq, batch, out), w.dtype)
        if compiled:
            dh, dc = _compiled_backward(
                self._kernels, ws, w[inputs:], c0, dy, dh_n, dc_n, given, dh_out
            )
        else:
            dh, dc = _ufunc_backward(ws, w[inputs:], c0, dy, dh_n, dc_n, given, dh_out)
        # The products over all steps at once: the weight gradients and dx.
        dz_flat = ws.dz.reshape(batch * seq, 4 * hidden)
        # h_0 .. h_{T-1}, in the workspace's order: in ws.a (free in both loops now) unless
        # projected (then h has other features than the cells).
        h_prev = ws.a if w_proj is None else np.empty((*ws.a.shape[:2], out), w.dtype)
        steps = ws.steps(h_prev)
        steps[0] = h0
        steps[1:] = y.swapaxes(0, 1)[:-1]
        if given.h_drop is not None:
            steps *= given.h_drop
        d_w = np.empty_like(w)
        np.matmul(x_rows.T, dz_flat, out=d_w[:inputs])
        np.matmul(h_prev.reshape(batch * seq, out).T, dz_flat, out=d_w[inputs:])
        dx = (dz_flat @ w[:inputs].T).reshape((*ws.dz.shape[:2], inputs))
        d_proj = None if w_proj is None else _projection_gradient(ws, given.held, dh_out)
        return ws.steps(dx).swapaxes(0, 1), dh, dc, d_w, dz_flat.sum(axis=0), d_proj


class Optional(NamedTuple):
    """The optional inputs of one call, as the loops take them: ``held`` (seq, batch) is True
    where the step mask holds the state (``~keep``), the rest as ``xplstm.sequence`` has them."""

    held: np.ndarray | None
    w_proj: np.ndarray | None
    h_drop: np.ndarray | None


def _projection_gradient(ws: _Workspace, held: Any, dh_out: np.ndarray) -> np.ndarray:
    """d_proj = sum over kept steps of (o_t tanh c_t)^T dh_t, ``dh_out`` (seq, batch, proj)
    time-major; a held step's gates are never read (selected away, not multiplied by 0)."""
    hidden = ws.cells.shape[-1]
    unprojected = np.tanh(ws.steps(ws.cells))
    unprojected *= ws.steps(ws.gates)[..., 2 * hidden : 3 * hidden]
    if held is not None:
        np.copyto(unprojected, 0, where=held[..., None])
    flat = unprojected.reshape(-1, hidden)
    return flat.T @ dh_out.reshape(flat.shape[0], -1)


def _project(ws: _Workspace, x_rows: np.ndarray, w_x: np.ndarray, b: np.ndarray) -> None:
    """The input projection of all steps at once, into ``ws.gates``: x @ W_x + b."""
    np.matmul(x_rows, w_x, out=ws.gates.reshape(x_rows.shape[0], -1))
    ws.gates += b


def _loop_options(given: Optional, dtype: np.dtype) -> tuple:
    """The optional inputs as the compiled loops take them: every one an array (a 1x1 stand-in
    where absent: one compilation serves every combination) and a flag."""
    stand_in = np.zeros((1, 1), dtype)
    held = given.held if given.held is not None else np.zeros((1, 1), bool)
    return (
        np.ascontiguousarray(held), given.held is not None,
        np.ascontiguousarray(given.w_proj if given.w_proj is not None else stand_in),
        given.w_proj is not None,
        np.ascontiguousarray(given.h_drop if given.h_drop is not None else stand_in),
        given.h_drop is not None,
    )  # fmt: skip


def _compiled_forward(
    kernels: Any, ws: _Workspace, w_h: np.ndarray, h0: Any, c0: Any, given: Optional
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The compiled loop over the projected inputs in ``ws.gates``: returns ``(y, h_T, c_T)``,
    ``y`` a (batch, seq, out) view of a fresh time-major array."""
    from xplstm.backends import _numpy_jit

    forward_loop, _ = _numpy_jit.loops(kernels)
    seq, batch, _ = ws.cells.shape
    hs = np.empty((seq, batch, h0.shape[1]), ws.cells.dtype)
    h, c = np.array(h0, order="C"), np.array(c0, order="C")  # the loop's state, updated in place
    options = _loop_options(given, ws.cells.dtype)
    forward_loop(ws.gates, ws.cells, hs, h, c, np.ascontiguousarray(w_h), *options)
    return hs.swapaxes(0, 1), h, c


def _compiled_backward(
    kernels: Any,
    ws: _Workspace,
    w_h: np.ndarray,
    c0: Any,
    dy: Any,
    dh_n: Any,
    dc_n: Any,
    given: Optional,
    dh_out: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The compiled loop back: fills ``ws.dz`` (and ``dh_out`` with a projection), returns
    ``(dh0, dc0)``."""
    from xplstm.backends import _numpy_jit

    _, backward_loop = _numpy_jit.loops(kernels)
    dh, dc = np.array(dh_n, order="C"), np.array(dc_n, order="C")
    has_dy = dy is not None
    backward_loop(
        ws.dz, ws.gates, ws.cells, np.ascontiguousarray(c0),
        np.ascontiguousarray(dy.swapaxes(0, 1)) if has_dy else ws.cells,  # unused: any array
        has_dy, dh, dc, np.ascontiguousarray(w_h),
        dh_out if dh_out is not None else ws.cells,  # unused without a projection
        *_loop_options(given, ws.cells.dtype),
    )  # fmt: skip
    return dh, dc


def _ufunc_forward(
    ws: _Workspace,
    w: np.ndarray,
    b: np.ndarray,
    x_rows: Any,
    h0: Any,
    c0: Any,
    y: np.ndarray,
    given: Optional,
) -> tuple[np.ndarray, np.ndarray]:
    """The loop of in-place ufuncs and one BLAS call a step: returns ``(h_T, c_T)``."""
    inputs, hidden = x_rows.shape[1], c0.shape[1]
    z_h, tmp = ws.z_h, ws.tmp
    held, w_proj, h_drop = given
    # Negated input, forget and output columns give -z directly (negation is exact):
    # sigmoid(z) = 1 / (1 + exp(-z)) then takes 3 calls.
    sign = np.ones(4 * hidden, w.dtype)
    sign[: 3 * hidden] = -1.0
    _project(ws, x_rows, w[:inputs] * sign, b * sign)
    w_h = w[inputs:] * sign
    dropped = None if h_drop is None else np.empty_like(h_drop)
    any_held = np.zeros(len(ws.forward_steps), bool) if held is None else held.any(axis=1)
    h, c = h0, c0
    with np.errstate(over="ignore"):  # exp(-z) = inf for very negative z: sigmoid 0
        for t, (z, ifo, g, i, f, o, c_t) in enumerate(ws.forward_steps):
            if dropped is not None:
                h = np.multiply(h, h_drop, out=dropped)
            np.dot(h, w_h, out=z_h)
            z += z_h
            np.exp(ifo, out=ifo)
            ifo += 1.0
            np.reciprocal(ifo, out=ifo)
            np.tanh(g, out=g)
            np.multiply(f, c, out=c_t)
            np.multiply(i, g, out=tmp)
            c_t += tmp
            np.tanh(c_t, out=tmp)
            h_t = y[:, t]
            if w_proj is None:
                np.multiply(o, tmp, out=h_t)
            else:
                tmp *= o
                np.matmul(tmp, w_proj, out=h_t)
            if any_held[t]:  # held rows keep their state: selected, whatever z held
                rows = held[t][:, None]
                np.copyto(c_t, c, where=rows)
                np.copyto(h_t, y[:, t - 1] if t else h0, where=rows)
            h, c = h_t, c_t
    return h.copy(), c.copy()


def _ufunc_backward(
    ws: _Workspace,
    w_h: np.ndarray,
    c0: Any,
    dy: Any,
    dh_n: Any,
    dc_n: Any,
    given: Optional,
    dh_out: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ufunc loop back: fills ``ws.dz`` (and ``dh_out`` with a projection), returns
    ``(dh0, dc0)``."""
    seq, hidden = ws.cells.shape[1:]
    gates, cells, dz, a = ws.gates, ws.cells, ws.dz, ws.a
    held, w_proj, h_drop = given
    i, f, o, g = (gates[..., k * hidden : (k + 1) * hidden] for k in range(4))
    di, df, do, dg = (dz[..., k * hidden : (k + 1) * hidden] for k in range(4))
    # dz = [dc·g·i(1-i), dc·c_prev·f(1-f), dh·tanh(c)·o(1-o), dc·i(1-g²)]: the factors
    # after dc and dh do not depend on the recurrence, so compute them all first.
    np.tanh(cells, out=a)
    np.subtract(1.0, i, out=di)
    di *= i
    di *= g
    np.subtract(1.0, f, out=df)
    df *= f
    df[:, 1:] *= cells[:, :-1]
    df[:, 0] *= c0
    np.subtract(1.0, o, out=do)
    do *= o
    do *= a
    np.multiply(g, g, out=dg)
    np.subtract(1.0, dg, out=dg)
    dg *= i
    # a = o(1 - tanh²c): how dh reaches dc.
    a *= a
    np.subtract(1.0, a, out=a)
    a *= o
    w_h_t = np.ascontiguousarray(w_h.T)
    w_proj_t = None if w_proj is None else np.ascontiguousarray(w_proj.T)
    dh, dc = dh_n.copy(), dc_n.copy()
    dh_cell = dh if w_proj is None else np.empty_like(dc)  # what reaches the cell's output
    dh_kept, dc_kept = np.empty_like(dh), np.empty_like(dc)
    any_held = np.zeros(seq, bool) if held is None else held.any(axis=1)
    dc_rows, tmp = dc[:, None, :], ws.tmp
    for t, (a_t, dz_if, dz_o, dz_g, f_t, dz_t) in zip(
        range(seq - 1, -1, -1), ws.backward_steps, strict=True
    ):
        if dy is not None:
            dh += dy[:, t]
        if any_held[t]:  # a held step passes dh and dc on as they are, its dz is 0
            rows = held[t][:, None]
            np.copyto(dh_kept, dh)
            np.copyto(dc_kept, dc)
        if w_proj_t is not None:
            dh_out[t] = dh
            if any_held[t]:
                np.copyto(dh_out[t], 0, where=rows)
            np.dot(dh, w_proj_t, out=dh_cell)
        np.multiply(dh_cell, a_t, out=tmp)
        dc += tmp
        dz_if *= dc_rows
        dz_g *= dc
        dz_o *= dh_cell
        dc *= f_t
        if any_held[t]:
            np.copyto(dz_t, 0, where=rows)
        np.dot(dz_t, w_h_t, out=dh)
        if h_drop is not None:
            dh *= h_drop
        if any_held[t]:
            np.copyto(dh, dh_kept, where=rows)
            np.copyto(dc, dc_kept, where=rows)
    return dh, dc
