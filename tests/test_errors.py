"""Bad input gets a clear error that says what was wrong and how to fix it."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.support import Target


@pytest.fixture
def layer(target: Target) -> xplstm.LSTM:
    return target.lstm(3, 4, seed=0)


def arr(target: Target, *shape: int, dtype: str = "float32"):
    return target.asarray(np.zeros(shape, dtype=dtype))


def test_wrong_rank(target, layer):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq, input_size\) = "):
        layer.forward(arr(target, 2, 3))


def test_wrong_feature_size(target, layer):
    with pytest.raises(ValueError, match=r"= \(\?, \?, 3\), got \(2, 5, 4\)"):
        layer.forward(arr(target, 2, 5, 4))


def test_empty_sequence(target, layer):
    with pytest.raises(ValueError, match=r"x has an empty axis: shape \(2, 0, 3\)"):
        layer.forward(arr(target, 2, 0, 3))


def test_h0_with_wrong_batch(target, layer):
    with pytest.raises(ValueError, match=r"h0 must have shape \(batch, hidden_size\) = \(2, 4\)"):
        layer.forward(arr(target, 2, 5, 3), arr(target, 3, 4))


def test_c0_with_wrong_hidden(target, layer):
    with pytest.raises(ValueError, match=r"c0 must have shape .* got \(2, 5\)"):
        layer.forward(arr(target, 2, 5, 3), None, arr(target, 2, 5))


def test_integer_input(target, layer):
    with pytest.raises(TypeError, match=r"x has dtype .*int.* computes in .*float32.*astype"):
        layer.forward(arr(target, 2, 5, 3, dtype="int32"))


def test_half_precision_input(target, layer):
    if target.backend == "array_api_strict":
        pytest.skip("array_api_strict has no float16")
    with pytest.raises(TypeError, match=r"x has dtype .*float16.*astype\(x, layer.dtype\)$"):
        layer.forward(arr(target, 2, 5, 3, dtype="float16"))


def test_mismatched_float_dtype(target, layer):
    with pytest.raises(TypeError, match=r"dtype='float64'"):
        layer.forward(arr(target, 2, 5, 3, dtype="float64"))


def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a forward\(\) first"):
        layer.backward(None)


def test_gradient_of_wrong_shape(target, layer):
    layer.forward(arr(target, 2, 5, 3))
    with pytest.raises(ValueError, match=r"dy must have shape .* = \(2, 5, 4\), got \(2, 4, 4\)"):
        layer.backward(arr(target, 2, 4, 4))
    with pytest.raises(ValueError, match=r"dh_n must have shape .* = \(2, 4\), got \(1, 4\)"):
        layer.backward(arr(target, 2, 5, 4), arr(target, 1, 4))


def test_array_of_another_backend(target, layer):
    other = "numpy" if target.backend != "numpy" else "array_api_strict"
    foreign = xplstm.backends.get(other).from_numpy(
        np.zeros((2, 5, 3), "float32"), xplstm.backends.get(other).default_device()
    )
    with pytest.raises(ValueError, match=rf"x is a {other} array .* layer.to\('{other}'\)"):
        layer.forward(foreign)


def test_array_on_another_device():
    layer = xplstm.LSTM(3, 4, backend="array_api_strict", device="device1", seed=0)
    on_default = xplstm.backends.get("array_api_strict").from_numpy(
        np.zeros((2, 5, 3), "float32"), xplstm.backends.get("array_api_strict").default_device()
    )
    with pytest.raises(ValueError, match=r"x is on device .*CPU_DEVICE.* layer.to\("):
        layer.forward(on_default)


def test_not_an_array(layer):
    with pytest.raises(TypeError, match=r"expected an array .* got list"):
        layer.forward([[[0.0, 0.0, 0.0]]])


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'nunpy'; available here: .*numpy"):
        xplstm.LSTM(3, 4, backend="nunpy")


@pytest.mark.parametrize("backend", [["numpy"], 3, b"numpy"])
def test_a_backend_that_is_neither_a_name_nor_a_backend(backend):
    with pytest.raises(TypeError, match=r"backend must be a name such as 'numpy' .* or a Backend"):
        xplstm.LSTM(3, 4, backend=backend)


@pytest.mark.parametrize("seed", [-1, 2.5, True, "0"])
def test_a_bad_seed_is_named(seed):
    """Named as the caller spells it, not in NumPy's words from inside default_rng."""
    message = r"seed must be None or an int >= 0, got "
    for build in (xplstm.Linear, xplstm.LSTM):
        with pytest.raises(ValueError, match=message):
            build(3, 4, seed=seed)
    with pytest.raises(ValueError, match=message):
        xplstm.LSTM(3, 4).dropout_seed(seed)


@pytest.mark.parametrize(
    ("backend", "device", "message"),
    [
        ("numpy", "cuda:7", r"device 'cuda:7' is not available to the numpy backend"),
        ("torch", "gpu", r"device 'gpu' is not a torch device .* choose one of \["),
        ("torch", "cuda:7", r"device\(type='cuda', index=7\) is not available to the torch"),
        ("array_api_strict", "cpu", r"'cpu' is not an array_api_strict device; choose one of"),
        ("jax", "tpu:3", r"device 'tpu:3' is not available to the jax backend; choose one of"),
    ],
)
def test_unknown_device(backend, device, message):
    if backend not in xplstm.backends.available():
        pytest.skip(f"{backend}: {xplstm.backends.unavailable()[backend]}")
    with pytest.raises(xplstm.backends.BackendError, match=message):
        xplstm.LSTM(3, 4, backend=backend, device=device)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_sizes(size):
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int"):
        xplstm.LSTM(3, size)


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64', got 'int32'"):
        xplstm.LSTM(3, 4, dtype="int32")


def test_weights_of_wrong_shape_or_dtype():
    with pytest.raises(ValueError, match=r"weights must have shape \(7, 16\) = \(input_size"):
        xplstm.LSTM(3, 4, weights=np.zeros((16, 7), "float32"))
    with pytest.raises(ValueError, match=r"weights have dtype float64 .* pass dtype='float64'"):
        xplstm.LSTM(3, 4, weights=np.zeros((7, 16)))
    with pytest.raises(ValueError, match=r"dtype int64 .* float32; cast the weights to float32"):
        xplstm.LSTM(3, 4, weights=np.zeros((7, 16), "int64"))  # no advice to pass dtype='int64'


def test_integer_input_is_not_told_to_change_the_layer_dtype(target, layer):
    with pytest.raises(TypeError) as error:
        layer.forward(arr(target, 2, 5, 3, dtype="int32"))
    assert "build the layer with" not in str(error.value)


# -- stacked, bidirectional, projected layers; lengths and masks --------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proj_size": 4}, r"proj_size must be smaller than hidden_size \(4\), got 4"),
        ({"proj_size": -1}, r"proj_size must be an int >= 0 \(0: no projection\), got -1"),
        ({"num_layers": 0}, r"num_layers must be a positive int, got 0"),
        ({"bidirectional": 1}, r"bidirectional must be True or False, got 1"),
        ({"use_bias": None}, r"use_bias must be True or False, got None"),
        ({"num_layers": 2, "dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1"),
        ({"recurrent_dropout": -0.1}, r"recurrent_dropout must be a probability in \[0, 1\)"),
        ({"dropout": 0.5}, r"dropout acts between stacked layers .* needs num_layers > 1"),
        ({"init": "xavier"}, r"init must be one of \['keras', 'torch'\], got 'xavier'"),
        ({"use_bias": False, "bias": np.zeros(16, "float32")}, r"but use_bias=False"),
        ({"projection": np.zeros((4, 2), "float32")}, r"but proj_size=0: set proj_size"),
        (
            {"num_layers": 2, "weights": np.zeros((7, 16), "float32")},
            r"this LSTM has 2 recurrences .* pass weights as a list of 2 arrays",
        ),
        (
            {"bidirectional": True, "bias": [np.zeros(16, "float32")]},
            r"bias must list one array per recurrence .* = 2\), got 1",
        ),
        (
            {"num_layers": 2, "weights": [None, np.zeros((7, 16), "float32")]},
            r"recurrence 1 must have shape \(8, 16\) = \(hidden_size \+ hidden_size, 4 \* hidden",
        ),
    ],
)
def test_bad_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        xplstm.LSTM(3, 4, backend="numpy", **kwargs)


def test_weights_of_a_stack_are_reached_through_recurrences():
    layer = xplstm.LSTM(3, 4, num_layers=2, backend="numpy")
    with pytest.raises(AttributeError, match=r"has 2 recurrences .* layer.recurrences\[k\]"):
        _ = layer.weights


def test_bad_lengths(target):
    layer = target.lstm(3, 4, bidirectional=True, seed=0)
    x = arr(target, 3, 5, 3)
    for lengths, message in [
        ([2, 0, 5], r"lengths must be in 1..seq = 1..5; row 1 has length 0 \(drop empty rows"),
        ([2, 6, 5], r"row 1 has length 6"),
        ([2, 3], r"lengths must have one length per row: 3, got 2"),
        ([2.0, 3.0, 1.0], r"lengths must be a 1-D sequence of ints .* got 2.0 in row 0"),
        (target.asarray(np.ones((3, 1), "int32")), r"of shape \(3, 1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            layer.forward(x, lengths=lengths)
    with pytest.raises(ValueError, match=r"pass lengths .* or mask .*, not both"):
        layer.forward(x, lengths=[1, 2, 3], mask=target.asarray(np.ones((3, 5), bool)))


def test_bad_mask(target):
    layer = target.lstm(3, 4, seed=0)
    x = arr(target, 3, 5, 3)
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, seq\) = \(3, 5\)"):
        layer.forward(x, mask=target.asarray(np.ones((3, 4), bool)))
    with pytest.raises(TypeError, match=r"mask has dtype .* must be boolean .* mask != 0"):
        layer.forward(x, mask=arr(target, 3, 5))


def test_states_of_a_stack_need_the_leading_axis(target):
    layer = target.lstm(3, 4, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    x = arr(target, 3, 5, 3)
    with pytest.raises(
        ValueError,
        match=r"h0 must have shape \(num_layers \* num_directions, batch, proj_size\) = "
        r"\(4, 3, 2\), got \(3, 2\)",
    ):
        layer.forward(x, arr(target, 3, 2))
    with pytest.raises(ValueError, match=r"c0 must have shape .* hidden_size\) = \(4, 3, 4\)"):
        layer.forward(x, None, arr(target, 2, 3, 4))
    layer.forward(x)
    with pytest.raises(ValueError, match=r"dy must have shape .* = \(3, 5, 4\), got \(3, 5, 2\)"):
        layer.backward(arr(target, 3, 5, 2))
