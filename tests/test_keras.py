"""Against real Keras 3 (on JAX): masks with left padding and holes, Bidirectional(LSTM) and
stacks of Keras LSTMs converted both ways, and ``init="keras"``."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import xplstm
from tests.support import assert_close

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras", reason="Keras 3 is the reference; pip install '.[test]'")

BATCH, SEQ, INPUTS, UNITS = 4, 6, 3, 5


def masks() -> np.ndarray:
    """Left padding (pad_sequences' default), holes, a row with everything masked at the end
    and a full row."""
    return np.array(
        [
            [0, 0, 1, 1, 1, 1],
            [1, 0, 1, 0, 0, 1],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=bool,
    )


#: Keras on JAX computes a float64 LSTM to about 1e-8 (checked: its own equations in NumPy
#: float64 differ from its output by that much), so it is met at this tolerance.
KERAS_TOLERANCE = {"rtol": 1e-6, "atol": 1e-7}


def assert_like_keras(actual, expected: np.ndarray, layer, name: str) -> None:
    """Namespace, device, dtype and shape as ``assert_close`` checks them; values to Keras's
    precision."""
    assert_close(actual, expected, like=layer, name=name, **KERAS_TOLERANCE)


def problem(seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 inputs that float32 holds exactly: Keras converts NumPy inputs to its floatx
    (float32) before casting them to a float64 layer's dtype."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x": rng.standard_normal((BATCH, SEQ, INPUTS)),
        "h0": rng.standard_normal((BATCH, UNITS)) * 0.5,
        "c0": rng.standard_normal((BATCH, UNITS)) * 0.5,
    }
    return {k: v.astype("float32").astype("float64") for k, v in arrays.items()}


def keras_lstm(**kwargs) -> keras.layers.LSTM:
    """A built float64 Keras LSTM with random weights (the bias too)."""
    layer = keras.layers.LSTM(
        UNITS, return_sequences=True, return_state=True, dtype="float64", **kwargs
    )
    layer.build((BATCH, SEQ, INPUTS))
    rng = np.random.default_rng(1)
    layer.set_weights([rng.uniform(-0.7, 0.7, w.shape) for w in layer.get_weights()])
    return layer


def test_mask_matches_keras(target):
    """A masked step keeps h and c and outputs the carried h: h0 before the first unmasked
    step, so zeros from a zero initial state."""
    reference = keras_lstm()
    p = problem()
    y, h_n, c_n = (
        np.asarray(a) for a in reference(p["x"], mask=masks(), initial_state=[p["h0"], p["c0"]])
    )
    layer = xplstm.LSTM.from_keras(
        reference.get_weights(), backend=target.backend, device=target.device
    )
    ours = layer(*(target.asarray(p[k]) for k in ("x", "h0", "c0")), mask=target.asarray(masks()))
    for name, value, expected in zip(("y", "h_n", "c_n"), ours, (y, h_n, c_n), strict=True):
        assert_like_keras(value, expected, layer, name)
    np.testing.assert_array_equal(y[0, 1], p["h0"][0])
    y = np.asarray(reference(p["x"], mask=masks())[0])
    assert not np.any(y[0, :2]), "zeros before the first unmasked step from a zero state"
    ours = layer(target.asarray(p["x"]), mask=target.asarray(masks()))[0]
    assert_like_keras(ours, y, layer, "y from a zero state")


def test_bidirectional_with_mask_matches_keras(target):
    forward = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True, dtype="float64")
    reference = keras.layers.Bidirectional(forward, dtype="float64")
    reference.build((BATCH, SEQ, INPUTS))
    rng = np.random.default_rng(2)
    reference.set_weights([rng.uniform(-0.7, 0.7, w.shape) for w in reference.get_weights()])
    p = problem(3)
    y, h_f, c_f, h_b, c_b = (np.asarray(a) for a in reference(p["x"], mask=masks()))
    layer = xplstm.LSTM.from_keras(
        reference.get_weights(), backend=target.backend, device=target.device
    )
    assert layer.bidirectional
    ours = layer(target.asarray(p["x"]), mask=target.asarray(masks()))
    expected = (y, np.stack([h_f, h_b]), np.stack([c_f, c_b]))
    for name, value, want in zip(("y", "h_n", "c_n"), ours, expected, strict=True):
        assert_like_keras(value, want, layer, name)
    back = layer.to_keras_weights()
    for ours_w, theirs in zip(back, reference.get_weights(), strict=True):
        np.testing.assert_array_equal(ours_w, theirs)


def test_a_stack_of_keras_lstms():
    """A list of Keras LSTMs' weights is a stacked layer: the same outputs as the stack."""
    first, second = (
        keras_lstm(),
        keras.layers.LSTM(UNITS, return_sequences=True, use_bias=False, dtype="float64"),
    )
    second.build((BATCH, SEQ, UNITS))
    with pytest.raises(ValueError, match=r"all with bias or all without"):
        xplstm.LSTM.from_keras([first.get_weights(), second.get_weights()])
    second = keras.layers.LSTM(UNITS, return_sequences=True, dtype="float64")
    second.build((BATCH, SEQ, UNITS))
    x = problem()["x"]
    expected = np.asarray(second(first(x)[0]))
    layer = xplstm.LSTM.from_keras([first.get_weights(), second.get_weights()], backend="numpy")
    assert layer.num_layers == 2
    np.testing.assert_allclose(layer(x)[0], expected, **KERAS_TOLERANCE)
    back = layer.to_keras_weights()
    for ours, theirs in zip(back, [first.get_weights(), second.get_weights()], strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_keras_init_statistics():
    """Glorot-uniform kernel, orthogonal recurrent kernel, forget bias 1, as Keras's LSTM;
    the same weights on every backend from one seed."""
    layer = xplstm.LSTM(
        20, 16, num_layers=2, init="keras", backend="numpy", dtype="float64", seed=0
    )
    kernel, recurrent, bias = layer.to_keras_weights()[0]
    limit = np.sqrt(6.0 / (20 + 64))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.05 * limit
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(16), atol=1e-12)
    np.testing.assert_array_equal(bias, np.r_[np.zeros(16), np.ones(16), np.zeros(32)])
    theirs = keras.layers.LSTM(16, dtype="float64")
    theirs.build((1, 1, 20))
    k_kernel, k_recurrent, k_bias = theirs.get_weights()
    np.testing.assert_array_equal(bias, k_bias)
    assert abs(k_kernel.std() - kernel.std()) < 0.05 * limit
    np.testing.assert_allclose(k_recurrent @ k_recurrent.T, np.eye(16), atol=1e-6)
    twin = xplstm.LSTM(20, 16, num_layers=2, init="keras", backend="torch", dtype="float64", seed=0)
    for a, b in zip(layer.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(xplstm.to_numpy(a.values), xplstm.to_numpy(b.values))


def random_weights(layer, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(-0.7, 0.7, w.shape) for w in layer.get_weights()])


@pytest.mark.reference
def test_from_a_keras_layer_reads_its_sizes_and_options(target):
    """A Keras LSTM layer, a Bidirectional(LSTM) and a model's LSTM layers convert whole:
    sizes, use_bias and recurrent_dropout from their configs, the same outputs as Keras."""
    x = problem()["x"]
    where = {"backend": target.backend, "device": target.device}
    plain = keras.layers.LSTM(UNITS, return_sequences=True, use_bias=False, dtype="float64")
    plain.build((None, None, INPUTS))
    random_weights(plain)
    layer = xplstm.LSTM.from_keras(plain, **where)
    assert (layer.input_size, layer.hidden_size, layer.use_bias) == (INPUTS, UNITS, False)
    assert_like_keras(layer(target.asarray(x))[0], np.asarray(plain(x)), layer, "y")
    both, second = (
        keras.layers.Bidirectional(
            keras.layers.LSTM(
                UNITS, return_sequences=True, recurrent_dropout=0.25, dtype="float64"
            ),
            dtype="float64",
        )
        for _ in range(2)
    )
    model = keras.Sequential([keras.Input((SEQ, INPUTS)), both, second])
    random_weights(model)
    layer = xplstm.LSTM.from_keras(model, **where).eval()
    assert (layer.num_layers, layer.bidirectional, layer.recurrent_dropout) == (2, True, 0.25)
    assert_like_keras(layer(target.asarray(x))[0], np.asarray(model(x)), layer, "y of the stack")
    single = xplstm.LSTM.from_keras(both, **where).eval()
    assert_like_keras(single(target.asarray(x))[0], np.asarray(both(x)), single, "y")


def test_keras_options_without_a_counterpart_are_named_or_refused():
    def built(layer):
        layer.build((None, None, INPUTS))
        return layer

    quiet = built(keras.layers.LSTM(UNITS, dropout=0.1, return_sequences=False))
    # Recorded, not pytest.warns: that re-emits Keras's own NumPy-2 DeprecationWarning, which
    # pyproject's filter for Keras then no longer recognises.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xplstm.LSTM.from_keras(quiet)
    (message,) = [
        str(w.message) for w in caught if w.category is UserWarning and "xplstm" in str(w.message)
    ]
    assert "Keras options with no counterpart in xplstm.LSTM" in message
    assert "dropout=0.1 (Keras's dropout on the inputs" in message
    assert "return_sequences=False (xplstm's LSTM returns every step" in message
    for layer, refused in [
        (keras.layers.LSTM(UNITS, activation="relu"), "activation='relu'; xplstm's LSTM"),
        (keras.layers.LSTM(UNITS, go_backwards=True), "go_backwards=True; xplstm's LSTM"),
        (
            keras.layers.Bidirectional(keras.layers.LSTM(UNITS), merge_mode="sum"),
            "merge_mode='sum'; xplstm concatenates",
        ),
    ]:
        with pytest.raises(ValueError, match=refused):
            xplstm.LSTM.from_keras(built(layer))
    model = keras.Sequential([keras.Input((SEQ, INPUTS)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"the Keras model has no LSTM .*\['Dense'\]"):
        xplstm.LSTM.from_keras(model)


@pytest.mark.reference
def test_to_keras_builds_the_keras_layers_back(target):
    layer = target.lstm(INPUTS, UNITS, num_layers=2, bidirectional=True, dtype="float64", seed=3)
    first, second = layer.to_keras()
    assert type(first).__name__ == "Bidirectional" and first.forward_layer.units == UNITS
    x = problem()["x"]
    assert_like_keras(layer(target.asarray(x))[0], np.asarray(second(first(x))), layer, "y")
    one = target.lstm(INPUTS, UNITS, use_bias=False, recurrent_dropout=0.5, seed=4).to_keras()
    assert (one.use_bias, one.recurrent_dropout, one.dtype) == (False, 0.5, "float32")
