"""Would ``torch.compile`` of the core's step functions make a torch fast path?

Measures, on one shape, the first call (compile) and the median per-call time of
``xplstm.sequence``'s forward and backward with eager steps and with compiled steps, then a
second shape (a recompile unless ``--dynamic`` covers it). ``docs/benchmarks.md`` quotes it:

    python benchmarks/torch_compile.py --config 64,100,32,32 [--dynamic]
"""

from __future__ import annotations

import argparse
import statistics
import time

import array_api_compat.torch as xp
import torch

from xplstm import sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="64,100,32,32", help="B,T,I,H")
    parser.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch, seq, inputs, hidden = (int(v) for v in args.config.split(","))
    compiled = {
        step: torch.compile(step, dynamic=args.dynamic)
        for step in (sequence.forward_step, sequence.backward_step)
    }

    def compiled_scan(step, xp_, consts, carry, xs, reverse=False):
        return sequence.python_scan(compiled[step], xp_, consts, carry, xs, reverse)

    def problem(batch: int) -> tuple:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(inputs + hidden, 4 * hidden, generator=g) / hidden**0.5
        return w, torch.zeros(4 * hidden), torch.randn(batch, seq, inputs, generator=g)

    def one_call(scan, w, b, x) -> None:
        state = torch.zeros(x.shape[0], hidden)
        y, _, _, cache = sequence.forward(xp, w, b, x, state, state, scan=scan)
        sequence.backward(xp, w, cache, torch.ones_like(y), state, state, scan=scan)

    def median_ms(scan, w, b, x) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            one_call(scan, w, b, x)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    w, b, x = problem(batch)
    for label, scan in (("eager steps", sequence.python_scan), ("compiled steps", compiled_scan)):
        start = time.perf_counter()
        one_call(scan, w, b, x)
        first = time.perf_counter() - start
        print(f"{label:15s} first call {first:7.2f} s   then {median_ms(scan, w, b, x):8.2f} ms")
    w2, b2, x2 = problem(batch + 1)
    start = time.perf_counter()
    one_call(compiled_scan, w2, b2, x2)
    print(f"compiled, batch {batch + 1}: first call {time.perf_counter() - start:7.2f} s")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dynamic={args.dynamic}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
