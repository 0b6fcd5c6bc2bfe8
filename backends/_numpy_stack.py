"""NumPy's whole-stack path for rows of their own lengths: every recurrence over packed rows.

With ``lengths`` the written-once stack runs every recurrence over the whole padded batch,
holding each row's state past its length, and moves whole (batch, seq, features) arrays
between recurrences: a select at the entry, a reversal within the lengths in and out of each
reverse direction, a select of each output, a concatenation. Here, as in torch's packed
sequences, the rows are sorted longest first once for the whole stack and every array holds
only the steps that count, time-major: step ``t``'s rows are the first ``counts[t]`` of the
batch, contiguous, so each step's products and element-wise work run over the rows still
running and the products over all steps skip the padding (a quarter of every product at the
benchmark's lengths, seq/2..seq). The reversal within lengths is a fixed permutation of the
packed rows (``Packing.flipped``), the entry select and the output selects are the packing
itself (padding is never read, and unpacking writes zeros there). Each step's element-wise
work is the BLAS loop's compiled call (``_numpy_jit``). ``tests/test_stacked.py``,
``test_padding.py`` and ``test_fast_paths.py`` hold it equal to the written-once stack and
to torch's ``pack_padded_sequence``.

It covers calls with lengths (it ``requires`` them: without, there is no padding to skip and
NumPy's per-recurrence loops are tuned for that case), bidirectional or not, any number of
layers, projection, recurrent dropout and dropout between layers; not masks (any pattern:
nothing to pack). It ``fits`` steps of at least ``PACKED_MIN_CELLS`` rows times hidden units
(and more than ``COMPILED_MAX_BATCH`` rows): below, NumPy's per-recurrence compiled loop, one
call a recurrence, beats two calls a step even over the padding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from xplstm.backends._numpy_fast import COMPILED_MAX_BATCH, column_sums, flushing_subnormals

#: The fewest batch rows times hidden units a step for which the packed stack runs. Measured
#: (forward+backward, float32, one thread, lengths seq/2..seq, packed / per recurrence): 2.0 at
#: (B,T,I,H) = (2,100,32,32), 1.7 at (4,100,16,32), 1.2 at (8,100,32,32) 2 layers
#: bidirectional, 1.18 at (16,100,16,16), 1.08 at (12,100,32,32), 1.07 at (16,100,32,32);
#: 0.93 at (12,100,32,64), 0.91 at (8,100,32,128), 0.85 at (16,100,32,64) and (32,100,32,32),
#: 0.79 at (16,100,32,128) 2 layers bidirectional.
PACKED_MIN_CELLS = 768


class Packing(NamedTuple):
    """Where the steps that count sit, for rows of ``lengths`` right padded to ``seq``.

    Packed row ``k`` is step ``t`` of sorted row ``j`` (rows sorted longest first, stable), with
    ``k = starts[t] + j`` for ``j < counts[t]``.
    """

    order: np.ndarray  # (batch,): the sorted rows, as rows of the user's batch
    inverse: np.ndarray  # (batch,): where each user's row sits among the sorted
    counts: list[int]  # per step, the rows that still run
    starts: list[int]  # per step, its first packed row; starts[seq] = N
    rows: np.ndarray  # (N,): each packed row's place in a (batch * seq, features) reshape
    reversed_rows: np.ndarray  # (N,): the same for the row reversed within its length
    flipped: np.ndarray  # (N,): the packed row of the same row at its mirrored step
    previous: np.ndarray  # (N,): in [h0 (batch rows); packed rows], the row of h_{t-1}
    sorted_row: np.ndarray  # (N,): each packed row's row among the sorted
    last: np.ndarray  # (batch,): each sorted row's last packed row


def packing(lengths: np.ndarray, seq: int) -> Packing:
    """The :class:`Packing` of rows ``lengths`` (each in 1..seq) long."""
    batch = len(lengths)
    order = np.argsort(-lengths, kind="stable")
    size = lengths[order]
    running = np.arange(seq)[:, None] < size[None, :]  # (seq, batch): a prefix of each step
    counts = running.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    t, j = np.nonzero(running)  # in packed order: step-major, each step's rows in order
    mirrored = size[j] - 1 - t
    previous = np.where(t > 0, batch + starts[np.maximum(t - 1, 0)] + j, j)
    last = starts[size - 1] + np.arange(batch)
    return Packing(
        order, np.argsort(order), counts.tolist(), starts.tolist(), order[j] * seq + t,
        order[j] * seq + mirrored, starts[mirrored] + j, previous, j, last,
    )  # fmt: skip


class NumPyStackPath:
    """The stack over packed rows (see the module docstring): ``forward`` and ``backward``
    with the signatures of ``xplstm.stack.forward`` and ``backward`` less ``xp`` and
    ``path``. ``every_size`` runs it at every size (tests run it on small problems)."""

    features = frozenset({"bidirectional", "lengths", "w_proj", "h_drop", "dropout"})
    requires = frozenset({"lengths"})

    def __init__(self, kernels: Any, every_size: bool = False) -> None:
        from xplstm.backends import _numpy_jit

        self._step_forward, self._step_backward = _numpy_jit.loops(kernels)[2:]
        self.every_size = every_size  # for tests: small batches too

    def fits(self, batch: int, hidden: int) -> bool:
        """Steps large enough for the packed stack (see ``PACKED_MIN_CELLS``)."""
        large = batch > COMPILED_MAX_BATCH and batch * hidden >= PACKED_MIN_CELLS
        return self.every_size or large

    def __deepcopy__(self, memo: dict) -> NumPyStackPath:
        return self  # stateless: compiled functions only, shared by every copy of a layer

    def forward(
        self, params: Any, plan: Any, x: np.ndarray, h0s: Any, c0s: Any
    ) -> tuple[np.ndarray, list, list, list]:
        batch, seq, inputs = x.shape
        lengths = np.asarray(plan.steps.valid)[:, :, 0].sum(axis=1)
        pk = packing(lengths, seq)
        directions = len(plan.steps.keep)
        count = len(params)
        h_n, c_n, saved = [None] * count, [None] * count, [None] * count
        flat = x.reshape(batch * seq, inputs)
        given = (flat[pk.rows], flat[pk.reversed_rows] if directions > 1 else None)
        for layer in range(count // directions):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                p, drop = params[k], plan.recurrent[k]
                h0, c0 = h0s[k][pk.order], c0s[k][pk.order]
                drop = None if drop is None else drop[pk.order]
                hs, c, saved[k] = self._recurrence(pk, p, given[direction], h0, c0, drop)
                h_n[k], c_n[k] = hs[pk.last][pk.inverse], c[pk.inverse]
                outputs.append(hs[pk.flipped] if direction else hs)
            packed = outputs[0] if directions == 1 else np.concatenate(outputs, axis=1)
            between = plan.between[layer] if layer < len(plan.between) else None
            if between is not None:
                packed = packed * _packed(between, pk)
            given = (packed, packed[pk.flipped] if directions > 1 else None)
        y = np.zeros((batch, seq, packed.shape[1]), x.dtype)
        y.reshape(batch * seq, -1)[pk.rows] = packed
        return y, h_n, c_n, saved

    @flushing_subnormals
    def backward(
        self, params: Any, plan: Any, saved: Any, dy: Any, dh_ns: Any, dc_ns: Any
    ) -> tuple[np.ndarray, list, list, list]:
        """The stack's backward, subnormals flushed as NumPy's per-recurrence backward's."""
        pk = saved[0][0]
        directions = len(plan.steps.keep)
        count = len(params)
        dh0s, dc0s, grads = [None] * count, [None] * count, [None] * count
        batch, seq = plan.steps.valid.shape[:2]
        grad = None if dy is None else dy.reshape(batch * seq, -1)[pk.rows]
        for layer in reversed(range(count // directions)):
            between = plan.between[layer] if layer < len(plan.between) else None
            if between is not None and grad is not None:
                grad = grad * _packed(between, pk)
            width = None if grad is None else grad.shape[1] // directions
            d_inputs = None
            for direction in range(directions):
                k = layer * directions + direction
                d_y = None if grad is None else grad[:, direction * width : (direction + 1) * width]
                if d_y is not None and direction:
                    d_y = d_y[pk.flipped]
                dh_n, dc_n = dh_ns[k][pk.order], dc_ns[k][pk.order]
                dx, dh0, dc0, grads[k] = self._recurrence_backward(
                    pk, params[k], saved[k], d_y, dh_n, dc_n
                )
                dh0s[k], dc0s[k] = dh0[pk.inverse], dc0[pk.inverse]
                if direction:
                    dx = dx[pk.flipped]
                d_inputs = dx if d_inputs is None else np.add(d_inputs, dx, out=d_inputs)
            grad = d_inputs
        dx = np.zeros((batch, seq, grad.shape[1]), grad.dtype)
        dx.reshape(batch * seq, -1)[pk.rows] = grad
        return dx, dh0s, dc0s, grads

    def _recurrence(
        self, pk: Packing, p: Any, x: np.ndarray, h0: np.ndarray, c0: np.ndarray, drop: Any
    ) -> tuple[np.ndarray, np.ndarray, tuple]:
        """One recurrence forward over packed rows ``x`` (N, inputs), from the sorted ``h0``,
        ``c0``: every h (N, out) packed, c at each row's last step, and what backward needs."""
        w, b, w_proj = p
        inputs, hidden, out = x.shape[1], c0.shape[1], h0.shape[1]
        gates, b = x @ w[:inputs], np.ascontiguousarray(b)  # the steps add the bias
        cells = np.empty((len(x), hidden), x.dtype)
        hs = np.empty((len(x), out), x.dtype)
        c, w_h = c0.copy(), w[inputs:]
        z_h = np.empty((len(c0), 4 * hidden), x.dtype)
        unprojected = None if w_proj is None else np.empty_like(c0)
        dropped = None if drop is None else np.empty_like(h0)
        no_rows = np.zeros(1, bool)
        for t, n in enumerate(pk.counts):
            s = pk.starts[t]
            h = h0[:n] if t == 0 else hs[pk.starts[t - 1] : pk.starts[t - 1] + n]
            if drop is not None:
                h = np.multiply(h, drop[:n], out=dropped[:n])
            np.dot(h, w_h, out=z_h[:n])
            h_t = hs[s : s + n] if w_proj is None else unprojected[:n]
            self._step_forward(
                gates[s : s + n], z_h[:n], b, c[:n], cells[s : s + n], h_t, no_rows, False
            )
            if w_proj is not None:
                np.dot(h_t, w_proj, out=hs[s : s + n])
        return hs, c, (pk, x, h0, c0, gates, cells, hs, drop)

    def _recurrence_backward(
        self, pk: Packing, p: Any, saved: tuple, dy: Any, dh_n: np.ndarray, dc_n: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
        """One recurrence back over packed rows: ``(dx, dh0, dc0, (d_w, d_b, d_proj))``, dx
        packed, dh0 and dc0 sorted."""
        w, _, w_proj = p
        _, x, h0, c0, gates, cells, hs, drop = saved
        inputs, hidden = x.shape[1], c0.shape[1]
        dz = np.empty_like(gates)
        dh, dc = dh_n.copy(), dc_n.copy()
        w_h_t = np.ascontiguousarray(w[inputs:].T)
        w_proj_t = None if w_proj is None else np.ascontiguousarray(w_proj.T)
        dh_out = None if w_proj is None else np.empty_like(hs)
        dh_cell = dh if w_proj is None else np.empty_like(dc)
        no_rows = np.zeros(1, bool)
        for t in range(len(pk.counts) - 1, -1, -1):
            n, s = pk.counts[t], pk.starts[t]
            if dy is not None:
                dh[:n] += dy[s : s + n]
            if w_proj_t is not None:
                dh_out[s : s + n] = dh[:n]
                np.dot(dh[:n], w_proj_t, out=dh_cell[:n])
            c_prev = c0[:n] if t == 0 else cells[pk.starts[t - 1] : pk.starts[t - 1] + n]
            self._step_backward(
                dz[s : s + n], gates[s : s + n], cells[s : s + n], c_prev, dh_cell[:n], dc[:n],
                no_rows, False,
            )  # fmt: skip
            np.dot(dz[s : s + n], w_h_t, out=dh[:n])
            if drop is not None:
                dh[:n] *= drop[:n]
        h_prev = np.concatenate([h0, hs])[pk.previous]
        if drop is not None:
            h_prev *= drop[pk.sorted_row]
        d_w = np.empty_like(w)
        np.matmul(x.T, dz, out=d_w[:inputs])
        np.matmul(h_prev.T, dz, out=d_w[inputs:])
        d_proj = None
        if w_proj is not None:
            unprojected = np.tanh(cells)
            unprojected *= gates[:, 2 * hidden : 3 * hidden]
            d_proj = unprojected.T @ dh_out
        return dz @ w[:inputs].T, dh, dc, (d_w, column_sums(dz), d_proj)


def _packed(a: np.ndarray, pk: Packing) -> np.ndarray:
    """The packed rows of ``a`` (batch, seq, features)."""
    batch, seq, features = a.shape
    return a.reshape(batch * seq, features)[pk.rows]
