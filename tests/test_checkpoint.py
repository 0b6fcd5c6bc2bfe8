"""Checkpoints: round trips across backends give the same outputs; every kind of bad file gives
an error that says what is wrong; nothing is ever unpickled."""

from __future__ import annotations

import errno
import io
import json
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xplstm
from tests.support import assert_close, assert_same_state, state_of
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


def drop_from_header(key: str):
    def change(arrays):
        header = json.loads(str(arrays["__xplstm__"]))
        del header[key]
        arrays["__xplstm__"] = np.array(json.dumps(header))

    return change


def edit_layer(index: int = 0, **fields):
    def change(arrays):
        header = json.loads(str(arrays["__xplstm__"]))
        header["layers"][index] |= fields
        arrays["__xplstm__"] = np.array(json.dumps(header))

    return change


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """An .npy header claiming ``shape`` of float64, followed by 64 bytes of data."""
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + bytes(64)


def replace_member(path, name: str, data: bytes) -> None:
    """Rewrite the zip archive at ``path`` with member ``name`` holding ``data`` instead."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members[name] = data
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)


def claim_member_size(path, name: str, size: int) -> None:
    """Make the zip's central directory claim ``size`` uncompressed bytes for member ``name``
    (stored, so it holds only its own bytes)."""
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first entry of the central directory
    while data[entry + 46 : entry + 46 + len(name)] != name.encode():
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 24 : entry + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


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
    "no-dtype": (
        lambda p: rewrite(p, drop_from_header("dtype")),
        r"the description is not valid: 'dtype' is missing",
    ),
    "dtype-null": (
        lambda p: rewrite(p, edit_header(dtype=None)),
        r"the description is not valid: 'dtype' is null, but the layers have parameters",
    ),
    "sizes-the-arrays-do-not-back": (
        lambda p: rewrite(p, edit_layer(hidden_size=2000)),
        r"layer 0 \(LSTM\): weights must have shape \(2003, 8000\) = \(input_size \+ hidden_size",
    ),
    "more-layers-than-arrays": (
        lambda p: rewrite(p, edit_layer(num_layers=10**4)),
        r"layer 0 \(LSTM\): num_layers=10000 needs at least 10000 arrays, the file "
        r"holds 2 for this layer",
    ),
    "training-not-an-object": (
        lambda p: rewrite(p, edit_header(training=[3])),
        r"the description is not valid: 'training' must be an object, got \[3\]",
    ),
    "non-finite-weight": (
        lambda p: rewrite(p, lambda a: a["layers.2.bias"].__setitem__(1, np.inf)),
        r"array 'layers\.2\.bias' holds 1 non-finite values \(NaN or inf\); the model would "
        r"compute NaN, so it is not loaded",
    ),
    "array-header-claims-more-than-it-holds": (
        lambda p: replace_member(p, "layers.0.weights.npy", npy_claiming((10**4, 1000))),
        r"array 'layers\.0\.weights' claims shape \(10000, 1000\) of float64 \(80000000 "
        r"bytes\) but the file holds 64 bytes for it",
    ),
    "member-size-beyond-its-bytes": (
        lambda p: claim_member_size(p, "layers.0.weights.npy", 10**9),
        r"array 'layers\.0\.weights' claims 1000000000 bytes, more than its \d+ compressed "
        r"bytes can hold; the file is corrupt",
    ),
    "member-not-an-array": (
        lambda p: replace_member(p, "layers.0.weights.npy", b"hello"),
        r"array 'layers\.0\.weights' is not an \.npy array",
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


# -- refused calls change nothing -----------------------------------------------------------
def _training_file(path, optimizer=xplstm.optim.Adam) -> None:
    """A training checkpoint of ``host_model()`` after 3 steps of ``optimizer``."""
    model = host_model()
    trained = optimizer(model.parameters(), lr=0.01)
    adam_steps(model, trained, 3)
    checkpoint.save(path, model, optimizer=trained, training={"step": 3})


def _edit_optimizer(**fields):
    def change(arrays):
        header = json.loads(str(arrays["__xplstm__"]))
        header["optimizer"] |= fields
        arrays["__xplstm__"] = np.array(json.dumps(header))

    return change


def _refuse(training):
    raise ValueError("the caller's check refused it")


#: Each reason restore refuses a file on its own, beyond a model of another description (see
#: test_each_difference_alone_is_refused_by_restore): (how the file is made from a training
#: checkpoint, restore's keywords, the message).
REFUSALS = {
    "no-optimizer-state": (
        lambda p: checkpoint.save(p, host_model()),
        {},
        "holds no optimizer state: it was saved without optimizer=",
    ),
    "another-optimizer": (
        lambda p: _training_file(p, optimizer=xplstm.optim.SGD),
        {},
        "the state is SGD's, not Adam's",
    ),
    "buffer-of-another-shape": (
        lambda p: rewrite(p, lambda a: a.update({"optimizer.0.m": np.zeros((2, 2))})),
        {},
        r"parameter 0: buffer 'm' is float64 of shape \(2, 2\)",
    ),
    "buffer-of-no-parameter": (
        lambda p: rewrite(p, lambda a: a.update({"optimizer.9.m": np.zeros(2)})),
        {},
        "array 'optimizer.9.m' belongs to no parameter",
    ),
    "incomplete-optimizer-state": (
        lambda p: rewrite(p, lambda a: a.pop("optimizer.1.v")),
        {},
        "the optimizer state is incomplete",
    ),
    "negative-step-count": (
        lambda p: rewrite(p, _edit_optimizer(steps=-1)),
        {},
        "the state's step count must be an int >= 0, got -1",
    ),
    "optimizer-without-type": (
        lambda p: rewrite(p, _edit_optimizer(type=None)),
        {},
        "'optimizer' must be an object with a 'type' and 'steps'",
    ),
    "missing-parameter": (
        lambda p: rewrite(p, lambda a: a.pop("layers.2.bias")),
        {},
        r"array 'layers\.2\.bias' of layer 2 \(Linear\) is missing",
    ),
    "non-finite-weight": (
        lambda p: rewrite(p, lambda a: a["layers.0.weights"].__setitem__((0, 0), np.nan)),
        {},
        r"array 'layers\.0\.weights' holds 1 non-finite values",
    ),
    "the-callers-check": (lambda p: None, {"check": _refuse}, "the caller's check refused it"),
}


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refused_restore_changes_nothing(target, tmp_path, refusal):
    """Every parameter and the optimizer's step count and buffers are as they were, on any
    backend: restore checks everything (the optimizer state and the caller's check too), then
    writes."""
    make, options, message = refusal
    path = tmp_path / "t.npz"
    _training_file(path)
    make(path)
    model = host_model().to(target.backend, target.device)
    optimizer = xplstm.optim.Adam(model.parameters(), lr=0.01)
    adam_steps(model, optimizer, 1, seed=7)
    before = state_of(model, optimizer)
    with pytest.raises(ValueError, match=message):
        checkpoint.restore(path, model, optimizer, **options)
    assert_same_state(state_of(model, optimizer), before)
    _training_file(path)  # and the same model and optimizer take a good file
    checkpoint.restore(path, model, optimizer)
    assert optimizer.steps == 3


# -- the description is untrusted input -----------------------------------------------------
#: The most a load of a small file may allocate: a few copies of its arrays and the layer's
#: bookkeeping (a full layer at hidden_size 2000 took 183 MiB before it was checked).
SMALL_FILE_PEAK = 1 << 20


def peak_bytes(call) -> int:
    """The largest memory traced while ``call()`` runs (NumPy reports its arrays to
    tracemalloc), whatever it raises."""
    tracemalloc.start()
    try:
        call()
    except Exception:  # the allocations are the point here; what it raised is tested apart
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "damage",
    [
        edit_layer(hidden_size=2000),
        edit_layer(num_layers=10**4),
        edit_layer(input_size=10**12),
        lambda arrays: None,  # the honest file, for scale
    ],
    ids=["hidden_size", "num_layers", "input_size", "honest"],
)
def test_a_small_file_claiming_big_sizes_allocates_little(saved, damage):
    rewrite(saved, damage)
    assert saved.stat().st_size < 4096
    assert peak_bytes(lambda: checkpoint.load(saved, backend="numpy")) < SMALL_FILE_PEAK
    replace_member(saved, "layers.0.weights.npy", npy_claiming((10**4, 1000)))  # 80 MB claimed
    assert peak_bytes(lambda: checkpoint.load(saved, backend="numpy")) < SMALL_FILE_PEAK


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, 2, 3, 4, 2000, 10**9])
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["LSTM", "Linear", "LastStep", "Sequential", "float32", "float64"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
#: Where a mutation may land in the description of ``fuzz_model()``.
FIELDS = [
    ("format",), ("version",), ("model",), ("dtype",), ("layers",), ("optimizer",),
    ("training",), ("layers", 0), ("layers", 1), ("layers", 2), ("layers", 3),
    *[("layers", 0, key) for key in ("type", "input_size", "hidden_size", "num_layers")],
    *[("layers", 0, key) for key in checkpoint.OPTIONS["LSTM"][1:]],
    *[("layers", 2, key) for key in ("type", "in_features", "out_features")],
]  # fmt: skip


def fuzz_model() -> xplstm.Sequential:
    return xplstm.Sequential(
        xplstm.LSTM(3, 4, num_layers=2, proj_size=2, backend="numpy", dtype="float64", seed=0),
        xplstm.LastStep(),
        xplstm.Linear(2, 2, backend="numpy", dtype="float64", seed=1),
    )


def mutate_description(header: dict, field: tuple, value, delete: bool) -> None:
    """Set (or delete) ``field`` of ``header`` where it still exists after earlier mutations."""
    *parents, last = field
    node = header
    for key in parents:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, list) and not (isinstance(last, int) and last < len(node)):
        return
    if not isinstance(node, (dict, list)):
        return
    if not delete:
        node[last] = value
    elif isinstance(node, list) or last in node:
        del node[last]


array_changes = st.sampled_from(["drop", "reshape", "astype", "add", "nan", "keep"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(FIELDS), json_values, st.booleans()), min_size=1, max_size=4
    ),
    changes=st.lists(st.tuples(array_changes, st.integers(0, 20)), max_size=3),
    dtype=st.sampled_from(["float32", "int64", "complex128", "bool", "<U3"]),
    shape=st.lists(st.integers(0, 5), max_size=3).map(tuple),
)
def test_mutated_descriptions_and_arrays_load_right_or_raise_checkpoint_error(
    tmp_path_factory, mutations, changes, dtype, shape
):
    """Whatever the description and the arrays of a training checkpoint say, load gives a
    CheckpointError or a model whose parameters are the file's arrays; restore gives a
    CheckpointError with the model and optimizer unchanged, or puts the file's arrays in them;
    both allocate little on the way."""
    path = tmp_path_factory.mktemp("fuzz") / "m.npz"
    trained = fuzz_model()
    adam = xplstm.optim.Adam(trained.parameters(), lr=0.01)
    adam_steps(trained, adam, 1)
    checkpoint.save(path, trained, optimizer=adam, training={"step": 1})

    def change(arrays):
        header = json.loads(str(arrays.pop("__xplstm__")))
        for field, value, delete in mutations:
            mutate_description(header, field, value, delete)
        names = sorted(arrays)
        for kind, pick in changes:
            name = names[pick % len(names)]
            if kind == "drop":
                arrays.pop(name, None)
            elif kind == "reshape" and name in arrays:
                arrays[name] = np.zeros(shape)
            elif kind == "astype" and name in arrays:
                arrays[name] = arrays[name].astype(dtype)
            elif kind == "add":
                arrays[f"layers.{pick}.weights"] = np.zeros(shape)
            elif kind == "nan" and name in arrays:
                arrays[name] = np.full_like(arrays[name], np.nan)
        arrays["__xplstm__"] = np.array(json.dumps(header))

    rewrite(path, change)
    with np.load(path, allow_pickle=False) as archive:
        stored = {key: archive[key] for key in archive.files if key != "__xplstm__"}
    parameters = {k: v for k, v in stored.items() if not k.startswith("optimizer.")}
    model = fuzz_model()
    optimizer = xplstm.optim.Adam(model.parameters(), lr=0.01)
    adam_steps(model, optimizer, 1, seed=9)
    before = state_of(model, optimizer)
    outcome = []

    def load_and_restore():
        for call in (
            lambda: checkpoint.load(path, backend="numpy"),
            lambda: checkpoint.restore(path, model, optimizer),
        ):
            try:
                outcome.append(call())
            except CheckpointError as error:
                outcome.append(error)

    assert peak_bytes(load_and_restore) < SMALL_FILE_PEAK
    assert len(outcome) == 2, "load or restore raised something other than a CheckpointError"
    loaded, restored = outcome
    if not isinstance(loaded, CheckpointError):
        _, found = checkpoint.model_arrays(loaded)
        assert sorted(found) == sorted(parameters)
        for name, values in found.items():
            np.testing.assert_array_equal(values, parameters[name], err_msg=name)
    if isinstance(restored, CheckpointError):
        assert_same_state(state_of(model, optimizer), before)
    else:
        _, found = checkpoint.model_arrays(model)
        for name, values in found.items():
            np.testing.assert_array_equal(values, parameters[name], err_msg=name)
        for index, buffers in enumerate(optimizer.state_dict()["buffers"]):
            for key, values in buffers.items():
                np.testing.assert_array_equal(values, stored[f"optimizer.{index}.{key}"])


# -- failed writes leave no debris ----------------------------------------------------------
def full_disk(file, *args, **kwargs):
    """A writer that fails halfway, as on a full disk."""
    file.write(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_save_leaves_the_old_file_and_no_debris(saved, monkeypatch):
    before = saved.read_bytes()
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        checkpoint.save(saved, host_model("float32"))
    assert saved.read_bytes() == before
    assert list(saved.parent.iterdir()) == [saved]


def test_saving_onto_a_folder_is_refused_and_leaves_no_debris(tmp_path):
    folder = tmp_path / "model.npz"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"model\.npz: it is a folder; give a file name"):
        checkpoint.save(folder, host_model())
    assert list(tmp_path.iterdir()) == [folder] and not any(folder.iterdir())


def test_converting_to_a_dtype_checks_what_the_conversion_gives(saved):
    """load(dtype=) converts the arrays of the dtype described, then checks them: a float64
    value beyond float32's range is refused as infinite; an array of another dtype is refused
    by its layer, not converted."""
    rewrite(saved, lambda a: a["layers.2.bias"].__setitem__(0, 1e300))
    with pytest.raises(CheckpointError, match=r"array 'layers\.2\.bias' holds 1 non-finite"):
        checkpoint.load(saved, backend="numpy", dtype="float32")
    assert checkpoint.load(saved, backend="numpy").layers[2].bias.values[0] == 1e300
    rewrite(saved, lambda a: a.update({"layers.2.bias": np.array([1, 2])}))
    with pytest.raises(CheckpointError, match=r"layer 2 \(Linear\): bias have dtype int64"):
        checkpoint.load(saved, backend="numpy", dtype="float32")


def test_a_model_with_non_finite_parameters_is_not_saved(saved):
    """Its file would not load (see non-finite-weight above): refused before writing."""
    before = saved.read_bytes()
    model = host_model()
    model.layers[2].bias.values = np.array([0.0, np.nan])
    with pytest.raises(ValueError, match=r"array 'layers\.2\.bias' holds 1 non-finite values"):
        checkpoint.save(saved, model)
    assert saved.read_bytes() == before
    assert list(saved.parent.iterdir()) == [saved]
