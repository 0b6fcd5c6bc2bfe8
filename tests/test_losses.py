"""Losses: values against torch.nn.functional, gradients against finite differences in float64,
on every backend; the errors for mismatched inputs."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.numerics import numeric_gradient
from tests.support import assert_close
from xplstm import losses


def as_int(target, host: np.ndarray):
    return target.asarray(host.astype(np.int64))


def check_on_target(target, array, dtype: str) -> None:
    assert xplstm.backends.backend_of(array).name == target.backend
    assert xplstm.to_numpy(array).dtype == np.dtype(dtype)


@pytest.mark.reference
@pytest.mark.parametrize("shape", [(3, 4, 2), (5, 1)], ids=["sequence", "flat"])
def test_mse_value_and_gradient(target, shape):
    rng = np.random.default_rng(0)
    prediction, truth = rng.standard_normal(shape), rng.standard_normal(shape)
    loss, grad = losses.mse(target.asarray(prediction), target.asarray(truth))
    assert loss.ndim == 0
    check_on_target(target, loss, "float64")
    assert float(loss) == pytest.approx(np.mean((prediction - truth) ** 2), rel=1e-12)
    expected = numeric_gradient(
        lambda p: float(losses.mse(target.asarray(p), target.asarray(truth))[0]), prediction
    )
    assert_close(grad, expected, like=target, level="finite-difference", name="d_prediction")


@pytest.mark.reference
def test_mse_keeps_float32(target):
    ones = target.asarray(np.ones((2, 3), dtype="float32"))
    loss, grad = losses.mse(ones, ones * 0.5)
    check_on_target(target, loss, "float32")
    check_on_target(target, grad, "float32")
    assert float(loss) == pytest.approx(0.25)


@pytest.mark.reference
@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 3)], ids=["sequence", "flat"])
def test_cross_entropy_matches_torch_and_finite_differences(target, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(shape) * 3.0
    classes = rng.integers(0, shape[-1], size=shape[:-1])
    loss, grad = losses.softmax_cross_entropy(target.asarray(logits), as_int(target, classes))
    check_on_target(target, loss, "float64")
    expected_loss = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits.reshape(-1, shape[-1])), torch.from_numpy(classes.reshape(-1))
    )
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-12)
    expected = numeric_gradient(
        lambda v: float(
            losses.softmax_cross_entropy(target.asarray(v), as_int(target, classes))[0]
        ),
        logits,
    )
    assert_close(grad, expected, like=target, level="finite-difference", name="d_logits")


@pytest.mark.reference
def test_cross_entropy_is_stable_for_huge_logits(target):
    logits = np.array([[1000.0, 0.0, -1000.0], [3.0, 1.0, 2.0]])
    classes = np.array([1, 2])
    loss, grad = losses.softmax_cross_entropy(target.asarray(logits), as_int(target, classes))
    shifted, _ = losses.softmax_cross_entropy(
        target.asarray(logits - logits.max(axis=1, keepdims=True)), as_int(target, classes)
    )
    # Row 0: -log softmax = 1000 exactly (to rounding); row 1 by hand.
    row1 = np.log(np.exp(3.0) + np.exp(1.0) + np.exp(2.0)) - 2.0
    assert float(loss) == pytest.approx((1000.0 + row1) / 2, rel=1e-12)
    assert float(loss) == pytest.approx(float(shifted), rel=1e-12)
    assert np.all(np.isfinite(xplstm.to_numpy(grad)))


def test_loss_errors_say_what_is_wrong(target):
    a = target.asarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"target has shape \(3, 2\) but prediction has \(2, 3\)"):
        losses.mse(a, target.asarray(np.zeros((3, 2))))
    with pytest.raises(TypeError, match=r"target has dtype .*float32.* but prediction has"):
        losses.mse(a, target.asarray(np.zeros((2, 3), dtype="float32")))
    with pytest.raises(TypeError, match="prediction must be a floating array"):
        losses.mse(as_int(target, np.zeros((2, 3))), as_int(target, np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\) .*got \(3,\)"):
        losses.softmax_cross_entropy(a, as_int(target, np.zeros(3)))
    with pytest.raises(TypeError, match="targets must be integer class indices"):
        losses.softmax_cross_entropy(a, target.asarray(np.zeros(2)))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\) .*from -1 to 3"):
        losses.softmax_cross_entropy(a, as_int(target, np.array([-1, 3])))
    if target.backend != "numpy":
        with pytest.raises(
            ValueError, match=f"prediction is a {target.backend} array but target is a numpy array"
        ):
            losses.mse(a, np.zeros((2, 3)))


@pytest.mark.reference
def test_cross_entropy_with_narrow_integer_targets(target):
    """uint8 targets with more classes than uint8 can count: the labels must not wrap."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 300))
    classes = np.array([0, 7, 255, 200], dtype=np.uint8)
    loss, grad = losses.softmax_cross_entropy(target.asarray(logits), target.asarray(classes))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(4)
    assert float(loss) == pytest.approx(-log_p[rows, classes].mean(), rel=1e-12)
    expected = np.exp(log_p)
    expected[rows, classes] -= 1.0
    assert_close(grad, expected / 4, like=target, level="ulps")


@pytest.mark.reference
def test_cross_entropy_with_minus_infinity_logits_matches_torch(target):
    """A masked-out class (logit -inf) has probability 0: the loss stays finite, as in torch."""
    torch = pytest.importorskip("torch")
    logits = np.array([[0.5, -np.inf, 2.0], [-np.inf, 1.0, -1.0]])
    classes = np.array([0, 2])
    loss, grad = losses.softmax_cross_entropy(target.asarray(logits), as_int(target, classes))
    reference = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(reference, torch.from_numpy(classes))
    expected.backward()
    assert np.isfinite(expected.item())
    assert float(loss) == pytest.approx(expected.item(), rel=1e-12)
    assert_close(grad, reference.grad.numpy(), like=target, level="ulps")


def test_device_mismatch_says_how_to_move_the_target():
    """Two devices of one backend (array-api-strict has fake ones): the message gives a fix that
    works."""
    backend = xplstm.backends.get("array_api_strict")
    if backend.unavailable_reason():
        pytest.skip(f"array_api_strict: {backend.unavailable_reason()}")
    host = np.zeros((2, 3))
    prediction = backend.from_numpy(host, backend.default_device())
    target = backend.from_numpy(host + 1.0, backend.parse_device("device1"))
    with pytest.raises(
        ValueError,
        match=r"prediction is on device .*CPU_DEVICE.* but target is on .*device1.*; move target "
        r"to prediction's device with xp\.asarray\(target, device=prediction\.device\), or the "
        r"model to target's with model\.to\(backend, device=target\.device\)",
    ):
        losses.mse(prediction, target)
    xp = backend.namespace()
    loss, _ = losses.mse(prediction, xp.asarray(target, device=prediction.device))
    assert float(loss) == 1.0
