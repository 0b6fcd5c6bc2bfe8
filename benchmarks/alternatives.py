"""One forward time step three ways: NumPy ufuncs, numexpr, and the compiled loop (numba).

    python benchmarks/alternatives.py     # needs numba; numexpr optional: pip install numexpr

The question behind ``backends/_numpy_jit.py``: at small sizes a step's arithmetic takes a
microsecond or two and the time goes to per-call overhead, so what cuts the calls? Prints the
median time of one forward step (the product h @ W_h and the cell's element-wise update) at the
demo's batch and hidden size and at batch 1, float32, one thread:

- ufuncs: the step of ``_numpy_fast``'s ufunc loop (one BLAS call, 10 in-place ufunc calls);
- numexpr: the same step as one BLAS call and three ``numexpr.evaluate`` calls (all gates,
  the cell, the output), numexpr's fewest;
- compiled: ``_numpy_jit``'s forward loop over 100 steps, divided by 100.

First it prints what one exp and one tanh cost per float32 element in a compiled loop over 4096
elements: numba's ``math.exp``/``math.tanh`` (libm, one call an element), ``_numpy_jit``'s
restated ``_exp``/``_tanh`` (vectorised), and NumPy's SIMD ufuncs, for comparison.
"""

from __future__ import annotations

import statistics
import timeit
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from xplstm import cell
from xplstm.backends import _numpy_jit

STEPS = 100


def per_call_us(run, number: int = 2000) -> float:
    return statistics.median(timeit.repeat(run, number=number, repeat=7)) / number * 1e6


def step_times(batch: int, hidden: int, numexpr: Any) -> dict[str, float]:
    """Microseconds per forward step of each contender at this batch and hidden size."""
    rng = np.random.default_rng(0)
    four_h = 4 * hidden
    w_h = (rng.standard_normal((hidden, four_h)) / np.sqrt(hidden)).astype("float32")
    h = rng.standard_normal((batch, hidden)).astype("float32")
    c = rng.standard_normal((batch, hidden)).astype("float32")
    z = rng.standard_normal((batch, four_h)).astype("float32")
    z_h, tmp, h_out, c_out = (np.empty_like(a) for a in (z, c, h, c))
    ifo, g = z[:, : 3 * hidden], z[:, 3 * hidden :]
    i, f, o = (z[:, k * hidden : (k + 1) * hidden] for k in range(3))
    is_gate = np.arange(four_h) < 3 * hidden

    def ufuncs() -> None:
        np.dot(h, w_h, out=z_h)
        z_h.__iadd__(z)
        np.exp(ifo, out=ifo)
        ifo.__iadd__(1.0)
        np.reciprocal(ifo, out=ifo)
        np.tanh(g, out=g)
        np.multiply(f, c, out=c_out)
        np.multiply(i, g, out=tmp)
        c_out.__iadd__(tmp)
        np.tanh(c_out, out=tmp)
        np.multiply(o, tmp, out=h_out)

    def with_numexpr() -> None:
        np.dot(h, w_h, out=z_h)
        numexpr.evaluate(
            "where(is_gate, 1 / (1 + exp(-(z + z_h))), tanh(z + z_h))",
            local_dict={"is_gate": is_gate, "z": z, "z_h": z_h},
            out=z_h,
        )
        numexpr.evaluate("f * c + i * g", local_dict={"f": f, "c": c, "i": i, "g": g}, out=c_out)
        numexpr.evaluate("o * tanh(c)", local_dict={"o": o, "c": c_out}, out=h_out)

    forward_loop = _numpy_jit.loops(cell.KERNELS)[0]
    gates = rng.standard_normal((STEPS, batch, four_h)).astype("float32")  # time-major
    cells = np.empty((STEPS, batch, hidden), "float32")
    y = np.empty_like(cells)

    def compiled() -> None:
        absent = np.zeros((1, 1), "float32")  # no mask, projection or dropout: stand-ins
        forward_loop(gates, cells, y, h.copy(), c.copy(), w_h, np.zeros(four_h, "float32"),
                     absent.astype(bool), False, absent, False, absent, False)  # fmt: skip

    results = {"ufuncs": per_call_us(ufuncs)}
    if numexpr is not None:
        results["numexpr"] = per_call_us(with_numexpr)
    results["compiled"] = per_call_us(compiled, number=50) / STEPS
    return results


def element_costs() -> dict[str, float]:
    """Nanoseconds per float32 element of exp and tanh: libm via numba, restated, NumPy."""
    import math

    from numba import njit

    @njit(error_model="numpy")
    def libm(x, out_exp, out_tanh):
        for k in range(x.size):
            out_exp[k], out_tanh[k] = math.exp(x[k]), math.tanh(x[k])

    @njit(error_model="numpy")
    def restated(x, out_exp, out_tanh):
        for k in range(x.size):
            out_exp[k], out_tanh[k] = _numpy_jit._exp(x[k]), _numpy_jit._tanh(x[k])

    x = np.random.default_rng(0).standard_normal(4096).astype("float32")
    e, t = np.empty_like(x), np.empty_like(x)
    costs = {}
    for name, run in (("numba math.exp + math.tanh", libm), ("restated _exp + _tanh", restated)):
        run(x, e, t)
        costs[name] = per_call_us(lambda run=run: run(x, e, t), number=500) * 1e3 / x.size
    costs["NumPy exp + tanh"] = (
        per_call_us(lambda: (np.exp(x, out=e), np.tanh(x, out=t)), number=500) * 1e3 / x.size
    )
    return costs


def main() -> None:
    try:
        import numexpr
    except ImportError:
        numexpr = None
    costs = element_costs()
    print("per float32 element: " + ", ".join(f"{k} {v:.2f} ns" for k, v in costs.items()))
    with threadpool_limits(1):
        if numexpr is not None:
            numexpr.set_num_threads(1)
        for batch, hidden in ((32, 32), (1, 64), (64, 128)):
            results = step_times(batch, hidden, numexpr)
            print(
                f"batch {batch:3d}, hidden {hidden:4d}: "
                + ", ".join(f"{k} {v:6.2f} us" for k, v in results.items())
                + " per forward step"
            )


if __name__ == "__main__":
    main()
