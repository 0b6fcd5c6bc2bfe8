"""The NumPy fast path's time loop compiled with numba: the core's own cell functions, njit-ed.

Imported only when numba is installed (``pip install xplstm[fast]``). The loops of
``_numpy_fast`` cost about 20 NumPy calls a step, 1-2 µs each: at small sizes that overhead
is nearly all of the time, while a step's arithmetic takes a microsecond or two. Here the whole
loop over time, forward and backward, is one compiled call.

What is compiled and what is restated:

- The cell's element-wise kernels (``sigmoid``, ``cell_update``, ``gates_backward`` of
  ``xplstm.cell.KERNELS``, handed in through :func:`loops`) are njit-ed as they are and called
  on scalars, with ``_SCALAR_XP`` (below) as their ``xp``.
- ``_SCALAR_XP.exp`` and ``.tanh`` are restated. numba compiles ``math.exp`` and ``math.tanh``
  to one libm call per element (pip's llvmlite has no SVML, and its code generator ignores
  ``-vector-library``): 35 ns a float32 element for both, against 3 for NumPy's SIMD ufuncs
  (``benchmarks/alternatives.py``), which made the compiled loop slower than the ufunc loop at
  the demo's size. ``_exp`` below is plain arithmetic (range reduction, a Taylor polynomial, a
  power of two made from its bits) that LLVM vectorises, in the argument's precision; ``_tanh``
  is built from it. ``tests/test_fast_paths.py`` holds both to NumPy's within 4 ulps.
- The two products inside the loop (``h @ W_h`` forward, ``dz @ W_h.T`` backward) are plain
  loops that LLVM vectorises, blocked by hand four rows by four (:func:`_add_product`,
  :func:`_product_transposed`; numba's ``np.dot`` would call BLAS through SciPy, which the core
  does not install); where BLAS's blocked products win (batches of more than a few rows),
  ``_numpy_fast`` runs its BLAS loop instead: a BLAS product a step from Python, and the step's
  element-wise work as one compiled call (``forward_step``, ``backward_step`` below, the same
  row functions as the whole loops). The products over all steps at once stay NumPy's (BLAS).

No ``parallel=True``, and of ``fastmath`` only ``contract`` (fused multiply-adds, as BLAS uses),
and ``reassoc`` in the transposed products to let a dot product sum in vector lanes: one
thread, the same order of operations on every call, so results are deterministic.

The loops are cached on disk (``cache=True``): the first process compiles them (seconds), the
next loads them. numba keys its cache on this file and on the loops' closures, which hold a
hash of the kernels' code, so an edit of ``xplstm/cell.py`` compiles them anew too.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import marshal
import math
import platform
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from xplstm.backends._numpy_fast import _FLUSH_BITS

#: No division-by-zero checks (they stop LLVM from vectorising; the cell never divides by
#: zero: 1 + e^-|z| >= 1), the GIL released while the loops run, and a multiplication and an
#: addition fused into one rounding where LLVM can (``contract``: without it LLVM emits no
#: FMA at all). Fused, a step's element-wise work forward takes 0.7x the time (exp's
#: polynomial is a chain of multiply-adds; docs/benchmarks.md), and a (32,32) @ (32,128)
#: product 3.8 µs instead of 4.8 (measured while building it).
_OPTIONS = {"error_model": "numpy", "nogil": True, "fastmath": {"contract"}}
#: The scalar functions are inlined into the two loops, and only the loops are cached on disk
#: (``cache=True``): a cached loop holds its callees' code, so the next process compiles nothing.
_jit = njit(inline="always", **_OPTIONS)
_cached_jit = njit(cache=True, **_OPTIONS)


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float whose bit pattern is ``bits`` (int32 -> float32, int64 -> float64)."""
    target = {
        types.int32: (types.float32, ir.FloatType()),
        types.int64: (types.float64, ir.DoubleType()),
    }
    float_type, llvm_type = target[bits]

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_type)

    return float_type(bits), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64")


def _mxcsr_call(builder, name: str, slot):
    """A call of LLVM's ``llvm.x86.sse.<name>`` (stmxcsr, ldmxcsr) on ``slot`` (an i32*)."""
    pointer = ir.IntType(8).as_pointer()
    function = builder.module.declare_intrinsic(
        f"llvm.x86.sse.{name}", fnty=ir.FunctionType(ir.VoidType(), [pointer])
    )
    builder.call(function, [builder.bitcast(slot, pointer)])


@intrinsic
def _flush_subnormals(typingctx):
    """Sets this thread's processor to flush subnormal floats to zero (x86-64; elsewhere nothing)
    and returns the state to give :func:`_restore_subnormals` (see :func:`subnormals_flushed`)."""

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        slot = builder.alloca(i32)
        builder.store(ir.Constant(i32, 0), slot)
        if _X86:
            _mxcsr_call(builder, "stmxcsr", slot)
            saved = builder.load(slot)
            builder.store(builder.or_(saved, ir.Constant(i32, _FLUSH_BITS)), slot)
            _mxcsr_call(builder, "ldmxcsr", slot)
            return saved
        return builder.load(slot)

    return types.int32(), codegen


@intrinsic
def _restore_subnormals(typingctx, saved):
    """Gives back the processor state :func:`_flush_subnormals` returned."""

    def codegen(context, builder, signature, args):
        if _X86:
            slot = builder.alloca(ir.IntType(32))
            builder.store(context.cast(builder, args[0], saved, types.int32), slot)
            _mxcsr_call(builder, "ldmxcsr", slot)
        return context.get_dummy_value()

    return types.none(saved), codegen


@njit(cache=True)
def _flush() -> int:
    return _flush_subnormals()


@njit(cache=True)
def _restore(saved: int) -> None:
    _restore_subnormals(saved)


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Runs its block with subnormal floats flushed to zero in this thread: every operation's
    subnormal result is 0 (FTZ) and subnormal inputs are read as 0 (DAZ), in compiled code,
    NumPy's ufuncs and BLAS's products alike (x86-64's MXCSR flags; elsewhere nothing). The
    caller's flags come back on exit, also when the block raises; other threads (BLAS's own,
    where it runs more than one) are left as they are.

    Why: a gradient that decays through a long sequence reaches subnormal floats, 10-100x
    slower on x86 (XLA flushes them by default); the train step at (32,200,512,512) took 13-14
    s in its first steps with them, 2.7-2.8 with only the compiled calls flushing, 0.7-0.8 with
    the whole backward flushed (docs/benchmarks.md, ``benchmarks/subnormals.py``). Only values
    below 1.2e-38 (float32) or 2.2e-308 (float64) change."""
    saved = None
    try:
        saved = _flush()
        yield
    finally:
        if saved is not None:
            _restore(saved)


@intrinsic
def _wide_vectors(typingctx):
    """Lets LLVM vectorise the calling function's loops 512 bits wide where the processor has
    AVX-512: LLVM's x86 default is 256 bits (older Intel cores slowed their clock for 512-bit
    work). The BLAS loop's step functions call it: on a Sapphire Rapids core a step's
    element-wise work forward took 0.9x the time at (32, 32) and 0.85x at (32, 128)
    (docs/benchmarks.md). The whole compiled loops keep 256 bits: 512 made them 1.04-1.10x
    slower at batch 1-16, and their blocked products up to 1.2x. Without AVX-512 LLVM caps the
    width at the widest vectors the processor has (256 bits with AVX2), and targets other than
    x86 ignore the attribute."""

    def codegen(context, builder, signature, args):
        # A string attribute, which llvmlite's checked set of LLVM's keyword attributes refuses.
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


_LOG2_E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2: n * _LN2_HI is exact for
_LN2_LO = 1.90821492927058770002e-10  # |n| < 2048, so the reduced argument loses nothing
#: 1/k!, k = 0 .. 13: Taylor's series of e^r to 13th order errs by < 1e-17 for |r| <= ln2/2 ...
_INV_FACTORIALS = tuple(1.0 / math.factorial(k) for k in range(14))
#: ... and to 7th order by < 6e-9, below float32's half ulp.
_INV_FACTORIALS_32 = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))


def _exp_of(x):
    """e^x in x's precision, vectorisable (see the module docstring); numba code only."""
    raise NotImplementedError("compiled by numba only")


@overload(_exp_of, jit_options=_OPTIONS)
def _exp_compiled(x):
    """e^x = 2^n e^r with n = round(x / ln 2), |r| <= ln2/2, a Taylor polynomial for e^r and
    2^n made from its bits. x is clamped so that 2^n stays a normal float: below e^-708 (e^-87
    in float32) the result is that floor, far under any tolerance (the cell asks only for
    e^-|z|); above e^709 (e^88) it is that ceiling. NaN stays NaN."""
    if x == types.float32:
        lo, hi, log2_e = np.float32(-87.0), np.float32(88.0), np.float32(_LOG2_E)
        ln2_hi, ln2_lo = np.float32(0.693359375), np.float32(-2.12194440e-4)  # Cephes' split
        coefficients, bias, shift, as_int = _INV_FACTORIALS_32, 127, 23, np.int32
        half = np.float32(0.5)
    else:
        lo, hi, log2_e, ln2_hi, ln2_lo = -708.0, 709.0, _LOG2_E, _LN2_HI, _LN2_LO
        coefficients, bias, shift, as_int, half = _INV_FACTORIALS, 1023, 52, np.int64, 0.5
    order = len(coefficients) - 1

    def exp(x):
        clamped = min(max(x, lo), hi)
        n = np.floor(clamped * log2_e + half)
        r = (clamped - n * ln2_hi) - n * ln2_lo
        p = coefficients[order]
        for k in range(order - 1, -1, -1):  # unrolled: the tuple's length is known
            p = p * r + coefficients[k]
        scaled = p * _float_from_bits(as_int((as_int(n) + bias) << shift))
        return scaled if x == x else x

    return exp


@_jit
def _exp(x):
    return _exp_of(x)


def _typed(x, single, double):
    """``single`` as a float32 where ``x`` is one, else ``double`` as a float64 (numba code
    only)."""
    raise NotImplementedError("compiled by numba only")


@overload(_typed, jit_options=_OPTIONS)
def _typed_compiled(x, single, double):
    """numba types a Python literal as float64 (or int64) and float32 with float64 as float64,
    so a float32 unit with a literal in it computes in double at half the SIMD width: typed
    literals made a step's element-wise work 1.5x (forward) and 1.7x (backward) faster at
    (64, 256), float32 (measured while building it)."""
    if x == types.float32:
        return lambda x, single, double: np.float32(single)
    return lambda x, single, double: np.float64(double)


#: Below this |x|, tanh is its Taylor series to x^9, where (1 - e) / (1 + e) would cancel (the
#: ratio loses log2(1 / 2|x|) bits as |x| shrinks): float64 truncates under 1e-17 relative
#: below 1/32, float32 under 1e-8 (a sixth of its half ulp) below 1/4.
_TANH_SERIES_BELOW_32, _TANH_SERIES_BELOW = 0.25, 0.03125


@_jit
def _tanh(x):
    """tanh x = (1 - e^-2|x|) / (1 + e^-2|x|), signed, and its Taylor series near 0: a few
    ulps of relative error everywhere, as NumPy's, in x's precision."""
    a = abs(x)
    e = _exp(-(a + a))
    one = _typed(x, 1.0, 1.0)
    t = (one - e) / (one + e)
    x2 = x * x
    c3, c5 = _typed(x, -1 / 3, -1 / 3), _typed(x, 2 / 15, 2 / 15)
    c7, c9 = _typed(x, -17 / 315, -17 / 315), _typed(x, 62 / 2835, 62 / 2835)
    series = x * (one + x2 * (c3 + x2 * (c5 + x2 * (c7 + x2 * c9))))
    if a < _typed(x, _TANH_SERIES_BELOW_32, _TANH_SERIES_BELOW):
        return series
    return t if x >= 0 else -t


def _typed_literals(kernel: Callable) -> Callable:
    """``kernel`` (a cell function ``f(xp, a, ...)``) with every number in its code typed like
    its first array argument ``a`` (see :func:`_typed`), from its source; as it is where its
    source cannot be read (then float32 units compute in float64: slower, as accurate)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(kernel)))
    except (OSError, TypeError):
        return kernel
    function = tree.body[0]
    like = function.args.args[1].arg

    class Typed(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.AST:
            if type(node.value) not in (int, float):
                return node
            value = [ast.Constant(node.value), ast.Constant(node.value)]
            name, argument = ast.Name("_typed", ast.Load()), ast.Name(like, ast.Load())
            return ast.Call(name, [argument, *value], [])

    function.decorator_list, function.returns = [], None
    for argument in function.args.args:
        argument.annotation = None
    tree = ast.fix_missing_locations(Typed().visit(tree))
    namespace = {**kernel.__globals__, "_typed": _typed}
    exec(compile(tree, inspect.getsourcefile(kernel) or "<kernel>", "exec"), namespace)
    return namespace[function.name]


@_jit
def _abs(x):
    return abs(x)


@_jit
def _where(condition, a, b):
    return a if condition else b


#: What the core's cell functions get as ``xp`` here: a module of the scalar functions above.
#: A module-level object, not an argument: numba resolves its attributes while compiling, and
#: a namedtuple of compiled functions passed as an argument made the on-disk cache miss in
#: every new process (the functions' objects are part of the argument's type).
_SCALAR_XP = ModuleType("xplstm.backends._numpy_jit.scalar_xp")
_SCALAR_XP.exp, _SCALAR_XP.tanh, _SCALAR_XP.abs, _SCALAR_XP.where = _exp, _tanh, _abs, _where

#: The cell's kernels, njit-ed by :func:`loops` before the loops first compile (which is when
#: numba reads these globals).
_sigmoid = _cell_update = _gates_backward = None
_compiled: dict[tuple, tuple[Callable, ...]] = {}


def loops(kernels: Any) -> tuple[Callable, Callable, Callable, Callable]:
    """``(forward_loop, backward_loop, forward_step, backward_step)`` compiled over ``kernels``
    (``xplstm.cell.KERNELS``): the whole loop over time each way, and one step's element-wise
    work each way (for the loop that leaves the products to BLAS)."""
    global _sigmoid, _cell_update, _gates_backward
    key = tuple(kernels)
    if key not in _compiled:
        if _compiled:
            raise ValueError("the compiled NumPy loops serve one set of cell kernels a process")
        _sigmoid, _cell_update, _gates_backward = (
            _jit(_typed_literals(k)) for k in (kernels.sigmoid, kernels.cell_update,
                                               kernels.gates_backward)
        )  # fmt: skip
        code = b"".join(marshal.dumps(k.__code__) for k in key)
        _compiled[key] = _make_loops(int.from_bytes(hashlib.sha256(code).digest()[:7], "little"))
    return _compiled[key]


@njit(**_OPTIONS)
def _add_row_product(z, h, w):
    """z += h @ w for one row: z (N,), h (K,), w (K,N). Four rows of w per pass over z (a
    pass per row spent most of its time loading and storing z)."""
    depth, n = w.shape
    for k in range(0, depth - depth % 4, 4):
        h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
        for j in range(n):
            z[j] += h0 * w0[j] + h1 * w1[j] + h2 * w2[j] + h3 * w3[j]
    for k in range(depth - depth % 4, depth):
        h_k, w_k = h[k], w[k]
        for j in range(n):
            z[j] += h_k * w_k[j]


@njit(**_OPTIONS)
def _add_product(z, a, w):
    """z += a @ w: z (B,N), a (B,K), w (K,N). Four rows of z and four of w a pass: each value
    of w loaded serves four rows, 16 multiply-adds for 4 loads of w and 4 of z (one row a pass
    made the product 1.5x slower at (32,32) @ (32,128), the demo's step: 5.8 against 3.8 µs)."""
    rows, depth = a.shape
    n = w.shape[1]
    full_rows, full_depth = rows - rows % 4, depth - depth % 4
    for b in range(0, full_rows, 4):
        z0, z1, z2, z3 = z[b], z[b + 1], z[b + 2], z[b + 3]
        a0, a1, a2, a3 = a[b], a[b + 1], a[b + 2], a[b + 3]
        for k in range(0, full_depth, 4):
            w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
            a00, a01, a02, a03 = a0[k], a0[k + 1], a0[k + 2], a0[k + 3]
            a10, a11, a12, a13 = a1[k], a1[k + 1], a1[k + 2], a1[k + 3]
            a20, a21, a22, a23 = a2[k], a2[k + 1], a2[k + 2], a2[k + 3]
            a30, a31, a32, a33 = a3[k], a3[k + 1], a3[k + 2], a3[k + 3]
            for j in range(n):
                x0, x1, x2, x3 = w0[j], w1[j], w2[j], w3[j]
                z0[j] += a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
                z1[j] += a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
                z2[j] += a20 * x0 + a21 * x1 + a22 * x2 + a23 * x3
                z3[j] += a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3
    for b in range(full_rows):  # the rest of the depth for those rows
        _add_row_product(z[b], a[b, full_depth:], w[full_depth:])
    for b in range(full_rows, rows):
        _add_row_product(z[b], a[b], w)


@njit(**{**_OPTIONS, "fastmath": {"reassoc", "contract"}})
def _row_product_transposed(out, d, w):
    """out = d @ w.T for one row: out (M,), d (N,), w (M,N): dot products of d with rows of
    w, four at a time (one load of d for four rows). With the tiles of :func:`_product_
    transposed`, the one place where numba may reorder additions, to sum in vector lanes: the
    same order on every call, so deterministic."""
    m, n = w.shape
    zero = _typed(d[0], 0.0, 0.0)
    for j in range(0, m - m % 4, 4):
        s0 = s1 = s2 = s3 = zero
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for k in range(n):
            d_k = d[k]
            s0 += d_k * w0[k]
            s1 += d_k * w1[k]
            s2 += d_k * w2[k]
            s3 += d_k * w3[k]
        out[j], out[j + 1], out[j + 2], out[j + 3] = s0, s1, s2, s3
    for j in range(m - m % 4, m):
        total, w_j = zero, w[j]
        for k in range(n):
            total += d[k] * w_j[k]
        out[j] = total


@njit(**{**_OPTIONS, "fastmath": {"reassoc", "contract"}})
def _product_transposed(out, d, w):
    """out = d @ w.T: out (B,M), d (B,N), w (M,N). Tiles of four rows of d by four of w: 16
    dot products summed together, 16 multiply-adds for 8 loads (one row at a time: 1.25x slower
    at (32,128) @ (128,32), the demo's step back: 5.5 against 4.4 µs on a loaded machine)."""
    rows, m = d.shape[0], w.shape[0]
    full_rows, full_m = rows - rows % 4, m - m % 4
    zero = _typed(d[0, 0], 0.0, 0.0)
    for b in range(0, full_rows, 4):
        d0, d1, d2, d3 = d[b], d[b + 1], d[b + 2], d[b + 3]
        o0, o1, o2, o3 = out[b], out[b + 1], out[b + 2], out[b + 3]
        for j in range(0, full_m, 4):
            w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
            for k in range(d.shape[1]):
                x0, x1, x2, x3 = d0[k], d1[k], d2[k], d3[k]
                y0, y1, y2, y3 = w0[k], w1[k], w2[k], w3[k]
                s00, s01, s02, s03 = s00 + x0 * y0, s01 + x0 * y1, s02 + x0 * y2, s03 + x0 * y3
                s10, s11, s12, s13 = s10 + x1 * y0, s11 + x1 * y1, s12 + x1 * y2, s13 + x1 * y3
                s20, s21, s22, s23 = s20 + x2 * y0, s21 + x2 * y1, s22 + x2 * y2, s23 + x2 * y3
                s30, s31, s32, s33 = s30 + x3 * y0, s31 + x3 * y1, s32 + x3 * y2, s33 + x3 * y3
            o0[j], o0[j + 1], o0[j + 2], o0[j + 3] = s00, s01, s02, s03
            o1[j], o1[j + 1], o1[j + 2], o1[j + 3] = s10, s11, s12, s13
            o2[j], o2[j + 1], o2[j + 2], o2[j + 3] = s20, s21, s22, s23
            o3[j], o3[j + 1], o3[j + 2], o3[j + 3] = s30, s31, s32, s33
    for b in range(full_rows):  # the rest of the columns for those rows
        _row_product_transposed(out[b, full_m:], d[b], w[full_m:])
    for b in range(full_rows, rows):
        _row_product_transposed(out[b], d[b], w)


# The loops below are laid out for LLVM's vectoriser (measured: a loop it leaves scalar is
# 5-16x slower): every inner loop is ``for j in range(n)`` over contiguous 1-d views (a range
# that starts elsewhere makes numba guard each index against wrap-around, which stays scalar),
# and none writes to an array it reads at another offset (z[j] written while z[H + j] is read
# stayed scalar, and so did c_{t-1} and c_t as two rows of one array: the state has its own
# (B,H) arrays). So the activations are in-place passes over [i f o] and [g], as in
# ``cell.step_forward``, before ``cell_update`` reads them.


@_jit
def _forward_row(z, bias, c_b, h_out):
    """One row of one step forward, in place: the activations of ``z`` (4H,) plus ``bias``
    (4H,) into ``z``, which holds the pre-activations less the bias on entry (added here, in
    the pass that reads them anyway: a pass of its own over every step's gates took 3-4% of a
    forward+backward at (32,100,2,32) and (64,100,32,32)), then ``c_b`` (H,) from c_{t-1} to
    c_t and ``h_out`` (H,) to o_t tanh(c_t) (before any projection)."""
    xp = _SCALAR_XP
    hidden = c_b.shape[0]
    ifo, g = z[: 3 * hidden], z[3 * hidden :]
    bias_ifo, bias_g = bias[: 3 * hidden], bias[3 * hidden :]
    for j in range(3 * hidden):
        ifo[j] = _sigmoid(xp, ifo[j] + bias_ifo[j])
    for j in range(hidden):
        g[j] = xp.tanh(g[j] + bias_g[j])
    i, f, o = z[:hidden], z[hidden : 2 * hidden], z[2 * hidden : 3 * hidden]
    for j in range(hidden):
        h_out[j], c_b[j] = _cell_update(xp, i[j], f[j], o[j], g[j], c_b[j])


@_jit
def _backward_row(d, a, c, c_prev, dh_b, dc_b):
    """One row of one step back, in place: ``d`` (4H,) receives the gradients of the
    pre-activations from the activations ``a`` (4H,), the cells c_t and c_{t-1} and the
    gradients ``dh_b`` (reaching o_t tanh(c_t)) and ``dc_b`` (H,), which leaves as dc_{t-1}."""
    xp = _SCALAR_XP
    hidden = c.shape[0]
    i, f, o, g = a[:hidden], a[hidden : 2 * hidden], a[2 * hidden : 3 * hidden], a[3 * hidden :]
    di, df, do, dg = d[:hidden], d[hidden : 2 * hidden], d[2 * hidden : 3 * hidden], d[3 * hidden :]
    for j in range(hidden):
        di[j], df[j], do[j], dg[j], dc_b[j] = _gates_backward(
            xp, dh_b[j], dc_b[j], i[j], f[j], o[j], g[j], c[j], c_prev[j]
        )


def _make_loops(kernels_hash: int) -> tuple[Callable, ...]:
    """The loops and step kernels, as closures over ``kernels_hash`` so that numba's cache key
    holds it."""

    @_cached_jit
    def forward_loop(
        gates, cells, y, h, c, w_h, bias, held, has_held, w_proj, has_proj, drop, has_drop
    ):  # fmt: skip
        """The forward time loop, in place, over time-major arrays. On entry ``gates`` (T,B,4H)
        holds x_t @ W_x, ``bias`` (4H,) b, and ``h`` (B,P), ``c`` (B,H) hold h0, c0; on exit
        ``gates`` holds the activations i, f, o, g, ``cells`` (T,B,H) and ``y`` (T,B,P) every
        c_t and h_t, and ``h``, ``c`` hold h_T, c_T. The optional inputs, each used where its
        flag says: ``held`` (T,B) steps that keep the state (their gates are left unread),
        ``w_proj`` (H,P) the projection h_t = (o_t tanh c_t) @ w_proj, ``drop`` (B,P) the
        recurrent-dropout mask multiplied into h_{t-1} before its product."""
        seq, batch, four_h = gates.shape
        hidden, out = four_h // 4, h.shape[1]
        if kernels_hash < 0:  # never: the reference puts the hash into the closure
            return
        unprojected, dropped = np.empty(hidden, gates.dtype), np.empty((batch, out), gates.dtype)
        for t in range(seq):
            z_t = gates[t]
            if has_drop:
                for b in range(batch):
                    h_b, drop_b, dropped_b = h[b], drop[b], dropped[b]
                    for j in range(out):
                        dropped_b[j] = h_b[j] * drop_b[j]
                _add_product(z_t, dropped, w_h)  # z_t += (h_{t-1} * drop) @ W_h
            else:
                _add_product(z_t, h, w_h)  # z_t += h_{t-1} @ W_h (held rows' z_t is not read)
            for b in range(batch):
                h_b, c_b = h[b], c[b]
                if not (has_held and held[t, b]):
                    if has_proj:
                        _forward_row(z_t[b], bias, c_b, unprojected)
                        for j in range(out):
                            h_b[j] = 0
                        _add_row_product(h_b, unprojected, w_proj)
                    else:
                        _forward_row(z_t[b], bias, c_b, h_b)
                c_out, h_out = cells[t, b], y[t, b]
                for j in range(hidden):
                    c_out[j] = c_b[j]
                for j in range(out):
                    h_out[j] = h_b[j]

    @_cached_jit
    def backward_loop(
        dz, gates, cells, c0, dy, has_dy, dh, dc, w_h, dh_out,
        held, has_held, w_proj, has_proj, drop, has_drop,
    ):  # fmt: skip
        """The backward time loop, in place, over time-major arrays: fills ``dz`` (T,B,4H) with
        the gradients of the pre-activations (0 at held steps); ``dh`` (B,P), ``dc`` (B,H)
        enter as those of h_T, c_T and leave as those of h0, c0. ``dy`` (T,B,P) is added to
        ``dh`` at each step when ``has_dy``; with a projection ``dh_out`` (T,B,P) receives the
        gradient reaching each projected h_t (held steps are left as they are). The optional
        inputs as in ``forward_loop``. ``dz`` may be ``gates`` itself: a step's gradients are
        made in a buffer of their own (LLVM leaves a loop that writes the array it reads
        scalar) and written over its gates once the step has read them."""
        seq, batch, four_h = gates.shape
        hidden, out = four_h // 4, dh.shape[1]
        if kernels_hash < 0:  # never: the reference puts the hash into the closure
            return
        projected, dh_prev = np.empty(hidden, gates.dtype), np.empty((batch, out), gates.dtype)
        d_t = np.empty((batch, four_h), gates.dtype)
        for t in range(seq - 1, -1, -1):
            for b in range(batch):
                d, dh_b = d_t[b], dh[b]
                if has_dy:
                    dy_b = dy[t, b]
                    for j in range(out):
                        dh_b[j] += dy_b[j]
                if has_held and held[t, b]:
                    for j in range(four_h):
                        d[j] = 0
                    continue
                c_prev = cells[t - 1, b] if t > 0 else c0[b]
                dh_cell = dh_b
                if has_proj:
                    dh_out_b = dh_out[t, b]
                    for j in range(out):
                        dh_out_b[j] = dh_b[j]
                    _row_product_transposed(projected, dh_b, w_proj)  # dh_t @ w_proj.T
                    dh_cell = projected
                _backward_row(d, gates[t, b], cells[t, b], c_prev, dh_cell, dc[b])
            _product_transposed(dh_prev, d_t, w_h)  # dh_{t-1} = dz_t @ W_h.T
            for b in range(batch):
                d, dz_b = d_t[b], dz[t, b]
                for j in range(four_h):
                    dz_b[j] = d[j]
                if has_held and held[t, b]:  # dh and dc pass on as they are
                    continue
                dh_b, dh_prev_b, drop_b = dh[b], dh_prev[b], drop[b if has_drop else 0]
                for j in range(out):
                    dh_b[j] = dh_prev_b[j] * drop_b[j] if has_drop else dh_prev_b[j]

    @_cached_jit
    def forward_step(gates_t, z_h, bias, c, cells_t, h_out, held_t, has_held):
        """One step's element-wise work forward, in place, for the loop whose products BLAS
        makes: ``gates_t`` (B,4H) holds x_t @ W_x, ``z_h`` (B,4H) h_{t-1} @ W_h, ``bias``
        (4H,) b; on exit
        ``gates_t`` holds the activations, ``c`` (B,H) and ``cells_t`` c_t, ``h_out`` (B,H)
        o_t tanh(c_t). Rows that ``held_t`` (B,) holds are left as they are (c and cells_t
        keep c_{t-1}; h_out is not written)."""
        _wide_vectors()
        batch, four_h = gates_t.shape
        hidden = four_h // 4
        if kernels_hash < 0:  # never: the reference puts the hash into the closure
            return
        for b in range(batch):
            c_b = c[b]
            if not (has_held and held_t[b]):
                z, z_h_b = gates_t[b], z_h[b]
                for j in range(four_h):
                    z[j] += z_h_b[j]
                _forward_row(z, bias, c_b, h_out[b])
            c_out = cells_t[b]
            for j in range(hidden):
                c_out[j] = c_b[j]

    @_cached_jit
    def backward_step(dz_t, gates_t, cells_t, c_prev, dh, dc, held_t, has_held):
        """One step's element-wise work back, in place: fills ``dz_t`` (B,4H) (0 in rows that
        ``held_t`` holds) from ``dh`` (B,H), the gradient reaching o_t tanh(c_t), and ``dc``
        (B,H), which leaves as dc_{t-1} (unchanged in held rows). ``dz_t`` may be ``gates_t``
        itself (as in ``backward_loop``, each row is made in a buffer first)."""
        _wide_vectors()
        batch, four_h = gates_t.shape
        if kernels_hash < 0:  # never: the reference puts the hash into the closure
            return
        d = np.empty(four_h, gates_t.dtype)
        for b in range(batch):
            dz_b = dz_t[b]
            if has_held and held_t[b]:
                for j in range(four_h):
                    dz_b[j] = 0
                continue
            _backward_row(d, gates_t[b], cells_t[b], c_prev[b], dh[b], dc[b])
            for j in range(four_h):
                dz_b[j] = d[j]

    return forward_loop, backward_loop, forward_step, backward_step
