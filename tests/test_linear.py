"""Linear, LastStep and Sequential: outputs against torch.nn.Linear, gradients against finite
differences in float64, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.numerics import directional_derivative, numeric_gradient
from tests.support import assert_close

SHAPES = {"sequence": (2, 3, 4), "flat": (5, 4)}


def linear(target, inputs: int, outputs: int, **kwargs) -> xplstm.Linear:
    return xplstm.Linear(inputs, outputs, backend=target.backend, device=target.device, **kwargs)


@pytest.mark.reference
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_matches_torch_linear(target, shape, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    module = torch.nn.Linear(shape[-1], 3, dtype=torch.float64)
    weights = module.weight.detach().numpy().T.astype(dtype)
    bias = module.bias.detach().numpy().astype(dtype)
    layer = linear(
        target,
        shape[-1],
        3,
        weights=target.asarray(weights),
        bias=target.asarray(bias),
        dtype=dtype,
    )
    expected = module(torch.from_numpy(x)).detach().numpy()
    assert_close(layer(target.asarray(x.astype(dtype))), expected, like=layer, name="y")


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_gradients_match_finite_differences(target, shape):
    rng = np.random.default_rng(2)
    inputs, outputs = shape[-1], 3
    host = {
        "weights": rng.standard_normal((inputs, outputs)),
        "bias": rng.standard_normal(outputs),
        "x": rng.standard_normal(shape),
    }
    dy = rng.standard_normal((*shape[:-1], outputs))
    layer = linear(target, inputs, outputs, dtype="float64")

    def loss(values: dict) -> float:
        layer.weights.values = target.asarray(values["weights"])
        layer.bias.values = target.asarray(values["bias"])
        return float(np.sum(xplstm.to_numpy(layer(target.asarray(values["x"]))) * dy))

    loss(host)
    dx = layer.backward(target.asarray(dy))
    actual = {"weights": layer.weights.deltas, "bias": layer.bias.deltas, "x": dx}
    for name, value in actual.items():
        expected = numeric_gradient(lambda v, name=name: loss(host | {name: v}), host[name])
        assert_close(value, expected, like=layer, level="finite-difference", name=f"d_{name}")
        assert tuple(value.shape) == expected.shape and value.dtype == layer.dtype


def test_init_is_seeded_bounded_and_the_same_on_every_backend(target):
    layer = linear(target, 16, 5, seed=3)
    values = xplstm.to_numpy(layer.weights.values)
    assert values.dtype == np.float32
    assert np.all(np.abs(values) <= 0.25) and values.std() > 0.1
    reference = xplstm.Linear(16, 5, backend="numpy", seed=3)
    assert_close(layer.weights.values, reference.weights.values, like=layer, level="exact")
    assert_close(layer.bias.values, reference.bias.values, like=layer, level="exact")


def test_linear_refuses_bad_inputs(target):
    layer = linear(target, 4, 2)
    with pytest.raises(
        ValueError,
        match=r"x must have shape \(batch, seq, in_features\) = \(\?, \?, 4\), got \(2, 3, 5\)",
    ):
        layer(target.asarray(np.zeros((2, 3, 5), dtype="float32")))
    with pytest.raises(ValueError, match=r"\(batch, in_features\) or \(batch, seq, in_features\)"):
        layer(target.asarray(np.zeros((4,), dtype="float32")))
    with pytest.raises(TypeError, match=r"x has dtype .*float64.* but this layer computes in"):
        layer(target.asarray(np.zeros((2, 4))))
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward\\(\\) first"):
        layer.backward(target.asarray(np.zeros((2, 2), dtype="float32")))
    layer(target.asarray(np.zeros((2, 3, 4), dtype="float32")))
    with pytest.raises(
        ValueError,
        match=r"dy must have shape the shape of the forward's output = \(2, 3, 2\), got \(6, 2\)",
    ):
        layer.backward(target.asarray(np.zeros((6, 2), dtype="float32")))
    with pytest.raises(
        ValueError,
        match=r"weights must have shape \(4, 2\) = \(in_features, out_features\), got \(2, 4\)",
    ):
        xplstm.Linear(4, 2, weights=np.zeros((2, 4), dtype="float32"))
    with pytest.raises(ValueError, match="out_features must be a positive int, got 0"):
        xplstm.Linear(4, 0)


@pytest.mark.reference
def test_last_step_forward_and_gradient(target):
    rng = np.random.default_rng(4)
    y = rng.standard_normal((2, 4, 3))
    d_last = rng.standard_normal((2, 3))
    step = xplstm.LastStep()
    out = step(target.asarray(y))
    assert_close(out, y[:, -1, :], like=target, level="exact")
    dy = step.backward(target.asarray(d_last))
    expected = numeric_gradient(lambda v: float(np.sum(v[:, -1, :] * d_last)), y)
    assert_close(dy, expected, like=target, level="finite-difference", name="dy")
    assert xplstm.backends.backend_of(dy).name == target.backend
    assert dy.dtype == out.dtype
    assert step.parameters() == [] and step.to("numpy") is step and repr(step) == "LastStep()"
    one = xplstm.LastStep()
    one(target.asarray(y[:, :1, :]))
    assert tuple(one.backward(target.asarray(d_last)).shape) == (2, 1, 3)
    with pytest.raises(
        ValueError,
        match=r"LastStep's input y must have shape \(batch, seq, features\) = \(\?, \?, \?\), "
        r"got \(2, 3\)",
    ):
        step(target.asarray(d_last))
    with pytest.raises(
        ValueError, match=r"d_last must have the shape of the last forward's output \(2, 3\)"
    ):
        step.backward(target.asarray(y))


@pytest.mark.reference
def test_sequential_gradients_match_finite_differences(target):
    """The whole chain LSTM -> LastStep -> Linear, checked along random directions in every
    parameter and the input at once."""
    rng = np.random.default_rng(5)
    model = xplstm.Sequential(
        target.lstm(2, 3, dtype="float64", seed=0),
        xplstm.LastStep(),
        linear(target, 3, 2, dtype="float64", seed=1),
    )
    params = [xplstm.to_numpy(p.values) for p in model.parameters()]
    x = rng.standard_normal((2, 4, 2))
    r = rng.standard_normal((2, 2))

    def loss(t: float, directions: list[np.ndarray]) -> float:
        for param, value, direction in zip(model.parameters(), params, directions, strict=False):
            param.values = target.asarray(value + t * direction)
        y = model(target.asarray(x + t * directions[-1]))
        return float(np.sum(xplstm.to_numpy(y) * r))

    loss(0.0, [np.zeros_like(p) for p in [*params, x]])
    dx = model.backward(target.asarray(r))
    grads = [xplstm.to_numpy(p.deltas) for p in model.parameters()] + [xplstm.to_numpy(dx)]
    for _ in range(3):
        directions = [rng.standard_normal(p.shape) for p in [*params, x]]
        analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, directions, strict=True))
        numeric = directional_derivative(lambda t, d=directions: loss(t, d))
        assert numeric == pytest.approx(analytic, rel=1e-7, abs=1e-9)


def test_sequential_collects_moves_and_prints(target):
    lstm, head = xplstm.LSTM(2, 3, seed=0), xplstm.Linear(3, 1, seed=1)
    model = xplstm.Sequential(lstm, xplstm.LastStep(), head)
    assert model.parameters() == [lstm.weights, lstm.bias, head.weights, head.bias]
    assert model.to(target.backend, target.device) is model
    assert (model.backend, model.device, model.dtype) == (target.backend, lstm.device, lstm.dtype)
    assert head.backend == target.backend and model.xp is lstm.xp
    assert repr(model) == (f"Sequential(\n  {lstm!r},\n  LastStep(),\n  {head!r},\n)")
    assert repr(head).startswith("Linear(in_features=3, out_features=1, backend=")
    assert tuple(model(target.asarray(np.ones((4, 5, 2), dtype="float32"))).shape) == (4, 1)
    with pytest.raises(ValueError, match="Sequential needs at least one layer"):
        xplstm.Sequential()
    with pytest.raises(TypeError, match=r"layer 1 \(int\) is not a layer: it has no forward"):
        xplstm.Sequential(lstm, 3)


def test_layers_refuse_arrays_of_another_backend_or_device(target):
    host = np.zeros((2, 4), dtype="float32")
    if target.backend != "numpy":
        with pytest.raises(
            ValueError,
            match=rf"x is a {target.backend} array but this layer's parameters are numpy "
            rf"arrays; move the layer with layer.to\('{target.backend}'\)",
        ):
            xplstm.Linear(4, 2, backend="numpy")(target.asarray(host))
    if target.id == "array_api_strict-device1":
        on_default = xplstm.Linear(4, 2, backend="array_api_strict")
        with pytest.raises(ValueError, match=r"x is on device .*device1.* but this layer's"):
            on_default(target.asarray(host))
