"""The ``xplstm`` command: each task trains for a few steps and writes its files; info, generate,
early stopping, Ctrl-C and the error messages."""

from __future__ import annotations

import errno
import json
import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest

import xplstm
from tests.support import Target, assert_close
from xplstm import checkpoint, cli, sampling, tasks

# `xplstm train` needs these; an offline install with --no-deps (the GPU check) may lack them.
pytest.importorskip("threadpoolctl", reason="xplstm train limits BLAS threads with threadpoolctl")
pytest.importorskip("matplotlib", reason="xplstm train draws loss.png with matplotlib")
from xplstm.train import evaluate

PNG = b"\x89PNG\r\n\x1a\n"
#: Small settings per task, so a smoke run takes well under a second of training.
SMALL = {"adding": "10", "adding-lengths": "10", "copy": "5", "sine": "12", "text": "20"}


def train(tmp_path: Path, task: str, *extra: str) -> tuple[int, dict]:
    out = tmp_path / task
    argv = ["train", "--task", task, "--seq-len", SMALL[task], "--hidden", "8", "--batch", "4"]
    status = cli.main([*argv, "--steps", "3", "--out", str(out), "--quiet", *extra])
    return status, json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_each_task_trains_and_writes_its_files(
    tmp_path: Path, task: str, capsys: pytest.CaptureFixture
) -> None:
    status, metrics = train(tmp_path, task)
    assert status == 0
    out = tmp_path / task
    assert (out / "loss.png").read_bytes().startswith(PNG)
    for key in ("task", "backend", "device", "steps", "seconds", "train_loss", "metric_name"):
        assert metrics[key] is not None, key
    assert metrics["task"] == task and metrics["backend"] == "numpy" and metrics["steps"] == 3
    assert metrics["stopped"] == "max steps" and metrics["seconds"] > 0.0
    assert np.isfinite(metrics["test_metric"]) and metrics["baseline"] > 0.0
    assert metrics["metric_name"] == tasks.TASKS[task].metric_name
    printed = capsys.readouterr().out
    assert f"vs baseline {metrics['baseline']:.4g}" in printed
    assert str(out / "loss.png") in printed
    # The saved model is the trained one: it reproduces the held-out metric.
    model = checkpoint.load(out / "model.npz")
    task_ = tasks.get(task, int(SMALL[task]), seed=0)
    backend = xplstm.backends.get("numpy")
    metric, _ = evaluate(model, task_, task_.test_set(), backend)
    assert metric == pytest.approx(metrics["test_metric"], rel=1e-5)


def test_text_run_prints_a_sample_and_generate_samples_more(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, metrics = train(tmp_path, "text")
    assert metrics["metric_name"] == "bits per character"
    assert metrics["sample"].startswith(sampling.PRIME) and len(metrics["sample"]) > 300
    assert "sample:\n" + metrics["sample"] in capsys.readouterr().out
    model = str(tmp_path / "text" / "model.npz")
    argv = ["generate", "--model", model, "--length", "30", "--prime", "KING:", "--seed", "1"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("KING:") and len(first) == len("KING:") + 30 + 1
    cli.main(argv)
    assert capsys.readouterr().out == first


def test_generate_refuses_a_model_of_another_task(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train(tmp_path, "adding")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "--model", str(tmp_path / "adding" / "model.npz")])
    assert exit_.value.code == 2
    assert "not trained on the text task" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["adding", "copy"])  # regression, and classes with integers
def test_trains_on_every_backend(tmp_path: Path, target: Target, task: str) -> None:
    device = [] if target.device_spec is None else ["--device", target.device_spec]
    status, metrics = train(tmp_path, task, "--backend", target.backend, *device)
    assert status == 0
    assert metrics["backend"] == target.backend
    assert metrics["device"] == str(target.device)
    assert np.isfinite(metrics["test_metric"])


def test_structure_flags_build_that_lstm(tmp_path: Path) -> None:
    """--layers, --bidirectional, --proj-size, --dropout reach the LSTM, its checkpoint and
    metrics.json; the saved model reproduces the held-out metric (evaluated without dropout)."""
    flags = ["--layers", "2", "--bidirectional", "--proj-size", "3", "--dropout", "0.2"]
    status, metrics = train(tmp_path, "adding-lengths", *flags)
    assert status == 0
    assert (metrics["layers"], metrics["bidirectional"], metrics["proj_size"]) == (2, True, 3)
    model = checkpoint.load(tmp_path / "adding-lengths" / "model.npz")
    lstm = model.layers[0]
    assert (lstm.num_layers, lstm.bidirectional, lstm.proj_size, lstm.dropout) == (2, True, 3, 0.2)
    assert model.layers[-1].in_features == 6
    task = tasks.get("adding-lengths", 10, seed=0)
    metric, _ = evaluate(model, task, task.test_set(), xplstm.backends.get("numpy"))
    assert metric == pytest.approx(metrics["test_metric"], rel=1e-5)


#: A value other than the default for every flag that decides the trained parameters.
NON_DEFAULT = {
    "--task": "adding-lengths",
    "--seq-len": "9",
    "--hidden": "6",
    "--layers": "2",
    "--bidirectional": None,
    "--proj-size": "3",
    "--dropout": "0.3",
    "--batch": "5",
    "--steps": "4",
    "--lr": "0.03",
    "--clip": "0.05",
    "--seed": "3",
}


def test_every_training_flag_acts_as_documented(tmp_path: Path) -> None:
    """The model `xplstm train` saves with a non-default value for every flag above equals the
    documented loop written out with the library (docs/training.md): an LSTM seeded by --seed
    and its head by --seed + 1, batches of --batch drawn by the task from
    default_rng([--seed, 0]), Adam at --lr, the gradient clipped to --clip."""
    argv = [part for flag, value in NON_DEFAULT.items() for part in (flag, value) if part]
    out = tmp_path / "run"
    assert cli.main(["train", *argv, "--out", str(out), "--quiet"]) == 0
    seed, hidden = int(NON_DEFAULT["--seed"]), int(NON_DEFAULT["--hidden"])
    task = tasks.get("adding-lengths", int(NON_DEFAULT["--seq-len"]), seed)
    lstm = xplstm.LSTM(task.input_size, hidden, num_layers=2, bidirectional=True, proj_size=3,
                       dropout=0.3, backend="numpy", seed=seed)  # fmt: skip
    model = xplstm.Sequential(
        lstm, xplstm.LastStep(), xplstm.Linear(2 * 3, task.output_size, backend="numpy", seed=4)
    )
    optimizer = xplstm.optim.Adam(model.parameters(), lr=0.03)
    rng = np.random.default_rng([seed, 0])
    for _ in range(int(NON_DEFAULT["--steps"])):
        batch = task.sample(rng, int(NON_DEFAULT["--batch"]))
        _, d_prediction = task.loss(model(batch.inputs, lengths=batch.lengths), batch.targets)
        model.backward(d_prediction)
        assert xplstm.optim.clip_grad_norm(model.parameters(), 0.05) > 0.05, "--clip acts"
        optimizer.step()
    saved = checkpoint.load(out / "model.npz", backend="numpy")
    for index, (got, want) in enumerate(zip(saved.parameters(), model.parameters(), strict=True)):
        assert_close(got.values, want.values, like=want.values, name=f"parameter {index}")


def test_stops_early_once_the_target_is_met(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.Adding, "target", 100.0)
    _, metrics = train(tmp_path, "adding", "--steps", "50", "--eval-every", "2")
    assert metrics["stopped"] == "target reached" and metrics["steps"] == 2
    assert metrics["target_met"] and metrics["evaluations"][0][0] == 2


@pytest.mark.parametrize(("ratio", "steps"), [(0.99, 2), (1.0, 6), (1.5, 6)])
def test_stops_exactly_when_the_held_out_metric_is_below_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ratio: float, steps: int
) -> None:
    """A held-out check (every --eval-every steps) stops training when its metric is below the
    task's target, and only then: at 0.99 x target after the first check, not at 1.0 or 1.5."""
    monkeypatch.setattr(tasks.Adding, "target", 100.0)  # the training loss is always near it
    real = evaluate
    monkeypatch.setattr("xplstm.train.evaluate", lambda *a: (ratio * 100.0, real(*a)[1]))
    _, metrics = train(tmp_path, "adding", "--steps", "6", "--eval-every", "2")
    assert metrics["steps"] == steps and len(metrics["evaluations"]) == steps // 2


def test_the_defaults_are_those_docs_training_md_states(tmp_path: Path) -> None:
    """The options table's default for each flag that shapes the run (and the adding task's
    row of the per-task table) is what a run without that flag uses, as metrics.json records."""
    text = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    stated = dict(re.findall(r"^\| `(--[a-z-]+)` \| ([^|]+?) \|", text, re.MULTILINE))
    names = ["--layers", "--bidirectional", "--proj-size", "--dropout", "--batch", "--lr",
             "--clip", "--seed"]  # fmt: skip
    row = re.search(r"^\| adding \| (\d+) \| (\d+) \| (\d+) \|", text, re.MULTILINE)
    out = tmp_path / "run"
    assert cli.main(["train", "--steps", "1", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in names:
        used = metrics[name[2:].replace("-", "_")]
        expected = False if stated[name] == "off" else float(stated[name])
        assert used == expected, f"{name}: the docs say {stated[name]}, the run used {used}"
    assert (metrics["seq_len"], metrics["hidden"]) == (int(row[1]), int(row[2]))


def _own_handler(signum: int, frame: object) -> None:
    """A SIGINT handler of the program that runs the CLI."""


@pytest.mark.parametrize(
    "found",
    [signal.default_int_handler, signal.SIG_IGN, _own_handler],
    ids=["default", "ignored", "own"],
)
def test_ctrl_c_stops_after_the_step_and_keeps_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, found: object
) -> None:
    """Whatever SIGINT handler the CLI finds (Python's default; SIG_IGN when started from a
    background shell, nohup or some CI runners; the caller's own) is the one it leaves."""
    outer = signal.signal(signal.SIGINT, found)
    try:
        _ctrl_c_stops_after_the_step_and_keeps_the_model(tmp_path, monkeypatch)
        assert signal.getsignal(signal.SIGINT) is found
    finally:
        signal.signal(signal.SIGINT, outer)


def _ctrl_c_stops_after_the_step_and_keeps_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = tasks.Adding.sample
    calls = []

    def interrupted_at_third_batch(self: tasks.Task, rng: np.random.Generator, n: int):
        calls.append(n)
        if n == 4 and calls.count(4) == 3:  # the third training batch (the held-out set is 1000)
            signal.raise_signal(signal.SIGINT)
        return sample(self, rng, n)

    monkeypatch.setattr(tasks.Adding, "sample", interrupted_at_third_batch)
    status, metrics = train(tmp_path, "adding", "--steps", "1000")
    assert status == cli.INTERRUPTED
    assert metrics["stopped"] == "interrupted" and metrics["steps"] == 3
    # The README: "Ctrl-C stops after the current step and still writes all three."
    assert (tmp_path / "adding" / "model.npz").exists()
    assert (tmp_path / "adding" / "loss.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be a positive int, got 0"),
        (["--lr", "-1"], "--lr must be a positive finite number, got -1.0"),
        (["--seq-len", "1"], "--seq-len must be an int of at least 2, got 1"),
        (["--backend", "nope"], "unknown backend 'nope'; available here: "),
        (["--clip", "0"], "--clip must be a positive finite number, got 0.0"),
        (["--clip", "inf"], "--clip must be a positive finite number, got inf"),
        (["--dropout", "0.3"], "dropout acts between stacked layers"),
        (["--hidden", "8", "--proj-size", "8"], "proj_size must be smaller than hidden_size (8)"),
        (["--layers", "0"], "num_layers must be a positive int, got 0"),
        (["--seed", "-1"], "--seed must be an int of at least 0, got -1"),
        (
            ["--task", "text", "--seq-len", "18000"],
            "--seq-len 18000 is too long for the text task: its held-out text has",
        ),
    ],
)
def test_bad_options_say_what_is_wrong(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--out", str(out), "--quiet", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists(), "the options were checked after the output folder was made"


def test_an_output_folder_that_is_a_file_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "run").write_text("notes")
    monkeypatch.setattr(tasks.Adding, "sample", None)  # training would fail on it
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--out", str(tmp_path / "run"), "--quiet"])
    assert exit_.value.code == 2
    assert f"--out {tmp_path / 'run'} is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "run").read_text() == "notes"


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_finite_model(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third training batch holds a NaN: the run stops before that step's update, says
    so, exits with status 1, and writes the model of step 2, the one a 2-step run writes."""
    status, _ = train(tmp_path / "two", "adding", "--steps", "2")
    assert status == 0
    capsys.readouterr()
    sample, calls = tasks.Adding.sample, []

    def nan_in_third_batch(self: tasks.Task, rng: np.random.Generator, n: int):
        data = sample(self, rng, n)
        calls.append(n)
        if n == 4 and calls.count(4) == 3:  # the held-out set has 1000 rows
            data.inputs[1, 2, 0] = np.nan
        return data

    monkeypatch.setattr(tasks.Adding, "sample", nan_in_third_batch)
    status, metrics = train(tmp_path, "adding", "--steps", "1000")
    assert status == 1
    assert metrics["stopped"] == "non-finite loss" and metrics["steps"] == 2
    said = "step 3 gave a non-finite loss (nan) or gradient norm (nan); stopped before its update"
    assert metrics["problem"].startswith(said)
    assert f"xplstm train: {said}" in capsys.readouterr().err
    kept = checkpoint.load(tmp_path / "adding" / "model.npz")
    two = checkpoint.load(tmp_path / "two" / "adding" / "model.npz")
    for ours, theirs in zip(kept.parameters(), two.parameters(), strict=True):
        np.testing.assert_array_equal(ours.values, theirs.values)
    assert np.isfinite(metrics["test_metric"])


def predict_files(tmp_path: Path, x: np.ndarray) -> list[str]:
    """predict's --model and --input options for a small adding model and ``x``."""
    model = xplstm.Sequential(xplstm.LSTM(2, 3, seed=0), xplstm.LastStep(), xplstm.Linear(3, 1))
    checkpoint.save(tmp_path / "m.npz", model)
    np.save(tmp_path / "x.npy", x)
    return ["predict", "--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "x.npy")]


def test_predict_says_when_outputs_are_not_finite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4, 2)).astype("float32")
    argv = [*predict_files(tmp_path, x), "--output", str(tmp_path / "y.npy")]
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == ""
    x[1, 2, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert cli.main(argv) == 0
    assert np.isnan(np.load(tmp_path / "y.npy")[1]).all()
    assert (
        "xplstm predict: warning: the outputs of 1 of 3 sequences are not finite (NaN or inf), "
        f"the first in row 1; look for NaN or inf in {tmp_path / 'x.npy'}"
    ) in capsys.readouterr().err


def test_predict_writes_nothing_it_cannot_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An --output that is a folder is refused before any work; a write that fails (a full
    disk) leaves the old file and no .partial file."""
    x = np.random.default_rng(0).standard_normal((3, 4, 2)).astype("float32")
    files = predict_files(tmp_path, x)
    (tmp_path / "y").mkdir()
    monkeypatch.setattr(checkpoint, "load", None)  # any work would fail on it
    with pytest.raises(SystemExit) as exit_:
        cli.main([*files, "--output", str(tmp_path / "y")])
    assert exit_.value.code == 2
    assert f"cannot write {tmp_path / 'y'}: it is a folder" in capsys.readouterr().err
    assert not any((tmp_path / "y").iterdir())
    monkeypatch.undo()

    (tmp_path / "y.npy").write_bytes(b"the old outputs")

    def full_disk(file, *args, **kwargs):
        file.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*files, "--output", str(tmp_path / "y.npy")])
    assert exit_.value.code == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (tmp_path / "y.npy").read_bytes() == b"the old outputs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "x.npy", "y", "y.npy"]


def test_info_lists_backends_and_they_agree(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["info"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"xplstm {xplstm.__version__}")
    for name in xplstm.backends.available():
        assert f"  {name:17s} ok (max difference from numpy" in printed
    for name, reason in xplstm.backends.unavailable().items():
        assert f"{name:17s} -- {reason}" in printed
    # The README: "xplstm info prints these settings" (the precision notes).
    precision = printed.split("\nprecision:\n")[1]
    if "jax" in xplstm.backends.available():
        import jax

        x64 = "on" if jax.config.jax_enable_x64 else "off"
        assert f"  jax               64-bit floats {x64};" in precision
    if "torch" in xplstm.backends.available():
        assert "  torch             full float32 matrix products on CUDA" in precision


def test_self_check_catches_a_disagreeing_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = xplstm.backends.get("array_api_strict")
    from_numpy = type(backend).from_numpy
    # A backend that sees slightly different inputs must be reported, not passed.
    monkeypatch.setattr(
        type(backend),
        "from_numpy",
        lambda self, host, device: from_numpy(self, host * 1.01, device),
    )
    assert cli.self_check()["array_api_strict"].startswith("DISAGREES")


def test_metrics_json_is_strict_json_even_when_training_diverges() -> None:
    from xplstm.train import _json_safe

    metrics = {"test_metric": float("nan"), "evaluations": [(50, float("inf")), (100, 0.5)]}
    text = json.dumps(_json_safe(metrics), allow_nan=False)
    assert json.loads(text) == {"test_metric": None, "evaluations": [[50, None], [100, 0.5]]}


def test_default_output_folder_is_runs_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The README: each run writes to ``runs/TASK/`` unless ``--out`` says otherwise."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--task", "sine", "--seq-len", "12", "--hidden", "4", "--batch", "2"]
    assert cli.main([*argv, "--steps", "1", "--quiet"]) == 0
    out = tmp_path / "runs" / "sine"
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "metrics.json", "model.npz"]
    assert json.loads((out / "metrics.json").read_text())["out"] == str(Path("runs", "sine"))


def test_progress_bar_shows_loss_speed_and_time_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README: a progress bar shows the loss, steps per second and the time left; on a
    terminal only (tqdm's ``disable=None``, here taken as a terminal), and never with --quiet."""
    import io

    from xplstm import train as train_module

    shown = io.StringIO()

    def bar_on_a_terminal(*args, disable=None, **kwargs):
        return tqdm(*args, disable=bool(disable), file=shown, mininterval=0, **kwargs)

    tqdm = train_module.tqdm
    monkeypatch.setattr(train_module, "tqdm", bar_on_a_terminal)
    argv = ["train", "--task", "adding", "--seq-len", "10", "--hidden", "4", "--batch", "2"]
    assert cli.main([*argv, "--steps", "3", "--out", str(tmp_path / "a")]) == 0
    final = shown.getvalue().split("\r")[-1]
    assert final.startswith("adding (seq-len 10): 100%"), final
    assert "3/3 [" in final and "step/s" in final and "loss=" in final, final
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", final), f"no time left in {final!r}"
    shown.seek(0)
    shown.truncate()
    assert cli.main([*argv, "--steps", "3", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert shown.getvalue() == ""


def test_readme_table_states_each_task_s_baseline_and_target() -> None:
    """The README's task table: the baseline and the "stops at" target of every task are the
    ones the code uses."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {
        m.group(1): [cell.strip() for cell in m.group(2).split("|")]
        for m in re.finditer(r"^\| `([\w-]+)` \|(.*)\|$", readme, re.MULTILINE)
    }
    assert set(rows) == set(tasks.TASKS)
    stated = {name: (row[-2], row[-1]) for name, row in rows.items()}
    sine, text = tasks.get("sine"), tasks.get("text")
    for name in ("adding", "adding-lengths"):
        task = tasks.get(name)
        # What a default run prints: about 1/6, the variance of the sum of two U[0, 1], as
        # measured on each task's own held-out rows.
        assert stated[name] == (f"{task.baseline:.3f} (always 1)", "< 0.01"), name
        assert task.target == 0.01 and task.baseline == pytest.approx(1 / 6, abs=0.01), name
    assert stated["sine"] == ("forecasting 0", "< 0.01") and sine.target == 0.01
    # The text task's target is not met by a default run: the README says where it ends, as
    # docs/training.md measured it (xplstm train --task text).
    measured = re.search(
        r"\*\*(\d\.\d+) bits per character\*\*",
        (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(),
    )
    assert measured is not None and text.target == 2.0 and text.defaults["steps"] == 1000
    assert stated["text"] == (
        "character frequencies, 4.84",
        f"< 2.0, not met: a default run ends at {measured.group(1)}",
    )
    assert round(text.baseline, 2) == 4.84
    assert stated["copy"] == ("10 log 8 / (T + 20)", "baseline / 10")
    for blanks in (5, 20):
        copy = tasks.get("copy", seq_len=blanks)
        assert copy.baseline == pytest.approx(10 * math.log(8) / (blanks + 20))
        assert copy.target == pytest.approx(copy.baseline / 10)
