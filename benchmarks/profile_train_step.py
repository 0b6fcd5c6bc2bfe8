"""Where one training step of the demo's model goes: cProfile of xplstm's train step (the LSTM,
its last step, Linear, MSE, clipping, Adam), NumPy backend, one BLAS thread, CPU time.

    python benchmarks/profile_train_step.py [--config 32,100,2,32] [--steps 300] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
from threadpoolctl import threadpool_limits

import xplstm
from xplstm.bench.contenders import xplstm_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="32,100,2,32", help="B,T,I,H")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    batch, seq, inputs, hidden = (int(n) for n in args.config.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq, inputs)).astype("float32")
    dy = rng.standard_normal((batch, seq, hidden)).astype("float32")
    target = rng.uniform(0.0, 2.0, (batch, 1)).astype("float32")
    layer = xplstm.LSTM(inputs, hidden, backend="numpy", dtype="float32", seed=0)
    step = xplstm_runs(layer, x, dy, target)["train-step"]
    with threadpool_limits(1):
        step()  # compiles, allocates the workspaces
        profile = cProfile.Profile(time.process_time)
        profile.runcall(lambda: [step() for _ in range(args.steps)])
    stats = pstats.Stats(profile).sort_stats("tottime")
    total = stats.total_tt / args.steps * 1e3
    print(f"{args.steps} train steps at {args.config}: {total:.3f} ms a step (CPU, profiled)")
    stats.print_stats(args.top)


if __name__ == "__main__":
    main()
