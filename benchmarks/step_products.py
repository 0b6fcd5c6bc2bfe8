"""The per-step products of the BLAS loop against the panel loop's, alone, one thread.

For each shape (M, K, N) the product a (M, K) @ b (K, N) into a preallocated result, as a loop
step makes it: OpenBLAS (``np.dot(a, b, out=)``) against ``_numpy_gemm.product`` on ``b``
packed once (the packing, once a call in the loop, is timed apart). Medians of alternating
repeats of ``--calls`` products each, the process's CPU time.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/step_products.py \\
        --shapes 32,512,2048 32,2048,512 64,256,1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xplstm.backends import _numpy_gemm


def cpu_time(function, calls: int) -> float:
    """Seconds of CPU time a call, over ``calls`` calls."""
    start = time.process_time()
    for _ in range(calls):
        function()
    return (time.process_time() - start) / calls


def time_shape(m: int, k: int, n: int, dtype: str, calls: int, repeats: int) -> str:
    """One line of results for a (m, k) @ (k, n) product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    blas_out, packed_out = np.empty((m, n), a.dtype), np.empty((m, n), a.dtype)
    packed = _numpy_gemm.pack(b)
    _numpy_gemm.product(packed_out, a, packed)  # compiles (or loads) it
    exact = a.astype(np.float64) @ b.astype(np.float64)
    error = np.abs(packed_out - exact).max(), np.abs(a @ b - exact).max()
    contenders = {
        "blas": (lambda: np.dot(a, b, out=blas_out), calls),
        "packed": (lambda: _numpy_gemm.product(packed_out, a, packed), calls),
        "pack": (lambda: _numpy_gemm.pack(b), 3),
    }
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (function, count) in contenders.items():
            times[name].append(cpu_time(function, count))
    blas, packed_time, pack = (statistics.median(times[name]) for name in contenders)
    gflops = 2 * m * k * n / 1e9
    return (
        f"({m},{k})@({k},{n}) {dtype}: OpenBLAS {blas * 1e6:.0f} µs ({gflops / blas:.0f} GF/s), "
        f"packed {packed_time * 1e6:.0f} µs ({gflops / packed_time:.0f} GF/s, "
        f"{packed_time / blas:.2f}x), packing b once {pack * 1e6:.0f} µs; max error packed "
        f"{error[0]:.1e}, OpenBLAS {error[1]:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["32,512,2048", "32,2048,512"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with threadpool_limits(1):
        for shape in args.shapes:
            m, k, n = (int(s) for s in shape.split(","))
            print(time_shape(m, k, n, args.dtype, args.calls, args.repeats), flush=True)


if __name__ == "__main__":
    main()
