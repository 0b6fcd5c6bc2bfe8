"""The LSTM layer: forward and backward over whole sequences, on any array-API backend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from xplstm import backends, interop
from xplstm.backends import Backend
from xplstm.cell import step_backward, step_forward
from xplstm.layer import Layer, Weights, dtype_name, positive_int
from xplstm.resolver import to_numpy

Array = Any

__all__ = ["LSTM", "Weights"]


@dataclass
class _Cache:
    """What backward needs from forward: the inputs, outputs, gate activations and cells."""

    x: Array  # (batch, seq, input)
    h0: Array  # (batch, hidden)
    c0: Array  # (batch, hidden)
    y: Array  # (batch, seq, hidden): h_1 .. h_T, the forward's own output
    gates: Array  # (batch, seq, 4*hidden): i, f, o, g activations
    cells: Array  # (batch, seq, hidden): c_1 .. c_T


class LSTM(Layer):
    """A single-layer LSTM over batch-first sequences, written once against the array API.

    Parameters live in two :class:`Weights`:

    - ``weights.values``: shape ``(input_size + hidden_size, 4 * hidden_size)``; rows are
      ``[input; hidden]``, column blocks are the input, forget, output and candidate gates,
      each ``hidden_size`` wide.
    - ``bias.values``: shape ``(4 * hidden_size,)``, the same column blocks.

    With ``W_x = weights.values[:input_size]`` and ``W_h = weights.values[input_size:]``, step t
    computes ``z = x_t @ W_x + h_{t-1} @ W_h + b``; ``i, f, o = sigmoid(z[:, :3H])``,
    ``g = tanh(z[:, 3H:])``; ``c_t = f * c_{t-1} + i * g``; ``h_t = o * tanh(c_t)``.

    Args:
        input_size: features per time step of ``x``.
        hidden_size: features of ``h`` and ``c``.
        weights, bias: initial values, any supported arrays (copied onto the layer's backend
            and device); by default drawn from U(-1/sqrt(H), 1/sqrt(H)) as in torch.nn.LSTM,
            on the host with ``numpy.random.default_rng(seed)``, so a seed gives the same
            parameters on every backend.
        backend: a backend name (see :func:`xplstm.backends.available`); by default
            ``$XPLSTM_BACKEND``, else the backend of ``weights``, else CuPy with a GPU or NumPy.
        device: a device of that backend (``"cpu"``, ``"cuda:0"``, ...); default its default.
        dtype: ``"float32"`` or ``"float64"``; inputs must match it.
        seed: seed for the default initialisation.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        weights: Array | None = None,
        bias: Array | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        rows, cols = input_size + hidden_size, 4 * hidden_size
        self._init_parameters(
            {
                "weights": (weights, (rows, cols), "(input_size + hidden_size, 4 * hidden_size)"),
                "bias": (bias, (cols,), "(4 * hidden_size,)"),
            },
            bound=1.0 / math.sqrt(hidden_size),
            backend=backend,
            device=device,
            dtype=dtype,
            seed=seed,
        )

    def _sizes(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"

    # -- weights from and to PyTorch and Keras (exact; see xplstm.interop) --------------
    @classmethod
    def from_torch(cls, source: Any, **layer_kwargs: Any) -> LSTM:
        """A layer with the weights of a one-layer ``torch.nn.LSTM`` (or its ``state_dict()``).

        torch's two biases are summed. ``layer_kwargs`` go to :class:`LSTM` (``backend``,
        ``device``, ``dtype``); by default the layer lands where the tensors are, in their
        dtype. Feed it batch-first inputs whatever the module's ``batch_first``.
        """
        return cls._imported(*interop.from_torch(source), layer_kwargs)

    @classmethod
    def from_keras(cls, weights: Any, **layer_kwargs: Any) -> LSTM:
        """A layer from Keras LSTM weights ``[kernel, recurrent_kernel, bias]``, as
        ``keras_layer.get_weights()`` returns them (gate order i, f, c, o; Keras's default
        tanh and sigmoid activations). ``layer_kwargs`` as for :meth:`from_torch`."""
        return cls._imported(*interop.from_keras(weights), layer_kwargs)

    @classmethod
    def _imported(
        cls, weights: np.ndarray, bias: np.ndarray, source: Any, kwargs: dict[str, Any]
    ) -> LSTM:
        """The layer from host ``weights`` and ``bias`` placed like ``source`` (a foreign array)
        unless ``kwargs`` say otherwise, in ``source``'s dtype unless ``kwargs`` name one."""
        dtype = dtype_name(kwargs.pop("dtype", weights.dtype))
        owner = backends.backend_of(source)
        where = array_api_compat.device(source)
        input_size = weights.shape[0] - weights.shape[1] // 4
        return cls(
            input_size,
            weights.shape[1] // 4,
            weights=owner.from_numpy(weights.astype(dtype), where),
            bias=owner.from_numpy(bias.astype(dtype), where),
            dtype=dtype,
            **kwargs,
        )

    def to_torch_state_dict(self, device: Any = None) -> dict[str, Any]:
        """The weights as a ``torch.nn.LSTM(input_size, hidden_size)`` state dict (torch
        tensors on ``device``, default the layer's own when it is on torch, else the CPU), for
        ``module.load_state_dict``; the bias goes in ``bias_ih_l0``, zeros in ``bias_hh_l0``."""
        torch_backend = backends.get("torch")
        if device is None and self.backend == "torch":
            device = self.device
        where = torch_backend.parse_device(device)
        arrays = interop.to_torch(*self._host_parameters(), self.input_size)
        return {name: torch_backend.from_numpy(a, where) for name, a in arrays.items()}

    def to_keras_weights(self) -> list[np.ndarray]:
        """The weights as Keras LSTM ``[kernel, recurrent_kernel, bias]`` NumPy arrays, for
        ``keras_layer.set_weights``."""
        return interop.to_keras(*self._host_parameters(), self.input_size)

    def _host_parameters(self) -> tuple[np.ndarray, np.ndarray]:
        return to_numpy(self.weights.values), to_numpy(self.bias.values)

    # -- forward and backward -----------------------------------------------------------
    def __call__(
        self, x: Array, h0: Array | None = None, c0: Array | None = None
    ) -> tuple[Array, Array, Array]:
        return self.forward(x, h0, c0)

    def forward(
        self, x: Array, h0: Array | None = None, c0: Array | None = None
    ) -> tuple[Array, Array, Array]:
        """Run the sequence ``x`` (batch, seq, input_size) from state ``(h0, c0)``.

        ``h0`` and ``c0`` are (batch, hidden_size), zeros when omitted. Returns ``(y, h_n, c_n)``:
        ``y`` (batch, seq, hidden_size) holds h_1 .. h_T; ``h_n``, ``c_n`` the final state.
        """
        xp, hidden = self.xp, self.hidden_size
        self._check("x", x, (None, None, self.input_size), "(batch, seq, input_size)")
        batch, seq, _ = x.shape
        h0 = self._state("h0", h0, batch)
        c0 = self._state("c0", c0, batch)
        w_x, w_h = (
            self.weights.values[: self.input_size, :],
            self.weights.values[self.input_size :, :],
        )
        x_flat = xp.reshape(x, (batch * seq, self.input_size))
        z_x = xp.reshape(x_flat @ w_x + self.bias.values, (batch, seq, 4 * hidden))
        h, c = h0, c0
        hs, cs, gates = [], [], []
        for t in range(seq):
            h, c, ifog = step_forward(xp, z_x[:, t, :] + h @ w_h, c)
            hs.append(h)
            cs.append(c)
            gates.append(ifog)
        y = xp.stack(hs, axis=1)
        self._cache = _Cache(x, h0, c0, y, xp.stack(gates, axis=1), xp.stack(cs, axis=1))
        return y, h, c

    def backward(
        self, dy: Array | None, dh_n: Array | None = None, dc_n: Array | None = None
    ) -> tuple[Array, Array, Array]:
        """Back-propagate through the last ``forward``.

        ``dy`` (batch, seq, hidden_size) is the gradient of the loss with respect to ``y``;
        ``dh_n`` and ``dc_n`` (batch, hidden_size) those with respect to the final state (zeros
        when omitted, and ``dy`` may be omitted too). Stores the parameter gradients in
        ``weights.deltas`` and ``bias.deltas`` and returns ``(dx, dh0, dc0)``.
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward() first: call layer.forward(x) first")
        xp, hidden, inputs = self.xp, self.hidden_size, self.input_size
        batch, seq, _ = cache.x.shape
        if dy is not None:
            self._check("dy", dy, (batch, seq, hidden), "(batch, seq, hidden_size) like y")
        dh = self._state("dh_n", dh_n, batch)
        dc = self._state("dc_n", dc_n, batch)
        w_x, w_h = self.weights.values[:inputs, :], self.weights.values[inputs:, :]
        w_h_t = w_h.T
        dzs = []
        for t in range(seq - 1, -1, -1):
            c_prev = cache.cells[:, t - 1, :] if t > 0 else cache.c0
            dh_t = dh if dy is None else dy[:, t, :] + dh
            dz, dc = step_backward(xp, dh_t, dc, cache.gates[:, t, :], cache.cells[:, t, :], c_prev)
            dh = dz @ w_h_t
            dzs.append(dz)
        dz_flat = xp.reshape(xp.stack(dzs[::-1], axis=1), (batch * seq, 4 * hidden))
        x_flat = xp.reshape(cache.x, (batch * seq, inputs))
        h_prev = xp.concat([xp.expand_dims(cache.h0, axis=1), cache.y[:, :-1, :]], axis=1)
        h_prev_flat = xp.reshape(h_prev, (batch * seq, hidden))
        self.weights.deltas = xp.concat([x_flat.T @ dz_flat, h_prev_flat.T @ dz_flat], axis=0)
        self.bias.deltas = xp.sum(dz_flat, axis=0)
        dx = xp.reshape(dz_flat @ w_x.T, (batch, seq, inputs))
        return dx, dh, dc

    # -- input state --------------------------------------------------------------------
    def _state(self, name: str, state: Array | None, batch: int) -> Array:
        """A (batch, hidden) state or gradient: checked when given, zeros when omitted."""
        if state is None:
            return self.xp.zeros((batch, self.hidden_size), dtype=self.dtype, device=self.device)
        self._check(name, state, (batch, self.hidden_size), "(batch, hidden_size)")
        return state
