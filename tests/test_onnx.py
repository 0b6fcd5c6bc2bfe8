"""ONNX export: ONNX Runtime runs the exported graphs and gives xplstm's outputs.

Float32 graphs run in ONNX Runtime. Its CPU LSTM kernel refuses double (onnxruntime 1.32), so
float64 graphs run in ONNX's own reference evaluator, and in ONNX Runtime where it accepts them.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import checkpoint, cli

onnx = pytest.importorskip("onnx", reason="the exporter builds graphs with onnx: '.[test]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the graphs: '.[test]'")
from onnx.reference import ReferenceEvaluator  # noqa: E402

from xplstm import onnx as exporter  # noqa: E402

#: How close the runtime's outputs must be to xplstm's forward, per dtype.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
#: A second opset besides the default, which ONNX Runtime 1.18 and later run.
NEWER_OPSET = 21


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def data(
    batch: int, seq: int, features: int, hidden: int, dtype: str, recurrences: int = 1
) -> dict[str, np.ndarray]:
    """Inputs ``x`` and states ``h0``, ``c0`` shaped as the forward of an LSTM with that many
    ``recurrences`` takes them."""
    rng = np.random.default_rng(11)
    states = (batch, hidden) if recurrences == 1 else (recurrences, batch, hidden)
    return {
        "x": rng.standard_normal((batch, seq, features)).astype(dtype),
        "h0": (rng.standard_normal(states) * 0.5).astype(dtype),
        "c0": (rng.standard_normal(states) * 0.5).astype(dtype),
    }


def ours(model, x, h0=None, c0=None, lengths=None) -> dict[str, np.ndarray]:
    """xplstm's y (the model's output), h_n and c_n, the last two from the model's one LSTM."""
    layers = model.layers if isinstance(model, xplstm.Sequential) else [model]
    steps = {} if lengths is None else {"lengths": lengths}
    for layer in layers:
        if isinstance(layer, xplstm.LSTM):
            x, h_n, c_n = layer(x, h0, c0, **steps)
        elif isinstance(layer, xplstm.LastStep):
            x = layer(x, **steps)
        else:
            x = layer(x)
    return {name: xplstm.to_numpy(a) for name, a in (("y", x), ("h_n", h_n), ("c_n", c_n))}


def assert_outputs(got: list[np.ndarray], expected: dict[str, np.ndarray], dtype: str) -> None:
    """The runtime's outputs, in order, are NumPy arrays equal to ``expected`` within
    :data:`TOLERANCE`."""
    assert len(got) == len(expected)
    tol = TOLERANCE[dtype]
    for actual, (name, wanted) in zip(got, expected.items(), strict=True):
        assert_close(actual, wanted, like=wanted, rtol=tol, atol=tol, name=name)


def models(dtype: str) -> dict[str, xplstm.LSTM | xplstm.Sequential]:
    """Every exportable configuration, small."""

    def lstm(seed: int, inputs: int = 3) -> xplstm.LSTM:
        layer = xplstm.LSTM(inputs, 5, seed=seed, dtype=dtype)
        layer.bias.values = layer.bias.values + 0.3  # a bias that no gate order hides
        return layer

    return {
        "lstm": lstm(0),
        "lstm-without-bias": xplstm.LSTM(3, 5, seed=7, dtype=dtype, use_bias=False),
        "lstm-laststep-linear": xplstm.Sequential(
            lstm(1), xplstm.LastStep(), xplstm.Linear(5, 2, seed=2, dtype=dtype)
        ),
        "lstm-linear-per-step": xplstm.Sequential(
            lstm(3), xplstm.Linear(5, 4, seed=4, dtype=dtype)
        ),
        "linear-lstm-laststep": xplstm.Sequential(
            xplstm.Linear(3, 4, seed=5, dtype=dtype), lstm(6, inputs=4), xplstm.LastStep()
        ),
        "stacked-bidirectional-without-bias-laststep-linear": xplstm.Sequential(
            xplstm.LSTM(
                3, 5, num_layers=2, bidirectional=True, use_bias=False, seed=8, dtype=dtype
            ),
            xplstm.LastStep(),
            xplstm.Linear(10, 2, seed=9, dtype=dtype),
        ),
    }


CONFIGURATIONS = list(models("float32"))


def the_lstm(model) -> xplstm.LSTM:
    """The first LSTM of ``model``."""
    return next(m for m in getattr(model, "layers", [model]) if isinstance(m, xplstm.LSTM))


#: Unsorted lengths, with a full-length row and a length-1 row, for batches of 4 and seq 6.
LENGTHS = np.array([3, 6, 1, 4], dtype=np.int32)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_stacked_and_bidirectional_layers_give_our_outputs_with_lengths(
    num_layers: int, bidirectional: bool
) -> None:
    lstm = xplstm.LSTM(3, 4, num_layers=num_layers, bidirectional=bidirectional, seed=num_layers)
    for recurrence in lstm.recurrences:  # a bias that no gate order or direction order hides
        recurrence.bias.values = recurrence.bias.values + 0.3
    head = xplstm.Linear(lstm.directions * 4, 2, seed=1)
    lstm_and_head = xplstm.Sequential(lstm, xplstm.LastStep(), head)
    count = len(lstm.recurrences)
    feed = data(4, 6, 3, 4, "float32", count)
    for model in (lstm, lstm_and_head):
        proto = exporter.to_onnx(model)
        onnx.checker.check_model(proto, full_check=True)
        nodes = [n for n in proto.graph.node if n.op_type == "LSTM"]
        assert len(nodes) == num_layers
        direction = "bidirectional" if bidirectional else "forward"
        assert {helper_attribute(n, "direction") for n in nodes} == {direction}
        run = session(proto)
        states = ("batch", 4) if count == 1 else (count, "batch", 4)
        assert [tuple(i.shape) for i in run.get_inputs()][1:] == [states, states, ("batch",)]
        for lengths in (None, LENGTHS):
            for given in ({}, {"h0": feed["h0"], "c0": feed["c0"]}):
                steps = {} if lengths is None else {"sequence_lens": lengths}
                got = run.run(None, {"x": feed["x"]} | given | steps)
                expected = ours(model, feed["x"], **given, lengths=lengths)
                assert_outputs(got, expected, "float32")
    # The lengths matter: the padded steps do not leak into the outputs.
    padded = feed["x"].copy()
    padded[np.arange(6)[None, :] >= LENGTHS[:, None]] = 7.0
    got = session(exporter.to_onnx(lstm_and_head)).run(
        None, {"x": padded, "sequence_lens": LENGTHS}
    )
    assert_outputs(got, ours(lstm_and_head, feed["x"], lengths=LENGTHS), "float32")


def helper_attribute(node: onnx.NodeProto, name: str):
    """The value of attribute ``name`` of ``node``."""
    value = onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == name))
    return value.decode() if isinstance(value, bytes) else value


def test_dropout_is_left_out_as_at_inference() -> None:
    # Exported as model.eval() computes: dropout acts only in training.
    lstm = xplstm.LSTM(3, 4, num_layers=2, dropout=0.5, recurrent_dropout=0.3, seed=3)
    assert lstm.training
    run = session(exporter.to_onnx(lstm))
    assert lstm.training  # export does not switch the model's mode
    feed = data(2, 5, 3, 4, "float32", 2)
    expected = ours(lstm.eval(), feed["x"])
    assert_outputs(run.run(None, {"x": feed["x"]}), expected, "float32")


@pytest.mark.parametrize("opset", [exporter.DEFAULT_OPSET, NEWER_OPSET])
@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_onnx_runtime_gives_our_outputs_in_float32(name: str, opset: int) -> None:
    model = models("float32")[name]
    proto = exporter.to_onnx(model, opset=opset)
    assert proto.opset_import[0].version == opset
    lstm = the_lstm(model)
    assert [n.op_type for n in proto.graph.node].count("LSTM") == lstm.num_layers
    run = session(proto)
    for batch, seq in ((3, 6), (1, 1)):
        feed = data(batch, seq, 3, 5, "float32", len(lstm.recurrences))
        expected = ours(model, feed["x"], feed["h0"], feed["c0"])
        assert_outputs(run.run(None, feed), expected, "float32")
        # The states are optional inputs: left out, they are zeros.
        assert_outputs(run.run(None, {"x": feed["x"]}), ours(model, feed["x"]), "float32")
        only_c0 = {"x": feed["x"], "c0": feed["c0"]}
        assert_outputs(run.run(None, only_c0), ours(model, feed["x"], None, feed["c0"]), "float32")


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_float64_graphs_give_our_outputs(name: str) -> None:
    model = models("float64")[name]
    proto = exporter.to_onnx(model, dtype="float64")
    lstm = the_lstm(model)
    feed = data(2, 5, 3, 5, "float64", len(lstm.recurrences))
    expected = ours(model, feed["x"], feed["h0"], feed["c0"])
    # The reference evaluator needs every input fed, and ignores sequence_lens (lengths are
    # checked in ONNX Runtime, in float32).
    feed[exporter.LENGTHS] = np.full(2, 5, dtype=np.int32)
    assert_outputs(ReferenceEvaluator(proto).run(None, feed), expected, "float64")
    # ONNX Runtime either runs double LSTMs just as closely or refuses them outright.
    try:
        got = session(proto).run(None, feed)
    except Exception as error:  # onnxruntime raises its own exception types
        assert "does not support double" in str(error)
    else:
        assert_outputs(got, expected, "float64")


def test_a_long_sequence_runs_in_chunks_with_the_state_carried() -> None:
    # Serving a stream: feed each chunk's h_n, c_n as the next chunk's h0, c0.
    model = models("float32")["lstm"]
    run = session(exporter.to_onnx(model))
    x = data(2, 9, 3, 5, "float32")["x"]
    state: dict[str, np.ndarray] = {}
    chunks = []
    for chunk in (x[:, :4], x[:, 4:7], x[:, 7:]):
        y, h_n, c_n = run.run(None, {"x": chunk} | state)
        chunks.append(y)
        state = {"h0": h_n, "c0": c_n}
    got = [np.concatenate(chunks, axis=1), h_n, c_n]
    assert_outputs(got, ours(model, x), "float32")


def test_a_model_on_any_backend_exports(target) -> None:
    layer = target.lstm(3, 4, seed=8)
    run = session(exporter.to_onnx(layer))
    feed = data(2, 4, 3, 4, "float32")
    expected = ours(xplstm.LSTM(3, 4, seed=8, backend="numpy"), feed["x"], feed["h0"], feed["c0"])
    assert_outputs(run.run(None, feed), expected, "float32")


def test_a_float64_model_exports_as_float32_when_asked() -> None:
    model = models("float64")["lstm-laststep-linear"]
    with pytest.raises(ValueError, match=r"float64.*runs float32 only: pass dtype='float32'"):
        exporter.to_onnx(model)
    run = session(exporter.to_onnx(model, dtype="float32"))
    feed = data(2, 5, 3, 5, "float64")
    got = run.run(None, {k: v.astype("float32") for k, v in feed.items()})
    expected = ours(model, feed["x"], feed["h0"], feed["c0"])
    assert_outputs(got, {k: v.astype("float32") for k, v in expected.items()}, "float32")


def test_two_lstms_have_their_own_states() -> None:
    first, second = xplstm.LSTM(3, 5, seed=0), xplstm.LSTM(5, 2, seed=1)
    model = xplstm.Sequential(first, second, xplstm.LastStep())
    run = session(exporter.to_onnx(model))
    inputs = ["x", "h0_0", "c0_0", "h0_1", "c0_1", "sequence_lens"]
    assert [i.name for i in run.get_inputs()] == inputs
    assert [o.name for o in run.get_outputs()] == ["y", "h_n_0", "c_n_0", "h_n_1", "c_n_1"]
    feed = data(2, 4, 3, 5, "float32")
    y1, h1, c1 = first(feed["x"], feed["h0"], feed["c0"])
    y2, h2, c2 = second(y1)
    got = run.run(None, {"x": feed["x"], "h0_0": feed["h0"], "c0_0": feed["c0"]})
    expected = {"y": y2[:, -1], "h_n_0": h1, "c_n_0": c1, "h_n_1": h2, "c_n_1": c2}
    assert_outputs(got, expected, "float32")


def test_export_writes_a_checked_file(tmp_path: Path) -> None:
    model = models("float32")["lstm-laststep-linear"]
    path = tmp_path / "model.onnx"
    returned = exporter.export(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded == returned and loaded.producer_name == "xplstm"
    assert {op.domain for op in loaded.opset_import} == {""}  # standard operators only
    lstm = next(n for n in loaded.graph.node if n.op_type == "LSTM")
    assert all(a.name != "layout" for a in lstm.attribute)  # ONNX Runtime's CPU refuses layout=1
    feed = data(2, 3, 3, 5, "float32")
    expected = ours(model, feed["x"])
    got = ort.InferenceSession(str(path)).run(None, {"x": feed["x"]})
    assert_outputs(got, expected, "float32")
    with pytest.raises(FileNotFoundError, match="there is no folder"):
        exporter.export(model, tmp_path / "missing" / "model.onnx")


def test_a_failed_export_leaves_the_old_file_and_no_debris(tmp_path: Path, monkeypatch) -> None:
    model = models("float32")["lstm-laststep-linear"]
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the old graph")
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"folder\.onnx: it is a folder"):
        exporter.export(model, folder)

    def full_disk(proto, file, *args, **kwargs):
        file.write(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        exporter.export(model, path)
    assert path.read_bytes() == b"the old graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx", "model.onnx"]
    assert not any(folder.iterdir())


def test_summary_names_every_input_and_output() -> None:
    text = exporter.summary(exporter.to_onnx(models("float32")["lstm-laststep-linear"]))
    assert text.splitlines() == [
        "  input  x      float32 (batch, seq, 3)",
        "  input  h0     float32 (batch, 5) (optional: zeros when not fed)",
        "  input  c0     float32 (batch, 5) (optional: zeros when not fed)",
        "  input  sequence_lens int32 (batch) (optional: every row seq steps long when not fed)",
        "  output y      float32 (batch, 2)",
        "  output h_n    float32 (batch, 5)",
        "  output c_n    float32 (batch, 5)",
    ]


def test_export_refuses_what_it_cannot_export() -> None:
    lstm = xplstm.LSTM(3, 5, seed=0)
    for opset in (exporter.DEFAULT_OPSET - 1, 1000, "18", True):
        with pytest.raises(ValueError, match=f"opset must be an int from {exporter.DEFAULT_OPSET}"):
            exporter.to_onnx(lstm, opset=opset)
    cases = [
        (
            xplstm.Sequential(xplstm.LastStep(), lstm),
            r"the input of layer 1 \(LSTM\) must have shape \(batch, seq, features\) = "
            r"\(\?, \?, 3\)",
        ),
        (xplstm.Sequential(lstm, xplstm.LastStep(), xplstm.LastStep()), r"layer 2 \(LastStep\)"),
        (
            xplstm.Sequential(lstm, xplstm.Linear(4, 1)),
            r"layer 1 \(Linear\) must have shape \(\.\.\., in_features\) = \(\?, \?, 4\), got "
            r"\('batch', 'seq', 5\)",
        ),
        (xplstm.Sequential(xplstm.LastStep()), "no LSTM or Linear layer"),
        (
            xplstm.Sequential(lstm, xplstm.Linear(5, 1, dtype="float64")),
            r"mixes dtypes \['float32', 'float64'\]",
        ),
    ]
    for model, message in cases:
        with pytest.raises(ValueError, match=message):
            exporter.to_onnx(model)
    nested = xplstm.Sequential(lstm, xplstm.Sequential(xplstm.LastStep()))
    with pytest.raises(TypeError, match=r"layer 1 is a Sequential; xplstm\.onnx exports LSTM"):
        exporter.to_onnx(nested)


def test_a_projection_is_refused() -> None:
    layer = xplstm.LSTM(3, 5, num_layers=2, proj_size=2, seed=0)
    with pytest.raises(ValueError, match=r"proj_size=2: ONNX's LSTM operator has no projection"):
        exporter.to_onnx(xplstm.Sequential(layer, xplstm.LastStep()))


def test_the_exporter_imports_the_onnx_package_not_itself(monkeypatch) -> None:
    assert exporter.onnx is sys.modules["onnx"] and exporter.__name__ == "xplstm.onnx"
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    monkeypatch.delitem(sys.modules, "xplstm.onnx")
    with pytest.raises(ImportError, match=r"pip install 'xplstm\[onnx\]'"):
        import xplstm.onnx  # noqa: F401


# -- the command line ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "options"),
    [("adding", []), ("adding-lengths", ["--layers", "2", "--bidirectional"])],
)
def test_a_model_trained_by_the_cli_exports_and_runs_in_onnx_runtime(
    task: str, options: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("matplotlib", reason="xplstm train draws loss.png with matplotlib")
    pytest.importorskip("threadpoolctl", reason="xplstm train limits BLAS threads")
    from xplstm import tasks

    run = ["train", "--task", task, "--seq-len", "10", "--hidden", "8", "--batch", "4", *options]
    assert cli.main([*run, "--steps", "3", "--out", str(tmp_path), "--quiet"]) == 0
    model_path, onnx_path = tmp_path / "model.npz", tmp_path / f"{task}.onnx"
    assert cli.main(["export", "--model", str(model_path), "--onnx", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {onnx_path} (ONNX opset {exporter.DEFAULT_OPSET})" in printed
    assert "output y      float32 (batch, 1)" in printed
    test_set = tasks.get(task, 10, seed=0).test_set()
    inputs = test_set.inputs[:16].astype("float32")
    feed, lengths = {"x": inputs}, None
    if test_set.lengths is not None:
        lengths = test_set.lengths[:16]
        feed[exporter.LENGTHS] = lengths.astype("int32")
    got = ort.InferenceSession(str(onnx_path)).run(["y"], feed)[0]
    model = checkpoint.load(model_path, backend="numpy")
    expected = xplstm.to_numpy(model(inputs, lengths=lengths))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_cli_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    model = tmp_path / "model.npz"
    checkpoint.save(model, models("float64")["lstm-laststep-linear"])

    def error(*extra: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["export", "--model", str(model), "--onnx", str(tmp_path / "m.onnx"), *extra])
        assert exit_.value.code == 2
        return capsys.readouterr().err

    assert "the model is float64" in error() and "--dtype float32" in error()
    assert "opset must be an int from 18" in error("--dtype", "float32", "--opset", "3")
    assert cli.main(["export", "--model", str(model), "--onnx", str(tmp_path / "m.onnx"),
                     "--dtype", "float32"]) == 0  # fmt: skip
    model = tmp_path / "missing.npz"
    assert "No such file or directory" in error()
    model = tmp_path / "m.onnx"
    assert "is not an xplstm checkpoint" in error()
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    monkeypatch.delitem(sys.modules, "xplstm.onnx")
    monkeypatch.delattr(xplstm, "onnx")
    model = tmp_path / "model.npz"
    assert "pip install 'xplstm[onnx]'" in error("--dtype", "float32")


def test_the_readme_deploy_example_runs(tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    # The model `xplstm train --task adding` trains: LSTM(2, 32), its last step, Linear(32, 1).
    model = xplstm.Sequential(
        xplstm.LSTM(2, 32, seed=0), xplstm.LastStep(), xplstm.Linear(32, 1, seed=1)
    )
    exporter.export(model, tmp_path / "adding.onnx")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(example, "README.md (Deploy)", "exec"), names)
    expected = ours(model, names["x"])
    assert_outputs([names["y"], names["h_n"], names["c_n"]], expected, "float32")
