"""The ``xplstm bench`` command line: options, the run over configurations, the output."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from xplstm import backends
from xplstm.bench import memory
from xplstm.bench.contenders import (
    REFERENCE,
    Config,
    Structure,
    build_rows,
    device_for,
    is_gpu,
)
from xplstm.bench.report import environment, format_table
from xplstm.bench.timing import Ceilings, ceilings, run_config

CPU_CONFIGS = (
    (64, 100, 32, 32),
    (64, 100, 128, 128),
    (64, 100, 256, 256),
    (32, 200, 512, 512),
    (1, 1000, 64, 64),
)
GPU_CONFIGS = (*CPU_CONFIGS, (64, 100, 512, 512), (256, 100, 1024, 1024))
MODES = ("forward", "forward+backward", "train-step")
#: ``compiled``, ``blas``, ``panels`` and ``ufuncs``: NumPy's fast path held to one of its loops.
PATHS = ("fast", "written-once", "compiled", "blas", "panels", "ufuncs")
#: Backends that exist for correctness (lazy graphs, a strict checker), not speed.
NOT_BY_DEFAULT = ("array_api_strict", "dask")


def _config(text: str) -> Config:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a config is B,T,I,H as four positive ints, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _check_choices(option: str, given: list[str], choices: tuple[str, ...]) -> None:
    for value in given:
        if value not in choices:
            raise ValueError(f"{option} takes {', '.join(choices)}; got {value!r}")


@contextmanager
def threads_limited(count: int | None) -> Iterator[None]:
    """``count`` threads for the BLAS and OpenMP pools (threadpoolctl) and torch's intra-op pool,
    so that both sides of a comparison run with the same; ``None`` leaves the defaults."""
    if count is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = None
    if "torch" in backends.available():
        import torch
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=count):
        if torch is not None:
            torch.set_num_threads(count)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)


def bench(args: argparse.Namespace) -> int:
    """Benchmark xplstm against torch.nn.LSTM and Keras on JAX (see ``xplstm bench --help``)."""
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads takes a positive count, got {args.threads}")
    if args.clock == "cpu" and args.threads != 1:
        raise ValueError("--clock cpu reads the process's CPU time: it needs --threads 1")
    started = {}
    if args.threads is not None:
        names = args.backends or backends.available()
        if args.keras and "jax" in backends.available():  # Keras's peer runs on JAX
            names = [*names, "jax"]
        started = started_with_threads(
            args.threads, [n for n in backends.available() if n in names]
        )
    with threads_limited(args.threads):
        return _bench(args, started)


def started_with_threads(count: int, names: list[str]) -> dict[str, str]:
    """The backends ``names`` that must be told their threads before they start (JAX's XLA),
    started now with ``count``; what each says it did."""
    said = {}
    for name in names:
        note = backends.get(name).start_with_threads(count)
        if note is not None:
            said[name] = note
    return said


def _bench(args: argparse.Namespace, started: dict[str, str]) -> int:
    names = args.backends or [n for n in backends.available() if n not in NOT_BY_DEFAULT]
    for name in names:
        backends.get(name)  # a clear error for unknown or missing backends
    _check_choices("--modes", args.modes, MODES)
    _check_choices("--paths", args.paths, PATHS)
    probe = [device_for(backends.get(n), args.device) for n in names]
    on_gpu = any(d is not None and is_gpu(d) for d in probe)
    configs = args.configs or (GPU_CONFIGS if on_gpu else CPU_CONFIGS)
    if args.layers < 1:
        raise ValueError(f"--layers must be a positive int, got {args.layers}")
    structure = Structure(args.layers, args.bidirectional, args.lengths)
    if args.memory or args.memory_row is not None:
        return _memory(args, names, configs, structure)
    peaks: dict[str, list[float]] = {}
    results, skipped = [], []
    for config in configs:
        rows, skipped = _rows(args, names, config, structure)
        # The ceilings are measured again for every configuration, next to its timings.
        measured: dict[tuple[str, str], Ceilings] = {}
        for row in rows:
            key = (row.backend.name, str(row.device))
            if key not in measured:
                measured[key] = ceilings(row.backend, row.device, args.dtype, config, args.clock)
                peaks.setdefault(" ".join(key), []).append(measured[key].matmul)
        limits = {row: measured[row.backend.name, str(row.device)] for row in rows}
        found = run_config(
            rows, config, args.modes,
            limits=limits, repeats=args.repeats, warmup=args.warmup, dtype=args.dtype,
            clock=args.clock,
            structure=structure,
        )  # fmt: skip
        results += found
        if not args.json:
            print(format_table(found), flush=True)
    report = {
        "command": " ".join(["xplstm", *sys.argv[1:]]),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": args.threads or "library defaults",
        "started_with_threads": started,
        "clock": args.clock,
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
        print("threads:", report["threads"], *(f"; {k}: {v}" for k, v in started.items()))
        if skipped:
            print("skipped:", "; ".join(skipped))
    return 0


def _rows(
    args: argparse.Namespace, names: list[str], config: Config, structure: Structure
) -> tuple[list, list[str]]:
    return build_rows(
        names, args.paths, args.device, config, args.dtype, args.naive, args.reference,
        structure, args.keras,
    )  # fmt: skip


def _memory(args: argparse.Namespace, names: list[str], configs: Any, structure: Structure) -> int:
    """``--memory``: every row's peak memory, each in a fresh process (``--memory-row`` is what
    such a process runs: one row of the one configuration, its peak printed as JSON)."""
    if args.memory_row is not None:
        inputs, hidden = configs[0][2:]
        warm, _ = _rows(args, names, (2, 4, inputs, hidden), structure)
        memory.measure_row(warm[args.memory_row])  # loads and compiles the library's code
        rows, _ = _rows(args, names, configs[0], structure)
        print(json.dumps({"peak_bytes": memory.measure_row(rows[args.memory_row])}))
        return 0
    results, skipped = [], []
    for config in configs:
        rows, skipped = _rows(args, names, config, structure)
        found = memory.in_fresh_processes(args, config, rows, structure)
        results += found
        if not args.json:
            print(memory.format_memory(found), flush=True)
    if args.json:
        report = {
            "command": " ".join(["xplstm", *sys.argv[1:]]),
            "dtype": args.dtype,
            "calls": memory.CALLS,
            "skipped": skipped,
            "environment": environment(),
            "memory": results,
        }
        json.dump(report, sys.stdout, indent=1)
        print()
    elif skipped:
        print("skipped:", "; ".join(skipped))
    return 0


def add_bench_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``xplstm bench`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "bench",
        help=bench.__doc__,
        description="xplstm against torch.nn.LSTM and Keras on JAX, side by side.",
    )
    parser.add_argument(
        "--backends", type=_names, default=None,
        help=f"comma-separated xplstm backends (default: all available but {NOT_BY_DEFAULT})",
    )  # fmt: skip
    parser.add_argument(
        "--configs", type=_config, nargs="+", default=None, metavar="B,T,I,H",
        help="shapes to run (default: the standard CPU list, plus GPU sizes on a GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--modes", type=_names, default=list(MODES[:2]),
        help=f"{','.join(MODES)} (default: the first two; train-step: the demo's whole step)",
    )  # fmt: skip
    parser.add_argument(
        "--paths", type=_names, default=list(PATHS[:2]),
        help="xplstm paths: fast (where a backend has one), written-once; for NumPy also the fast "
        "path's compiled, blas, panels or ufuncs loop alone (default: fast,written-once)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per row first")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto",
        help="auto: a GPU where a backend has one (then the GPU configs too)",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    parser.add_argument(
        "--bidirectional", action="store_true", help="a reverse direction in every layer"
    )
    parser.add_argument(
        "--lengths", action="store_true",
        help="rows of their own lengths (seq/2..seq): xplstm's lengths=, torch's "
        "pack_padded_sequence",
    )  # fmt: skip
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip the baseline")
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help=f"skip {REFERENCE}"
    )
    parser.add_argument(
        "--no-keras", dest="keras", action="store_false",
        help="skip Keras's LSTM on JAX (a peer where keras and jax are installed)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help="threads for every library's BLAS, OpenMP and torch pools and for XLA (default: "
        "theirs)",
    )  # fmt: skip
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: elapsed time; cpu: the process's CPU time, steadier on a busy machine "
        "(needs --threads 1)",
    )  # fmt: skip
    parser.add_argument(
        "--memory", action="store_true",
        help="instead of timing, each row's peak memory over three forward+backward calls, "
        "each row in a fresh process",
    )  # fmt: skip
    parser.add_argument("--memory-row", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON report instead")
    parser.set_defaults(run=bench)
    return parser
