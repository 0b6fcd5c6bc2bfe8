"""Where one time step of NumPy's compiled and BLAS loops goes, at a small configuration.

    python benchmarks/profile_steps.py --config 64,100,32,32 [--repeats 7]

Microseconds a time step, one BLAS thread, the process's CPU time, medians of alternating
repeats, float32: each piece of a step alone (the product h @ W_h forward and dz @ W_h.T back, by
BLAS from Python and by the compiled loop's blocked kernels; the step's element-wise work as the
BLAS loop calls it; what calling a compiled step function costs by itself), then each loop
whole, forward+backward, divided by the steps, with the products over all steps (the input
projection, the weight gradients, dx) timed alone in the same layout. The pieces show what the
loops cannot lose without a faster product or a cheaper cell.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit
from profile_large import layer_run, products
from threadpoolctl import threadpool_limits

from xplstm import cell
from xplstm.backends import _numpy_jit


@njit
def _repeat(kernel, count, out, a, w):
    """``kernel(out, a, w)`` ``count`` times in one compiled call (no call overhead a step)."""
    for _ in range(count):
        kernel(out, a, w)


def pieces(batch: int, seq: int, hidden: int) -> dict:
    """One step's pieces, each a closure that runs ``seq`` of them."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    w_h = (rng.standard_normal((hidden, 4 * hidden)) / np.sqrt(hidden)).astype(f32)
    w_h_t = np.ascontiguousarray(w_h.T)
    h, c = rng.standard_normal((2, batch, hidden)).astype(f32)
    z = rng.uniform(-3, 3, (batch, 4 * hidden)).astype(f32)
    a = rng.uniform(0, 1, (batch, 4 * hidden)).astype(f32)
    z_h, z_sum, d, gates = np.zeros_like(z), np.zeros_like(z), np.empty_like(z), z.copy()
    c_t, cells, h_out, dh, dc = (np.empty_like(c) for _ in range(5))
    no_rows = np.zeros(1, bool)
    _, _, forward_step, backward_step = _numpy_jit.loops(cell.KERNELS)
    bias = np.zeros(4 * hidden, f32)
    one = [*np.zeros((2, 1, 4), f32), np.zeros(4, f32), *np.zeros((3, 1, 1), f32)]

    def blas_forward() -> None:
        for _ in range(seq):
            np.dot(h, w_h, out=z_h)

    def blas_backward() -> None:
        for _ in range(seq):
            np.dot(a, w_h_t, out=dh)

    def cell_forward() -> None:
        for _ in range(seq):
            gates[...], c_t[...] = z, c
            forward_step(gates, z_h, bias, c_t, cells, h_out, no_rows, False)

    def cell_backward() -> None:
        for _ in range(seq):
            dh[...], dc[...] = h, c
            backward_step(d, a, c, h, dh, dc, no_rows, False)

    def call_only() -> None:
        for _ in range(seq):
            forward_step(*one, no_rows, False)

    return {
        "product forward, BLAS from Python": blas_forward,
        "product forward, compiled (blocked)": lambda: _repeat(
            _numpy_jit._add_product, seq, z_sum, h, w_h
        ),
        "product back, BLAS from Python": blas_backward,
        "product back, compiled (blocked)": lambda: _repeat(
            _numpy_jit._product_transposed, seq, dh, a, w_h
        ),
        "cell forward (one compiled call, two copies)": cell_forward,
        "cell back (one compiled call, two copies)": cell_backward,
        "a compiled step's call alone (1 unit)": call_only,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="64,100,32,32", help="B,T,I,H")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    config = tuple(int(n) for n in args.config.split(","))
    batch, seq, _, hidden = config
    runs = pieces(batch, seq, hidden)
    for loop in ("blas", "compiled"):
        runs[f"fwd+bwd, {loop} loop, whole"] = layer_run(config, loop)
    for name, run in products(*config, time_major=True).items():
        runs[f"{name} (all steps)"] = run
    times: dict[str, list[float]] = {name: [] for name in runs}
    with threadpool_limits(1):
        for run in runs.values():
            run()  # compiles, warms up
        for repeat in range(args.repeats):
            names = list(runs)
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                start = time.process_time()
                runs[name]()
                times[name].append((time.process_time() - start) / seq * 1e6)
    print(f"(B,T,I,H) = {config}: µs a time step (CPU time, medians of {args.repeats})")
    for name, found in times.items():
        print(f"{name:48s} {statistics.median(found):9.2f}")


if __name__ == "__main__":
    main()
