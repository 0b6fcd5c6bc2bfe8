"""Throughput of xplstm.distributed against one process, side by side in one run.

    .venv/bin/python benchmarks/cluster_throughput.py          # LSTM(64, 256), 1 and 2 workers
    .venv/bin/python benchmarks/cluster_throughput.py --workers 1,2,4 --batch 128

Contenders, each timed in turn in every round (so that a busy machine slows them alike):
``local``, the model in this process with one BLAS thread (a Dask worker's setting), and
``Dask, N workers``, a LocalCluster of N processes with one thread each, all started before the
first round. Model: LSTM(``--features``, ``--hidden``), last step, Linear(hidden, 1), float32.
Rows: ``predict`` (``--rows`` sequences of ``--seq`` steps, ``batch_size=--block``, of a model
that nothing changes, so its parameters are on the workers from the warm-up on), ``predict, new
parameters`` (the same, but a parameter changes before each call, as between fit steps: the
call sends the model's parameters too; on a client of its own, as predict keeps one model's
parameters on the cluster per client) and ``fit step`` (one synchronous step on a global batch
of ``--batch``, one shard per worker: forward, backward, the gradients summed on the driver,
clipping, Adam). ``round trip`` is a fit step of a model too small to compute anything (hidden
4, seq 2, one sequence per worker): the cost of Dask's scheduling and messages alone. ``1
sequence per worker`` is a fit step at full size with one sequence per worker: the round trip
plus sending the parameters out and the gradients back (``--predict-only`` leaves the fit rows
out). Each cell is the median over ``--rounds`` rounds; ``vs 1 worker`` is the 1-worker
cluster's time over this one's (2.0x is ideal for 2). Each Dask predict row is timed after an
untimed call of its own: the rows before it may have replaced the workers' kept model, whose
memory, given back and left idle while other rows run, a VM that reports free pages to its
host hands back, and the first call would time the host's page faults (docs/distributed.md,
``benchmarks/fresh_memory.py``).

Then where a predict call's time goes (five more calls per cluster, after the timed rounds),
from Dask's task stream: from the call to the first block's start, the blocks' compute
summed, and from the last block's end to the call's return; and from the CPU clocks, which a
busy machine does not inflate as it does wall time: the CPU time of the driver's process
(with a LocalCluster's scheduler) and of the workers' processes, against the local predict's,
and their sum over the cores (when driver and workers outnumber the cores, a call's floor);
and each process's CPU time by thread (Linux: ``/proc``): the driver's main thread (the
``predict`` call itself) and its other threads (the client's and a LocalCluster's scheduler's
event loop, the nannies), a worker's task threads and its other threads (its event loop:
receiving its rows of ``x``, Dask's bookkeeping and periodic work).

``predict, x on the workers`` is the ``predict`` row with ``x`` a Dask array whose blocks are
already on the workers (one block a worker, as :func:`xplstm.distributed.block_bounds` cuts a
host array), so that no row of ``x`` goes through the driver and the scheduler: what the
scaling is when the data is read on the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable

import dask
import dask.array as da
import numpy as np
from dask.distributed import Client, get_task_stream
from threadpoolctl import threadpool_limits

import xplstm
from xplstm import batched, distributed, losses, optim
from xplstm.cluster import workers_listed

#: Calls over which :func:`cpu_by_thread` takes its means.
THREAD_CALLS = 20


def build(features: int, hidden: int, seed: int = 0) -> xplstm.Sequential:
    return xplstm.Sequential(
        xplstm.LSTM(features, hidden, backend="numpy", seed=seed),
        xplstm.LastStep(),
        xplstm.Linear(hidden, 1, backend="numpy", seed=seed + 1),
    )


def local_step(model: xplstm.Sequential, optimizer: optim.Optimizer) -> Callable:
    def step(x: np.ndarray, y: np.ndarray) -> None:
        _, d_prediction = losses.mse(model(x), y)
        model.backward(d_prediction)
        optim.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()

    return step


def parallel_step(
    model: xplstm.Sequential, optimizer: optim.Optimizer, client: distributed.Client
) -> Callable:
    engine = distributed.DataParallel(model, losses.mse, client)

    def step(x: np.ndarray, y: np.ndarray) -> None:
        engine.gradients(x, y)
        optim.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()

    return step


def nudged(model: xplstm.Sequential) -> xplstm.Sequential:
    """``model`` with its output's bias changed: another replica for the workers."""
    model.parameters()[-1].values[...] += 1e-3
    return model


def on_the_workers(x: np.ndarray, client: Client, batch_size: int) -> da.Array:
    """``x`` as a Dask array of the blocks :func:`distributed.predict` would cut it into on
    ``client``'s workers, block ``i`` held by worker ``i mod W``, as its own blocks go."""
    workers = sorted(workers_listed(client))
    bounds = distributed.block_bounds(x.shape[0], batch_size, len(workers))
    blocks = [
        da.from_delayed(
            client.scatter(x[start:stop], workers=[workers[i % len(workers)]]),
            (stop - start, *x.shape[1:]),
            x.dtype,
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    return da.concatenate(blocks)


def cpu_by_thread(run: Callable[[], object], client: Client, calls: int = 20) -> dict[str, float]:
    """The CPU time of a call of ``run`` (a predict on ``client``) by process and thread, in
    seconds, the mean over ``calls`` calls: the driver's main thread and its others; the
    workers' task threads and their others (the event loop in each worker's main thread among
    them). Threads that end between the two readings are not counted."""
    driver, workers = thread_cpu(), client.run(thread_cpu)
    for _ in range(calls):
        run()
    driver = spent_since(driver, thread_cpu())
    workers = {
        address: spent_since(workers[address], now)
        for address, now in client.run(thread_cpu).items()
    }
    spent = {
        "driver, main": driver["main"],
        "driver, other": driver["tasks"] + driver["other"],
        "workers, tasks": sum(kinds["tasks"] for kinds in workers.values()),
        "workers, other": sum(kinds["main"] + kinds["other"] for kinds in workers.values()),
    }
    return {name: value / calls for name, value in spent.items()}


def spent_since(
    before: dict[int, tuple[str, float]], now: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each kind of thread spent between two :func:`thread_cpu` readings (a
    thread that started between them from 0)."""
    kinds = {"main": 0.0, "tasks": 0.0, "other": 0.0}
    for tid, (kind, seconds) in now.items():
        kinds[kind] += seconds - before.get(tid, (kind, 0.0))[1]
    return kinds


def thread_cpu() -> dict[int, tuple[str, float]]:
    """This process's threads (Linux: ``/proc``), by id: their kind (``main``, Dask's
    ``tasks``, ``other``) and CPU time so far in seconds, to the nanosecond (``schedstat``)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    found = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/self/task/{tid}/schedstat") as f:
            name = names.get(tid, "")
            kind = "tasks" if "Dask-Default-Threads" in name else "other"
            found[tid] = ("main" if name == "MainThread" else kind, int(f.read().split()[0]) / 1e9)
    return found


def malloc_trim() -> str | None:
    """On a worker: its ``MALLOC_TRIM_THRESHOLD_`` (Dask's nannies set 65536), if any."""
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def seconds(run: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``run()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="cluster sizes, comma-separated")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256, help="global batch of a fit step")
    parser.add_argument("--rows", type=int, default=256, help="sequences to predict")
    parser.add_argument(
        "--block", type=int, default=distributed.PREDICT_BATCH, help="predict's batch_size"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="fit steps timed per round")
    parser.add_argument("--predict-only", action="store_true", help="no fit rows")
    parser.add_argument(
        "--glibc-trim",
        action="store_true",
        help="workers without Dask's MALLOC_TRIM_THRESHOLD_=65536 (glibc's own memory reuse)",
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.workers.split(",")]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.seq, args.features)).astype("float32")
    y = rng.standard_normal((args.rows, 1)).astype("float32")
    batch = (x[: args.batch], y[: args.batch])
    tiny_x = x[:, :2]

    load = os.getloadavg()
    results: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        if args.glibc_trim:  # None unsets a variable of the nannies' environment
            unset = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
            stack.enter_context(dask.config.set(unset))
        clients = {n: stack.enter_context(distributed.cluster(workers=n)) for n in sizes}
        trims = {value for c in clients.values() for value in c.run(malloc_trim).values()}
        # predict keeps one model's parameters on the cluster per client: the changed model
        # gets a client of its own, so that the unchanged one's stay placed
        others = {
            n: stack.enter_context(Client(c.scheduler.address, set_as_default=False))
            for n, c in clients.items()
        }
        contenders: dict[str, dict[str, Callable[[], object]]] = {}
        predicted, changed = build(args.features, args.hidden), build(args.features, args.hidden)
        model = build(args.features, args.hidden)
        step = local_step(model, optim.Adam(model.parameters()))
        contenders["local"] = {"predict": lambda: batched.predict(predicted, x, args.block)}
        if not args.predict_only:
            contenders["local"]["fit step"] = lambda: step(*batch)
        for n, client in clients.items():
            rows = contenders[f"Dask, {n} workers"] = {
                "predict": lambda c=client: distributed.predict(
                    predicted, x, client=c, batch_size=args.block
                ),
                "predict, new parameters": lambda c=others[n]: distributed.predict(
                    nudged(changed), x, client=c, batch_size=args.block
                ),
            }
            held = on_the_workers(x, client, args.block)
            rows["predict, x on the workers"] = lambda c=client, held=held: distributed.predict(
                predicted, held, client=c, batch_size=args.block
            )
            if args.predict_only:
                continue
            full = build(args.features, args.hidden)
            small = build(args.features, 4)
            big_step = parallel_step(full, optim.Adam(full.parameters()), client)
            small_step = parallel_step(small, optim.Adam(small.parameters()), client)
            rows["fit step"] = lambda s=big_step: s(*batch)
            rows["1 sequence per worker"] = lambda s=big_step, n=n: s(x[:n], y[:n])
            rows["round trip"] = lambda s=small_step, n=n: s(tiny_x[:n], y[:n])
        with threadpool_limits(limits=1, user_api="blas"):
            for rows in contenders.values():  # warm-up: imports, first allocations
                for run in rows.values():
                    run()
            for _ in range(args.rounds):
                for name, rows in contenders.items():
                    for row, run in rows.items():
                        repeats = 1 if row.startswith("predict") else args.steps
                        if row.startswith("predict") and name != "local":
                            run()  # untimed: the worker's kept model warm again (docstring)
                        results.setdefault(name, {}).setdefault(row, []).append(
                            seconds(run, repeats)
                        )
            phases = {n: predict_phases(contenders[f"Dask, {n} workers"]["predict"], c)
                      for n, c in clients.items()}  # fmt: skip
            threads = {
                (n, row): cpu_by_thread(contenders[f"Dask, {n} workers"][row], c, THREAD_CALLS)
                for n, c in clients.items()
                for row in ("predict", "predict, x on the workers")
            }
            local_cpu = cpu_seconds(contenders["local"]["predict"])
    report(args, results)
    report_phases(phases, local_cpu)
    report_threads(threads)
    print(f"load average (1, 5, 15 min): {load} before, {os.getloadavg()} after")
    print(f"the workers' MALLOC_TRIM_THRESHOLD_: {', '.join(sorted(map(str, trims)))}")


def predict_phases(
    run: Callable[[], object], client: distributed.Client, calls: int = 5
) -> dict[str, float]:
    """Where a call of ``run`` (a predict on ``client``) spends its time, in seconds, medians of
    ``calls`` calls: wall time before the first block starts on a worker, the blocks' compute
    summed, and after the last block ends; and CPU time (which other processes on a busy
    machine do not inflate as they do wall time) of this process (the driver, and a
    LocalCluster's scheduler) and of the workers' processes, summed; and that CPU time over the
    cores this process may use: on a machine with fewer cores than workers and driver, no call
    can be shorter."""
    phases: dict[str, list[float]] = {}
    cores = len(os.sched_getaffinity(0))
    for _ in range(calls):
        workers_before = client.run(time.process_time)
        with get_task_stream(client) as stream:
            driver, started = time.process_time(), time.time()  # time(): the workers' clock
            run()
            ended, driver = time.time(), time.process_time() - driver
        workers = client.run(time.process_time)
        spans = [
            (s["start"], s["stop"])
            for task in stream.data
            if str(task["key"]).startswith("predict_block")
            for s in task["startstops"]
            if s["action"] == "compute"
        ]
        for name, value in {
            "call": ended - started,
            "before the first block": min(start for start, _ in spans) - started,
            "blocks' compute, summed": sum(stop - start for start, stop in spans),
            "after the last block": ended - max(stop for _, stop in spans),
            "CPU: driver": driver,
            "CPU: workers": sum(workers[w] - workers_before[w] for w in workers),
            "CPU / cores": (driver + sum(workers[w] - workers_before[w] for w in workers)) / cores,
            "blocks": len(spans),
        }.items():
            phases.setdefault(name, []).append(value)
    return {name: statistics.median(values) for name, values in phases.items()}


def cpu_seconds(run: Callable[[], object], calls: int = 5) -> float:
    """The median CPU time of this process over ``calls`` calls of ``run``."""
    times = []
    for _ in range(calls):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return statistics.median(times)


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> None:
    params = 4 * args.hidden * (args.features + args.hidden + 1) + args.hidden + 1
    print(
        f"LSTM({args.features}, {args.hidden}), seq {args.seq}, float32: {params} parameters "
        f"({params * 4 / 1e6:.2f} MB); medians of {args.rounds} rounds"
    )
    local = {row: statistics.median(v) for row, v in results["local"].items()}
    one = {row: statistics.median(v) for row, v in results.get("Dask, 1 workers", {}).items()}
    print(f"| contender | row | ms | sequences/s | vs local | vs 1 worker |\n|{' --- |' * 6}")
    for name, rows in results.items():
        for row, values in rows.items():
            ms = statistics.median(values) * 1e3
            count = args.batch if row == "fit step" else args.rows * row.startswith("predict")
            rate = f"{count / ms * 1e3:.0f}" if count else ""
            ratio = f"{local[row] * 1e3 / ms:.2f}x" if row in local else ""
            scale = f"{one[row] * 1e3 / ms:.2f}x" if row in one and name != "local" else ""
            print(f"| {name} | {row} | {ms:.1f} | {rate} | {ratio} | {scale} |")


def report_phases(phases: dict[int, dict[str, float]], local_cpu: float) -> None:
    print(f"\na predict call, from the task stream and CPU clocks (ms, medians of 5 calls; local: "
          f"{local_cpu * 1e3:.1f} ms of CPU):")  # fmt: skip
    names = list(next(iter(phases.values())))
    print(f"| workers | {' | '.join(names)} |\n|{' --- |' * (len(names) + 1)}")
    for n, phase in phases.items():
        cells = [f"{v:.0f}" if k == "blocks" else f"{v * 1e3:.1f}" for k, v in phase.items()]
        print(f"| {n} | {' | '.join(cells)} |")


def report_threads(threads: dict[tuple[int, str], dict[str, float]]) -> None:
    print(
        f"\nCPU of a call by process and thread (ms, means of {THREAD_CALLS} calls; workers "
        "summed):"
    )
    names = list(next(iter(threads.values())))
    print(f"| workers | row | {' | '.join(names)} |\n|{' --- |' * (len(names) + 2)}")
    for (n, row), spent in threads.items():
        print(f"| {n} | {row} | {' | '.join(f'{v * 1e3:.1f}' for v in spent.values())} |")


if __name__ == "__main__":
    main()
