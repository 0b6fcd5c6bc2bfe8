"""NumPy's fast path: the written-once sequence with in-place ufuncs into reused workspaces.

No transformation (jit, fuse) exists for plain NumPy, so this module restates the math of
``xplstm.cell`` and ``xplstm.sequence``, and only where it pays:

- workspaces (gates, cells, gradients) live as long as the layer and are reused while the
  shape holds: fresh large buffers cost a page fault per 4 KiB on every call;
- every element-wise step writes with ``out=`` into those buffers (no temporaries, no stacks
  of per-step results, no concatenation of the gates);
- ``sigmoid(z) = 1 / (1 + exp(-z))`` (overflow to ``inf`` gives the exact limit 0; warnings
  are silenced for it) costs 4 ufunc calls instead of 8;
- the backward computes every factor that does not depend on the recurrence (``i(1-i)g``,
  ``o(1-tanh²c)``, ...) for the whole sequence at once, leaving 7 small calls per step.

Every array is batch-major (batch, seq, ...) as the user's are, so the input projection, the
parameter gradients and ``dx`` are single large products without transposes.
``tests/test_fast_paths.py`` holds this equal to the written-once path.
"""

from __future__ import annotations

import numpy as np


class _Workspace:
    """Buffers for one (batch, seq, hidden, dtype), and their per-step views, made once."""

    def __init__(self, batch: int, seq: int, hidden: int, dtype: np.dtype) -> None:
        self.key = (batch, seq, hidden, dtype)
        self.gates = np.empty((batch, seq, 4 * hidden), dtype)
        self.cells = np.empty((batch, seq, hidden), dtype)
        self.dz = np.empty((batch, seq, 4 * hidden), dtype)
        self.a = np.empty((batch, seq, hidden), dtype)
        self.z_h = np.empty((batch, 4 * hidden), dtype)
        self.tmp = np.empty((batch, hidden), dtype)
        # Slicing costs as much as a small ufunc call: take every per-step view once.
        blocks = self.gates.reshape(batch, seq, 4, hidden)
        self.forward_steps = [
            (z, z[:, : 3 * hidden], z[:, 3 * hidden :], *(blocks[:, t, k] for k in range(3)), c)
            for t, z, c in ((t, self.gates[:, t], self.cells[:, t]) for t in range(seq))
        ]
        dz4 = self.dz.reshape(batch, seq, 4, hidden)
        self.backward_steps = [
            (
                self.a[:, t],
                dz4[:, t, :2],
                dz4[:, t, 2],
                dz4[:, t, 3],
                blocks[:, t, 1],
                self.dz[:, t],
            )
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
    """Forward and backward for one layer; keeps its workspace between calls."""

    def __init__(self) -> None:
        self._workspace: _Workspace | None = None

    def _get_workspace(self, batch: int, seq: int, hidden: int, dtype: np.dtype) -> _Workspace:
        """The workspace for this shape, made anew only when the shape or dtype changes."""
        if self._workspace is None or self._workspace.key != (batch, seq, hidden, dtype):
            self._workspace = None  # free the old one before allocating the new one
            self._workspace = _Workspace(batch, seq, hidden, dtype)
        return self._workspace

    def forward(
        self, w: np.ndarray, b: np.ndarray, x: np.ndarray, h0: np.ndarray, c0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
        batch, seq, inputs = x.shape
        hidden = h0.shape[1]
        ws = self._get_workspace(batch, seq, hidden, w.dtype)
        z_h, tmp = ws.z_h, ws.tmp
        y = np.empty((batch, seq, hidden), w.dtype)
        # Negated input, forget and output columns give -z directly (negation is exact):
        # sigmoid(z) = 1 / (1 + exp(-z)) then takes 3 calls.
        sign = np.ones(4 * hidden, w.dtype)
        sign[: 3 * hidden] = -1.0
        w_x, w_h = w[:inputs] * sign, w[inputs:] * sign
        np.matmul(x.reshape(batch * seq, inputs), w_x, out=ws.gates.reshape(batch * seq, -1))
        ws.gates += b * sign
        h, c = h0, c0
        with np.errstate(over="ignore"):  # exp(-z) = inf for very negative z: sigmoid 0
            for t, (z, ifo, g, i, f, o, c_t) in enumerate(ws.forward_steps):
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
                h = y[:, t]
                np.multiply(o, tmp, out=h)
                c = c_t
        return y, h.copy(), c.copy(), (x, h0, c0, y, ws)

    def backward(
        self,
        w: np.ndarray,
        cache: tuple,
        dy: np.ndarray | None,
        dh_n: np.ndarray,
        dc_n: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x, h0, c0, y, ws = cache
        batch, seq, inputs = x.shape
        hidden = h0.shape[1]
        gates, cells, dz, a = ws.gates, ws.cells, ws.dz, ws.a
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
        w_h_t = np.ascontiguousarray(w[inputs:].T)
        dh, dc = dh_n.copy(), dc_n.copy()
        dc_rows, tmp = dc[:, None, :], ws.tmp
        for t, (a_t, dz_if, dz_o, dz_g, f_t, dz_t) in zip(
            range(seq - 1, -1, -1), ws.backward_steps, strict=True
        ):
            if dy is not None:
                dh += dy[:, t]
            np.multiply(dh, a_t, out=tmp)
            dc += tmp
            dz_if *= dc_rows
            dz_g *= dc
            dz_o *= dh
            dc *= f_t
            np.dot(dz_t, w_h_t, out=dh)
        dz_flat = dz.reshape(batch * seq, 4 * hidden)
        h_prev = a  # its factors are spent: reuse it for h_0 .. h_{T-1}
        h_prev[:, 0] = h0
        h_prev[:, 1:] = y[:, :-1]
        d_w = np.empty_like(w)
        np.matmul(x.reshape(batch * seq, inputs).T, dz_flat, out=d_w[:inputs])
        np.matmul(h_prev.reshape(batch * seq, hidden).T, dz_flat, out=d_w[inputs:])
        dx = (dz_flat @ w[:inputs].T).reshape(batch, seq, inputs)
        return dx, dh, dc, d_w, dz_flat.sum(axis=0)
