"""What a benchmark run prints: its environment (versions, BLAS, threads) and a table."""

from __future__ import annotations

import os
import platform
from typing import Any

import xplstm
from xplstm import backends
from xplstm.bench.timing import Result


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


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(results: list[Result]) -> str:
    """One table per configuration and mode: time, ratios to torch and to the best peer (torch
    or Keras on JAX), throughput, memory. The first column is as wide as the longest row name,
    so the columns stay aligned."""
    width = max([34, *(len(r.row) for r in results)])
    header = (
        f"{'row':{width}s} {'ms':>9s} {'x torch':>8s} {'x peer':>7s} {'GFLOP/s':>8s} {'of mm':>6s} "
        f"{'step mm':>8s} {'peak MB':>8s} {'/5BTH':>6s}"
    )
    lines, current = [], None
    for r in results:
        if (r.config, r.mode) != current:
            current = (r.config, r.mode)
            lines += ["", f"(B,T,I,H) = {r.config}  {r.mode}", header]
        ratio = "-" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.2f}x"
        peer = "-" if r.ratio_to_best_peer is None else f"{r.ratio_to_best_peer:.2f}x"
        lines.append(
            f"{r.row:{width}s} {r.median_ms:9.2f} {ratio:>8s} {peer:>7s} "
            f"{r.gflops:8.1f} {r.fraction_of_matmul:6.0%} {r.step_matmul_gflops:8.1f} "
            f"{_cell(r.peak_mb, '.1f'):>8s} {_cell(r.peak_over_cache, '.2f'):>6s}"
        )
    return "\n".join(lines)
