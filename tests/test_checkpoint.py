"""Checkpoints: round trips across backends give the same outputs; every kind of bad file gives
an error that says what is wrong; nothing is ever unpickled."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import checkpoint
from xplstm.checkpoint import CheckpointError


def host_model(dtype: str = "float64") -> xplstm.Sequential:
    return xplstm.Sequential(
        xplstm.LSTM(3, 4, backend="numpy", dtype=dtype, seed=0),
        xplstm.LastStep(),
        xplstm.Linear(4, 2, backend="numpy", dtype=dtype, seed=1),
    )


@pytest.fixture
def saved(tmp_path):
    """A valid checkpoint of ``host_model()``; returns its path."""
    path = tmp_path / "model.npz"
    checkpoint.save(path, host_model())
    return path


def rewrite(path, change) -> None:
    """Load the arrays of a checkpoint, let ``change`` edit the dict, and write it back."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(arrays)
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def edit_header(**fields):
    def change(arrays):
        header = json.loads(str(arrays["__xplstm__"]))
        arrays["__xplstm__"] = np.array(json.dumps(header | fields))

    return change


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_saved_on_numpy_loads_on_every_backend_with_the_same_outputs(target, tmp_path, dtype):
    model = host_model(dtype)
    x = np.random.default_rng(2).standard_normal((5, 6, 3)).astype(dtype)
    model.layers[0].fast_path = False  # the reference: NumPy's written-once path
    expected = model(x)
    checkpoint.save(tmp_path / "m.npz", model)
    loaded = checkpoint.load(tmp_path / "m.npz", backend=target.backend, device=target.device)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert loaded.backend == target.backend
    assert_close(loaded(target.asarray(x)), expected, like=loaded, name="y")


def test_saved_on_any_backend_loads_on_numpy_bit_for_bit(target, tmp_path):
    lstm = target.lstm(2, 3, seed=4)
    checkpoint.save(tmp_path / "lstm.npz", lstm)
    loaded = checkpoint.load(tmp_path / "lstm.npz", backend="numpy")
    assert isinstance(loaded, xplstm.LSTM) and loaded.backend == "numpy"
    assert (loaded.input_size, loaded.hidden_size, str(loaded.dtype)) == (2, 3, "float32")
    for ours, theirs in zip(loaded.parameters(), lstm.parameters(), strict=True):
        assert_close(ours.values, theirs.values, like=loaded, level="exact")


def test_linear_alone_and_the_file_layout(tmp_path):
    path = tmp_path / "head.npz"
    checkpoint.save(path, xplstm.Linear(4, 2, seed=0))
    assert isinstance(checkpoint.load(path, backend="numpy"), xplstm.Linear)
    assert not (tmp_path / "head.npz.partial").exists()
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["__xplstm__", "layers.0.bias", "layers.0.weights"]
        header = json.loads(str(archive["__xplstm__"]))
    assert header == {
        "format": "xplstm-checkpoint",
        "version": 1,
        "model": "Linear",
        "dtype": "float32",
        "layers": [{"type": "Linear", "in_features": 4, "out_features": 2}],
    }


def test_a_checkpoint_records_the_mode_and_load_restores_it(tmp_path):
    """A model saved in eval mode loads in eval mode (its dropout off), and in training mode
    in training mode; restore leaves the mode the model has."""
    lstm = xplstm.LSTM(2, 3, num_layers=2, dropout=0.5, seed=0)
    for mode in (False, True):
        checkpoint.save(tmp_path / "m.npz", xplstm.Sequential(lstm.train(mode), xplstm.LastStep()))
        loaded = checkpoint.load(tmp_path / "m.npz", backend="numpy")
        assert loaded.layers[0].training is mode
    model = xplstm.Sequential(lstm.eval(), xplstm.LastStep())
    assert checkpoint.restore(tmp_path / "m.npz", model) is None
    assert lstm.training is False


def test_save_refuses_what_it_cannot_describe(tmp_path):
    class Custom(xplstm.LastStep):
        pass

    with pytest.raises(TypeError, match="layer 1 is a Custom; checkpoints hold LSTM, Linear"):
        checkpoint.save(tmp_path / "x.npz", xplstm.Sequential(xplstm.LSTM(2, 3), Custom()))


def test_a_sequential_subclass_is_saved_as_a_sequential(tmp_path):
    class MyModel(xplstm.Sequential):
        pass

    model = MyModel(*host_model().layers)
    checkpoint.save(tmp_path / "mine.npz", model)
    loaded = checkpoint.load(tmp_path / "mine.npz", backend="numpy")
    assert type(loaded) is xplstm.Sequential
    x = np.random.default_rng(3).standard_normal((2, 5, 3))
    assert_close(loaded(x), model(x), like=model, level="exact")


BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), r"not an \.npz \(zip\) archive \(the file is empty\)"),
    "text": (
        lambda p: p.write_text("hello"),
        r"not an \.npz \(zip\) archive \(it starts with b'hello'\)",
    ),
    "pickle": (
        lambda p: p.write_bytes(pickle.dumps({"weights": 1})),
        r"not an \.npz \(zip\) archive \(it starts with b'\\x80",
    ),
    "npy": (
        lambda p: np.save(open(p, "wb"), np.zeros(3)),  # noqa: SIM115
        r"holds a single array \(\.npy\), not an xplstm checkpoint",
    ),
    "truncated": (
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        r"is not a readable \.npz archive \(BadZipFile: .*\); the file is truncated or corrupt",
    ),
    "corrupt": (
        lambda p: p.write_bytes(p.read_bytes()[:200] + b"\xff\xfe" + p.read_bytes()[202:]),
        r"array 'layers\.0\.weights' cannot be read \(BadZipFile: Bad CRC-32",
    ),
    "no-description": (
        lambda p: rewrite(p, lambda a: a.pop("__xplstm__")),
        r"has no xplstm description \(array '__xplstm__'\): it was not written by xplstm",
    ),
    "bad-json": (
        lambda p: rewrite(p, lambda a: a.update(__xplstm__=np.array("{not json"))),
        r"the description is not valid \(Expecting property name",
    ),
    "wrong-version": (
        lambda p: rewrite(p, edit_header(version=7)),
        r"has checkpoint layout version 7; this xplstm reads version 1",
    ),
    "unknown-layer": (
        lambda p: rewrite(p, edit_header(layers=[{"type": "GRU"}])),
        r"layer 0 has unknown type 'GRU'; known: LSTM, Linear, LastStep",
    ),
    "layer-not-an-object": (
        lambda p: rewrite(p, edit_header(model="LSTM", layers=[5])),
        r"the description is not valid: layer 0 must be an object with a 'type', got 5",
    ),
    "layer-type-not-a-string": (
        lambda p: rewrite(p, edit_header(layers=[{"type": ["LSTM"]}])),
        r"layer 0 has unknown type \['LSTM'\]; known: LSTM, Linear, LastStep",
    ),
    "model-does-not-fit": (
        lambda p: rewrite(p, edit_header(model="Linear")),
        r"the description is not valid: model 'Linear' does not fit its layers",
    ),
    "missing-array": (
        lambda p: rewrite(p, lambda a: a.pop("layers.2.bias")),
        r"array 'layers\.2\.bias' of layer 2 \(Linear\) is missing; the file is incomplete",
    ),
    "shape-mismatch": (
        lambda p: rewrite(
            p,
            edit_header(
                layers=[
                    {"type": "LSTM", "input_size": 3, "hidden_size": 5},
                    {"type": "LastStep"},
                    {"type": "Linear", "in_features": 4, "out_features": 2},
                ]
            ),
        ),
        r"layer 0 \(LSTM\): weights must have shape \(8, 20\) = \(input_size \+ hidden_size, "
        r"4 \* hidden_size\), got \(7, 16\)",
    ),
    "dtype-mismatch": (
        lambda p: rewrite(p, edit_header(dtype="float32")),
        r"layer 0 \(LSTM\): weights have dtype float64 but the layer's dtype is float32",
    ),
    "extra-array": (
        lambda p: rewrite(p, lambda a: a.update({"layers.9.weights": np.zeros(2)})),
        r"arrays \['layers\.9\.weights'\] belong to no layer the description lists",
    ),
}


@pytest.mark.parametrize("damage", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_say_what_is_wrong(saved, damage):
    make, message = damage
    make(saved)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(saved, backend="numpy")


class Trap:
    """Unpickling this object would record it: the test fails if that ever happens."""

    sprung = False

    def __reduce__(self):
        return (Trap._spring, ())

    @staticmethod
    def _spring():
        Trap.sprung = True


def test_object_arrays_are_never_unpickled(saved):
    trap = np.empty(1, dtype=object)
    trap[0] = Trap()
    rewrite(saved, lambda arrays: arrays.update({"layers.0.weights": trap}))  # pickled by savez
    with pytest.raises(CheckpointError, match=r"holds pickled objects, which are never loaded"):
        checkpoint.load(saved, backend="numpy")
    assert not Trap.sprung


def test_missing_file_is_a_plain_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nope.npz")


def test_a_wrong_device_is_a_backend_error_not_a_bad_file(saved):
    with pytest.raises(xplstm.backends.BackendError, match="device 'cuda:7' is not available"):
        checkpoint.load(saved, backend="numpy", device="cuda:7")


def adam_steps(model, optimizer, steps: int, seed: int = 5) -> None:
    """``steps`` Adam steps of ``model`` on random data (float64, on the model's device)."""
    rng = np.random.default_rng(seed)
    backend = xplstm.backends.get(model.backend)
    for _ in range(steps):
        x, y = rng.standard_normal((4, 5, 3)), rng.standard_normal((4, 2))
        _, d = xplstm.losses.mse(
            model(backend.from_numpy(x, model.device)), backend.from_numpy(y, model.device)
        )
        model.backward(d)
        optimizer.step()


def test_a_training_checkpoint_resumes_adam_on_any_backend(target, tmp_path):
    """Parameters, Adam's moments and step count come back where the new model lives, so one
    more step there equals one more step of the original."""
    model = host_model()
    optimizer = xplstm.optim.Adam(model.parameters(), lr=0.01)
    adam_steps(model, optimizer, 2)
    checkpoint.save(tmp_path / "t.npz", model, optimizer=optimizer, training={"step": 2})
    adam_steps(model, optimizer, 1, seed=6)

    layers = [
        target.lstm(3, 4, dtype="float64", seed=9),
        xplstm.LastStep(),
        xplstm.Linear(4, 2, backend=target.backend, device=target.device, dtype="float64"),
    ]
    resumed = xplstm.Sequential(*layers)
    again = xplstm.optim.Adam(resumed.parameters(), lr=0.01)
    assert checkpoint.restore(tmp_path / "t.npz", resumed, again) == {"step": 2}
    assert again.steps == 2
    adam_steps(resumed, again, 1, seed=6)
    for ours, theirs in zip(resumed.parameters(), model.parameters(), strict=True):
        assert_close(ours.values, theirs.values, like=resumed)
    assert isinstance(checkpoint.load(tmp_path / "t.npz"), xplstm.Sequential)


def test_restore_says_what_does_not_fit(saved, tmp_path):
    other = xplstm.Sequential(xplstm.LSTM(3, 5, dtype="float64"), xplstm.LastStep())
    with pytest.raises(CheckpointError, match=r"holds a Sequential .* but the model is a Seq"):
        checkpoint.restore(saved, other)
    model = host_model()
    with pytest.raises(CheckpointError, match="holds no optimizer state: it was saved without"):
        checkpoint.restore(saved, model, xplstm.optim.Adam(model.parameters()))
    checkpoint.save(
        tmp_path / "sgd.npz", model, optimizer=xplstm.optim.SGD(model.parameters(), 0.1)
    )
    with pytest.raises(CheckpointError, match="the state is SGD's, not Adam's"):
        checkpoint.restore(tmp_path / "sgd.npz", model, xplstm.optim.Adam(model.parameters()))


def bare_lstm(dtype: str = "float64", **options) -> xplstm.LSTM:
    return xplstm.LSTM(3, 4, backend="numpy", dtype=dtype, **options)


def model_with(lstm: xplstm.LSTM, out_features: int = 2) -> xplstm.Sequential:
    linear = xplstm.Linear(4, out_features, backend="numpy", dtype="float64")
    return xplstm.Sequential(lstm, xplstm.LastStep(), linear)


#: (the model saved, a model that differs from it in one way, what restore's error says).
ONE_DIFFERENCE = {
    "dtype alone": (
        lambda: bare_lstm(seed=0),
        lambda: bare_lstm("float32"),
        r"holds a LSTM .* in float64, but the model is a LSTM .* in float32",
    ),
    "kind alone": (
        lambda: bare_lstm(seed=0),
        lambda: xplstm.Sequential(bare_lstm()),
        r"holds a LSTM \[.*\] in float64, but the model is a Sequential \[",
    ),
    "one size alone": (
        lambda: model_with(bare_lstm(seed=0)),
        lambda: model_with(bare_lstm(), out_features=3),
        r"holds a Sequential .*'out_features': 2.* but the model is a Sequential "
        r".*'out_features': 3",
    ),
    "one option alone": (
        lambda: model_with(bare_lstm(seed=0)),
        lambda: model_with(bare_lstm(use_bias=False)),
        r"'use_bias': True.* but the model is .*'use_bias': False",
    ),
}


@pytest.mark.parametrize(
    "make_saved, make, message", ONE_DIFFERENCE.values(), ids=ONE_DIFFERENCE.keys()
)
def test_each_difference_alone_is_refused_by_restore(tmp_path, make_saved, make, message):
    """Each reason on its own (the dtype with the layers equal, the kind of model, one size,
    one option) is refused, and no parameter is written."""
    checkpoint.save(tmp_path / "saved.npz", make_saved())
    model = make()
    before = [xplstm.to_numpy(p.values).copy() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=message):
        checkpoint.restore(tmp_path / "saved.npz", model)
    for param, values in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(xplstm.to_numpy(param.values), values)


def test_the_training_mode_alone_is_no_reason_to_refuse(saved):
    """restore leaves the modes as the model has them: an eval-mode model takes the
    parameters of a checkpoint saved in training mode, and stays in eval mode."""
    model = host_model().eval()
    model.layers[0].recurrences[0].weights.values = np.zeros((7, 16))
    checkpoint.restore(saved, model)
    assert not model.layers[0].training
    expected = xplstm.to_numpy(host_model().layers[0].recurrences[0].weights.values)
    np.testing.assert_array_equal(model.layers[0].recurrences[0].weights.values, expected)


LSTM_CONFIGS = {
    "3-layers-bi-proj-dropout": {
        "num_layers": 3,
        "bidirectional": True,
        "proj_size": 2,
        "dropout": 0.2,
        "recurrent_dropout": 0.1,
    },
    "no-bias": {"use_bias": False},
    "2-layers-no-bias-proj": {"num_layers": 2, "use_bias": False, "proj_size": 3},
}


@pytest.mark.parametrize("config", LSTM_CONFIGS.values(), ids=LSTM_CONFIGS.keys())
def test_every_lstm_configuration_round_trips(target, tmp_path, config):
    lstm = xplstm.LSTM(3, 4, backend="numpy", dtype="float64", seed=6, **config)
    checkpoint.save(tmp_path / "m.npz", lstm)
    loaded = checkpoint.load(tmp_path / "m.npz", backend=target.backend, device=target.device)
    assert loaded.config() == lstm.config()
    for ours, theirs in zip(loaded.parameters(), lstm.parameters(), strict=True):
        np.testing.assert_array_equal(xplstm.to_numpy(ours.values), theirs.values)
    x = np.random.default_rng(2).standard_normal((2, 5, 3))
    assert_close(loaded.eval()(target.asarray(x))[0], lstm.eval()(x)[0], like=loaded, name="y")


def test_a_stack_missing_an_array_is_incomplete(tmp_path):
    path = tmp_path / "m.npz"
    checkpoint.save(path, xplstm.LSTM(3, 4, num_layers=2, backend="numpy"))
    with np.load(path) as archive:
        assert "layers.0.recurrences.1.bias" in archive.files
    rewrite(path, lambda arrays: arrays.pop("layers.0.recurrences.1.bias"))
    with pytest.raises(
        CheckpointError, match=r"array 'layers.0.recurrences.1.bias' of layer 0 \(LSTM\) is missing"
    ):
        checkpoint.load(path)
    rewrite(
        path,
        edit_header(
            layers=[
                {"type": "LSTM", "input_size": 3, "hidden_size": 4, "num_layers": 2, "proj_size": 9}
            ]
        ),
    )
    with pytest.raises(CheckpointError, match=r"layer 0 \(LSTM\): proj_size must be smaller"):
        checkpoint.load(path)
