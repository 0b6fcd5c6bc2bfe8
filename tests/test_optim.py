"""Optimizers and clipping: steps against hand-computed values and against torch.optim, on every
backend; parameters stay on their backend, device and dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xplstm
from tests.support import assert_close, assert_placed
from xplstm import optim


def parameter(target, values, dtype: str = "float64") -> xplstm.Weights:
    host = np.asarray(values, dtype=dtype)
    return xplstm.Weights(target.asarray(host), target.asarray(np.zeros_like(host)))


def run(target, make, gradients: list[np.ndarray], start: np.ndarray) -> np.ndarray:
    """Run ``make(params)`` through the gradient sequence; returns the final values (host),
    checked to be float64 on the target's backend and device."""
    param = parameter(target, start)
    optimizer = make([param])
    for g in gradients:
        param.deltas = target.asarray(g)
        optimizer.step()
    assert_placed(param.values, like=param.deltas, shape=start.shape)
    return xplstm.to_numpy(param.values)


@pytest.mark.reference
def test_steps_by_hand(target):
    """Two steps of each rule, worked out on paper for w = 1, g = 0.5 then g = -1."""
    w0, grads = np.array([1.0]), [np.array([0.5]), np.array([-1.0])]
    # SGD: 1 - 0.1 * 0.5 + 0.1 * 1
    assert run(target, lambda p: optim.SGD(p, lr=0.1), grads, w0) == pytest.approx([1.05])
    # momentum 0.9: v1 = 0.5, w1 = 0.95; v2 = 0.45 - 1 = -0.55, w2 = 0.95 + 0.055
    momentum = run(target, lambda p: optim.SGD(p, lr=0.1, momentum=0.9), grads, w0)
    assert momentum == pytest.approx([1.005], rel=1e-14)
    # Adam, eps = 0: step 1 moves by lr * sign(g); step 2: m = 0.9*0.05 - 0.1 = -0.055,
    # v = 0.999*0.00025 + 0.001 = 0.00124975, m_hat = -0.055/0.19, v_hat = 0.00124975/0.001999
    m_hat, v_hat = -0.055 / 0.19, 0.00124975 / (1 - 0.999**2)
    expected = 1.0 - 0.01 - 0.01 * m_hat / math.sqrt(v_hat)
    adam = run(target, lambda p: optim.Adam(p, lr=0.01, eps=0.0), grads, w0)
    assert adam == pytest.approx([expected], rel=1e-12)
    # RMSProp, eps = 0: v1 = 0.1*0.25, w1 = 1 - 0.01*0.5/0.158113883; v2 = 0.9*0.025 + 0.1
    w1 = 1.0 - 0.01 * 0.5 / math.sqrt(0.025)
    expected = w1 + 0.01 * 1.0 / math.sqrt(0.9 * 0.025 + 0.1)
    rms = run(target, lambda p: optim.RMSProp(p, lr=0.01, alpha=0.9, eps=0.0), grads, w0)
    assert rms == pytest.approx([expected], rel=1e-12)


OPTIMIZERS = {
    "sgd-momentum": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.8),
        lambda t: __import__("torch").optim.SGD(t, lr=0.05, momentum=0.8),
    ),
    "adam": (
        lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
        lambda t: __import__("torch").optim.Adam(t, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    ),
    "rmsprop": (
        lambda p: optim.RMSProp(p, lr=0.01, alpha=0.9, eps=1e-6),
        lambda t: __import__("torch").optim.RMSprop(t, lr=0.01, alpha=0.9, eps=1e-6),
    ),
}


@pytest.mark.reference
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_matches_torch_optim(target, name):
    torch = pytest.importorskip("torch")
    ours, theirs = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    # Tiny gradients too, where eps matters (and torch's eps-outside-the-root shows).
    gradients = [rng.standard_normal((3, 4)) * scale for scale in (1.0, 1e-3, 0.1, 1e-6, 2.0)]
    reference = torch.tensor(start, requires_grad=True)
    optimizer = theirs([reference])
    for g in gradients:
        reference.grad = torch.from_numpy(g)
        optimizer.step()
    actual = run(target, ours, gradients, start)
    assert_close(actual, reference.detach().numpy(), like=actual, level="ulps")


EVERY_RULE = {"sgd": (lambda p: optim.SGD(p, lr=0.1), None)} | OPTIMIZERS


@pytest.mark.parametrize("make", [v[0] for v in EVERY_RULE.values()], ids=EVERY_RULE.keys())
def test_steps_and_clipping_never_write_in_place(target, make):
    """The README's promise: ``step()`` and ``clip_grad_norm`` replace arrays, never write into
    them, so an array the caller still holds (a snapshot of the best model) keeps its values."""
    rng = np.random.default_rng(6)
    param = parameter(target, rng.standard_normal((3, 2)))
    optimizer = make([param])
    for _ in range(2):  # the second step also meets the optimizer's state
        old_values = param.values
        param.deltas = old_deltas = target.asarray(rng.standard_normal((3, 2)) * 10.0)
        values, deltas = (np.array(xplstm.to_numpy(a)) for a in (old_values, old_deltas))
        assert optim.clip_grad_norm([param], 1.0) > 1.0  # so clipping scales the deltas
        optimizer.step()
        assert_close(old_values, values, like=target, level="exact", name="values")
        assert_close(old_deltas, deltas, like=target, level="exact", name="deltas")
        assert not np.array_equal(xplstm.to_numpy(param.values), values), "no step was taken"


@pytest.mark.parametrize("make", [v[0] for v in OPTIMIZERS.values()], ids=OPTIMIZERS.keys())
def test_float32_parameters_stay_float32_on_their_device(target, make):
    param = parameter(target, np.ones((2, 2)), "float32")
    param.deltas = target.asarray(np.full((2, 2), 0.5, dtype="float32"))
    make([param]).step()
    assert param.values.dtype == param.deltas.dtype
    assert xplstm.to_numpy(param.values).dtype == np.float32
    import array_api_compat

    assert array_api_compat.device(param.values) == target.device
    assert np.all(xplstm.to_numpy(param.values) < 1.0)


def test_state_follows_a_moved_model(target):
    """Adam's moments move with the model: three steps on another backend, then three on the
    target, land where six unmoved steps do (resetting the moments on the move would not)."""
    start = "array_api_strict" if target.backend == "numpy" else "numpy"
    rng = np.random.default_rng(5)
    gradients = [[rng.standard_normal(s) for s in ((2, 1), (1,))] for _ in range(6)]

    def train(move_after: int | None) -> list[np.ndarray]:
        layer = xplstm.Linear(2, 1, seed=0, dtype="float64", backend=start)
        optimizer = optim.Adam(layer.parameters(), lr=0.1)
        for index, step in enumerate(gradients):
            if index == move_after:
                layer.to(target.backend, target.device)
            for param, g in zip(layer.parameters(), step, strict=True):
                param.deltas = xplstm.backends.get(layer.backend).from_numpy(g, layer.device)
            optimizer.step()
        assert layer.backend == (target.backend if move_after is not None else start)
        return [p.values for p in layer.parameters()]

    for moved, unmoved in zip(train(3), train(None), strict=True):
        assert_close(moved, unmoved, like=target, level="ulps")


@pytest.mark.reference
def test_clip_grad_norm(target):
    a, b = parameter(target, [0.0, 0.0]), parameter(target, [0.0])
    a.deltas, b.deltas = target.asarray(np.array([3.0, 0.0])), target.asarray(np.array([4.0]))
    assert optim.clip_grad_norm([a, b], 10.0) == pytest.approx(5.0, rel=1e-15)
    assert_close(a.deltas, np.array([3.0, 0.0]), like=target, level="exact")
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0, rel=1e-15)
    scale = 1.0 / (5.0 + 1e-6)
    assert_close(a.deltas, np.array([3.0 * scale, 0.0]), like=target, level="ulps")
    assert_close(b.deltas, np.array([4.0 * scale]), like=target, level="ulps")


@pytest.mark.reference
def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s) for s in ((4, 3), (3,), (2, 2))]
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads, strict=True):
        t.grad = torch.from_numpy(g.copy())
    expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, 0.5))
    params = [xplstm.Weights(np.zeros_like(g), g) for g in grads]
    assert optim.clip_grad_norm(params, 0.5) == pytest.approx(expected_norm, rel=1e-14)
    for param, t in zip(params, tensors, strict=True):
        assert_close(param.deltas, t.grad.numpy(), like=param.deltas, level="ulps")


def test_bad_arguments_are_refused():
    with pytest.raises(
        ValueError, match=r"the optimizer got no parameters; pass model\.parameters"
    ):
        optim.Adam([])
    with pytest.raises(TypeError, match=r"parameter 0 is a ndarray, not xplstm\.Weights"):
        optim.SGD([np.zeros(2)], lr=0.1)
    weights = xplstm.Linear(2, 1).parameters()
    with pytest.raises(ValueError, match=r"lr must be a positive finite number, got -1"):
        optim.SGD(weights, lr=-1)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0.0, 1.0\), got 1.0"):
        optim.Adam(weights, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"max_norm must be a positive finite number, got 0"):
        optim.clip_grad_norm(weights, 0)


@pytest.mark.parametrize("make", [v[0] for v in OPTIMIZERS.values()], ids=OPTIMIZERS.keys())
def test_deltas_that_do_not_match_values_are_refused(target, make):
    """Deltas of another shape would broadcast the parameter to a new shape, of another dtype
    would upcast it, of another backend would fail halfway: step() refuses them, names the
    parameter, and changes nothing."""
    params = [parameter(target, np.ones((2, 2))), parameter(target, np.ones((3, 1)))]
    optimizer = make(params)
    params[1].deltas = target.asarray(np.ones((1, 4)))
    with pytest.raises(
        ValueError,
        match=r"parameter 1: deltas have shape \(1, 4\) but values have shape \(3, 1\); "
        r"backward must leave deltas shaped like values",
    ):
        optimizer.step()
    params[1].deltas = target.asarray(np.ones((3, 1), dtype="float32"))
    with pytest.raises(
        TypeError,
        match=r"parameter 1: deltas have dtype .*float32.* but values have dtype .*float64.*; "
        r"convert with xp\.astype\(deltas, values\.dtype\)",
    ):
        optimizer.step()
    if target.backend != "numpy":
        params[1].deltas = np.ones((3, 1))
        with pytest.raises(
            ValueError,
            match=rf"parameter 1: deltas are numpy arrays on cpu but values are {target.backend} "
            r"arrays on .*; convert them on the values' backend with xp\.asarray\(deltas, "
            r"device=values\.device\)",
        ):
            optimizer.step()
    assert optimizer.steps == 0
    for param in params:
        assert_close(param.values, np.ones(param.values.shape), like=param.values, level="exact")
