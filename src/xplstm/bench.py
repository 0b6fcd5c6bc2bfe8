"""``xplstm bench``: xplstm on each backend against torch.nn.LSTM, side by side in one process.

Every row of one configuration runs in turn, alternating, after a warm-up, so a machine that
gets busier or quieter shifts all rows alike; the medians and the ratios to torch.nn.LSTM are
what to read. Rows: xplstm on each backend with its fast path and with the written-once path,
torch.nn.LSTM with autograd (cuDNN on a GPU), and a naive baseline that concatenates [x, h] at
every step as the original layer did. Throughput is set against a large matrix product timed in
the same run on the same library; peak memory against the 5·B·T·H values that the backward
must keep (the gate activations and the cells).

Library-specific code stays in ``xplstm.backends`` (timing waits, memory pools, torch.nn.LSTM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import xplstm
from xplstm import backends, sequence
from xplstm.backends import Backend
from xplstm.cell import step_backward, step_forward

CPU_CONFIGS = (
    (64, 100, 32, 32),
    (64, 100, 128, 128),
    (64, 100, 256, 256),
    (32, 200, 512, 512),
    (1, 1000, 64, 64),
)
GPU_CONFIGS = (*CPU_CONFIGS, (64, 100, 512, 512), (256, 100, 1024, 1024))
MODES = ("forward", "forward+backward")
#: Backends that exist for correctness (lazy graphs, a strict checker), not speed.
NOT_BY_DEFAULT = ("array_api_strict", "dask")
REFERENCE = "torch.nn.LSTM"

Config = tuple[int, int, int, int]
Runs = dict[str, Callable[[], Any]]


@dataclass
class Row:
    """One contender: how to build its runs (fresh, for the memory count), and where it runs."""

    name: str
    backend: Backend
    device: Any
    build: Callable[[], Runs]
    matmul_gflops: float | None = None
    step_matmul_gflops: float | None = None
    memory_method: str = ""


@dataclass
class Result:
    config: Config
    mode: str
    row: str
    backend: str
    device: str
    times_ms: list[float]
    median_ms: float
    ratio_to_torch: float | None
    gflops: float
    matmul_gflops: float | None
    fraction_of_matmul: float | None
    step_matmul_gflops: float | None
    peak_mb: float | None = None
    peak_over_cache: float | None = None
    memory_method: str = ""
    notes: list[str] = field(default_factory=list)


# -- the contenders -------------------------------------------------------------------------
def naive_runs(xp: Any, w: Any, b: Any, x: Any, dy: Any) -> Runs:
    """The original layer's loop: [x_t, h] concatenated and multiplied at every step.

    A baseline only; it uses the same cell math (``step_forward``, ``step_backward``).
    """
    batch, seq, inputs = x.shape
    hidden = w.shape[1] // 4

    def forward() -> list:
        zeros = xp.zeros((batch, hidden), dtype=w.dtype, device=x.device)
        h, c, saved = zeros, zeros, []
        for t in range(seq):
            xh = xp.concat([x[:, t, :], h], axis=1)
            h_new, c_new, ifog = step_forward(xp, xh @ w + b, c)
            saved.append((xh, ifog, c_new, c))
            h, c = h_new, c_new
        return saved

    def forward_backward() -> Any:
        saved = forward()
        dh = dc = xp.zeros((batch, hidden), dtype=w.dtype, device=x.device)
        dw, db, dxs = xp.zeros_like(w), xp.zeros_like(b), []
        for t in range(seq - 1, -1, -1):
            xh, ifog, c, c_prev = saved[t]
            dz, dc = step_backward(xp, dy[:, t, :] + dh, dc, ifog, c, c_prev)
            dw, db = dw + xh.T @ dz, db + xp.sum(dz, axis=0)
            dxh = dz @ w.T
            dxs.append(dxh[:, :inputs])
            dh = dxh[:, inputs:]
        return xp.stack(dxs[::-1], axis=1), dw

    return {"forward": lambda: forward()[-1][2], "forward+backward": forward_backward}


def xplstm_runs(layer: xplstm.LSTM, x: Any, dy: Any) -> Runs:
    def forward_backward() -> tuple:
        layer.forward(x)
        dx, _, _ = layer.backward(dy)
        return dx, layer.weights.deltas

    return {"forward": lambda: layer.forward(x)[0], "forward+backward": forward_backward}


def _device_for(backend: Backend, want: str) -> Any | None:
    """The backend's GPU for ``want="gpu"``, its CPU for ``"cpu"``, a GPU if any for auto."""
    try:
        gpu = backend.parse_device("cuda")
    except ValueError:  # BackendError included
        gpu = None
    if want == "gpu":
        return gpu
    if want == "cpu":
        cpu = backend.default_device()
        return None if _is_gpu(cpu) else cpu
    return gpu if gpu is not None else backend.default_device()


def _is_gpu(device: Any) -> bool:
    return "cpu" not in str(device).lower()


def build_rows(
    names: Sequence[str],
    paths: Sequence[str],
    want: str,
    config: Config,
    dtype: str,
    naive: bool,
    reference: bool,
) -> tuple[list[Row], list[str]]:
    """The contenders for one configuration, and why any asked for is missing."""
    batch, seq, inputs, hidden = config
    rng = np.random.default_rng(0)
    host_x = rng.standard_normal((batch, seq, inputs)).astype(dtype)
    host_dy = rng.standard_normal((batch, seq, hidden)).astype(dtype)
    rows, skipped = [], []
    for name in names:
        backend = backends.get(name)
        device = _device_for(backend, want)
        if device is None:
            skipped.append(f"{name}: no {want} device")
            continue
        has_fast = backend.fast_path(sequence.forward, sequence.backward)
        for path in paths:
            if path == "fast" and has_fast is None:
                continue
            suffix = " written-once" if has_fast is not None else ""
            label = f"xplstm {name}" + (" fast" if path == "fast" else suffix)

            def build(
                backend: Backend = backend, device: Any = device, fast: bool = path == "fast"
            ) -> Runs:
                layer = xplstm.LSTM(
                    inputs,
                    hidden,
                    backend=backend,
                    device=device,
                    dtype=dtype,
                    seed=0,
                    fast_path=fast,
                )
                x, dy = backend.from_numpy(host_x, device), backend.from_numpy(host_dy, device)
                return xplstm_runs(layer, x, dy)

            rows.append(Row(label, backend, device, build))
    if reference and "torch" in backends.available():
        torch_backend = backends.get("torch")
        device = _device_for(torch_backend, want) or torch_backend.default_device()

        def build_reference() -> Runs:
            x = torch_backend.from_numpy(host_x, device)
            return torch_backend.nn_lstm(hidden, x, torch_backend.from_numpy(host_dy, device))

        rows.insert(0, Row(REFERENCE, torch_backend, device, build_reference))
    elif reference:
        skipped.append(f"{REFERENCE}: {backends.unavailable()['torch']}")
    if naive:
        numpy_backend = backends.get("numpy")

        def build_naive() -> Runs:
            layer = xplstm.LSTM(inputs, hidden, backend="numpy", dtype=dtype, seed=0)
            xp = layer.xp
            x, dy = xp.asarray(host_x), xp.asarray(host_dy)
            return naive_runs(xp, layer.weights.values, layer.bias.values, x, dy)

        rows.append(Row("naive concat (numpy)", numpy_backend, "cpu", build_naive))
    return rows, skipped


# -- measuring ------------------------------------------------------------------------------
def _timed(row: Row, run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    out = run()
    row.backend.wait(*(out if isinstance(out, tuple) else (out,)))
    return (time.perf_counter() - start) * 1e3


def matmul_gflops(
    backend: Backend, device: Any, dtype: str, shape: tuple[int, int, int], repeats: int = 5
) -> float:
    """Throughput of ``(m, k) @ (k, n)`` products on this library and device, in GFLOP/s.

    Each timing covers enough back-to-back products to last about a millisecond or more.
    """
    m, k, n = shape
    rng = np.random.default_rng(1)
    a = backend.from_numpy(rng.standard_normal((m, k)).astype(dtype), device)
    b = backend.from_numpy(rng.standard_normal((k, n)).astype(dtype), device)
    count = max(1, int(2e7 // (2 * m * k * n)))
    row = Row("matmul", backend, device, dict)

    def products() -> tuple:
        return tuple(a @ b for _ in range(count))  # all of them waited for (Dask is lazy)

    times = [_timed(row, products) for _ in range(repeats + 1)][1:]  # the first warms up
    return 2.0 * m * k * n * count / (min(times) * 1e-3) / 1e9


def _rss_kb(field_name: str) -> int:
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
    if _is_gpu(row.device):
        row.backend.synchronize(row.device)
        row.backend.reset_peak_memory(row.device)
        _timed(row, row.build()["forward+backward"])
        peak = row.backend.peak_memory(row.device)
        return peak, "device pool" if peak is not None else "unknown"
    if row.backend.name == "numpy":
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            _timed(row, row.build()["forward+backward"])
            return tracemalloc.get_traced_memory()[1] - start, "tracemalloc"
        finally:
            tracemalloc.stop()
    try:
        before = _rss_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident set
        _timed(row, row.build()["forward+backward"])
        return (_rss_kb("VmHWM") - before) * 1024, "rss high-water rise"
    except OSError:
        return None, "unknown"


def run_config(
    rows: list[Row], config: Config, modes: Sequence[str], repeats: int, warmup: int, dtype: str
) -> list[Result]:
    """Time every row on one configuration, alternating, and count its peak memory."""
    batch, seq, inputs, hidden = config
    flops_forward = 2.0 * batch * seq * (inputs + hidden) * 4 * hidden
    cache_bytes = 5 * batch * seq * hidden * np.dtype(dtype).itemsize
    runs = [row.build() for row in rows]
    results = []
    for mode in modes:
        for _ in range(warmup):
            for row, run in zip(rows, runs, strict=True):
                _timed(row, run[mode])
        times: list[list[float]] = [[] for _ in rows]
        for repeat in range(repeats):
            order = list(range(len(rows)))
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for k in order:
                times[k].append(_timed(rows[k], runs[k][mode]))
        medians = [statistics.median(t) for t in times]
        reference = next(
            (m for r, m in zip(rows, medians, strict=True) if r.name == REFERENCE), None
        )
        flops = flops_forward * (3 if mode == "forward+backward" else 1)
        for row, row_times, median in zip(rows, times, medians, strict=True):
            gflops = flops / (median * 1e-3) / 1e9
            results.append(
                Result(
                    config, mode, row.name, row.backend.name, str(row.device),
                    [_sig(t) for t in row_times], _sig(median),
                    _sig(median / reference) if reference else None,
                    _sig(gflops), row.matmul_gflops,
                    _sig(gflops / row.matmul_gflops) if row.matmul_gflops else None,
                    row.step_matmul_gflops,
                )
            )  # fmt: skip
    del runs
    if "forward+backward" in modes:
        for row in rows:
            peak, method = peak_memory(row)
            for result in results:
                if result.row == row.name and result.mode == "forward+backward":
                    result.memory_method = method
                    if peak is not None:
                        result.peak_mb = _sig(peak / 2**20)
                        result.peak_over_cache = _sig(peak / cache_bytes)
    return results


def _sig(value: float) -> float:
    """Four significant digits: what a shared machine's timings can support."""
    return float(f"{value:.4g}")


# -- reporting ------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """Versions, BLAS libraries and threads, and the settings that change BLAS kernels."""
    found: dict[str, Any] = {
        "xplstm": xplstm.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "backends": {name: backends.get(name).version() for name in backends.available()},
        "env": {
            k: os.environ[k]
            for k in sorted(os.environ)
            if k.startswith(("OPENBLAS", "OMP", "MKL", "XLA"))
        },
    }
    try:
        from threadpoolctl import threadpool_info

        found["threadpools"] = [
            {k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            | {"library": os.path.basename(info["filepath"])}
            for info in threadpool_info()
        ]
    except ImportError:
        found["threadpools"] = "threadpoolctl not installed (pip install threadpoolctl)"
    return found


def format_table(results: list[Result]) -> str:
    header = (
        f"{'row':34s} {'ms':>9s} {'x torch':>8s} {'GFLOP/s':>8s} {'of mm':>6s} "
        f"{'step mm':>8s} {'peak MB':>8s} {'/5BTH':>6s}"
    )
    lines, current = [], None
    for r in results:
        if (r.config, r.mode) != current:
            current = (r.config, r.mode)
            lines += ["", f"(B,T,I,H) = {r.config}  {r.mode}", header]
        ratio = f"{r.ratio_to_torch:.2f}x" if r.ratio_to_torch is not None else "-"
        share = f"{r.fraction_of_matmul:.0%}" if r.fraction_of_matmul is not None else "-"
        peak = f"{r.peak_mb:.1f}" if r.peak_mb is not None else "-"
        over = f"{r.peak_over_cache:.2f}" if r.peak_over_cache is not None else "-"
        lines.append(
            f"{r.row:34s} {r.median_ms:9.2f} {ratio:>8s} {r.gflops:8.1f} {share:>6s} "
            f"{r.step_matmul_gflops or 0:8.1f} {peak:>8s} {over:>6s}"
        )
    return "\n".join(lines)


def _config(text: str) -> Config:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a config is B,T,I,H as four positive ints, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def bench(args: argparse.Namespace) -> int:
    """Benchmark xplstm against torch.nn.LSTM (see ``xplstm bench --help``)."""
    names = args.backends or [n for n in backends.available() if n not in NOT_BY_DEFAULT]
    for name in names:
        backends.get(name)  # a clear error for unknown or missing backends
    for mode in args.modes:
        if mode not in MODES:
            raise ValueError(f"--modes takes {', '.join(MODES)}; got {mode!r}")
    for path in args.paths:
        if path not in ("fast", "written-once"):
            raise ValueError(f"--paths takes fast, written-once; got {path!r}")
    probe = [_device_for(backends.get(n), args.device) for n in names]
    on_gpu = any(d is not None and _is_gpu(d) for d in probe)
    configs = args.configs or (GPU_CONFIGS if on_gpu else CPU_CONFIGS)
    peaks: dict[str, list[float]] = {}
    results, skipped = [], []
    for config in configs:
        rows, skipped = build_rows(
            names, args.paths, args.device, config, args.dtype, args.naive, args.reference
        )
        # Both ceilings are measured again for every configuration, next to its timings.
        measured: dict[tuple[str, str], tuple[float, float]] = {}
        for row in rows:
            key = (row.backend.name, str(row.device))
            if key not in measured:
                batch, _, _, hidden = config
                n = 4096 if _is_gpu(row.device) else 1024
                measure = (row.backend, row.device, args.dtype)
                measured[key] = (
                    _sig(matmul_gflops(*measure, (n, n, n))),
                    _sig(matmul_gflops(*measure, (batch, hidden, 4 * hidden))),
                )
                peaks.setdefault(f"{key[0]} {key[1]}", []).append(measured[key][0])
            row.matmul_gflops, row.step_matmul_gflops = measured[key]
        found = run_config(rows, config, args.modes, args.repeats, args.warmup, args.dtype)
        results += found
        if not args.json:
            print(format_table(found), flush=True)
    report = {
        "command": " ".join(["xplstm", *sys.argv[1:]]),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "matmul_gflops": {k: statistics.median(v) for k, v in peaks.items()},
        "skipped": skipped,
        "environment": environment(),
        "results": [asdict(r) for r in results],
    }
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print("\nmatmul GFLOP/s (same run):", report["matmul_gflops"])
        if skipped:
            print("skipped:", "; ".join(skipped))
    return 0


def add_bench_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``xplstm bench`` on the CLI's subparsers."""
    parser = subparsers.add_parser("bench", help=bench.__doc__, description=__doc__)
    parser.add_argument(
        "--backends", type=_names, default=None,
        help=f"comma-separated xplstm backends (default: all available but {NOT_BY_DEFAULT})",
    )  # fmt: skip
    parser.add_argument(
        "--configs", type=_config, nargs="+", default=None, metavar="B,T,I,H",
        help="shapes to run (default: the standard CPU list, plus GPU sizes on a GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--modes", type=_names, default=list(MODES), help="forward,forward+backward"
    )
    parser.add_argument(
        "--paths", type=_names, default=["fast", "written-once"],
        help="xplstm paths: fast (where a backend has one), written-once",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per row first")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto",
        help="auto: a GPU where a backend has one (then the GPU configs too)",
    )  # fmt: skip
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip the baseline")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help=f"skip {REFERENCE}"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON report instead")
    parser.set_defaults(run=bench)
    return parser
