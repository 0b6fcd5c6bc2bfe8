"""NumPy's fast path: the written-once sequence with reused workspaces, and one of four loops.

Where numba is installed, the time loop is compiled (``_numpy_jit``: the core's own cell
functions njit-ed), either whole, one call for the sequence with its products as plain loops
(``"compiled"``: for the smallest batches, where a call a step would cost more than the step),
or a step at a time between BLAS products (``"blas"``: one product and one compiled call for
the step's element-wise work each way), or as the BLAS loop with its per-step products made by
``_numpy_gemm`` from W_h packed once a call into column panels (``"panels"``: OpenBLAS packs
W_h anew on every call). Without numba it is made of in-place ufuncs and a BLAS call a step
(``"ufuncs"``, below, restating the math of ``xplstm.cell``).
:meth:`NumPyFastPath.loop_for` picks the loop (``COMPILED_MAX_*``, measured in
docs/benchmarks.md). The first point holds for every loop, the others for the ufunc loop:

- workspaces (gates, cells, gradients) live as long as the layer and are reused while the
  shape holds: fresh large buffers cost a page fault per 4 KiB on every call;
- every element-wise step writes with ``out=`` into those buffers (no temporaries, no stacks
  of per-step results, no concatenation of the gates);
- ``sigmoid(z) = 1 / (1 + exp(-z))`` (overflow to ``inf`` gives the exact limit 0; warnings
  are silenced for it) costs 4 ufunc calls instead of 8;
- the backward computes every factor that does not depend on the recurrence (``i(1-i)g``,
  ``o(1-tanh²c)``, ...) for the whole sequence at once, leaving 7 small calls per step.

Every loop takes every optional input of the recurrence (a step mask, a projection, recurrent
dropout); a step the mask holds keeps its state by selection (``np.copyto(..., where=)``, a
branch in the compiled loop), so the backward never reads its gates. Every array is batch-major
(batch, seq, ...) as the user's are, so the input projection, the parameter gradients and
``dx`` are single large products without transposes. ``tests/test_fast_paths.py`` holds this
equal to the written-once path.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache, cached_property, wraps
from typing import Any, NamedTuple

import numpy as np

#: Where numba is installed the compiled loop (the whole loop one call, its products plain
#: loops) runs batches of at most this many rows at any hidden size, ...
COMPILED_MAX_BATCH = 2
#: ... and steps of at most this many batch rows times hidden units; above, the BLAS loop (a
#: BLAS product and a compiled element-wise call a step each way) wins: its products outrun the
#: compiled loop's (blocked four rows by four), which pays for its two calls a step. Whole
#: forward+backward, compiled / BLAS, float32, one Sapphire Rapids core: 0.67x at
#: (4,100,32,32), 0.96x at (8,100,32,32), 0.92x at (4,100,64,64) and (2,100,128,128); 1.13x at
#: (12,100,32,32), 1.17x at (8,100,64,64), 1.07x at (4,100,128,128), 1.30x at (16,100,32,32)
#: (docs/benchmarks.md, "The small rows").
COMPILED_MAX_CELLS = 256
#: Above the compiled loop's sizes, the panel loop runs batches of at most this many rows at
#: hidden sizes of at least this many, where numba compiles for AVX-512 (its tiles hold 24
#: vectors of sums in AVX-512's 32 registers); the BLAS loop the rest. Whole forward+backward,
#: panels against BLAS: 0.53x at (4,100,512,512), 0.70x at (8,100,256,256), 0.88-0.94x at
#: hidden 128, 0.97x at batch 128 and 256, 1.01x and 1.06x at hidden 64 and 32 (where a
#: panel of 48 columns is mostly padding); its products alone, 0.31-0.90x OpenBLAS's time
#: from batch 8 to 128 at hidden 128-1024 (but 1.03x at (8,128) @ (128,512)) and 0.90-1.09x
#: at batch 256 (docs/benchmarks.md, "The large rows").
PANELS_MAX_BATCH, PANELS_MIN_HIDDEN = 128, 128
#: Which loop to run: "auto" (by the thresholds), "compiled" (one numba call for the whole
#: loop), "blas" (a BLAS product a step each way, and one numba call a step for the element-wise
#: work), "panels" (as "blas", its products compiled over W_h packed once a call) or "ufuncs";
#: the environment variable overrides "auto" for new layers (for benchmarks and tests, or to
#: avoid numba).
LOOPS = ("auto", "compiled", "blas", "panels", "ufuncs")
#: The loops that need numba.
NUMBA_LOOPS = ("compiled", "blas", "panels")
LOOP_ENV = "XPLSTM_NUMPY_LOOP"


def numba_installed() -> bool:
    """Whether the compiled loop can run here (``pip install xplstm[fast]`` installs numba)."""
    return importlib.util.find_spec("numba") is not None


def flushing_subnormals(backward: Callable) -> Callable:
    """``backward`` run with subnormal floats flushed to zero throughout (the loop, BLAS's
    products and the ufuncs; :func:`subnormals_flushed`): a gradient decaying through a long
    sequence is otherwise 10-100x slower. The backward of every NumPy route, per recurrence and
    the packed stack, wears it."""

    @wraps(backward)
    def flushed(*args: Any, **kwargs: Any) -> Any:
        with subnormals_flushed():
            return backward(*args, **kwargs)

    return flushed


def subnormals_flushed() -> AbstractContextManager[None]:
    """A block that runs with subnormal floats flushed to zero in this thread, and gives the
    caller's flags back on exit (x86-64's MXCSR FTZ and DAZ): set by numba's compiled code
    where numba is installed (``_numpy_jit.subnormals_flushed``, any x86-64 system), else
    through the C library's ``fegetenv``/``fesetenv`` on Linux with glibc, so that an install
    without numba (the ufunc loop) does not run its backward on subnormals either; elsewhere
    a block that flushes nothing."""
    if numba_installed():
        from xplstm.backends import _numpy_jit

        return _numpy_jit.subnormals_flushed()
    if _c_floating_point_env() is None:
        return nullcontext()
    return _subnormals_flushed_by_libc()


#: MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) flags.
_FLUSH_BITS = (1 << 15) | (1 << 6)
#: glibc's ``fenv_t`` on x86-64: the x87 environment (28 bytes), then MXCSR; 32-bit words.
_FENV_WORDS, _MXCSR_WORD = 8, 7


@cache
def _c_floating_point_env() -> ctypes.CDLL | None:
    """The C math library (``fegetenv``, ``fesetenv``) where its ``fenv_t`` layout is known:
    glibc on x86-64, 64-bit Python; else ``None``."""
    x86_64 = platform.machine().lower() in ("x86_64", "amd64") and sys.maxsize > 2**32
    if not (x86_64 and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        return None
    return ctypes.CDLL("libm.so.6")  # glibc's name for it on every Linux


@contextmanager
def _subnormals_flushed_by_libc() -> Iterator[None]:
    """:func:`subnormals_flushed` through glibc: MXCSR's two flags set, and on exit given
    back as the caller had them, alone (the other bits, exception flags raised inside among
    them, stay as the block left them; numba's version loads the caller's whole MXCSR back)."""
    libm = _c_floating_point_env()
    env = (ctypes.c_uint32 * _FENV_WORDS)()

    def swap(bits: int) -> int:
        """Sets MXCSR's flush flags to ``bits``; returns what they were."""
        if libm.fegetenv(env) != 0:
            raise OSError("fegetenv failed: the floating-point environment could not be read")
        before = env[_MXCSR_WORD] & _FLUSH_BITS
        env[_MXCSR_WORD] = (env[_MXCSR_WORD] & ~_FLUSH_BITS) | bits
        if libm.fesetenv(env) != 0:
            raise OSError("fesetenv failed: the floating-point environment could not be set")
        return before

    saved = swap(_FLUSH_BITS)
    try:
        yield
    finally:
        swap(saved)


@cache
def numba_compiles_avx512() -> bool:
    """Whether numba compiles for AVX-512 here: for this CPU (no ``NUMBA_CPU_NAME``) and this
    CPU has it."""
    from llvmlite import binding
    from numba.core import config

    host = config.CPU_NAME in (None, "host") and not config.CPU_FEATURES
    return host and "+avx512f" in binding.get_host_cpu_features().flatten().split(",")


class _Workspace:
    """Buffers for one (batch, seq, hidden, dtype, layout), and their per-step views, made once.

    The ufunc loop keeps them batch-major (batch, seq, ...) as the user's arrays are; the
    compiled and BLAS loops time-major (seq, batch, ...), so that one step's rows lie together
    in memory (batch-major, a step touches one row every seq * 4H values: time-major made the
    compiled path 1.3x faster at (64,100,32,32)).
    """

    def __init__(
        self, batch: int, seq: int, hidden: int, dtype: np.dtype, time_major: bool
    ) -> None:
        self.key = (batch, seq, hidden, dtype, time_major)
        self.time_major = time_major
        lead = (seq, batch) if time_major else (batch, seq)
        self.gates = np.empty((*lead, 4 * hidden), dtype)
        self.cells = np.empty((*lead, hidden), dtype)
        # The gradients of the pre-activations. The compiled loops write a step's over its
        # gates, which the backward reads there only: 4·B·T·H values fewer, and ``spent`` says
        # so (a second backward makes the gates again first). The ufunc loop forms the
        # factors of every step at once, so it needs its own.
        self.dz = self.gates if time_major else np.empty((*lead, 4 * hidden), dtype)
        self.spent = False
        # The ufunc loop's backward factors, then h_0 .. h_{T-1}; the compiled loops need neither.
        self.a = None if time_major else np.empty((*lead, hidden), dtype)
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
        own_dz = ("dz",) if self.dz is not self.gates else ()
        for name in ("gates", "cells", "a", "z_h", "tmp", *own_dz):
            if getattr(self, name) is not None:
                getattr(copied, name)[...] = getattr(self, name)
        copied.spent = self.spent
        memo[id(self)] = copied
        return copied


class NumPyFastPath:
    """Forward and backward for one recurrence of a layer; keeps its workspace between calls.

    ``kernels`` are the cell's element-wise functions (``xplstm.cell.KERNELS``), which the
    compiled loops compile; ``loop`` picks the time loop: ``"auto"`` (the one
    :meth:`loop_for` picks), ``"compiled"``, ``"blas"`` or ``"panels"`` (numba must be
    installed) or ``"ufuncs"``.

    Every loop covers every optional input of the recurrence (``xplstm.sequence``): a per-step
    mask ``keep``, a projection ``w_proj``, recurrent dropout ``h_drop``. A step that ``keep``
    holds is selected away, never multiplied by 0: its gates are not read by the backward, so
    whatever the padding holds (NaN, inf) reaches no result.
    """

    features: frozenset[str] = frozenset({"keep", "w_proj", "h_drop"})

    def __init__(self, kernels: Any, loop: str = "auto") -> None:
        if loop not in LOOPS:
            raise ValueError(f"the NumPy loop must be one of {LOOPS} (${LOOP_ENV}), got {loop!r}")
        if loop in NUMBA_LOOPS and not numba_installed():
            raise ImportError(
                f"the {loop} NumPy loop needs numba: pip install 'xplstm[fast]' (or unset "
                f"${LOOP_ENV})"
            )
        self.loop, self._kernels = loop, kernels
        self._numba = numba_installed()
        self._workspace: _Workspace | None = None

    def loop_for(self, batch: int, hidden: int) -> str:
        """The loop a sequence of this batch and hidden size runs: ``"compiled"``, ``"blas"``,
        ``"panels"`` or ``"ufuncs"``.

        The one place that decides between NumPy's loops, for one recurrence (one direction of
        one layer), whatever optional inputs it has: without numba the ufunc loop; with it the
        compiled loop for small steps, above them per-step products (the panel loop's with AVX-512
        within ``PANELS_*``, else BLAS's) and compiled element-wise steps.
        """
        if self.loop != "auto":
            return self.loop
        if not self._numba:
            return "ufuncs"
        small = batch <= COMPILED_MAX_BATCH or batch * hidden <= COMPILED_MAX_CELLS
        if small:
            return "compiled"
        panels = batch <= PANELS_MAX_BATCH and hidden >= PANELS_MIN_HIDDEN
        return "panels" if panels and numba_compiles_avx512() else "blas"

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
        loop = self.loop_for(batch, hidden)
        time_major = loop in NUMBA_LOOPS
        ws = self._get_workspace(batch, seq, hidden, w.dtype, time_major)
        # The inputs as rows in the workspace's order, for the products over all steps.
        x_rows = (x.swapaxes(0, 1) if time_major else x).reshape(batch * seq, inputs)
        held = None if keep is None else ~np.asarray(keep, bool).reshape(seq, batch)
        given = Optional(held, w_proj, h_drop)
        if time_major:
            y, h, c = self._time_major_forward(loop, ws, w, b, x_rows, h0, c0, given)
        else:
            y = np.empty((batch, seq, h0.shape[1]), w.dtype)
            h, c = _ufunc_forward(ws, w, b, x_rows, h0, c0, y, given)
        return y, h, c, (x_rows, b, h0, c0, y, ws, given, loop)

    def _time_major_forward(
        self,
        loop: str,
        ws: _Workspace,
        w: np.ndarray,
        b: np.ndarray,
        x_rows: np.ndarray,
        h0: np.ndarray,
        c0: np.ndarray,
        given: Optional,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The compiled, BLAS or panel loop forward, into ``ws``: returns ``(y, h_T, c_T)``."""
        inputs = x_rows.shape[1]
        _project(ws, x_rows, w[:inputs])
        b = np.ascontiguousarray(b)
        if loop == "compiled":
            found = _compiled_forward(self._kernels, ws, w[inputs:], b, h0, c0, given)
        else:
            product = _step_product(loop, w[inputs:])
            found = _blas_forward(self._kernels, ws, product, b, h0, c0, given)
        ws.spent = False
        return found

    @flushing_subnormals
    def backward(
        self,
        w: np.ndarray,
        cache: tuple,
        dy: np.ndarray | None,
        dh_n: np.ndarray,
        dc_n: np.ndarray,
        w_proj: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The backward of ``forward``'s call (its ``cache``), subnormals flushed
        (:func:`flushing_subnormals`)."""
        x_rows, b, h0, c0, y, ws, given, loop = cache
        batch, seq, hidden, _, _ = ws.key
        inputs, out = x_rows.shape[1], h0.shape[1]
        if ws.spent:  # a backward of this forward wrote its gradients over the gates
            self._time_major_forward(loop, ws, w, b, x_rows, h0, c0, given)
        given = given._replace(w_proj=w_proj)
        # With a projection: the gradient reaching each projected h_t, for d_proj (the loops
        # may leave held steps as they are: zeros here, and d_proj never reads them) ...
        dh_out = None if w_proj is None else np.zeros((seq, batch, out), w.dtype)
        # ... and h_t before it, while the gates hold o_t.
        unprojected = None if w_proj is None else _unprojected(ws, given.held)
        if loop == "ufuncs":
            dh, dc = _ufunc_backward(ws, w[inputs:], c0, dy, dh_n, dc_n, given, dh_out)
        else:
            if loop == "compiled":
                run, w_h = _compiled_backward, w[inputs:]
            else:  # dh_{t-1} = dz_t @ W_h.T
                run, w_h = _blas_backward, _step_product(loop, w[inputs:].T)
            dh, dc = run(self._kernels, ws, w_h, c0, dy, dh_n, dc_n, given, dh_out)
            ws.spent = True
        # The products over all steps at once: the weight gradients and dx.
        dz_flat = ws.dz.reshape(batch * seq, 4 * hidden)
        d_w = np.empty_like(w)
        np.matmul(x_rows.T, dz_flat, out=d_w[:inputs])
        if ws.time_major and given.h_drop is None:
            # h_1 .. h_{T-1} are the time-major rows the loop wrote: no copy of h_{t-1}.
            hs, dz = y.swapaxes(0, 1), ws.dz
            np.matmul(hs[:-1].reshape(-1, out).T, dz[1:].reshape(-1, 4 * hidden), out=d_w[inputs:])
            d_w[inputs:] += h0.T @ dz[0]
        else:
            # h_0 .. h_{T-1} (times the dropout mask), in the workspace's order: in ws.a (free
            # now) where the ufunc loop has it and h has the cells' features.
            fits = ws.a is not None and w_proj is None
            h_prev = ws.a if fits else np.empty((*ws.dz.shape[:2], out), w.dtype)
            steps = ws.steps(h_prev)
            steps[0] = h0
            steps[1:] = y.swapaxes(0, 1)[:-1]
            if given.h_drop is not None:
                steps *= given.h_drop
            np.matmul(h_prev.reshape(batch * seq, out).T, dz_flat, out=d_w[inputs:])
        dx = (dz_flat @ w[:inputs].T).reshape((*ws.dz.shape[:2], inputs))
        d_proj = None
        if unprojected is not None:  # the sum over steps of (o_t tanh c_t)^T dh_t
            d_proj = unprojected.T @ dh_out.reshape(unprojected.shape[0], out)
        return ws.steps(dx).swapaxes(0, 1), dh, dc, d_w, column_sums(dz_flat), d_proj


class Optional(NamedTuple):
    """The optional inputs of one call, as the loops take them: ``held`` (seq, batch) is True
    where the step mask holds the state (``~keep``), the rest as ``xplstm.sequence`` has them."""

    held: np.ndarray | None
    w_proj: np.ndarray | None
    h_drop: np.ndarray | None


def column_sums(a: np.ndarray) -> np.ndarray:
    """The sums of ``a``'s columns (the bias gradient from the gates' gradients), as BLAS's
    product of a row of ones with ``a``: 3.3x faster than ``a.sum(axis=0)`` at (3200, 128)
    (34 µs against 111) and 1.9x at (6400, 128); both add each column's values one after the
    other (measured apart by at most 1.3e-7 of the column's sum of magnitudes, float32)."""
    return np.ones(a.shape[0], a.dtype) @ a


def _unprojected(ws: _Workspace, held: Any) -> np.ndarray:
    """o_t tanh(c_t), the h_t before projection, of every step: (seq * batch, hidden), rows
    time-major; 0 at held steps (selected: their gates are never read)."""
    hidden = ws.cells.shape[-1]
    unprojected = np.tanh(ws.steps(ws.cells))
    unprojected *= ws.steps(ws.gates)[..., 2 * hidden : 3 * hidden]
    if held is not None:
        np.copyto(unprojected, 0, where=held[..., None])
    return unprojected.reshape(-1, hidden)


def _project(ws: _Workspace, x_rows: np.ndarray, w_x: np.ndarray) -> None:
    """The input projection of all steps at once, into ``ws.gates``: x @ W_x (the loops add
    the bias: the compiled ones in each step's pass over its gates)."""
    np.matmul(x_rows, w_x, out=ws.gates.reshape(x_rows.shape[0], -1))


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
    kernels: Any,
    ws: _Workspace,
    w_h: np.ndarray,
    b: np.ndarray,
    h0: Any,
    c0: Any,
    given: Optional,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The compiled loop over the projected inputs in ``ws.gates`` and the bias ``b``: returns
    ``(y, h_T, c_T)``, ``y`` a (batch, seq, out) view of a fresh time-major array."""
    from xplstm.backends import _numpy_jit

    forward_loop = _numpy_jit.loops(kernels)[0]
    seq, batch, _ = ws.cells.shape
    hs = np.empty((seq, batch, h0.shape[1]), ws.cells.dtype)
    h, c = np.array(h0, order="C"), np.array(c0, order="C")  # the loop's state, updated in place
    options = _loop_options(given, ws.cells.dtype)
    forward_loop(ws.gates, ws.cells, hs, h, c, np.ascontiguousarray(w_h), b, *options)
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
    """The compiled loop back: fills ``ws.dz`` (the gates themselves, see ``_Workspace``; and
    ``dh_out`` with a projection), returns ``(dh0, dc0)``."""
    from xplstm.backends import _numpy_jit

    backward_loop = _numpy_jit.loops(kernels)[1]
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


def _step_product(loop: str, b: np.ndarray) -> Callable[[np.ndarray, np.ndarray], None]:
    """The product of one step of the BLAS or panel loop, ``product(a, out)``: out = a @ b,
    a and out C-contiguous. BLAS's (on b made contiguous once), or for the panel loop
    ``_numpy_gemm``'s on b packed once here, for every step of the call."""
    if loop == "panels":
        from xplstm.backends import _numpy_gemm

        packed = _numpy_gemm.pack(b)
        return lambda a, out: _numpy_gemm.product(out, a, packed)
    b = np.ascontiguousarray(b)
    return lambda a, out: np.dot(a, b, out=out)


def _blas_forward(
    kernels: Any,
    ws: _Workspace,
    product: Callable[[np.ndarray, np.ndarray], None],
    b: np.ndarray,
    h0: Any,
    c0: Any,
    given: Optional,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The loop over the projected inputs in ``ws.gates`` and the bias ``b`` with a product a
    step (h_{t-1} @ W_h by ``product``, see :func:`_step_product`) and the step's element-wise
    work in one compiled call (in cache, one pass, where the ufunc loop makes ten passes over
    the step or the sequence): returns ``(y, h_T, c_T)``, ``y`` a (batch, seq, out) view of a
    fresh time-major array."""
    from xplstm.backends import _numpy_jit

    forward_step = _numpy_jit.loops(kernels)[2]
    seq, batch, hidden = ws.cells.shape
    held, w_proj, h_drop = given
    hs = np.empty((seq, batch, h0.shape[1]), ws.cells.dtype)
    c = np.array(c0, order="C")  # the loop's state, updated in place
    unprojected = None if w_proj is None else np.zeros((batch, hidden), ws.cells.dtype)
    dropped = None if h_drop is None else np.empty(h_drop.shape, h_drop.dtype)
    any_held = np.zeros(seq, bool) if held is None else held.any(axis=1)
    no_rows = np.zeros(1, bool)
    h = np.ascontiguousarray(h0)
    for t in range(seq):
        if dropped is not None:
            h = np.multiply(h, h_drop, out=dropped)
        product(h, ws.z_h)
        out = hs[t] if unprojected is None else unprojected
        rows = no_rows if held is None else held[t]
        forward_step(ws.gates[t], ws.z_h, b, c, ws.cells[t], out, rows, held is not None)
        if unprojected is not None:
            np.dot(unprojected, w_proj, out=hs[t])
        if any_held[t]:  # held rows keep h: selected, whatever the step computed there
            np.copyto(hs[t], hs[t - 1] if t else h0, where=rows[:, None])
        h = hs[t]
    return hs.swapaxes(0, 1), hs[-1].copy(), c


def _blas_backward(
    kernels: Any,
    ws: _Workspace,
    product: Callable[[np.ndarray, np.ndarray], None],
    c0: Any,
    dy: Any,
    dh_n: Any,
    dc_n: Any,
    given: Optional,
    dh_out: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The BLAS or panel loop back, ``product`` making dz_t @ W_h.T (see
    :func:`_step_product`): fills ``ws.dz`` (the gates themselves, see ``_Workspace``; and
    ``dh_out`` with a projection), returns ``(dh0, dc0)``."""
    from xplstm.backends import _numpy_jit

    backward_step = _numpy_jit.loops(kernels)[3]
    seq, batch, hidden = ws.cells.shape
    held, w_proj, h_drop = given
    w_proj_t = None if w_proj is None else np.ascontiguousarray(w_proj.T)
    dh, dc = np.array(dh_n, order="C"), np.array(dc_n, order="C")
    dh_cell = dh if w_proj is None else np.empty((batch, hidden), ws.cells.dtype)
    dh_kept = np.empty_like(dh)
    any_held = np.zeros(seq, bool) if held is None else held.any(axis=1)
    no_rows = np.zeros(1, bool)
    c0 = np.ascontiguousarray(c0)
    for t in range(seq - 1, -1, -1):
        if dy is not None:
            dh += dy[:, t]
        if any_held[t]:  # a held step passes dh and dc on as they are, its dz is 0
            np.copyto(dh_kept, dh)
        if w_proj_t is not None:
            dh_out[t] = dh
            np.dot(dh, w_proj_t, out=dh_cell)
        rows = no_rows if held is None else held[t]
        c_prev = ws.cells[t - 1] if t else c0
        backward_step(
            ws.dz[t], ws.gates[t], ws.cells[t], c_prev, dh_cell, dc, rows, held is not None
        )
        product(ws.dz[t], dh)
        if h_drop is not None:
            dh *= h_drop
        if any_held[t]:
            np.copyto(dh, dh_kept, where=rows[:, None])
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
    _project(ws, x_rows, w[:inputs] * sign)
    ws.gates += b * sign
    w_h = w[inputs:] * sign
    dropped = None if h_drop is None else np.empty(h_drop.shape, h_drop.dtype)
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
