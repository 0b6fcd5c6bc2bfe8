"""Markdown tables from ``xplstm bench --json`` output, for ``docs/benchmarks.md``.

xplstm bench --json > bench.json && python benchmarks/report.py bench.json
"""

from __future__ import annotations

import json
import sys


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(report: dict) -> str:
    by_config: dict[tuple, dict[str, dict[str, dict]]] = {}
    for r in report["results"]:
        by_config.setdefault(tuple(r["config"]), {}).setdefault(r["row"], {})[r["mode"]] = r
    lines = [
        f"`{report['command']}` ({report['dtype']}, {report['warmup']} warm-up, "
        f"median of {report['repeats']}, threads: {report.get('threads', 'library defaults')}, "
        f"clock: {report.get('clock', 'wall')}); "
        "matmul GFLOP/s in the same run: "
        + ", ".join(f"{k} {v:g}" for k, v in report["matmul_gflops"].items()),
    ]
    for config, rows in by_config.items():
        lines += [
            "",
            f"**(B,T,I,H) = {config}**",
            "",
            "| row | fwd ms | fwd x torch | fwd x best peer | fwd+bwd ms | fwd+bwd x torch"
            " | fwd+bwd x best peer | train step ms | train x torch | train x best peer | GFLOP/s"
            " | of mm | step mm GFLOP/s | peak MB | peak / 5BTH |",
            "|---|" + "---:|" * 15,
        ]
        for name, modes in rows.items():
            f, fb = modes.get("forward", {}), modes.get("forward+backward", {})
            train = modes.get("train-step", {})
            both = fb or f or train
            lines.append(
                f"| {name} "
                + "".join(
                    f"| {_cell(mode.get('median_ms'), '.2f')} "
                    f"| {_cell(mode.get('ratio_to_torch'), '.2f')} "
                    f"| {_cell(mode.get('ratio_to_best_peer'), '.2f')} "
                    for mode in (f, fb, train)
                )
                + f"| {_cell(both.get('gflops'), '.1f')} "
                f"| {_cell(both.get('fraction_of_matmul'), '.0%')} "
                f"| {_cell(both.get('step_matmul_gflops'), '.1f')} "
                f"| {_cell(fb.get('peak_mb'), '.1f')} | {_cell(fb.get('peak_over_cache'), '.2f')} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as source:
        print(markdown(json.load(source)))
