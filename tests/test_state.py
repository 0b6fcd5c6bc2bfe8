"""Carried state, same-seed initialisation, and agreement of every backend with NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.support import (
    assert_close,
    assert_route,
    forward_backward,
    layer_for,
    on_path,
    random_problem,
    torch_reference,
)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_calls_carrying_state_equal_one_call(target, dtype):
    p = random_problem(3, 9, 4, 5, seed=3)
    x = target.asarray(p["x"].astype(dtype))
    layer = target.lstm(4, 5, dtype=dtype, seed=11)
    y, h_n, c_n = layer.forward(x)
    y1, h1, c1 = layer.forward(x[:, :4, :])
    y2, h2, c2 = layer.forward(x[:, 4:, :], h1, c1)
    parts = layer.xp.concat([y1, y2], axis=1)
    assert_close(parts, y, like=layer, level="ulps", name="y")
    assert_close(h2, h_n, like=layer, level="ulps", name="h_n")
    assert_close(c2, c_n, like=layer, level="ulps", name="c_n")


def test_a_stack_carries_its_state_across_chunks(target):
    """Stacked and projected: h_n, c_n of one chunk as h0, c0 of the next give the whole
    sequence's results, layer by layer."""
    p = random_problem(3, 9, 4, 5, seed=4)
    x = target.asarray(p["x"])
    layer = target.lstm(4, 5, num_layers=3, proj_size=2, dtype="float64", seed=1)
    y, h_n, c_n = layer.forward(x)
    y1, h1, c1 = layer.forward(x[:, :4, :])
    y2, h2, c2 = layer.forward(x[:, 4:, :], h1, c1)
    parts = np.concatenate([xplstm.to_numpy(y1), xplstm.to_numpy(y2)], axis=1)
    np.testing.assert_allclose(parts, xplstm.to_numpy(y), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(xplstm.to_numpy(h2), xplstm.to_numpy(h_n), rtol=1e-12)
    np.testing.assert_allclose(xplstm.to_numpy(c2), xplstm.to_numpy(c_n), rtol=1e-12)


def test_a_reverse_direction_cannot_be_split():
    """Carrying state continues every forward direction exactly; a reverse direction reads
    each chunk from its own end, so a bidirectional layer over chunks is not the layer over
    the whole sequence (as in torch and Keras)."""
    p = random_problem(2, 6, 3, 4, seed=5)
    layer = xplstm.LSTM(3, 4, bidirectional=True, backend="numpy", dtype="float64", seed=2)
    y = layer.forward(p["x"])[0]
    y1, h1, c1 = layer.forward(p["x"][:, :3])
    y2 = layer.forward(p["x"][:, 3:], h1, c1)[0]
    forward_half = np.concatenate([y1, y2], axis=1)[..., :4]
    np.testing.assert_allclose(forward_half, y[..., :4], rtol=1e-12)
    assert not np.allclose(np.concatenate([y1, y2], axis=1)[..., 4:], y[..., 4:])


def test_same_seed_same_weights_everywhere(target):
    reference = xplstm.LSTM(6, 7, backend="numpy", dtype="float64", seed=42)
    layer = target.lstm(6, 7, dtype="float64", seed=42)
    assert_close(layer.weights.values, reference.weights.values, like=layer, level="exact")
    assert_close(layer.bias.values, reference.bias.values, like=layer, level="exact")
    other = target.lstm(6, 7, dtype="float64", seed=43)
    assert not np.array_equal(xplstm.to_numpy(other.weights.values), reference.weights.values)


def test_default_initialisation_bounds_and_layout(target):
    layer = target.lstm(5, 16, seed=0)
    w = xplstm.to_numpy(layer.weights.values)
    assert w.shape == (5 + 16, 4 * 16)
    assert xplstm.to_numpy(layer.bias.values).shape == (4 * 16,)
    assert np.abs(w).max() <= 1 / np.sqrt(16)
    assert np.abs(w).max() > 0.9 / np.sqrt(16)  # uses the whole range, not a smaller one


@pytest.mark.reference
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_agrees_with_torch_float64(target, dtype):
    """CPU/GPU agreement: the same seed and inputs match torch.nn.LSTM in float64 (a reference
    no target shares code with, NumPy included)."""
    p = random_problem(4, 12, 3, 8, seed=5)
    seeded = xplstm.LSTM(3, 8, backend="numpy", dtype="float64", seed=9)
    expected = torch_reference(p | {"weights": seeded.weights.values, "bias": seeded.bias.values})
    layer = target.lstm(3, 8, dtype=dtype, seed=9)
    for name, value in forward_backward(layer, target, p).items():
        assert_close(value, expected[name], like=layer, name=name)


@pytest.mark.reference
@pytest.mark.parametrize("omitted", ["state", "dy"])
def test_omitted_state_and_gradients_are_zeros(target, path, omitted):
    """``forward(x)`` starts from zeros and ``backward(dy)`` takes ``dh_n = dc_n = 0`` (or
    ``backward(None, dh_n, dc_n)`` takes ``dy = 0``): against torch.nn.LSTM given those zeros."""
    p = random_problem(2, 5, 3, 4, seed=12)  # test_gradients' shape: JAX compiles it once
    zeros = ("h0", "c0", "dh_n", "dc_n") if omitted == "state" else ("dy",)
    p |= {key: np.zeros_like(p[key]) for key in zeros}
    expected = torch_reference(p)
    layer = on_path(layer_for(target, p, "float64"), path)
    actual = forward_backward(layer, target, p, state=omitted != "state", dy=omitted != "dy")
    assert_route(layer, path)
    for name, value in actual.items():
        assert_close(value, expected[name], like=layer, name=name)


def test_nan_input_propagates(target):
    host = random_problem(2, 5, 3, 4)["x"]
    host[0, 2, 1] = np.nan
    layer = target.lstm(3, 4, dtype="float64", seed=0)
    y, h_n, _ = layer.forward(target.asarray(host))
    dx, _, _ = layer.backward(layer.xp.ones_like(y))
    y, h_n, dx = (xplstm.to_numpy(a) for a in (y, h_n, dx))
    assert np.isnan(y[0, 2:, :]).all() and np.isnan(h_n[0]).all()
    assert np.isfinite(y[1]).all() and np.isfinite(y[0, :2]).all()
    assert np.isnan(dx[0]).any() and np.isfinite(dx[1]).all()


@pytest.mark.reference
def test_extreme_inputs_saturate_without_overflow(target, path):
    """Pre-activations of +-1e4 saturate the gates to exactly what torch.nn.LSTM gives; the
    stable sigmoid never overflows (NumPy would warn, raised here as an error)."""
    p = random_problem(2, 5, 3, 4, seed=0)
    p["x"] = np.full((2, 5, 3), 1e4)
    p["x"][1] *= -1
    expected = torch_reference(p)
    layer = on_path(layer_for(target, p, "float64"), path)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        actual = forward_backward(layer, target, p)
    assert_route(layer, path)
    for name, value in actual.items():
        assert_close(value, expected[name], like=layer, name=name)
