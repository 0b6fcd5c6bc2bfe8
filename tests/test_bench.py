"""``xplstm bench`` runs end to end on a tiny configuration (a smoke test: nothing is timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xplstm import backends
from xplstm.backends._numpy_fast import numba_installed
from xplstm.cli import main


def test_bench_json_report(capsys):
    code = main(
        ["bench", "--backends", "numpy", "--configs", "2,3,4,5", "--repeats", "1", "--warmup", "0",
         "--no-reference", "--no-keras", "--json"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(r["row"], r["mode"]): r for r in report["results"]}
    for name in ("xplstm numpy fast", "xplstm numpy written-once", "naive concat (numpy)"):
        for mode in ("forward", "forward+backward"):
            row = rows[name, mode]
            assert row["config"] == [2, 3, 4, 5]
            assert len(row["times_ms"]) == 1 and row["median_ms"] > 0
            assert row["gflops"] > 0 and row["matmul_gflops"] > 0
    fast = rows["xplstm numpy fast", "forward+backward"]
    assert fast["memory_method"] == "tracemalloc" and fast["peak_mb"] > 0
    assert report["environment"]["backends"]["numpy"]


def test_bench_reference_row(capsys):
    pytest.importorskip("torch", reason="torch.nn.LSTM is the reference")
    main(["bench", "--backends", "numpy", "--configs", "1,2,3,4", "--repeats", "1", "--warmup",
          "0", "--modes", "forward", "--paths", "fast", "--no-naive", "--no-keras",
          "--json"])  # fmt: skip
    rows = {r["row"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["torch.nn.LSTM"]["ratio_to_torch"] == 1.0
    assert rows["xplstm numpy fast"]["ratio_to_torch"] > 0


def test_bench_table(capsys):
    main(["bench", "--backends", "numpy", "--configs", "1,2,3,4", "--repeats", "1",
          "--modes", "forward", "--paths", "fast", "--no-naive", "--no-reference",
          "--no-keras"])  # fmt: skip
    out = capsys.readouterr().out
    assert "(B,T,I,H) = (1, 2, 3, 4)  forward" in out
    assert "xplstm numpy fast" in out and "written-once" not in out and "naive" not in out


def test_bench_train_step_and_numpy_loops(capsys):
    """The train-step mode times the whole step against torch's (when torch is here), every
    xplstm row has one and the naive baseline has none; NumPy's loops run as their own rows."""
    main(["bench", "--backends", "numpy", "--configs", "3,4,2,5", "--repeats", "1", "--warmup",
          "0", "--modes", "train-step", "--paths", "fast,compiled,ufuncs", "--threads", "1",
          "--clock", "cpu", "--no-keras", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    rows = {r["row"]: r for r in report["results"]}
    assert {r["mode"] for r in rows.values()} == {"train-step"}
    expected = {"xplstm numpy fast", "xplstm numpy fast, ufuncs loop"}
    if numba_installed():
        expected.add("xplstm numpy fast, compiled loop")
    if "torch" in backends.available():
        expected.add("torch.nn.LSTM")
        assert rows["torch.nn.LSTM"]["ratio_to_torch"] == 1.0
    assert set(rows) == expected, "the naive baseline has no train step"
    assert report["threads"] == 1 and report["clock"] == "cpu"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--configs", "1,2,3"], "a config is B,T,I,H as four positive ints"),
        (["--modes", "sideways"], "error: --modes takes forward, forward+backward, train-step"),
        (["--threads", "0"], "xplstm bench: error: --threads takes a positive count, got 0"),
        (["--clock", "cpu"], "xplstm bench: error: --clock cpu reads the process's CPU time"),
        (["--paths", "slow"], "xplstm bench: error: --paths takes fast, written-once"),
        (["--backends", "nope"], "xplstm bench: error: unknown backend 'nope'"),
    ],
)
def test_bench_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["bench", "--backends", "numpy", "--no-keras", *argv])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_a_bidirectional_stack_with_lengths(capsys):
    """--layers, --bidirectional, --lengths build that LSTM on every side: xplstm's with
    lengths=, torch's through pack_padded_sequence; the ratio is taken to that torch row."""
    pytest.importorskip("torch", reason="torch.nn.LSTM is the reference")
    main(["bench", "--backends", "numpy", "--configs", "2,3,2,4", "--repeats", "1", "--warmup",
          "0", "--modes", "forward+backward", "--paths", "written-once", "--layers", "2",
          "--bidirectional", "--lengths", "--no-keras", "--json"])  # fmt: skip
    rows = {(r["row"], r["mode"]): r for r in json.loads(capsys.readouterr().out)["results"]}
    label = " [2 layers, bidirectional, lengths]"
    assert rows["torch.nn.LSTM" + label, "forward+backward"]["ratio_to_torch"] == 1.0
    ours = rows["xplstm numpy written-once" + label, "forward+backward"]
    assert ours["ratio_to_torch"] > 0
    assert not any(name.startswith("naive") for name, _ in rows), "the baseline is one layer"
    # Every recurrence's products: 2 layers, 2 directions, inputs 2 then 2 * 4.
    expected = sum(2.0 * 2 * 3 * (n + 4) * 4 * 4 * 2 for n in (2, 8))
    assert ours["gflops"] == pytest.approx(3 * expected / (ours["median_ms"] * 1e-3) / 1e9, 0.01)


def test_bench_keras_peer_and_the_ratio_to_the_best_peer(capsys):
    """Keras's LSTM on JAX runs as a peer row, with lengths as a mask, and every row
    reads its ratio to the fastest peer of its mode (that peer reads 1.0)."""
    from xplstm.bench import keras_peer

    reason = keras_peer.unavailable_reason()
    if reason is not None:
        pytest.skip(f"Keras 3 on JAX is a peer: {reason}")
    main(["bench", "--backends", "numpy", "--configs", "3,4,2,5", "--repeats", "1", "--warmup",
          "0", "--modes", "forward+backward,train-step", "--paths", "fast", "--no-naive",
          "--layers", "2", "--bidirectional", "--lengths", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    rows = {(r["row"], r["mode"]): r for r in report["results"]}
    label = " [2 layers, bidirectional, lengths]"
    peers = ["keras.layers.LSTM (jax)" + label]
    if "torch" in backends.available():
        peers.append("torch.nn.LSTM" + label)
    for mode in ("forward+backward", "train-step"):
        medians = {name: rows[name, mode]["median_ms"] for name in peers}
        for name in [*peers, "xplstm numpy fast" + label]:
            ratio = rows[name, mode]["median_ms"] / min(medians.values())
            assert rows[name, mode]["ratio_to_best_peer"] == pytest.approx(ratio, rel=1e-3)
        assert 1.0 in {rows[name, mode]["ratio_to_best_peer"] for name in peers}
    assert rows[peers[0], "forward+backward"]["gflops"] > 0


def test_bench_no_keras(capsys):
    main(["bench", "--backends", "numpy", "--configs", "1,2,3,4", "--repeats", "1", "--warmup",
          "0", "--modes", "forward", "--paths", "fast", "--no-naive", "--no-reference",
          "--no-keras", "--json"])  # fmt: skip
    rows = [r["row"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert rows == ["xplstm numpy fast"]


_START = """
import os, jax
from xplstm import backends
cpus = os.sched_getaffinity(0)
print(backends.get("jax").start_with_threads(1))
print(os.sched_getaffinity(0) == cpus, jax.numpy.ones(2).sum() == 2)
print(backends.get("jax").start_with_threads(1))
"""


def test_jax_starts_with_the_threads_asked_for():
    """XLA's flags are set before JAX starts, JAX starts on as many CPUs as threads asked for,
    the CPUs are given back; once JAX has started it says so instead."""
    if "jax" not in backends.available():
        pytest.skip("jax is not installed")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", _START], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    assert out[0].startswith(f"XLA_FLAGS={flags}")
    if len(os.sched_getaffinity(0)) > 1:
        assert out[0].endswith(f"started on 1 of {len(os.sched_getaffinity(0))} CPUs")
    assert out[1] == "True True"
    assert out[2].startswith("not set: JAX had started already")


def test_the_text_table_stays_aligned_with_long_row_names():
    """Every line of a table (header included) puts its columns at the same places, however
    long a row's name is."""
    from xplstm.bench.report import format_table
    from xplstm.bench.timing import Result

    def result(row: str) -> Result:
        return Result(
            config=(2, 3, 4, 5), mode="forward", row=row, backend="numpy", device="cpu",
            times_ms=[1.0], median_ms=1.0, ratio_to_torch=1.0, ratio_to_best_peer=None,
            gflops=1.0, matmul_gflops=2.0, fraction_of_matmul=0.5, step_matmul_gflops=1.0,
            peak_mb=None, peak_over_cache=None, memory_method="none",
        )  # fmt: skip

    long = "xplstm numpy, compiled loop, 2 layers, bidirectional, lengths"
    lines = format_table([result("torch"), result(long)]).splitlines()[2:]
    assert len(long) > 34 and len(lines) == 3
    assert len({len(line) for line in lines}) == 1, lines  # the last column right-aligned
    ms = lines[0].index(" ms") + 3
    assert all(line[ms - 4 : ms] == "1.00" for line in lines[1:]), lines


def test_bench_memory_in_fresh_processes(capsys):
    """--memory measures each row in a process of its own: at least the gates and cells the
    backward keeps (5BTH), and the row names and ratios of the timed report."""
    main(["bench", "--backends", "numpy", "--configs", "16,200,4,64", "--paths",
          "fast,written-once", "--no-naive", "--no-reference", "--no-keras", "--memory",
          "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    rows = {r["row"]: r for r in report["memory"]}
    assert set(rows) == {"xplstm numpy fast", "xplstm numpy written-once"}
    five_bth = 5 * 16 * 200 * 64 * 4 / 2**20
    for row in rows.values():
        assert row["peak_over_5bth"] >= 1.0, row
        assert row["peak_mib"] == pytest.approx(row["peak_over_5bth"] * five_bth, rel=0.02)
        assert row["ratio_to_torch"] is None
