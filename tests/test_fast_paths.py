"""Every backend's fast path gives the written-once path's outputs and gradients.

Both paths run on the same layer and the same inputs; only ``layer.fast_path`` differs. The
written-once path is itself held to torch.nn.LSTM by ``test_reference.py``. On NumPy every
test runs once per time loop of the fast path (compiled with numba, and in-place ufuncs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
import types
from collections import Counter
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest

import xplstm
from tests.support import (
    OUTPUTS,
    Target,
    assert_close,
    forward_backward,
    layer_for,
    numpy_loops,
    on_path,
    random_problem,
)
from xplstm import backends, cell, sequence
from xplstm.backends._numpy_fast import LOOP_ENV, NumPyFastPath, numba_installed
from xplstm.lstm import FAST_PATH_ENV, fast_path_of
from xplstm.paths import stack_path_of

SHAPES = {
    "small": (3, 5, 4, 6),
    "batch1": (1, 9, 3, 5),
    "seq1": (4, 1, 2, 3),
    "longer": (5, 60, 7, 8),
    "long": (2, 400, 3, 4),
}


@pytest.fixture
def numpy_loop(request, monkeypatch) -> str | None:
    """The NumPy loop a test runs (``$XPLSTM_NUMPY_LOOP``): the root conftest gives the numpy
    target each of ``support.numpy_loops()``, other targets ``None`` (no loop to choose)."""
    if request.param is not None:
        monkeypatch.setenv(LOOP_ENV, request.param)
    return request.param


def ran_fast(layer) -> bool:
    """Whether every recurrence of the layer's last forward ran on the fast path."""
    return all(path is not None for path, _ in layer._cache.runs)


def first_path(layer):
    """The fast path (or ``None``) that ran the first recurrence of the layer's last forward."""
    return layer._cache.runs[0][0]


def ran_written_once(layer) -> bool:
    """Whether every recurrence of the layer's last forward ran on the written-once path."""
    return all(path is None for path, _ in layer._cache.runs)


def _fast_path_or_skip(target):
    if fast_path_of(backends.get(target.backend)) is None:
        pytest.skip(f"{target.backend} has no fast path")


def host_copies(results: dict) -> dict:
    """Copies on the host: to_numpy may return the very array, and aliasing is looked for."""
    return {name: np.array(xplstm.to_numpy(a)) for name, a in results.items()}


def loop_that_ran(layer) -> str | None:
    """The NumPy fast path's loop of the last forward ("compiled" or "ufuncs"), else None."""
    if not isinstance(first_path(layer), NumPyFastPath):
        return None
    return layer._cache.runs[0][1][-1]


def both_paths(target, p: dict, dtype: str, **kwargs) -> tuple[dict, dict, xplstm.LSTM]:
    """One layer's results with its fast path, then with the written-once path."""
    layer = layer_for(target, p, dtype)
    assert layer.fast_path, "the fast path is on by default"
    fast = forward_backward(layer, target, p, **kwargs)
    assert ran_fast(layer), "the fast path did not run"
    if isinstance(first_path(layer), NumPyFastPath):
        assert loop_that_ran(layer) == os.environ.get(LOOP_ENV, loop_that_ran(layer))
    layer.fast_path = False
    written_once = forward_backward(layer, target, p, **kwargs)
    assert ran_written_once(layer)
    return fast, written_once, layer


def assert_same(fast: dict, written_once: dict, layer: xplstm.LSTM) -> None:
    """Fast and written-once paths may round differently, never by more than a few ulps."""
    for name in OUTPUTS:
        assert_close(fast[name], written_once[name], like=layer, level="ulps", name=name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_fast_path_equals_written_once(target, numpy_loop, shape, dtype):
    _fast_path_or_skip(target)
    p = random_problem(*shape, seed=sum(shape))
    assert_same(*both_paths(target, p, dtype))


@pytest.mark.parametrize(
    ("state", "dy"), [(False, True), (True, False)], ids=["zero-state", "no-dy"]
)
def test_fast_path_defaults(target, numpy_loop, state, dy):
    """Omitted state and omitted ``dy`` take the same defaults on both paths."""
    _fast_path_or_skip(target)
    p = random_problem(2, 6, 3, 4, seed=3)
    assert_same(*both_paths(target, p, "float64", state=state, dy=dy))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_path_saturated_gates(target, numpy_loop, dtype):
    """Pre-activations far past where exp overflows: the gates saturate to the same values."""
    _fast_path_or_skip(target)
    p = random_problem(2, 4, 3, 4, seed=5)
    p["x"] = p["x"] * 400.0
    assert_same(*both_paths(target, p, dtype))


def test_fast_path_reuses_nothing_it_returned(target, numpy_loop):
    """Workspaces are reused between calls, but nothing returned or stored aliases them (on
    every target: a property of any path, by default the fast one where there is one)."""
    p, q = random_problem(3, 5, 2, 4, seed=1), random_problem(3, 5, 2, 4, seed=2)
    layer = target.lstm(2, 4, dtype="float64", seed=0)
    held = forward_backward(layer, target, p)
    kept = host_copies(held)
    forward_backward(layer, target, q)  # the same shapes: the same workspaces
    for name in OUTPUTS:  # before p runs again, which would write p's values back into them
        assert_close(held[name], kept[name], like=layer, level="exact", name=name)
    again = forward_backward(layer, target, p)
    for name in OUTPUTS:
        assert_close(again[name], kept[name], like=layer, level="exact", name=name)


def test_fast_path_follows_shape_changes(target, numpy_loop):
    """One layer meets a new batch or length: new workspaces (or compilations), still the
    results of a fresh layer (on every target, on its default path: the fast one where there is
    one; test_fast_path_equals_written_once compares the paths)."""
    layer = target.lstm(3, 4, dtype="float64", seed=0)
    for shape in [(2, 5, 3, 4), (3, 2, 3, 4), (2, 5, 3, 4), (1, 3, 3, 4)]:  # batch, seq
        p = random_problem(*shape, seed=sum(shape))
        fresh = target.lstm(3, 4, dtype="float64", seed=0)
        assert_same(forward_backward(layer, target, p), forward_backward(fresh, target, p), layer)


def test_backward_twice_gives_the_same(target, numpy_loop):
    """Backward reads the forward's cache without spending it (on every target)."""
    p = random_problem(2, 5, 3, 4, seed=7)
    layer = target.lstm(3, 4, dtype="float64", seed=0)
    first = host_copies(forward_backward(layer, target, p))
    again = layer.backward(*(target.asarray(p[k]) for k in ("dy", "dh_n", "dc_n")))
    again += (layer.weights.deltas, layer.bias.deltas)
    for name, value in zip(OUTPUTS[3:], again, strict=True):
        assert_close(value, first[name], like=layer, level="exact", name=name)


def test_switches(monkeypatch):
    """``fast_path=False`` and ``$XPLSTM_FAST_PATH=0`` turn the fast path off."""
    x = np.zeros((1, 2, 3), dtype="float32")
    layer = xplstm.LSTM(3, 4, backend="numpy", seed=0)
    layer.forward(x)
    assert ran_fast(layer)
    off = xplstm.LSTM(3, 4, backend="numpy", seed=0, fast_path=False)
    off.forward(x)
    assert ran_written_once(off)
    monkeypatch.setenv(FAST_PATH_ENV, "0")
    layer.forward(x)
    assert ran_written_once(layer)


def test_a_deep_copy_computes_like_the_original(target, numpy_loop):
    """copy.deepcopy (keeping the best model while training) copies workspaces correctly."""
    import copy

    p = random_problem(2, 6, 3, 4, seed=4)
    layer = target.lstm(3, 4, dtype="float64", seed=0)
    first = host_copies(forward_backward(layer, target, p))
    twin = copy.deepcopy(layer)
    again = layer.backward(*(target.asarray(p[k]) for k in ("dy", "dh_n", "dc_n")))
    from_twin = twin.backward(*(target.asarray(p[k]) for k in ("dy", "dh_n", "dc_n")))
    for name, a, b in zip(("dx", "dh0", "dc0"), again, from_twin, strict=True):
        assert_close(b, a, like=layer, level="exact", name=name)
    for name, value in forward_backward(twin, target, p).items():
        assert_close(value, first[name], like=twin, level="exact", name=name)


def test_cupy_fast_path_runs_through_its_seam(monkeypatch):
    """The CuPy fast path's own code, run here: a stand-in ``cupy`` made of NumPy functions,
    whose ``fuse`` records each kernel and returns it unfused, serves as CuPy's fast path on the
    NumPy backend. Only what ``cupy.fuse`` compiles is left for a GPU to check."""
    from xplstm.backends._cupy_fast import CuPyFastPath

    fused, calls = [], []

    def fuse(kernel_name: str):
        def record(kernel):
            fused.append(kernel_name)

            def counted(*arrays):
                calls.append(kernel_name)
                return kernel(*arrays)

            return counted

        return record

    fake_cupy = types.SimpleNamespace(
        fuse=fuse, exp=np.exp, abs=np.abs, where=np.where, tanh=np.tanh
    )
    numpy_backend = backends.get("numpy")
    monkeypatch.setattr(
        type(numpy_backend),
        "fast_path",
        lambda self, forward, backward, kernels: CuPyFastPath(
            fake_cupy, self.namespace(), forward, backward, kernels
        ),
    )
    target = Target("numpy", None, "numpy")
    for dtype in ("float64", "float32"):
        p = random_problem(3, 7, 4, 5, seed=11)
        assert_same(*both_paths(target, p, dtype))
    kernels = ("xplstm_sigmoid", "xplstm_cell_update", "xplstm_gates_backward")
    assert Counter(fused) == dict.fromkeys(kernels, 2)  # fused once per layer, one per dtype
    assert Counter(calls) == dict.fromkeys(kernels, 2 * 7)  # called once per step


# -- the compiled NumPy loop: its restated exp and tanh, its choice, its on-disk cache --------
def _compiled_or_skip() -> None:
    if not numba_installed():
        pytest.skip("numba is not installed (pip install 'xplstm[fast]')")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_exp_and_tanh_match_numpy(dtype):
    """The two restated scalar functions agree with NumPy's exp and tanh to a few ulps, over
    their whole range, at the clamps, and for NaN and infinities."""
    _compiled_or_skip()
    from numba import njit

    from xplstm.backends import _numpy_jit

    @njit(**_numpy_jit._OPTIONS)  # as the loops compile them: with fused multiply-adds
    def apply(x, exp, tanh):
        for k in range(x.size):
            exp[k], tanh[k] = _numpy_jit._exp(x[k]), _numpy_jit._tanh(x[k])

    finfo = np.finfo(dtype)
    floor = 87.0 if dtype == "float32" else 708.0  # below e^-floor, _exp returns e^-floor
    x = np.concatenate(
        [np.linspace(-floor, floor, 20001), np.geomspace(1e-30, 30, 2001), [0.0, -0.0]]
    ).astype(dtype)
    x = np.concatenate([x, -x])
    exp, tanh = np.empty_like(x), np.empty_like(x)
    apply(x, exp, tanh)
    assert_close(exp, np.exp(x), like=x, rtol=4 * finfo.eps, atol=0, name="exp")
    # Relative error, near 0 too (where 1 - e^-2|x| would cancel): measured at most 4.6 ulps.
    assert_close(tanh, np.tanh(x), like=x, rtol=6 * finfo.eps, atol=0, name="tanh")
    special = np.array([np.nan, np.inf, -np.inf, -1e4, 1e4], dtype)
    exp, tanh = np.empty_like(special), np.empty_like(special)
    apply(special, exp, tanh)
    assert np.isnan(exp[0]) and np.isnan(tanh[0]), "NaN must stay NaN (a diverging run shows)"
    assert exp[2] == exp[3] and 0 < exp[2] < 10 * np.exp(-floor), "clamped to e^-floor"
    assert_close(tanh[1:], np.array([1, -1, -1, 1], dtype), like=x, level="exact", name="tanh")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_products_match_numpy(dtype):
    """The compiled loops' products (four rows at a time, four of the weights a pass, the rest
    one by one) give NumPy's products, at every remainder of rows, depth and columns."""
    _compiled_or_skip()
    from xplstm.backends import _numpy_jit

    rng = np.random.default_rng(0)
    for rows, depth, columns in [(1, 3, 5), (4, 4, 8), (5, 7, 6), (8, 9, 4), (11, 13, 17)]:
        a = rng.standard_normal((rows, depth)).astype(dtype)
        w = rng.standard_normal((depth, columns)).astype(dtype)
        z = rng.standard_normal((rows, columns)).astype(dtype)
        found = z.copy()
        _numpy_jit._add_product(found, a, w)
        assert_close(found, z + a @ w, like=z, level="ulps", name=f"z + a @ w, {a.shape}")
        d = rng.standard_normal((rows, columns)).astype(dtype)
        found = np.full((rows, depth), np.nan, dtype)
        _numpy_jit._product_transposed(found, d, w)
        assert_close(found, d @ w.T, like=z, level="ulps", name=f"d @ w.T, {d.shape}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_packed_products_match_numpy(dtype):
    """The panel loop's product gives NumPy's, from W_h (rows contiguous) and from W_h.T (a
    transposed view) alike, at rows that fill no tile or leave a part of one (8 rows a tile),
    columns that fill no panel or leave a part of one (48 float32, 24 float64), any depth; and
    each row of the result is the same, bit for bit, whatever rows are beside it (every value
    is one ordered sum, whatever tile it falls in)."""
    _compiled_or_skip()
    from xplstm.backends import _numpy_gemm

    rng = np.random.default_rng(0)
    width = _numpy_gemm.panel_width(np.dtype(dtype))
    shapes = [(1, 1, 1), (3, 5, 7), (8, 16, width), (9, 13, width + 1), (17, 33, 3 * width - 5)]
    for rows, depth, columns in [*shapes, (7, 0, 4), (0, 4, 5)]:
        a = rng.standard_normal((rows, depth)).astype(dtype)
        w = rng.standard_normal((depth, columns)).astype(dtype)
        for b in (w, np.ascontiguousarray(w.T).T):
            packed = _numpy_gemm.pack(b)
            assert packed.shape == (-(-columns // width), depth, width)
            found = np.full((rows, columns), np.nan, dtype)
            _numpy_gemm.product(found, a, packed)
            expected = a @ w
            assert_close(found, expected, like=expected, level="ulps", name=f"a @ b, {a.shape}")
            for row in range(rows):
                alone = np.full((1, columns), np.nan, dtype)
                _numpy_gemm.product(alone, a[row : row + 1], packed)
                assert (alone[0] == found[row]).all(), f"row {row} depends on its neighbours"


def test_packed_product_refuses_what_does_not_fit():
    """Shapes that do not fit, other dtypes and rows that are not contiguous are errors, never
    a read or a write out of bounds."""
    _compiled_or_skip()
    from numba.core.errors import TypingError

    from xplstm.backends import _numpy_gemm

    a, packed = np.ones((4, 5), "float32"), _numpy_gemm.pack(np.ones((5, 60), "float32"))
    misfits = {
        "more columns than the panels": (np.empty((4, 97), "float32"), a),
        "a panel too many": (np.empty((4, 40), "float32"), a),
        "rows": (np.empty((3, 60), "float32"), a),
        "depth": (np.empty((4, 60), "float32"), np.ones((4, 4), "float32")),
        "strided columns": (np.empty((4, 120), "float32")[:, ::2], a),
    }
    for name, (out, rows) in misfits.items():
        with pytest.raises(ValueError, match="product"):
            _numpy_gemm.product(out, rows, packed)
            pytest.fail(f"{name}: no error")
    with pytest.raises(TypingError):
        _numpy_gemm.product(np.empty((4, 60), "float64"), a.astype("float64"), packed)
    with pytest.raises(TypingError):
        _numpy_gemm.product(np.empty((4, 60), "float32"), np.ones((5, 4), "float32").T, packed)


_WITHOUT_AVX512 = """
import numpy as np
from xplstm.backends import _numpy_fast, _numpy_gemm
rng = np.random.default_rng(0)
a = rng.standard_normal((11, 37)).astype("float32")
b = rng.standard_normal((37, 101)).astype("float32")
out = np.empty((11, 101), "float32")
_numpy_gemm.product(out, a, _numpy_gemm.pack(b))
print(float(np.abs(out - a @ b).max()), _numpy_fast.numba_compiles_avx512())
"""


def test_packed_product_without_avx512(tmp_path):
    """Compiled for a CPU without AVX-512 (``NUMBA_CPU_NAME=haswell``, 16 registers of 256
    bits), the 64-byte vectors of the tiles split into narrower ones: the product stays right,
    and ``auto`` does not pick the panel loop there."""
    _compiled_or_skip()
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_AVX512], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    error, avx512 = done.stdout.split()
    assert float(error) < 1e-5 and avx512 == "False", done.stdout


def _flush_or_skip(by: str = "numba") -> None:
    """Skip unless the flush ``by`` numba (where installed) or the C library can run here."""
    import platform

    from xplstm.backends import _numpy_fast

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the flush is x86-64's MXCSR flags")
    if by == "numba":
        _compiled_or_skip()
    elif _numpy_fast._c_floating_point_env() is None:
        pytest.skip("the flush without numba is glibc's fegetenv/fesetenv (Linux)")


def _without_numba_if_asked(loop: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``loop``, skipping where its flush cannot run; ``"ufuncs without numba"`` is the ufunc
    loop with ``numba_installed`` saying no, as an install without numba (the C library's
    flush)."""
    from xplstm.backends import _numpy_fast

    if loop != "ufuncs without numba":
        _flush_or_skip()
        return loop
    _flush_or_skip("libc")
    monkeypatch.setattr(_numpy_fast, "numba_installed", lambda: False)
    return "ufuncs"


def _flush_by(by: str) -> Callable:
    """The flush's context manager: numba's, or the C library's (an install without numba)."""
    from xplstm.backends import _numpy_fast

    if by == "numba":
        from xplstm.backends._numpy_jit import subnormals_flushed

        return subnormals_flushed
    return _numpy_fast._subnormals_flushed_by_libc


def _flushing() -> bool:
    """Whether this thread flushes subnormal floats now: read from the bits of a product with
    one in NumPy (a comparison would read a subnormal as 0 under the flush too)."""
    product = np.array([np.float32(1e-39)]) * np.float32(1.0)
    return not product.view(np.int32)[0]


def _subnormals(a: np.ndarray) -> int:
    """How many values of ``a`` are subnormal (bits, as :func:`_flushing`)."""
    bits = np.abs(np.asarray(a, np.float32)).view(np.int32)
    return int(np.count_nonzero((bits > 0) & (bits < np.finfo(np.float32).tiny.view(np.int32))))


@pytest.mark.parametrize("by", ["numba", "libc"])
def test_subnormals_flushed_flushes_its_block_and_restores_the_callers_flags(by):
    """Inside ``subnormals_flushed`` (numba's, or the C library's for installs without numba)
    NumPy's ufuncs and BLAS products flush subnormals; on exit the caller's flags come back:
    unflushed, flushed where an outer block flushes, and after an exception too."""
    _flush_or_skip(by)
    subnormals_flushed = _flush_by(by)

    tiny = np.full((4, 4), np.float32(1e-20))
    assert not _flushing() and _subnormals(tiny @ tiny), "unflushed before"
    with subnormals_flushed():
        assert _flushing() and not _subnormals(tiny @ tiny), "BLAS and ufuncs flush inside"
        with subnormals_flushed():
            pass
        assert _flushing(), "an inner block gives back the outer block's flush"
    assert not _flushing(), "the flush leaked out of the block"
    with pytest.raises(RuntimeError), subnormals_flushed():
        raise RuntimeError
    assert not _flushing(), "the flush leaked out of a block that raised"


@pytest.mark.parametrize("loop", [*numpy_loops(), "ufuncs without numba"])
def test_numpy_backward_flushes_subnormals_inside_only(loop, monkeypatch):
    """NumPy's backward treats subnormal gradients as 0 (they are 10-100x slower on x86 and
    reach a long sequence's early steps), and leaves the processor as it found it: after the
    call, inside a caller's own flush, and after a call that raised; with numba, and without
    it (the ufunc loop, flushing through the C library)."""
    from xplstm.backends import _numpy_fast

    loop = _without_numba_if_asked(loop, monkeypatch)
    subnormals_flushed = _numpy_fast.subnormals_flushed

    p = recurrence_problem(set(), "float32")
    p["dh_n"] = np.full_like(p["dh_n"], np.float32(1e-39))
    p["dc_n"] = np.zeros_like(p["dc_n"])
    found = run_recurrence(*numpy_loop_path(loop), p, dy=False)
    assert not _flushing(), "the flush leaked out of the backward"
    for name in ("d_b", "dh0"):
        assert not np.abs(found[name]).view(np.int32).any(), f"subnormal {name} went through"
    with subnormals_flushed():
        run_recurrence(*numpy_loop_path(loop), p, dy=False)
        assert _flushing(), "the backward undid its caller's flush"

    def failing(*args) -> None:
        assert _flushing()
        raise RuntimeError("a backward that fails")

    monkeypatch.setattr(_numpy_fast, "column_sums", failing)  # every loop's last call
    with pytest.raises(RuntimeError, match="fails"):
        run_recurrence(*numpy_loop_path(loop), p, dy=False)
    assert not _flushing(), "the flush leaked out of a backward that raised"


@pytest.mark.parametrize("path", [*numpy_loops(), "stack", "ufuncs without numba"])
def test_numpy_backward_flushes_a_gradient_decaying_into_subnormals(path, monkeypatch):
    """A train step's gradient, from the last step only, decays through a long sequence below
    float32's normal range: NumPy's backward (every loop, and the packed stack; the ufunc loop
    also where numba is not installed) flushes it to 0 throughout, in BLAS's products too, per
    step and over all steps, and its gradients stay within 1e-36 of the written-once path's,
    which computes the subnormals."""
    path = _without_numba_if_asked(path, monkeypatch)
    rng = np.random.default_rng(0)
    batch, seq, inputs, hidden = 8, 300, 3, 8
    layer = on_path(xplstm.LSTM(inputs, hidden, backend="numpy", dtype="float32", seed=0), path)
    x = rng.standard_normal((batch, seq, inputs)).astype(np.float32)
    dy = np.zeros((batch, seq, hidden), np.float32)
    dy[:, -1] = rng.standard_normal((batch, hidden)) * 1e-30
    # The packed stack runs where there is padding to skip: one row a step shorter.
    steps = {"lengths": [seq] * (batch - 1) + [seq - 1]} if path == "stack" else {}

    def gradients() -> dict:
        layer(x, **steps)
        found = dict(zip(("dx", "dh0", "dc0"), layer.backward(dy), strict=True))
        return {**found, **{f"d{k}": p.deltas for k, p in enumerate(layer.parameters())}}

    found = gradients()
    assert ran_fast(layer) if path != "stack" else layer._cache.route is layer._routes._whole
    layer.fast_path = False
    expected = gradients()
    assert _subnormals(expected["dx"]), "the gradient did not reach the subnormal range"
    for name, value in expected.items():
        assert not _subnormals(found[name]), f"subnormal {name} went through"
        assert_close(found[name], value, like=value, level="ulps", atol=1e-36, name=name)


def test_compiled_kernels_compute_in_the_arrays_precision():
    """The cell's kernels, compiled, return float32 for float32 units and float64 for float64:
    their literals (``1.0 - i``) are typed like their arguments, so float32 work is not done in
    float64 at half the SIMD width."""
    _compiled_or_skip()
    import numba

    from xplstm.backends import _numpy_jit

    _numpy_jit.loops(cell.KERNELS)

    @numba.njit
    def units(z):
        xp = _numpy_jit._SCALAR_XP
        return (
            _numpy_jit._sigmoid(xp, z),
            _numpy_jit._tanh(z),
            *_numpy_jit._cell_update(xp, z, z, z, z, z),
            *_numpy_jit._gates_backward(xp, z, z, z, z, z, z, z, z),
        )

    for dtype in (np.float32, np.float64):
        found = units(dtype(0.3))
        returned = units.overloads[(numba.from_dtype(np.dtype(dtype)),)].signature.return_type
        assert set(returned) == {numba.from_dtype(np.dtype(dtype))}, returned
        expected = np.array([cell.sigmoid(np, dtype(0.3)), np.tanh(dtype(0.3))])
        assert_close(np.array(found[:2], dtype), expected, like=expected, level="ulps")


def test_the_loop_is_chosen_by_size(monkeypatch):
    """``auto`` compiles the whole loop for the smallest batches and leaves the products of
    larger ones to the panel loop (up to 128 rows, at hidden >= 128, where numba compiles for
    AVX-512) or to BLAS, and without numba it runs the ufunc loop by itself."""
    from xplstm.backends import _numpy_fast

    monkeypatch.delenv(LOOP_ENV, raising=False)
    path = _numpy_fast.NumPyFastPath(cell.KERNELS)
    if numba_installed():
        panels = "panels" if _numpy_fast.numba_compiles_avx512() else "blas"
        small, large, largest = "compiled", panels, "blas"
    else:
        small = large = largest = "ufuncs"
    assert path.loop_for(1, 1024) == path.loop_for(2, 256) == path.loop_for(8, 32) == small
    assert path.loop_for(4, 64) == small
    assert path.loop_for(4, 256) == path.loop_for(16, 128) == path.loop_for(128, 512) == large
    assert path.loop_for(129, 512) == path.loop_for(17, 127) == path.loop_for(64, 64) == largest
    assert path.loop_for(9, 32) == path.loop_for(8, 64) == largest
    if numba_installed():
        monkeypatch.setattr(_numpy_fast, "numba_compiles_avx512", lambda: False)
        assert path.loop_for(32, 512) == "blas"
    monkeypatch.setattr(path, "_numba", False)
    assert path.loop_for(1, 4) == "ufuncs"
    layer = xplstm.LSTM(3, 4, backend="numpy", seed=0)
    layer._routes._fast = (layer._backend, [path])  # one path per recurrence
    layer.forward(np.zeros((2, 5, 3), "float32"))
    assert loop_that_ran(layer) == "ufuncs"
    with pytest.raises(ValueError, match="auto"):
        _numpy_fast.NumPyFastPath(cell.KERNELS, "jit")


_TWICE = """
import numpy as np, xplstm
from xplstm import cell
from xplstm.backends import _numpy_jit
layer = xplstm.LSTM(3, 4, backend="numpy", seed=0)
layer.backward(np.ones_like(layer.forward(np.ones((2, 5, 3), "float32"))[0]))
loops = _numpy_jit.loops(cell.KERNELS)
for counts in ("cache_hits", "cache_misses"):
    print(sum(getattr(f.stats, counts).total() for f in loops))
"""


def test_a_second_process_loads_the_compiled_loop_from_disk(tmp_path):
    """cache=True: the first process compiles and writes the loops, the next compiles nothing."""
    _compiled_or_skip()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), LOOP_ENV: "compiled"}
    counts = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _TWICE], env=env, capture_output=True, text=True, check=True
        )
        counts.append(tuple(int(n) for n in out.stdout.split()))
    assert counts == [(0, 2), (2, 0)], f"(cache hits, misses) per process: {counts}"


_WIDE = """
import numpy as np, numba
from xplstm.backends import _numpy_jit

@numba.njit(**_numpy_jit._OPTIONS)
def halve(a):
    _numpy_jit._wide_vectors()
    for j in range(a.shape[0]):
        a[j] *= 0.5

a = np.arange(1000, dtype=np.float32)
halve(a)
asm = halve.inspect_asm(halve.signatures[0])
print(int(np.array_equal(a, np.arange(1000) / 2)), int("zmm" in asm))
"""


def test_wide_vectors_where_the_processor_has_them(tmp_path):
    """The BLAS loop's step functions ask LLVM for 512-bit vectors (``_wide_vectors``): it uses
    them where the processor has AVX-512, and the request is harmless where it has not (the
    same code compiled for an AVX2 processor runs on 256-bit vectors)."""
    _compiled_or_skip()
    from llvmlite import binding

    from xplstm.backends import _numpy_jit

    if not _numpy_jit._X86:
        pytest.skip("x86-64 only: other targets ignore the request")
    avx2 = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2"}
    host = bool(binding.get_host_cpu_features().get("avx512f", False))
    here = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
    for target, wide in (({}, host), (avx2, False)):
        env = {**here, "NUMBA_CACHE_DIR": str(tmp_path), **target}
        out = subprocess.run(
            [sys.executable, "-c", _WIDE], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["1", str(int(wide))], (target, out.stdout)


#: Layer options, forward options, and the optional inputs of the recurrence they need.
FEATURES = {
    "stacked-bidirectional": ({"num_layers": 2, "bidirectional": True}, {}, set()),
    "lengths-projection-recurrent-dropout": (
        {"num_layers": 2, "bidirectional": True, "proj_size": 2, "recurrent_dropout": 0.3},
        {"lengths": [3, 5, 1]},
        {"keep", "w_proj", "h_drop"},
    ),
    "mask-no-bias": ({"use_bias": False}, {"mask": [[1, 0, 1, 1, 0]] * 3}, {"keep"}),
}


@pytest.mark.parametrize(("options", "inputs", "needs"), FEATURES.values(), ids=FEATURES.keys())
def test_every_feature_equals_the_written_once_path(target, options, inputs, needs):
    """What a fast path covers runs on it with the written-once results; what it does not
    cover falls back to the written-once path by itself."""
    _fast_path_or_skip(target)
    features = fast_path_of(backends.get(target.backend)).features
    rng = np.random.default_rng(0)
    x = target.asarray(rng.standard_normal((3, 5, 3)))
    dy = target.asarray(rng.standard_normal((3, 5, 2 * (options.get("proj_size") or 4))))
    if "mask" in inputs:
        dy = dy[..., :4]
        inputs = {"mask": target.asarray(np.array(inputs["mask"], dtype=bool))}
    layer = target.lstm(3, 4, dtype="float64", seed=0, **options)
    results = []
    for fast in (True, False):
        layer.fast_path = fast
        layer.dropout_seed(1)
        found = layer(x, **inputs) + layer.backward(dy)
        found += tuple(w.deltas for w in layer.parameters())
        results.append([np.array(xplstm.to_numpy(a)) for a in found])
        assert ran_fast(layer) == (fast and needs <= features), "fast path chosen wrongly"
    for k, (a, b) in enumerate(zip(*results, strict=True)):
        assert_close(a, b, like=a, level="ulps", name=f"output {k}")


# -- NumPy's loops on every optional input of one recurrence ----------------------------------
#: The optional inputs of ``xplstm.sequence``, each alone and all together.
OPTIONS = {
    "keep": {"keep"},
    "w_proj": {"w_proj"},
    "h_drop": {"h_drop"},
    "all": {"keep", "w_proj", "h_drop"},
}


def recurrence_problem(names: set, dtype: str, seed: int = 0) -> dict:
    """One recurrence's inputs (batch 4, seq 7, input 3, hidden 5, projected to 2 with
    ``w_proj``): held steps inside, at the start and at the end of rows, a row held
    throughout, and a dropout mask with zeros."""
    rng = np.random.default_rng(seed)
    batch, seq, inputs, hidden = 4, 7, 3, 5
    out = 2 if "w_proj" in names else hidden
    p = {
        "w": rng.uniform(-0.6, 0.6, (inputs + out, 4 * hidden)),
        "b": rng.uniform(-0.5, 0.5, 4 * hidden),
        "x": rng.standard_normal((batch, seq, inputs)),
        "h0": rng.standard_normal((batch, out)) * 0.5,
        "c0": rng.standard_normal((batch, hidden)) * 0.5,
        "dy": rng.standard_normal((batch, seq, out)),
        "dh_n": rng.standard_normal((batch, out)),
        "dc_n": rng.standard_normal((batch, hidden)),
        "w_proj": rng.uniform(-0.6, 0.6, (hidden, out)),
        "h_drop": (rng.uniform(size=(batch, out)) > 0.3) / 0.7,
    }
    p = {k: v.astype(dtype) for k, v in p.items()}
    held = np.zeros((seq, batch), bool)
    held[[0, 3, 4], 0] = held[5:, 1] = held[:, 2] = True  # row 3 runs every step
    p["keep"] = (~held)[:, :, None]
    return {k: v for k, v in p.items() if k in names or k not in OPTIONS}


def run_recurrence(forward, backward, p: dict, dy: bool = True) -> dict:
    """Forward then backward of one recurrence: every output by name."""
    optional = {k: p[k] for k in ("keep", "w_proj", "h_drop") if k in p}
    y, h, c, cache = forward(p["w"], p["b"], p["x"], p["h0"], p["c0"], **optional)
    grads = backward(
        p["w"], cache, p["dy"] if dy else None, p["dh_n"], p["dc_n"],
        **({"w_proj": p["w_proj"]} if "w_proj" in p else {}),
    )  # fmt: skip
    names = ("dx", "dh0", "dc0", "d_w", "d_b", "d_proj")
    found = {"y": y, "h_n": h, "c_n": c, **dict(zip(names, grads, strict=True))}
    return {k: v for k, v in found.items() if v is not None}


def numpy_loop_path(loop: str) -> tuple:
    """NumPy's fast path held to ``loop``: its forward and backward."""
    path = NumPyFastPath(cell.KERNELS, loop=loop)
    return path.forward, path.backward


def written_once() -> tuple:
    xp = backends.get("numpy").namespace()
    return partial(sequence.forward, xp), partial(sequence.backward, xp)


@pytest.mark.parametrize("dy", [True, False], ids=["dy", "no-dy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("names", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("loop", numpy_loops())
def test_numpy_loops_cover_every_option(loop, names, dtype, dy):
    """Each of NumPy's loops gives the written-once recurrence's outputs and gradients with a
    step mask, a projection, recurrent dropout, and all three at once."""
    assert names <= NumPyFastPath.features
    p = recurrence_problem(names, dtype)
    fast = run_recurrence(*numpy_loop_path(loop), p, dy)
    expected = run_recurrence(*written_once(), p, dy)
    assert fast.keys() == expected.keys()
    for name, value in expected.items():
        assert_close(fast[name], value, like=value, level="ulps", name=name)


@pytest.mark.parametrize("loop", numpy_loops())
def test_numpy_loops_never_read_held_steps(loop):
    """NaN and inf at held steps (padding) give the results zeros give: a held step is selected
    away, never multiplied by 0. (The stack keeps padding out of x itself; only the input rows
    of d_w read x, so they are left out here.)"""
    p = recurrence_problem(OPTIONS["all"], "float64")
    held = ~p["keep"][..., 0].T  # (batch, seq)
    zeros, poisoned = dict(p), dict(p)
    zeros["x"] = np.where(held[..., None], 0.0, p["x"])
    poisoned["x"] = np.where(held[..., None], np.nan, p["x"])
    poisoned["x"][0, 0, 0] = np.inf  # row 0 is held at step 0
    expected = run_recurrence(*numpy_loop_path(loop), zeros)
    with np.errstate(invalid="ignore"):  # NaN and inf meet in x's own products
        found = run_recurrence(*numpy_loop_path(loop), poisoned)
    inputs = p["x"].shape[-1]
    expected["d_w"], found["d_w"] = expected["d_w"][inputs:], found["d_w"][inputs:]
    for name, value in expected.items():
        assert_close(found[name], value, like=value, level="exact", name=name)


# -- Memory: what a forward+backward holds at its peak ----------------------------------------
#: (loop, layers, bound): NumPy's compiled loops keep no gradient of the gates beside the gates
#: (each step's is written over its own), so a forward+backward peaks under ``bound`` times
#: 5·B·T·H values per recurrence, the four gates and the cell of every step that a backward
#: must keep (the parameters and their gradients add 0.04x of it at this size). Measured when
#: this was written: 1.37, 1.51 (the compiled loop copies dy into time-major order) and 1.72;
#: with a separate gradient of the gates, 2.35, 2.35 and 2.80.
MEMORY_BOUNDS = [("blas", 1, 1.6), ("panels", 1, 1.6), ("compiled", 1, 1.6), ("blas", 2, 1.9)]


@pytest.mark.skipif(not numba_installed(), reason="the compiled loops need numba")
@pytest.mark.parametrize(("loop", "layers", "bound"), MEMORY_BOUNDS)
def test_numpy_fast_path_peak_memory(loop, layers, bound, monkeypatch):
    """A fresh layer's forward+backward, twice (the second forward drops the first's arrays
    before it makes its own), peaks under ``bound`` x 5BTH per recurrence (tracemalloc sees
    every NumPy allocation); two layers are bidirectional."""
    monkeypatch.setenv(LOOP_ENV, loop)
    batch, seq, inputs, hidden = 32, 100, 16, 64
    directions = 2 if layers > 1 else 1
    layer = xplstm.LSTM(
        inputs, hidden, num_layers=layers, bidirectional=directions > 1, backend="numpy", seed=0
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq, inputs)).astype("float32")
    dy = rng.standard_normal((batch, seq, directions * hidden)).astype("float32")
    layer.forward(x[:, :3])  # compiles the loop, and makes workspaces of another length
    layer.backward(dy[:, :3])
    tracemalloc.start()
    try:
        for _ in range(2):
            layer.forward(x)
            layer.backward(dy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loop_that_ran(layer) == loop
    floor = 5 * batch * seq * hidden * x.itemsize * layers * directions
    assert peak <= bound * floor, f"peak {peak / floor:.2f}x 5BTH per recurrence, > {bound}x"


# -- NumPy's whole-stack path: rows of their own lengths, packed ------------------------------
#: Layer options the packed stack covers, alone and together.
STACKS = {
    "one-layer": {},
    "2-layers-bidirectional": {"num_layers": 2, "bidirectional": True},
    "bidirectional-proj": {"bidirectional": True, "proj_size": 2},
    "3-layers-bi-proj-dropouts": {
        "num_layers": 3, "bidirectional": True, "proj_size": 3, "dropout": 0.4,
        "recurrent_dropout": 0.3,
    },
    "2-layers-dropout-no-bias": {"num_layers": 2, "dropout": 0.5, "use_bias": False},
}  # fmt: skip


def _numpy_stack_or_skip() -> None:
    if stack_path_of(backends.get("numpy")) is None:
        pytest.skip("NumPy's whole-stack path needs numba: pip install 'xplstm[fast]'")


def run_stack(layer: xplstm.LSTM, x: np.ndarray, dy: np.ndarray | None, **steps) -> list:
    """Forward and backward of ``layer`` from set states, the dropout masks drawn anew from one
    seed: every output, state and gradient, copied."""
    rng = np.random.default_rng(5)
    count, out = len(layer.recurrences), layer.output_size
    h0, c0 = (rng.standard_normal((count, len(x), size)) for size in (out, layer.hidden_size))
    dh_n, dc_n = (rng.standard_normal(a.shape) for a in (h0, c0))
    cast = [a.astype(layer.dtype) for a in (h0, c0, dh_n, dc_n)]
    layer.dropout_seed(1)
    found = [*layer(x, *cast[:2], **steps), *layer.backward(dy, *cast[2:])]
    return [np.array(a) for a in [*found, *(p.deltas for p in layer.parameters())]]


@pytest.mark.parametrize("dy", [True, False], ids=["dy", "no-dy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("options", STACKS.values(), ids=STACKS.keys())
def test_numpy_stack_path_equals_the_written_once_stack(options, dtype, dy):
    """NumPy's packed stack gives the written-once stack's outputs, states and gradients, with
    unsorted lengths (a full row, a row of one step), projection and both dropouts."""
    _numpy_stack_or_skip()
    from xplstm.backends._numpy_stack import NumPyStackPath

    rng = np.random.default_rng(0)
    layer = on_path(xplstm.LSTM(3, 4, backend="numpy", dtype=dtype, seed=0, **options), "stack")
    x = rng.standard_normal((5, 6, 3)).astype(dtype)
    width = layer.directions * layer.output_size
    grad = rng.standard_normal((5, 6, width)).astype(dtype) if dy else None
    lengths = [4, 6, 1, 3, 6]
    packed = run_stack(layer, x, grad, lengths=lengths)
    assert isinstance(layer._cache.route, NumPyStackPath), "the packed stack did not run"
    layer.fast_path = False
    expected = run_stack(layer, x, grad, lengths=lengths)
    assert ran_written_once(layer)
    assert len(packed) == len(expected)
    for k, (a, b) in enumerate(zip(packed, expected, strict=True)):
        assert_close(a, b, like=b, level="ulps", name=f"output {k}")


def test_numpy_stack_path_runs_where_it_covers_the_call(monkeypatch):
    """The packed stack runs for calls with lengths, with steps of at least PACKED_MIN_CELLS
    rows times hidden units; never without lengths (no padding to skip), with a mask (nothing
    to pack), on smaller steps, with ``whole_stack = False`` or with a forced NumPy loop."""
    _numpy_stack_or_skip()
    from xplstm.backends._numpy_stack import PACKED_MIN_CELLS, NumPyStackPath

    batch, hidden = 4, PACKED_MIN_CELLS // 4
    lengths = [4, 1, 2, 3]
    x = np.ones((batch, 4, 2), np.float32)
    layer = xplstm.LSTM(2, hidden, num_layers=2, bidirectional=True, backend="numpy", seed=0)

    def packed(x: np.ndarray = x, **steps) -> bool:
        layer.forward(x, **steps)
        return isinstance(layer._cache.route, NumPyStackPath)

    assert packed(lengths=lengths)
    assert not packed(), "without lengths"
    assert not packed(lengths=[4] * batch), "every row full: no padding"
    assert not packed(mask=np.ones((batch, 4), bool))
    assert not packed(x[:-1], lengths=lengths[:-1]), "steps too small"
    layer.whole_stack = False
    assert not packed(lengths=lengths) and ran_fast(layer), "per recurrence, each fast"
    monkeypatch.setenv(LOOP_ENV, "ufuncs")
    assert stack_path_of(backends.get("numpy")) is None
