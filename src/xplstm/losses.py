"""Losses with their gradients, written once against the array API.

Each returns ``(loss, gradient)``: ``loss`` is a 0-d array on the inputs' backend and device
(``float(loss)`` reads it), ``gradient`` the derivative of ``loss`` with respect to the first
argument, ready for ``model.backward``.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from xplstm import backends
from xplstm.types import Array


def _namespace(first: tuple[str, Array], second: tuple[str, Array]) -> Any:
    """The one namespace of both arrays, or a clear error when they live apart."""
    (name_a, a), (name_b, b) = first, second
    owners = [backends.backend_of(a), backends.backend_of(b)]
    try:
        xp = array_api_compat.array_namespace(a, b)
    except TypeError:
        raise ValueError(
            f"{name_a} is a {owners[0].name} array but {name_b} is a {owners[1].name} array; "
            f"convert {name_b} with xp.asarray({name_b}, device=...) on {name_a}'s backend"
        ) from None
    where_a, where_b = array_api_compat.device(a), array_api_compat.device(b)
    if where_a != where_b:
        raise ValueError(
            f"{name_a} is on device {where_a} but {name_b} is on {where_b}; move {name_b} to "
            f"{name_a}'s device with xp.asarray({name_b}, device={name_a}.device), or the model "
            f"to {name_b}'s with model.to(backend, device={name_b}.device)"
        )
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name_a} must be a floating array, got dtype {a.dtype}")
    return xp


def mse(prediction: Array, target: Array) -> tuple[Array, Array]:
    """Mean squared error over all elements: ``mean((prediction - target) ** 2)``.

    ``target`` must have the shape and dtype of ``prediction``. Returns ``(loss, d_prediction)``.
    """
    xp = _namespace(("prediction", prediction), ("target", target))
    if tuple(target.shape) != tuple(prediction.shape):
        raise ValueError(
            f"target has shape {tuple(target.shape)} but prediction has "
            f"{tuple(prediction.shape)}; they must match (reshape the target, e.g. "
            "xp.reshape(target, prediction.shape))"
        )
    if target.dtype != prediction.dtype:
        raise TypeError(
            f"target has dtype {target.dtype} but prediction has {prediction.dtype}; convert "
            "with xp.astype(target, prediction.dtype)"
        )
    diff = prediction - target
    scale = 1.0 / math.prod(prediction.shape)
    return xp.sum(diff * diff) * scale, diff * (2.0 * scale)


def softmax_cross_entropy(logits: Array, targets: Array) -> tuple[Array, Array]:
    """Cross-entropy of softmax(``logits``) against integer classes, averaged over ``targets``.

    ``logits`` is (..., classes), floating; ``targets`` has the leading shape (...) and an integer
    dtype, each entry in ``[0, classes)``. Uses log-sum-exp with the row maximum subtracted, so
    large logits neither overflow nor lose the loss. Returns ``(loss, d_logits)`` with
    ``d_logits = (softmax(logits) - one_hot(targets)) / targets.size``.
    """
    xp = _namespace(("logits", logits), ("targets", targets))
    if logits.ndim < 1 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:-1])} (logits' shape without the "
            f"class axis), got {tuple(targets.shape)}"
        )
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(
            f"targets must be integer class indices, got dtype {targets.dtype}; convert with "
            "xp.astype(targets, xp.int64)"
        )
    # Compare in int64: a narrow dtype (uint8) could not count past its range and would wrap.
    targets = xp.astype(targets, xp.int64)
    classes = logits.shape[-1]
    if bool(xp.any((targets < 0) | (targets >= classes))):
        raise ValueError(
            f"targets must be class indices in [0, {classes}) for {classes} logits; got values "
            f"from {int(xp.min(targets))} to {int(xp.max(targets))}"
        )
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    log_p = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    labels = xp.arange(classes, dtype=xp.int64, device=array_api_compat.device(logits))
    chosen = xp.expand_dims(targets, axis=-1) == labels
    scale = 1.0 / math.prod(targets.shape)
    # Select rather than multiply by the one-hot: a -inf logit (a masked-out class) has
    # log_p = -inf, and 0 * -inf would make the loss NaN.
    loss = -xp.sum(xp.where(chosen, log_p, 0.0)) * scale
    return loss, (xp.exp(log_p) - xp.astype(chosen, logits.dtype)) * scale
