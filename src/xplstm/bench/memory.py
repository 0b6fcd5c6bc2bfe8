"""``xplstm bench --memory``: each row's peak memory, measured in a fresh process of its own.

In one process the allocators of earlier rows keep what they freed, and a row then reuses it:
a high-water mark read there is a lower bound (see :func:`xplstm.bench.timing.peak_memory`).
Here each row runs alone in a new Python process: the rise of its resident set's high-water
mark over building the row and three forward+backward calls, from just before the build (the
libraries imported and warmed up on a (2, 4) problem of the same sizes, so that loading and
compiling their code is not counted), against 5·B·T·H values per recurrence (the four gates and
the cell of every step, what a backward must keep). Linux only (``/proc/self``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from xplstm.bench.contenders import Row, Structure
from xplstm.bench.timing import status_kb

#: Forward+backward calls a row makes after its build.
CALLS = 3


def measure_row(row: Row) -> int:
    """Bytes the resident high-water mark rose by over ``row``'s build and three calls."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident set
    before = status_kb("VmRSS")
    run = row.build()["forward+backward"]
    for _ in range(CALLS):
        out = run()
        row.backend.wait(*(out if isinstance(out, tuple) else (out,)))
    return (status_kb("VmHWM") - before) * 1024


def child_argv(args: argparse.Namespace, config: tuple[int, ...], index: int) -> list[str]:
    """The command line that measures row ``index`` of ``config`` in a new process."""
    argv = [sys.executable, "-m", "xplstm", "bench", "--memory-row", str(index)]
    argv += ["--configs", ",".join(map(str, config)), "--dtype", args.dtype]
    argv += ["--device", args.device, "--layers", str(args.layers), "--paths", ",".join(args.paths)]
    argv += ["--backends", ",".join(args.backends)] if args.backends else []
    argv += ["--threads", str(args.threads)] if args.threads is not None else []
    flags = {
        "--bidirectional": args.bidirectional, "--lengths": args.lengths,
        "--no-naive": not args.naive, "--no-reference": not args.reference,
        "--no-keras": not args.keras,
    }  # fmt: skip
    return argv + [flag for flag, on in flags.items() if on]


def in_fresh_processes(
    args: argparse.Namespace, config: tuple[int, ...], rows: list[Row], structure: Structure
) -> list[dict[str, Any]]:
    """Every row of ``config`` measured in a process of its own: one result each."""
    batch, seq, _, hidden = config
    itemsize = 4 if args.dtype == "float32" else 8
    recurrences = structure.num_layers * structure.directions
    cache_bytes = 5 * batch * seq * hidden * itemsize * recurrences
    found = []
    for index, row in enumerate(rows):
        done = subprocess.run(
            child_argv(args, config, index), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"measuring {row.name} at {config} failed:\n{done.stderr[-2000:]}")
        peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]
        found.append(
            {
                "config": list(config),
                "row": row.name,
                "peak_mib": round(peak / 2**20, 1),
                "peak_over_5bth": round(peak / cache_bytes, 2),
            }
        )
    reference = next((r["peak_mib"] for r in found if r["row"].startswith("torch")), None)
    for result in found:
        ratio = result["peak_mib"] / reference if reference else None
        result["ratio_to_torch"] = None if ratio is None else round(ratio, 2)
    return found


def format_memory(results: list[dict[str, Any]]) -> str:
    """One table per configuration: peak MiB, against 5BTH per recurrence and against torch."""
    lines, current = [], None
    width = max([len("row"), *(len(r["row"]) for r in results)])
    for r in results:
        if r["config"] != current:
            current = r["config"]
            lines += ["", f"(B,T,I,H) = {tuple(current)}  peak memory, fresh process"]
            lines.append(f"{'row':{width}s} {'peak MiB':>9s} {'/5BTH':>6s} {'x torch':>8s}")
        ratio = "-" if r["ratio_to_torch"] is None else f"{r['ratio_to_torch']:.2f}x"
        lines.append(
            f"{r['row']:{width}s} {r['peak_mib']:9.1f} {r['peak_over_5bth']:6.2f} {ratio:>8s}"
        )
    return "\n".join(lines)
