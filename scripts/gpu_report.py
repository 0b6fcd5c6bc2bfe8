"""Write the GPU report: machine facts, pytest summaries, CPU/GPU agreement, benchmark.

Run by ``scripts/gpu-check`` after it has run the suite; usable on a CPU machine too, where
the GPU targets are reported as skipped with their reasons.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xplstm  # noqa: E402
from tests.support import CANDIDATES, TOLERANCES, Target, random_problem, skip_reason  # noqa: E402
from xplstm import backends  # noqa: E402

#: Problems for the agreement table: (batch, seq, input, hidden).
AGREEMENT_SHAPES = ((4, 50, 16, 32), (64, 100, 128, 128))
#: Targets in the agreement table: the GPU ones, and torch and jax on the CPU beside them (the
#: CPU-only targets are compared with the same reference by the test suite on every run).
AGREEMENT_TARGETS = ("cupy", "torch-cuda", "jax-gpu", "torch", "jax")
OUTPUTS = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "d_weights", "d_bias")


def run_problem(layer: xplstm.LSTM, arrays: dict) -> list:
    outputs = list(layer.forward(arrays["x"], arrays["h0"], arrays["c0"]))
    outputs += layer.backward(arrays["dy"], arrays["dh_n"], arrays["dc_n"])
    return [xplstm.to_numpy(a) for a in [*outputs, layer.weights.deltas, layer.bias.deltas]]


def agreement() -> list[dict]:
    """Largest disagreement with the NumPy float64 reference, per target, dtype and output."""
    rows = []
    for shape in AGREEMENT_SHAPES:
        p = random_problem(*shape, seed=1)
        _, _, inputs, hidden = shape
        reference = xplstm.LSTM(inputs, hidden, backend="numpy", dtype="float64", seed=3)
        expected = run_problem(reference, p)
        for backend, device, target_id in CANDIDATES:
            if target_id not in AGREEMENT_TARGETS:
                continue
            reason = skip_reason(backend, device)
            for dtype in ("float64", "float32"):
                row = {"target": target_id, "dtype": dtype, "shape": shape, "skipped": reason}
                if reason is None:
                    target = Target(backend, device, target_id)
                    layer = target.lstm(inputs, hidden, dtype=dtype, seed=3)
                    arrays = {k: target.asarray(v.astype(dtype)) for k, v in p.items()}
                    actual = run_problem(layer, arrays)
                    errors = {
                        name: float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-30))
                        for name, a, e in zip(OUTPUTS, actual, expected, strict=True)
                    }
                    worst = max(errors, key=errors.get)
                    row |= {"worst_output": worst, "relative_error": errors[worst]}
                rows.append(row)
    return rows


def facts() -> dict:
    """The GPU, driver, CUDA, library versions and TF32 settings, as found."""
    found = {"date": datetime.date.today().isoformat(), "python": platform.python_version()}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        found["gpu"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found["gpu"] = "none (nvidia-smi not found or failed)"
    for name in backends.known():
        found[f"{name} version"] = backends.known()[name].version() or "not installed"
        found[f"{name} status"] = backends.unavailable_reason(name) or "available"
    if backends.unavailable_reason("cupy") is None:
        import cupy

        found["CUDA runtime (CuPy)"] = str(cupy.cuda.runtime.runtimeGetVersion())
        found["CUDA driver (CuPy)"] = str(cupy.cuda.runtime.driverGetVersion())
    if backends.unavailable_reason("torch") is None:
        import torch

        found["torch CUDA"] = str(torch.version.cuda)
        found["torch TF32 matmul"] = str(torch.backends.cuda.matmul.allow_tf32)
    found["CUPY_TF32"] = os.environ.get("CUPY_TF32", "unset (CuPy default: TF32 off)")
    if backends.unavailable_reason("jax") is None:
        import jax

        found["jax matmul precision"] = str(jax.config.jax_default_matmul_precision)
    return found


def render(found: dict, pytest_logs: dict[str, str], rows: list[dict], bench: str) -> str:
    lines = [f"# GPU report ({found['date']})", "", "Written by `scripts/gpu-check`.", ""]
    lines += ["## Machine", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in found.items()]
    lines += ["", "## Test suite, per backend", ""]
    for target_id, log in pytest_logs.items():
        summary = log.strip().splitlines()[-1] if log.strip() else "(no output)"
        lines.append(f"- `{target_id}`: {summary}")
    lines += ["", "## CPU/GPU agreement with the NumPy float64 reference", ""]
    lines += [
        "Largest relative error (max |a - e| / max |e|) over y, h_n, c_n, dx, dh0, dc0 and the "
        f"parameter gradients. Test tolerances: {TOLERANCES}. TF32 is off for the agreement "
        "runs: CuPy's default, torch's default, and JAX with matmul precision 'highest'.",
        "",
        "| target | dtype | (B,T,I,H) | relative error | worst output |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["skipped"]:
            lines.append(
                f"| {r['target']} | {r['dtype']} | {r['shape']} | skipped: {r['skipped']} | |"
            )
        else:
            lines.append(
                f"| {r['target']} | {r['dtype']} | {r['shape']} | "
                f"{r['relative_error']:.2e} | {r['worst_output']} |"
            )
    lines += ["", "## Benchmark against cuDNN", "", "```", bench or "(not run)", "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logs", type=pathlib.Path, help="folder of pytest logs, NAME.log each")
    parser.add_argument("--bench", type=pathlib.Path, help="benchmark output to include")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    if backends.unavailable_reason("jax") is None:
        import jax

        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_default_matmul_precision", "highest")
    logs = {}
    if args.logs:
        logs = {p.stem: p.read_text() for p in sorted(args.logs.glob("*.log"))}
    bench = args.bench.read_text() if args.bench and args.bench.exists() else ""
    rows = agreement()
    args.out.write_text(render(facts(), logs, rows, bench))
    print(json.dumps(rows, default=str)[:2000])
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
