"""Weights from and to torch.nn.LSTM and Keras LSTM: exact round trips and equal outputs."""

from __future__ import annotations

import os

import numpy as np
import pytest

import xplstm
from tests.support import Target, assert_close, forward_backward, random_problem

torch = pytest.importorskip("torch", reason="torch.nn.LSTM is the reference; pip install '.[test]'")


def torch_lstm(inputs: int, hidden: int, seed: int = 0, **kwargs) -> torch.nn.LSTM:
    """A float64 torch.nn.LSTM with random weights and two different non-zero biases."""
    torch.manual_seed(seed)
    module = torch.nn.LSTM(inputs, hidden, batch_first=True, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for param in module.parameters():
            param.uniform_(-0.8, 0.8)
    return module


def torch_run(module, p: dict) -> dict[str, np.ndarray]:
    """The module's outputs on the problem ``p`` (see tests.support.random_problem)."""
    x, h0, c0 = (torch.from_numpy(p[k]) for k in ("x", "h0", "c0"))
    with torch.no_grad():
        y, (h_n, c_n) = module(x, (h0[None], c0[None]))
    return {"y": y.numpy(), "h_n": h_n[0].numpy(), "c_n": c_n[0].numpy()}


def assert_outputs(layer, target, p: dict, expected: dict) -> None:
    """The layer's y, h_n and c_n on ``p`` equal ``expected``."""
    actual = forward_backward(layer, target, p)
    for name in ("y", "h_n", "c_n"):
        assert_close(actual[name], expected[name], like=layer, name=name)


@pytest.mark.reference
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_from_torch_gives_torch_outputs(target, dtype):
    module = torch_lstm(3, 5)
    layer = xplstm.LSTM.from_torch(
        module, backend=target.backend, device=target.device, dtype=dtype
    )
    assert (layer.input_size, layer.hidden_size, layer.backend) == (3, 5, target.backend)
    p = random_problem(2, 7, 3, 5, seed=7)
    assert_outputs(layer, target, p, torch_run(module, p))


@pytest.mark.reference
def test_to_torch_state_dict_loads_into_torch_with_the_same_outputs(target):
    layer = target.lstm(4, 3, dtype="float64", seed=2)
    layer.bias.values = target.asarray(np.linspace(-1.0, 1.0, 12))
    state = layer.to_torch_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "weight_ih_l0": (12, 4),
        "weight_hh_l0": (12, 3),
        "bias_ih_l0": (12,),
        "bias_hh_l0": (12,),
    }
    # A layer on torch keeps its device (cuda:0 on a GPU); any other layer's tensors go to the CPU.
    home = layer.device if target.backend == "torch" else torch.device("cpu")
    assert not torch.any(state["bias_hh_l0"]) and all(v.device == home for v in state.values())
    module = torch.nn.LSTM(4, 3, batch_first=True, dtype=torch.float64)
    module.load_state_dict({name: tensor.cpu() for name, tensor in state.items()})
    p = random_problem(3, 5, 4, 3, seed=7)
    assert_outputs(layer, target, p, torch_run(module, p))


def test_torch_round_trip_is_exact_with_the_biases_summed():
    module = torch_lstm(2, 4)
    state = module.state_dict()
    layer = xplstm.LSTM.from_torch(state)
    assert layer.backend == "torch" and str(layer.dtype) == "torch.float64"
    back = layer.to_torch_state_dict()
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert torch.equal(back[name], state[name]), name
    assert torch.equal(back["bias_ih_l0"], state["bias_ih_l0"] + state["bias_hh_l0"])
    assert torch.equal(back["bias_hh_l0"], torch.zeros(16, dtype=torch.float64))


@pytest.mark.reference
def test_lstm_cell_and_bias_free_modules():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 2, dtype=torch.float64)
    layer = xplstm.LSTM.from_torch(cell, backend="numpy")
    p = random_problem(4, 1, 3, 2, seed=7)
    with torch.no_grad():
        x, h0, c0 = (torch.from_numpy(a) for a in (p["x"][:, 0], p["h0"], p["c0"]))
        h, c = cell(x, (h0, c0))
    _, h_n, c_n = layer(p["x"], p["h0"], p["c0"])
    assert_close(h_n, h.numpy(), like=layer, level="ulps", name="h_n")
    assert_close(c_n, c.numpy(), like=layer, level="ulps", name="c_n")
    no_bias = xplstm.LSTM.from_torch(torch.nn.LSTM(3, 2, bias=False), backend="numpy")
    assert no_bias.bias is None and not no_bias.use_bias and str(no_bias.dtype) == "float32"


def test_a_layer_from_a_module_mirrors_its_mode():
    """A module in eval mode gives a layer in eval mode (no dropout: torch's outputs); one in
    training mode a layer in training mode; a state dict the default, training."""
    module = torch_lstm(3, 4, num_layers=2, dropout=0.5).eval()
    layer = xplstm.LSTM.from_torch(module, backend="numpy")
    assert (layer.training, layer.dropout) == (False, 0.5)
    p = random_problem(2, 5, 3, 4, seed=1)
    with torch.no_grad():
        expected = module(torch.from_numpy(p["x"]))[0].numpy()
    assert_close(layer(p["x"])[0], expected, like=layer, name="y")
    assert xplstm.LSTM.from_torch(module.train()).training
    assert xplstm.LSTM.from_torch(module.eval().state_dict()).training


@pytest.mark.reference
def test_torch_shaped_states_come_back_as_given(target):
    """One layer in one direction takes torch's (1, batch, H) states, returns h_n, c_n and
    dh0, dc0 shaped so, and equals torch with autograd; (batch, H) stays (batch, H)."""
    module = torch_lstm(3, 4)
    layer = xplstm.LSTM.from_torch(module, backend=target.backend, device=target.device)
    p = random_problem(2, 5, 3, 4, seed=3)
    x, h0, c0 = (torch.tensor(p[k], requires_grad=True) for k in ("x", "h0", "c0"))
    y, (h_n, c_n) = module(x, (h0[None], c0[None]))
    dy, dh, dc = (
        torch.from_numpy(np.random.default_rng(s).standard_normal(t.shape))
        for s, t in ((1, y), (2, h_n), (3, c_n))
    )
    torch.autograd.backward([y, h_n, c_n], [dy, dh, dc])
    given = [target.asarray(t.detach().numpy()) for t in (x, h0[None], c0[None])]
    ours = layer(*given)
    for got, want in zip(ours, (y, h_n, c_n), strict=True):
        assert_close(got, want.detach(), like=layer)
    grads = layer.backward(*(target.asarray(t.numpy()) for t in (dy, dh, dc)))
    for got, want in zip(grads, (x.grad, h0.grad[None], c0.grad[None]), strict=True):
        assert_close(got, want, like=layer)
    assert tuple(layer(given[0], given[1][0, ...], given[2][0, ...])[1].shape) == (2, 4)


def test_named_parameters_iterate_as_torchs_and_index_as_a_dict():
    layer = xplstm.LSTM(3, 4, num_layers=2, backend="numpy", seed=0)
    pairs = list(layer.named_parameters())
    module = torch.nn.LSTM(3, 4, num_layers=2)
    assert [(n, type(p)) for n, p in pairs][:3] == [
        ("recurrences.0.weights", xplstm.Weights),
        ("recurrences.0.bias", xplstm.Weights),
        ("recurrences.1.weights", xplstm.Weights),
    ]
    assert len(pairs) == len(layer.parameters()) == 4 != len(list(module.named_parameters()))
    named = layer.named_parameters()
    assert named["recurrences.1.bias"] is layer.recurrences[1].bias
    assert dict(named) == dict(pairs) == dict(named.items())
    assert list(named.keys()) == [n for n, _ in pairs] and "recurrences.0.weights" in named
    linear = xplstm.Linear(2, 3, seed=0)
    assert [n for n, _ in linear.named_parameters()] == ["weights", "bias"]


def test_from_torch_refuses_what_it_cannot_convert():
    state = torch.nn.LSTM(3, 2, num_layers=2).state_dict()
    del state["weight_hh_l1"]
    with pytest.raises(ValueError, match=r"the torch state lacks \['weight_hh_l1'\]"):
        xplstm.LSTM.from_torch(state)
    with pytest.raises(ValueError, match=r"expected torch\.nn\.LSTM weights 'weight_ih_l0'"):
        xplstm.LSTM.from_torch({"weight": torch.zeros(2)})
    bad = {"weight_ih_l0": torch.zeros(8, 3), "weight_hh_l0": torch.zeros(8, 3)}
    with pytest.raises(
        ValueError, match=r"weight_hh_l0 must have shape .* = \(8, 2\), got \(8, 3\)"
    ):
        xplstm.LSTM.from_torch(bad)
    for other, kind in (([1, 2, 3], "builtins.list"), (torch.nn.GRU(3, 2), r"torch\..*\.GRU")):
        with pytest.raises(TypeError, match=f"got a {kind}, which is not a torch.nn.LSTM"):
            xplstm.LSTM.from_torch(other)


# -- Keras ------------------------------------------------------------------------------
# Real Keras 3 on its JAX backend. Keras computes in float32 here, its default: in float64 its
# tanh returns float32 (keras.ops dtype promotion in keras 3.15.1, about 1e-8 off), so the
# comparisons are float32's.


@pytest.fixture(scope="module")
def keras():
    # Keras 3 imports TensorFlow unless KERAS_BACKEND names another backend; jax is in '.[test]'.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return pytest.importorskip(
        "keras", reason=f"Keras 3 on KERAS_BACKEND={os.environ['KERAS_BACKEND']}: '.[test]'"
    )


def keras_lstm(keras, inputs: int, units: int, seed: int | None = 3, **kwargs):
    """A built ``keras.layers.LSTM`` returning sequences and states; with ``seed``, all of its
    weights (the bias included) drawn from U(-0.7, 0.7), else Keras's own initialisation."""
    layer = keras.layers.LSTM(units, return_sequences=True, return_state=True, **kwargs)
    layer.build((None, None, inputs))
    if seed is not None:
        rng = np.random.default_rng(seed)
        layer.set_weights([rng.uniform(-0.7, 0.7, w.shape) for w in layer.get_weights()])
    return layer


def keras_run(keras, layer, p: dict) -> dict[str, np.ndarray]:
    """The Keras layer's outputs on the problem ``p`` (see tests.support.random_problem)."""
    x, h0, c0 = (p[k].astype("float32") for k in ("x", "h0", "c0"))
    y, h_n, c_n = layer(x, initial_state=[h0, c0])
    return {k: keras.ops.convert_to_numpy(v) for k, v in (("y", y), ("h_n", h_n), ("c_n", c_n))}


@pytest.fixture(scope="module")
def keras_source(keras) -> tuple[list[np.ndarray], dict, dict]:
    """A Keras LSTM's random weights, a problem, and the Keras LSTM's outputs on it."""
    layer = keras_lstm(keras, 3, 4)
    p = random_problem(2, 6, 3, 4, seed=7)
    return layer.get_weights(), p, keras_run(keras, layer, p)


def ours_for_keras(target: Target) -> xplstm.LSTM:
    layer = target.lstm(3, 2, seed=5)
    layer.bias.values = target.asarray(np.linspace(-1.0, 1.0, 8).astype("float32"))
    return layer


@pytest.fixture(scope="module")
def keras_of_ours(keras) -> tuple[list[np.ndarray], dict, dict]:
    """The Keras weights of ``ours_for_keras``, a problem, and the outputs on it of a Keras LSTM
    given those weights."""
    weights = ours_for_keras(Target("numpy", None, "numpy")).to_keras_weights()
    destination = keras_lstm(keras, 3, 2, seed=None)
    destination.set_weights(weights)
    p = random_problem(2, 4, 3, 2, seed=7)
    return weights, p, keras_run(keras, destination, p)


@pytest.mark.reference
def test_from_keras_gives_keras_outputs(target, keras_source):
    weights, p, expected = keras_source
    layer = xplstm.LSTM.from_keras(weights, backend=target.backend, device=target.device)
    assert (layer.input_size, layer.hidden_size, layer.backend) == (3, 4, target.backend)
    assert str(xplstm.to_numpy(layer.weights.values).dtype) == "float32"  # Keras's dtype
    assert_outputs(layer, target, p, expected)


@pytest.mark.reference
def test_to_keras_weights_give_our_outputs_in_keras(target, keras_of_ours):
    weights, p, expected = keras_of_ours
    layer = ours_for_keras(target)
    kernel, recurrent, bias = layer.to_keras_weights()
    assert (kernel.shape, recurrent.shape, bias.shape) == ((3, 8), (2, 8), (8,))
    for ours, fed_to_keras in zip((kernel, recurrent, bias), weights, strict=True):
        assert_close(ours, fed_to_keras, like=fed_to_keras, level="exact")
    assert_outputs(layer, target, p, expected)


def test_keras_round_trip_is_exact(keras):
    weights = keras_lstm(keras, 5, 3).get_weights()
    back = xplstm.LSTM.from_keras(weights).to_keras_weights()
    for ours, theirs in zip(back, weights, strict=True):
        assert_close(ours, theirs, like=theirs, level="exact")
    # Keras's own initialisation (unit_forget_bias) puts 1.0 in the forget gate's bias only.
    fresh = xplstm.LSTM.from_keras(keras_lstm(keras, 5, 3, seed=None).get_weights())
    forget_only = np.repeat(np.array([0.0, 1.0, 0.0, 0.0], dtype="float32"), 3)
    assert_close(fresh.bias.values, forget_only, like=fresh, level="exact")


@pytest.mark.reference
def test_a_keras_lstm_without_bias(keras):
    source = keras_lstm(keras, 3, 2, use_bias=False)
    assert len(source.get_weights()) == 2
    layer = xplstm.LSTM.from_keras(source.get_weights(), backend="numpy")
    assert layer.bias is None and len(layer.to_keras_weights()) == 2
    p = random_problem(2, 3, 3, 2, seed=7)
    assert_outputs(layer, Target("numpy", None, "numpy"), p, keras_run(keras, source, p))


def test_from_keras_refuses_bad_weights(keras):
    kernel, recurrent, bias = keras_lstm(keras, 3, 2).get_weights()
    with pytest.raises(
        ValueError, match=r"as get_weights\(\) returns them: \[kernel, recurrent_kernel, bias\]"
    ):
        xplstm.LSTM.from_keras([kernel])
    with pytest.raises(ValueError, match=r"recurrent_kernel must have shape \(units, 4 \* units\)"):
        xplstm.LSTM.from_keras([kernel, recurrent.T, bias])
    with pytest.raises(
        ValueError,
        match=r"kernel must have shape \(input_size, 4 \* units\) = \(\?, 8\), got \(8, 3\)",
    ):
        xplstm.LSTM.from_keras([kernel.T, recurrent, bias])
    with pytest.raises(
        ValueError, match=r"bias must have shape \(4 \* units,\) = \(8,\), got \(4,\)"
    ):
        xplstm.LSTM.from_keras([kernel, recurrent, bias[:4]])
