"""How long a process takes to touch fresh memory, back to back and after a pause.

    .venv/bin/python benchmarks/fresh_memory.py [--megabytes 130] [--pause 3] [--repeats 5]

Why: on this machine (a KVM guest whose virtio balloon reports free pages to the host,
``VIRTIO_BALLOON_F_REPORTING``; ``/sys/module/page_reporting`` exists) memory that a process
gives back and nobody touches for a few seconds goes back to the host, and the next process
to touch it waits for the host to fault it in again. A Dask worker gives memory back at once
(``MALLOC_TRIM_THRESHOLD_``), so the first call after a pause that builds a model, or sizes
its workspaces anew, can take several times its usual time (docs/distributed.md). This times
``np.ones`` of ``--megabytes`` (fresh pages: above glibc's mmap threshold, given back when
freed), called back to back, and after ``--pause`` seconds of sleep each; wall time, medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def touch(megabytes: int) -> float:
    """Seconds to allocate and write ``megabytes`` of fresh memory (freed afterwards)."""
    start = time.perf_counter()
    np.ones(megabytes << 20, np.uint8)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=130, help="the predict's workspaces")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds idle before a touch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for _ in range(3):
        touch(args.megabytes)
    back_to_back = [touch(args.megabytes) for _ in range(args.repeats)]
    paused = []
    for _ in range(args.repeats):
        time.sleep(args.pause)
        paused.append(touch(args.megabytes))
    print(
        f"touching {args.megabytes} MB of fresh memory: back to back "
        f"{statistics.median(back_to_back) * 1e3:.1f} ms, after {args.pause:g} s idle "
        f"{statistics.median(paused) * 1e3:.1f} ms (medians of {args.repeats})"
    )


if __name__ == "__main__":
    main()
