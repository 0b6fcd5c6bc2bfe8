"""Subnormal floats in the train step's backward, unflushed and flushed, and each step's time.

Why: a train step's gradient comes from the last step only and decays through a long sequence
into float32's subnormal range (below 1.2e-38), 10-100x slower on x86; NumPy's backward
therefore flushes them (``_numpy_jit.subnormals_flushed``, docs/benchmarks.md). This trains
the bench's train-step model (``xplstm bench --modes train-step``: the LSTM, its last step,
Linear, MSE, clipping, Adam; the same data and seeds) for ``--steps`` steps from its seed, once
for each way of flushing ``--flushes`` names (:data:`FLUSHES`; the first three unless told):
``none`` (``subnormals_flushed`` replaced by a null context here), ``compiled`` (only the
compiled backward calls flush, each inside itself: NumPy before e805200), ``backward`` (the whole
backward, as NumPy's fast path does), ``step`` (the whole train step: the forward, the head,
the loss and Adam too) and ``libc`` (the whole backward, through the C library's
``fesetenv`` as an install without numba does: ``numba_installed`` made to say no, so
``--loop ufuncs`` goes with it).

What is counted, in every backward of the LSTM: the subnormal values of each per-step product
``dh_{t-1} = dz_t @ W_h^T`` (BLAS and panel loops; the compiled loop makes it inside numba,
where nothing is counted) and of the gate gradients dz of every step as the backward leaves
them (all loops but the ufunc loop). Each step's time is the process's CPU time, one BLAS
thread, less the counting's own CPU time. A step that warms up (compiles) comes first, on a
model of its own.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/subnormals.py \\
        --config 32,200,512,512 --steps 8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
from threadpoolctl import threadpool_limits

from xplstm.backends import _numpy_fast, _numpy_jit
from xplstm.backends._numpy_fast import LOOP_ENV
from xplstm.bench.contenders import numpy_train_step

#: The ways of flushing compared: see the module's docstring.
FLUSHES = ("none", "compiled", "backward", "step", "libc")


class Counter:
    """Subnormal values seen in the backward's per-step products and gate gradients, and the
    CPU time spent counting them."""

    def __init__(self) -> None:
        self.products = self.gates = 0
        self.seconds = 0.0

    def count(self, a: np.ndarray) -> int:
        """Subnormal values of the float32 array ``a``, read from their bits."""
        start = time.process_time()
        bits = np.abs(a).view(np.int32)
        found = np.count_nonzero((bits > 0) & (bits < np.finfo(np.float32).tiny.view(np.int32)))
        self.seconds += time.process_time() - start
        return int(found)

    def product(self, product: Callable) -> Callable:
        """A per-step ``product(a, out)`` of the BLAS or panel loop, counting ``out``."""

        def counted(a: np.ndarray, out: np.ndarray) -> None:
            product(a, out)
            self.products += self.count(out)

        return counted

    def backward(self, loop: Callable, per_step: bool) -> Callable:
        """``loop`` (``_numpy_fast._blas_backward`` or ``_compiled_backward``) counting the gate
        gradients it leaves, and with ``per_step`` its per-step products (its third argument)."""

        def counted(kernels: Any, ws: Any, w_h: Any, *rest: Any) -> Any:
            found = loop(kernels, ws, self.product(w_h) if per_step else w_h, *rest)
            self.gates += self.count(ws.dz)
            return found

        return counted


def compiled_calls_flushing(loops: Callable) -> Callable:
    """``_numpy_jit.loops`` with its two backward functions (the compiled loop, the BLAS and
    panel loops' step) each flushing inside its own call only: NumPy's flush before e805200."""
    flushed = _numpy_jit.subnormals_flushed

    def flushing(function: Callable) -> Callable:
        def call(*args: Any) -> Any:
            with flushed():
                return function(*args)

        return call

    def patched(kernels: Any) -> tuple:
        forward_loop, backward_loop, forward_step, backward_step = loops(kernels)
        return forward_loop, flushing(backward_loop), forward_step, flushing(backward_step)

    return patched


def train(config: tuple[int, ...], steps: int, flush: str) -> list[tuple[float, Counter]]:
    """``steps`` train steps from the bench's seeds, flushing as ``flush`` (one of
    :data:`FLUSHES`) says: each step's CPU seconds and counts."""
    step = numpy_train_step(config)
    blas, compiled = _numpy_fast._blas_backward, _numpy_fast._compiled_backward
    whole_step = _numpy_jit.subnormals_flushed if flush == "step" else contextlib.nullcontext
    found = []
    with contextlib.ExitStack() as patches:
        if flush == "compiled":
            loops = compiled_calls_flushing(_numpy_jit.loops)
            patches.enter_context(mock.patch.object(_numpy_jit, "loops", loops))
        if flush == "libc":
            patches.enter_context(mock.patch.object(_numpy_fast, "numba_installed", lambda: False))
        if flush in ("none", "compiled"):
            patches.enter_context(
                mock.patch.object(_numpy_jit, "subnormals_flushed", contextlib.nullcontext)
            )
        for _ in range(steps):
            counter = Counter()
            with (
                mock.patch.object(_numpy_fast, "_blas_backward", counter.backward(blas, True)),
                mock.patch.object(
                    _numpy_fast, "_compiled_backward", counter.backward(compiled, False)
                ),
            ):
                start = time.process_time()
                with whole_step():
                    step()
                found.append((time.process_time() - start - counter.seconds, counter))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="32,200,512,512", help="B,T,I,H")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--flushes", default=",".join(FLUSHES[:3]), help="of " + ",".join(FLUSHES))
    parser.add_argument("--loop", help=f"the NumPy loop (${LOOP_ENV}); default: the layer's pick")
    args = parser.parse_args()
    if args.loop:
        os.environ[LOOP_ENV] = args.loop
    config = tuple(int(n) for n in args.config.split(","))
    flushes = args.flushes.split(",")
    if not set(flushes) <= set(FLUSHES):
        parser.error(f"--flushes: each of {','.join(FLUSHES)}")
    if "libc" in flushes and args.loop != "ufuncs":
        parser.error("--flushes libc measures an install without numba: add --loop ufuncs")
    with threadpool_limits(1):
        train(config, 1, "backward")  # compiles, or loads numba's cache
        runs = [train(config, args.steps, flush) for flush in flushes]
    print(
        f"train steps at {args.config}, loop {args.loop or 'auto'}, flushing {args.flushes}: "
        "CPU ms, subnormal values of the per-step products dz_t @ W_h^T, of the gate gradients dz"
    )
    print("step | " + " | ".join(f"{flush} ms | products | dz" for flush in flushes))
    for n, steps in enumerate(zip(*runs, strict=True), 1):
        cells = (
            f"{t * 1e3:.1f} | {c.products:,} | {c.gates:,}"
            if args.loop != "ufuncs"
            else f"{t * 1e3:.1f} | n/a | n/a"  # the ufunc loop's steps are not counted
            for t, c in steps
        )
        print(f"{n} | " + " | ".join(cells))
    medians = (
        f"{flush} {statistics.median(t for t, _ in run) * 1e3:.1f}"
        for flush, run in zip(flushes, runs, strict=True)
    )
    print("median ms: " + ", ".join(medians))


if __name__ == "__main__":
    main()
