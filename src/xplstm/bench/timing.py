"""Timing and memory: every row of one configuration, alternating, against the same ceilings.

Rows run in turn after a warm-up, each repeat starting from another row, so a machine that gets
busier or quieter shifts all rows alike. Throughput is set against matrix products timed in the
same run on the same library; peak memory against the 5·B·T·H values backward must keep.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xplstm.backends import Backend
from xplstm.bench.contenders import PLAIN, REFERENCE, Config, Row, Structure, is_gpu


@dataclass(frozen=True)
class Ceilings:
    """Matrix-product throughput of one library on one device, in GFLOP/s, in the same run."""

    matmul: float  # a large square product: what the BLAS can do
    step_matmul: float  # one step's (batch, hidden) @ (hidden, 4 hidden): the loop's bound


@dataclass(frozen=True)
class Result:
    """One row's timings on one configuration and mode."""

    config: Config
    mode: str
    row: str
    backend: str
    device: str
    times_ms: list[float]
    median_ms: float
    ratio_to_torch: float | None
    ratio_to_best_peer: float | None  # to the fastest other library's LSTM in the same run
    gflops: float
    matmul_gflops: float
    fraction_of_matmul: float
    step_matmul_gflops: float
    peak_mb: float | None
    peak_over_cache: float | None
    memory_method: str


def significant(value: float) -> float:
    """Four significant digits: what a shared machine's timings can support."""
    return float(f"{value:.4g}")


#: What a timing reads: elapsed time, or the process's CPU time (with one thread per library
#: the work runs on one thread at a time, and on a shared machine the CPU time does not count
#: the time it waited for a core). The process's, not the calling thread's: JAX runs compiled
#: code on threads of its own.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(backend: Backend, run: Callable[[], Any], clock: str = "wall") -> float:
    read = CLOCKS[clock]
    start = read()
    out = run()
    backend.wait(*(out if isinstance(out, tuple) else (out,)))
    return (read() - start) * 1e3


def matmul_gflops(
    backend: Backend,
    device: Any,
    dtype: str,
    shape: tuple[int, int, int],
    repeats: int = 5,
    clock: str = "wall",
) -> float:
    """Throughput of ``(m, k) @ (k, n)`` products on this library and device, in GFLOP/s.

    Each timing covers enough back-to-back products to last about a millisecond or more.
    """
    m, k, n = shape
    rng = np.random.default_rng(1)
    a = backend.from_numpy(rng.standard_normal((m, k)).astype(dtype), device)
    b = backend.from_numpy(rng.standard_normal((k, n)).astype(dtype), device)
    count = max(1, int(2e7 // (2 * m * k * n)))

    def products() -> tuple:
        return tuple(a @ b for _ in range(count))  # all of them waited for (Dask is lazy)

    times = [_timed(backend, products, clock) for _ in range(repeats + 1)][1:]  # 1st warms up
    return 2.0 * m * k * n * count / (min(times) * 1e-3) / 1e9


def ceilings(
    backend: Backend, device: Any, dtype: str, config: Config, clock: str = "wall"
) -> Ceilings:
    """Both ceilings for ``config`` on this library and device, measured now."""
    batch, _, _, hidden = config
    n = 4096 if is_gpu(device) else 1024
    return Ceilings(
        significant(matmul_gflops(backend, device, dtype, (n, n, n), clock=clock)),
        significant(
            matmul_gflops(backend, device, dtype, (batch, hidden, 4 * hidden), clock=clock)
        ),
    )


def status_kb(field_name: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``, ``VmHWM``), KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"{field_name} missing from /proc/self/status")


def peak_memory(row: Row) -> tuple[int | None, str]:
    """Bytes at peak over one fresh build and forward+backward of ``row``, and how measured.

    GPU: the library's memory pool. NumPy: tracemalloc, which sees every NumPy allocation.
    Other host libraries: the rise of the resident set's high-water mark (Linux only; memory
    the allocator kept from earlier runs is reused and not counted, so it is a lower bound).
    """
    if is_gpu(row.device):
        row.backend.synchronize(row.device)
        row.backend.reset_peak_memory(row.device)
        _timed(row.backend, row.build()["forward+backward"])
        peak = row.backend.peak_memory(row.device)
        return peak, "device pool" if peak is not None else "unknown"
    if row.backend.name == "numpy":
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            _timed(row.backend, row.build()["forward+backward"])
            return tracemalloc.get_traced_memory()[1] - start, "tracemalloc"
        finally:
            tracemalloc.stop()
    try:
        before = status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident set
        _timed(row.backend, row.build()["forward+backward"])
        return (status_kb("VmHWM") - before) * 1024, "rss high-water rise"
    except OSError:
        return None, "unknown"


def _alternating_times(
    rows: list[Row], runs: list[Callable[[], Any]], repeats: int, warmup: int, clock: str
) -> list[list[float]]:
    """Timings of each run, the rows taking turns and each repeat starting one row later."""
    for _ in range(warmup):
        for row, run in zip(rows, runs, strict=True):
            _timed(row.backend, run)
    times: list[list[float]] = [[] for _ in rows]
    for repeat in range(repeats):
        order = list(range(len(rows)))
        for k in order[repeat % len(order) :] + order[: repeat % len(order)]:
            times[k].append(_timed(rows[k].backend, runs[k], clock))
    return times


def run_config(
    rows: list[Row],
    config: Config,
    modes: Sequence[str],
    *,
    limits: dict[Row, Ceilings],
    repeats: int,
    warmup: int,
    dtype: str,
    clock: str = "wall",
    structure: Structure = PLAIN,
) -> list[Result]:
    """Time every row on one configuration, alternating, and count its peak memory (FLOPs and
    the cache size count every recurrence of the ``structure``)."""
    batch, seq, _, hidden = config
    flops_forward = structure.flops_forward(config)
    recurrences = structure.num_layers * structure.directions
    cache_bytes = 5 * batch * seq * hidden * recurrences * np.dtype(dtype).itemsize
    runs = [row.build() for row in rows]
    timed = {mode: [k for k, run in enumerate(runs) if mode in run] for mode in modes}
    times = {
        mode: _alternating_times(
            [rows[k] for k in timed[mode]],
            [runs[k][mode] for k in timed[mode]],
            repeats,
            warmup,
            clock,
        )
        for mode in modes
    }
    del runs
    peaks = {row: peak_memory(row) for row in rows} if "forward+backward" in modes else {}
    results = []
    for mode in modes:
        mode_rows = [rows[k] for k in timed[mode]]  # the naive baseline has no train step
        medians = [statistics.median(t) for t in times[mode]]
        reference = next(
            (m for r, m in zip(mode_rows, medians, strict=True) if r.name.startswith(REFERENCE)),
            None,
        )
        best_peer = min((m for r, m in zip(mode_rows, medians, strict=True) if r.peer), default=0)
        flops = flops_forward * (1 if mode == "forward" else 3)  # the LSTM's products only
        for row, row_times, median in zip(mode_rows, times[mode], medians, strict=True):
            gflops = flops / (median * 1e-3) / 1e9
            peak, method = peaks.get(row, (None, "")) if mode == "forward+backward" else (None, "")
            results.append(
                Result(
                    config=config,
                    mode=mode,
                    row=row.name,
                    backend=row.backend.name,
                    device=str(row.device),
                    times_ms=[significant(t) for t in row_times],
                    median_ms=significant(median),
                    ratio_to_torch=significant(median / reference) if reference else None,
                    ratio_to_best_peer=significant(median / best_peer) if best_peer else None,
                    gflops=significant(gflops),
                    matmul_gflops=limits[row].matmul,
                    fraction_of_matmul=significant(gflops / limits[row].matmul),
                    step_matmul_gflops=limits[row].step_matmul,
                    peak_mb=None if peak is None else significant(peak / 2**20),
                    peak_over_cache=None if peak is None else significant(peak / cache_bytes),
                    memory_method=method,
                )
            )
    return results
