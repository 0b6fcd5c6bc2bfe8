"""A fully connected layer, ``y = x @ W + b``, written once against the array API."""

from __future__ import annotations

import math
from typing import Any

from xplstm import init, interop
from xplstm.backends import Backend
from xplstm.checks import positive_int
from xplstm.layer import Layer, last_forward
from xplstm.resolver import to_numpy
from xplstm.types import Array


class Linear(Layer):
    """An affine map of the last axis: ``y = x @ weights.values + bias.values``.

    ``x`` is (batch, seq, in_features), for example an LSTM's output, or (batch, in_features);
    ``y`` has the same leading axes and ``out_features`` last.

    - ``weights.values``: shape ``(in_features, out_features)`` (the transpose of
      ``torch.nn.Linear.weight``).
    - ``bias.values``: shape ``(out_features,)``.

    Args:
        in_features, out_features: sizes of the last axis of ``x`` and ``y``.
        weights, bias: initial values, any supported arrays; by default drawn from
            U(-1/sqrt(in_features), 1/sqrt(in_features)) as in torch.nn.Linear, on the host
            with ``numpy.random.default_rng(seed)``, so a seed gives the same parameters on
            every backend.
        backend, device, dtype, seed: as for :class:`xplstm.LSTM`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        weights: Array | None = None,
        bias: Array | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        made = self._init_parameters(
            {
                "weights": (weights, (in_features, out_features), "(in_features, out_features)"),
                "bias": (bias, (out_features,), "(out_features,)"),
            },
            draw=init.uniform(1.0 / math.sqrt(in_features)),
            backend=backend,
            device=device,
            dtype=dtype,
            seed=seed,
        )
        self.weights, self.bias = made["weights"], made["bias"]

    def _sizes(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    @classmethod
    def from_torch(cls, source: Any, **layer_kwargs: Any) -> Linear:
        """A layer with the parameters of a ``torch.nn.Linear`` or its ``state_dict()``:
        ``weights`` is torch's ``weight`` transposed; a module without bias gets zeros.
        ``layer_kwargs`` as for :meth:`xplstm.LSTM.from_torch` (by default the layer lands
        where the tensors are, in their dtype)."""
        weights, bias, tensor = interop.linear_from_torch(source)
        placed = interop.placed_like(tensor, layer_kwargs)
        return cls(
            *weights.shape,
            weights=weights.astype(placed["dtype"]),
            bias=bias.astype(placed["dtype"]),
            **placed,
            **layer_kwargs,
        )

    def to_torch_state_dict(self, device: Any = None) -> dict[str, Any]:
        """The parameters as the state dict of ``torch.nn.Linear(in_features, out_features)``
        (torch tensors on ``device``, by default the layer's own when it is on torch, else the
        CPU), for ``module.load_state_dict``."""
        arrays = interop.linear_to_torch(to_numpy(self.weights.values), to_numpy(self.bias.values))
        return interop.torch_tensors(arrays, self, device)

    def forward(self, x: Array) -> Array:
        """``x @ W + b`` for ``x`` (batch, seq, in_features) or (batch, in_features)."""
        if getattr(x, "ndim", None) == 3:
            self._check("x", x, (None, None, self.in_features), "(batch, seq, in_features)")
        else:
            meaning = "(batch, in_features) or (batch, seq, in_features)"
            self._check("x", x, (None, self.in_features), meaning)
        lead = tuple(x.shape[:-1])
        x_flat = self.xp.reshape(x, (math.prod(lead), self.in_features))
        y_flat = x_flat @ self.weights.values + self.bias.values
        self._cache = (x_flat, lead)
        return self.xp.reshape(y_flat, (*lead, self.out_features))

    def backward(self, dy: Array) -> Array:
        """Back-propagate ``dy`` (the shape of the last output): stores the parameter gradients
        in ``weights.deltas`` and ``bias.deltas`` and returns ``dx``."""
        x_flat, lead = last_forward(self._cache)
        xp = self.xp
        self._check("dy", dy, (*lead, self.out_features), "the shape of the forward's output")
        dy_flat = xp.reshape(dy, (x_flat.shape[0], self.out_features))
        self.weights.deltas = x_flat.T @ dy_flat
        self.bias.deltas = xp.sum(dy_flat, axis=0)
        return xp.reshape(dy_flat @ self.weights.values.T, (*lead, self.in_features))
