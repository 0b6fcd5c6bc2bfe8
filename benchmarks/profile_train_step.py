"""Where one training step of the demo's model goes: cProfile of xplstm's train step (the LSTM,
its last step, Linear, MSE, clipping, Adam), NumPy backend, one BLAS thread, CPU time.

    python benchmarks/profile_train_step.py [--config 32,100,2,32] [--steps 300] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from threadpoolctl import threadpool_limits

from xplstm.bench.contenders import numpy_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="32,100,2,32", help="B,T,I,H")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    step = numpy_train_step(tuple(int(n) for n in args.config.split(",")))
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
