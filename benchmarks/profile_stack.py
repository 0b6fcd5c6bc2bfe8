"""Where the time of a NumPy forward+backward through a stack with lengths goes, per route.

For each route (NumPy's packed whole-stack path, and the stack recurrence by recurrence,
``layer.whole_stack = False``): the whole forward+backward, and the time inside the
recurrences (the per-recurrence fast path's calls, or the packed path's own); the rest is the
stack's glue (reversals, selects, concatenation, dropout, packing and unpacking). One BLAS
thread, the process's CPU time, medians of alternating repeats, float32, row lengths seq/2..seq
as ``xplstm bench --lengths`` draws them.

    python benchmarks/profile_stack.py [--config 32,100,64,128] [--layers 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

import xplstm
from xplstm.backends._numpy_fast import NumPyFastPath
from xplstm.backends._numpy_stack import NumPyStackPath

#: The methods that run one recurrence, per route.
RECURRENCES = {
    NumPyFastPath: ("forward", "backward"),
    NumPyStackPath: ("_recurrence", "_recurrence_backward"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="32,100,64,128", help="B,T,I,H")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    batch, seq, inputs, hidden = (int(v) for v in args.config.split(","))
    rng = np.random.default_rng(0)
    lengths = np.random.default_rng(1).integers(max(seq // 2, 1), seq + 1, size=batch)
    x = rng.standard_normal((batch, seq, inputs)).astype(np.float32)
    dy = rng.standard_normal((batch, seq, 2 * hidden)).astype(np.float32)
    inside = [0.0]

    def timed(method: Callable) -> Callable:
        def run(*args: object, **kwargs: object) -> object:
            start = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                inside[0] += time.process_time() - start

        return run

    for cls, names in RECURRENCES.items():
        for name in names:
            setattr(cls, name, timed(getattr(cls, name)))
    routes = {}
    for whole in (True, False):
        layer = xplstm.LSTM(inputs, hidden, num_layers=args.layers, bidirectional=True, seed=0)
        layer.whole_stack = whole
        routes["packed stack" if whole else "per recurrence"] = layer
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in routes}
    with threadpool_limits(1):
        for repeat in range(args.repeats + 1):  # the first is a warm-up
            for name, layer in routes.items():
                inside[0] = 0.0
                start = time.process_time()
                layer.forward(x, lengths=lengths)
                layer.backward(dy)
                total = time.process_time() - start
                if repeat:
                    found[name].append((total * 1e3, inside[0] * 1e3))
    print(f"(B,T,I,H) = {(batch, seq, inputs, hidden)}, {args.layers} layers, bidirectional, "
          f"lengths {min(lengths)}..{max(lengths)}, CPU ms, medians of {args.repeats}")  # fmt: skip
    print(f"{'route':<16} {'total':>8} {'recurrences':>12} {'glue':>8}")
    for name, runs in found.items():
        total = statistics.median(t for t, _ in runs)
        within = statistics.median(r for _, r in runs)
        glue = statistics.median(t - r for t, r in runs)
        print(f"{name:<16} {total:8.1f} {within:12.1f} {glue:8.1f}")
    with open("/proc/loadavg") as load:
        print("load average:", " ".join(load.read().split()[:3]))


if __name__ == "__main__":
    main()
