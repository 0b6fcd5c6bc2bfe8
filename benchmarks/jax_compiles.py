"""How many programs JAX compiles for the first forward+backward of a 2-layer bidirectional
LSTM called with lengths, and the steady time of a call, with and without the whole-stack path.

    .venv/bin/python benchmarks/jax_compiles.py            # the whole stack in one program
    .venv/bin/python benchmarks/jax_compiles.py --per-recurrence

Every eager JAX operation outside a compiled program is compiled too (once per shape), so the
count covers the steps between the recurrences as well as the recurrences themselves.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ.setdefault("XLA_FLAGS", ONE_THREAD)

import jax  # noqa: E402  (XLA reads its flags at import)
import numpy as np  # noqa: E402

import xplstm  # noqa: E402


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.compiles = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.compiles += record.getMessage().startswith("Compiling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-recurrence", action="store_true", help="whole_stack = False")
    parser.add_argument("--shape", default="32,100,32,64", help="B,T,I,H")
    args = parser.parse_args()
    batch, seq, inputs, hidden = (int(n) for n in args.shape.split(","))
    jax.config.update("jax_log_compiles", True)
    count = _Count()
    logging.getLogger("jax").addHandler(count)
    layer = xplstm.LSTM(inputs, hidden, num_layers=2, bidirectional=True, backend="jax", seed=0)
    layer.whole_stack = not args.per_recurrence
    rng = np.random.default_rng(0)
    x = layer.xp.asarray(rng.standard_normal((batch, seq, inputs)).astype("float32"))
    dy = layer.xp.asarray(rng.standard_normal((batch, seq, 2 * hidden)).astype("float32"))
    lengths = rng.integers(seq // 2, seq + 1, size=batch).tolist()

    def call() -> float:
        started = time.process_time()
        y, _, _ = layer(x, lengths=lengths)
        dx, _, _ = layer.backward(dy)
        jax.block_until_ready((y, dx, [p.deltas for p in layer.parameters()]))
        return time.process_time() - started

    first = call()
    compiles = count.compiles
    steady = sorted(call() for _ in range(10))[5]
    route = "per recurrence" if args.per_recurrence else "whole stack"
    print(
        f"{route}: {compiles} compiles in the first forward+backward ({first:.2f} s CPU); "
        f"then {steady * 1e3:.1f} ms CPU per forward+backward (median of 10), (B,T,I,H) = "
        f"{(batch, seq, inputs, hidden)}"
    )


if __name__ == "__main__":
    main()
