"""What one NumPy call costs at batch 1, where the fast path's time goes at (1, T, 64, 64).

    python benchmarks/overhead.py

Prints the median cost per call of the operations in one step of ``backends/_numpy_fast.py``
(hidden size 64, batch 1), and how many of each a forward and a backward step make.
"""

from __future__ import annotations

import statistics
import timeit

import numpy as np

HIDDEN = 64
#: Calls per time step in backends/_numpy_fast.py (forward, backward).
CALLS = {"product (1,64)@(64,256)": (1, 1), "element-wise ufunc": (10, 7), "view": (1, 1)}


def per_call_us(statement: str, names: dict, number: int = 20000) -> float:
    runs = timeit.repeat(statement, globals=names, number=number, repeat=5)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    names = {
        "np": np,
        "h": rng.standard_normal((1, HIDDEN)).astype("float32"),
        "w": rng.standard_normal((HIDDEN, 4 * HIDDEN)).astype("float32"),
        "z": np.empty((1, 4 * HIDDEN), "float32"),
        "a": rng.standard_normal((1, HIDDEN)).astype("float32"),
        "b": np.empty((1, HIDDEN), "float32"),
        "y": np.empty((1, 1000, HIDDEN), "float32"),
    }
    costs = {
        "product (1,64)@(64,256)": per_call_us("np.dot(h, w, out=z)", names),
        "element-wise ufunc": per_call_us("np.multiply(a, a, out=b)", names),
        "view": per_call_us("y[:, 5]", names),
    }
    forward = backward = 0.0
    for name, cost in costs.items():
        f, b = CALLS[name]
        forward, backward = forward + f * cost, backward + b * cost
        print(f"{name:26s} {cost:6.2f} us per call; {f} per forward step, {b} per backward step")
    print(f"sum per step: forward {forward:.1f} us, backward {backward:.1f} us")


if __name__ == "__main__":
    main()
