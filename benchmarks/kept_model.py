"""What a Dask worker saves by keeping its model between tasks (``xplstm.replica.kept``).

    MALLOC_TRIM_THRESHOLD_=65536 .venv/bin/python benchmarks/kept_model.py

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (freed memory goes back
to the system at once); give it here too, as above, to see what a worker sees. Rows: a
predict of ``--rows`` sequences, and a forward and backward over them, on a model built afresh
from its replica for each call (as each task did before) and on one kept model, alternating,
CPU time of this thread (one BLAS thread), medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import xplstm
from xplstm import batched, losses
from xplstm.replica import Replica


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((args.rows, args.seq, args.features))
    x = x.astype("float32")
    y = np.zeros((args.rows, 1), "float32")
    kept = xplstm.Sequential(
        xplstm.LSTM(args.features, args.hidden, backend="numpy", seed=0),
        xplstm.LastStep(),
        xplstm.Linear(args.hidden, 1, backend="numpy", seed=1),
    )
    replica = Replica.of(kept)
    rows = {
        "predict": lambda model: batched.predict(model, x, args.rows),
        "forward+backward": lambda model: model.backward(losses.mse(model(x), y)[1]),
    }
    times: dict[tuple[str, str], list[float]] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for run in rows.values():  # warm-up: compiled loops, the kept model's workspaces
            run(kept)
        for _ in range(args.rounds):
            for row, run in rows.items():
                for name in ("fresh", "kept"):
                    model = replica.build() if name == "fresh" else kept
                    started = time.thread_time()
                    run(model)
                    times.setdefault((row, name), []).append(time.thread_time() - started)
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")
    print(f"MALLOC_TRIM_THRESHOLD_={trim}; load average {os.getloadavg()}")
    print("| row | fresh model, ms CPU | kept model, ms CPU |\n| --- | --- | --- |")
    for row in rows:
        fresh, same = (statistics.median(times[row, n]) * 1e3 for n in ("fresh", "kept"))
        print(f"| {row} | {fresh:.1f} | {same:.1f} |")


if __name__ == "__main__":
    main()
