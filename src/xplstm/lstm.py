"""The LSTM layer: forward and backward over whole sequences, on any array-API backend."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import array_api_compat
import numpy as np

from xplstm import backends, cell, interop, sequence
from xplstm.backends import Backend, FastPath
from xplstm.checks import positive_int
from xplstm.layer import Layer, Weights, dtype_name, last_forward
from xplstm.resolver import to_numpy
from xplstm.types import Array

__all__ = ["LSTM", "Weights"]


#: Set to 0 to run the written-once path even where a backend has a fast path.
FAST_PATH_ENV = "XPLSTM_FAST_PATH"
_OFF = ("0", "false", "off", "no")


@dataclass
class _Cache:
    """What backward needs from forward: who ran it, its saved state, and the input's shape."""

    path: FastPath | None  # None: the written-once path of xplstm.sequence
    saved: Any
    batch: int
    seq: int


def fast_path_of(backend: Backend) -> FastPath | None:
    """A new fast path of ``backend`` over the written-once functions, or ``None``."""
    return backend.fast_path(sequence.forward, sequence.backward, cell.KERNELS)


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
        fast_path: use the backend's fast path where it has one (see ``backends``); it gives
            the written-once path's results. Also off when ``$XPLSTM_FAST_PATH`` is ``0``.
            The attribute ``layer.fast_path`` switches it later.
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
        fast_path: bool = True,
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
        self.fast_path = fast_path
        self._fast: tuple[Backend, FastPath | None] | None = None

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
            backend=kwargs.pop("backend", owner),  # where the tensors are, not $XPLSTM_BACKEND
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
        self._check("x", x, (None, None, self.input_size), "(batch, seq, input_size)")
        batch, seq, _ = x.shape
        h0 = self._state("h0", h0, batch)
        c0 = self._state("c0", c0, batch)
        path = self._fast_path()
        run = path.forward if path else partial(sequence.forward, self.xp)
        y, h, c, saved = run(self.weights.values, self.bias.values, x, h0, c0)
        self._cache = _Cache(path, saved, batch, seq)
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
        cache = last_forward(self._cache)
        batch, hidden = cache.batch, self.hidden_size
        if dy is not None:
            self._check("dy", dy, (batch, cache.seq, hidden), "(batch, seq, hidden_size) like y")
        dh_n = self._state("dh_n", dh_n, batch)
        dc_n = self._state("dc_n", dc_n, batch)
        run = cache.path.backward if cache.path else partial(sequence.backward, self.xp)
        dx, dh0, dc0, d_w, d_b = run(self.weights.values, cache.saved, dy, dh_n, dc_n)
        self.weights.deltas, self.bias.deltas = d_w, d_b
        return dx, dh0, dc0

    def _fast_path(self) -> FastPath | None:
        """This layer's fast path on its backend, unless switched off (made once per backend)."""
        if not self.fast_path or os.environ.get(FAST_PATH_ENV, "1").strip().lower() in _OFF:
            return None
        if self._fast is None or self._fast[0] is not self._backend:
            path = fast_path_of(self._backend)
            self._fast = (self._backend, path)
        return self._fast[1]

    # -- input state --------------------------------------------------------------------
    def _state(self, name: str, state: Array | None, batch: int) -> Array:
        """A (batch, hidden) state or gradient: checked when given, zeros when omitted."""
        if state is None:
            return self.xp.zeros((batch, self.hidden_size), dtype=self.dtype, device=self.device)
        self._check(name, state, (batch, self.hidden_size), "(batch, hidden_size)")
        return state
