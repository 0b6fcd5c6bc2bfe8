"""Chaining layers into a model: ``Sequential``, and ``LastStep`` to keep a sequence's last step."""

from __future__ import annotations

from typing import Any

import array_api_compat

from xplstm import checks
from xplstm.backends import Backend
from xplstm.layer import Layer, Module, Weights, last_forward
from xplstm.steps import check_lengths, last_index, reads_steps
from xplstm.types import Array


def output(result: Any) -> Any:
    """The array a layer or model passes on: the first element when it returns a tuple (as
    LSTM does, ``(y, h_n, c_n)``)."""
    return result[0] if isinstance(result, tuple) else result


class LastStep(Module):
    """Keep the last time step: (batch, seq, features) -> (batch, features). No parameters.

    Put it between an LSTM and a Linear head when one prediction per sequence is wanted. With
    ``lengths`` (right padding) it keeps each row's last valid step; with a Keras-style
    ``mask`` the last step, which carries the state of the last unmasked one.
    """

    #: ``Sequential`` passes it ``lengths`` and ``mask``.
    reads_steps = True

    def forward(self, y: Array, *, lengths: Any = None, mask: Array | None = None) -> Array:
        """``y[:, -1, :]`` for ``y`` (batch, seq, features), or ``y[b, lengths[b] - 1, :]``
        (only those steps are read)."""
        checks.sequences("LastStep's input y", tuple(getattr(y, "shape", ())))
        batch, seq, features = self._shape = tuple(y.shape)
        self._index = None
        if lengths is None:
            return y[:, -1, :]
        xp = array_api_compat.array_namespace(y)
        valid = check_lengths(lengths, batch, seq)
        self._index = last_index(xp, valid, seq, array_api_compat.device(y))
        return xp.take(xp.reshape(y, (batch * seq, features)), self._index, axis=0)

    def backward(self, d_last: Array) -> Array:
        """The gradient with respect to the whole sequence: ``d_last`` at the step kept, zeros
        elsewhere."""
        batch, seq, features = last_forward(getattr(self, "_shape", None))
        if tuple(d_last.shape) != (batch, features):
            raise ValueError(
                f"d_last must have the shape of the last forward's output {(batch, features)}, "
                f"got {tuple(d_last.shape)}"
            )
        xp = array_api_compat.array_namespace(d_last)
        where = array_api_compat.device(d_last)
        last = xp.expand_dims(d_last, axis=1)
        if self._index is not None:
            kept = xp.arange(batch * seq, dtype=self._index.dtype, device=where)
            kept = xp.reshape(kept, (batch, seq, 1)) == xp.reshape(self._index, (batch, 1, 1))
            return xp.where(kept, last, xp.zeros((), dtype=d_last.dtype, device=where))
        if seq == 1:
            return last
        before = xp.zeros((batch, seq - 1, features), dtype=d_last.dtype, device=where)
        return xp.concat([before, last], axis=1)

    def parameters(self) -> list[Weights]:
        """None: ``[]``."""
        return []

    def to(self, backend: str | Backend, device: Any = None) -> LastStep:
        """Nothing to move; returns self."""
        return self

    def __repr__(self) -> str:
        return "LastStep()"


class Sequential(Module):
    """Layers applied in order; backward goes through them in reverse.

    A layer that returns a tuple (``LSTM`` returns ``(y, h_n, c_n)``) passes its first element
    on, and likewise in backward. A training step reads::

        model = Sequential(LSTM(2, 32, seed=0), LastStep(), Linear(32, 1, seed=1))
        prediction = model(x)
        loss, d_prediction = losses.mse(prediction, target)
        model.backward(d_prediction)
        optim.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()

    Example:

    >>> import numpy as np
    >>> from xplstm import LastStep, Linear, LSTM, Sequential, losses
    >>> model = Sequential(
    ...     LSTM(2, 8, backend="numpy", seed=0), LastStep(), Linear(8, 1, backend="numpy", seed=1)
    ... )
    >>> x, target = np.ones((3, 4, 2), dtype="float32"), np.zeros((3, 1), dtype="float32")
    >>> prediction = model(x, lengths=[4, 2, 3])
    >>> loss, d_prediction = losses.mse(prediction, target)
    >>> dx = model.backward(d_prediction)
    >>> prediction.shape, dx.shape, len(model.parameters())
    ((3, 1), (3, 4, 2), 4)
    """

    def __init__(self, *layers: Any) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer, e.g. Sequential(LSTM(2, 8))")
        for index, layer in enumerate(layers):
            missing = [
                m for m in ("forward", "backward", "parameters", "to") if not hasattr(layer, m)
            ]
            if missing:
                raise TypeError(
                    f"layer {index} ({type(layer).__name__}) is not a layer: it has no "
                    f"{', '.join(missing)}"
                )
        self.layers = list(layers)

    def forward(self, x: Array, *, lengths: Any = None, mask: Array | None = None) -> Array:
        """Run ``x`` through every layer in order; ``lengths`` or ``mask`` go to the layers that
        read them (``LSTM``, ``LastStep``)."""
        steps = {k: v for k, v in (("lengths", lengths), ("mask", mask)) if v is not None}
        for layer in self.layers:
            reads = steps and reads_steps(layer)
            x = output(layer.forward(x, **steps) if reads else layer.forward(x))
        return x

    def backward(self, dy: Array) -> Array:
        """Back-propagate ``dy`` through every layer in reverse order; returns ``dx``."""
        for layer in reversed(self.layers):
            dy = output(layer.backward(dy))
        return dy

    def parameters(self) -> list[Weights]:
        """Every layer's parameters, in layer order."""
        return [param for layer in self.layers for param in layer.parameters()]

    def train(self, mode: bool = True) -> Sequential:
        """Training mode for every layer that has one (dropout acts); returns self."""
        for layer in self.layers:
            if hasattr(layer, "train"):
                layer.train(mode)
        return self

    def eval(self) -> Sequential:
        """Evaluation mode for every layer that has one (no dropout); returns self."""
        return self.train(False)

    def to(self, backend: str | Backend, device: Any = None) -> Sequential:
        """Move every layer to ``backend`` and ``device``; returns self."""
        for layer in self.layers:
            layer.to(backend, device)
        return self

    def _first_with_parameters(self) -> Layer:
        layer = next((m for m in self.layers if m.parameters()), None)
        if layer is None:
            raise AttributeError("this Sequential has no layer with parameters")
        return layer

    @property
    def xp(self) -> Any:
        """The array namespace of the parameters (of the first layer that has any)."""
        return self._first_with_parameters().xp

    @property
    def device(self) -> Any:
        """The device of the parameters (of the first layer that has any)."""
        return self._first_with_parameters().device

    @property
    def dtype(self) -> Any:
        """The dtype of the parameters (of the first layer that has any)."""
        return self._first_with_parameters().dtype

    @property
    def backend(self) -> str:
        """The backend name of the parameters (of the first layer that has any)."""
        return self._first_with_parameters().backend

    def __repr__(self) -> str:
        inner = "".join(f"\n  {layer!r}," for layer in self.layers)
        return f"Sequential({inner}\n)"
