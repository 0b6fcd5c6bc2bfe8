"""The LSTM layer: its parameters, configuration, modes and dropout generator.

The computation is elsewhere, written once: the stack (layers x directions, dropout between
layers) in :mod:`xplstm.stack`, which steps count in :mod:`xplstm.steps`, and the one
recurrence (one layer, one direction) in :mod:`xplstm.sequence`. This layer chooses, per
recurrence, the backend's fast path or the written-once one, and keeps what backward needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xplstm import checks, interop, paths, stack, states, steps
from xplstm import dropout as _dropout
from xplstm import init as _init
from xplstm.backends import Backend
from xplstm.layer import Layer, TrainingMode, Weights, last_forward
from xplstm.paths import FAST_PATH_ENV as FAST_PATH_ENV  # where it was first
from xplstm.paths import fast_path_of as fast_path_of  # where it was first
from xplstm.types import Array

__all__ = ["LSTM", "Recurrence", "Weights"]


@dataclass
class Recurrence:
    """The parameters of one recurrence: one layer of the stack in one direction.

    ``weights`` (in + out, 4H) and ``bias`` (4H,) as described in :class:`LSTM`; ``bias`` is
    ``None`` when the layer has ``use_bias=False``; ``projection`` (H, P) is ``None`` unless
    ``proj_size`` P is set.
    """

    weights: Weights
    bias: Weights | None
    projection: Weights | None

    @classmethod
    def each(cls, made: dict[str, Weights], count: int) -> list[Recurrence]:
        """The ``count`` recurrences in a layer's registry ``made``, in ``parameters()`` order."""
        prefixes = [f"recurrences.{k}." for k in range(count)] if count > 1 else [""]
        names = ("weights", "bias", "projection")
        return [cls(*(made.get(prefix + name) for name in names)) for prefix in prefixes]

    def params(self, no_bias: Array) -> stack.Params:
        """The values as the stack takes them, with ``no_bias`` (zeros) without a bias."""
        bias = no_bias if self.bias is None else self.bias.values
        projection = None if self.projection is None else self.projection.values
        return stack.Params(self.weights.values, bias, projection)

    def take(self, d_w: Array, d_b: Array, d_proj: Array | None) -> None:
        """Store a backward's gradients in the ``deltas`` of the parameters it has."""
        self.weights.deltas = d_w
        if self.bias is not None:
            self.bias.deltas = d_b
        if self.projection is not None:
            self.projection.deltas = d_proj


@dataclass
class _Cache:
    """What backward needs from forward: the route it took (a whole-stack path, or
    ``paths.PerRecurrence``), per recurrence the fast path that ran it (None: written once) and
    its saved state, and the parameters and plan of the stack."""

    route: Any
    runs: list[tuple[Any, Any]]
    params: list[stack.Params]
    plan: stack.Plan
    batch: int
    seq: int
    torch_states: bool  # states given as torch's (1, batch, size): given back so


class LSTM(Layer, TrainingMode, interop.Interop):
    """An LSTM over batch-first sequences, written once against the array API: stacked,
    bidirectional, projected, with variable lengths, masks and dropout, as ``torch.nn.LSTM``.

    Each recurrence (one layer of the stack, one direction) has its :class:`Recurrence`:

    - ``weights.values``: shape ``(in + out, 4 * hidden_size)``, where ``in`` is
      ``input_size`` for the first layer and ``D * out`` above it (D = 2 if bidirectional,
      else 1) and ``out`` is ``proj_size or hidden_size``; rows are ``[input; hidden]``, column
      blocks are the input, forget, output and candidate gates, each ``hidden_size`` wide.
    - ``bias.values``: shape ``(4 * hidden_size,)``, the same column blocks (none when
      ``use_bias=False``).
    - ``projection.values``: shape ``(hidden_size, proj_size)``, with ``proj_size`` only.

    With ``W_x = weights.values[:in]`` and ``W_h = weights.values[in:]``, step t computes
    ``z = x_t @ W_x + h_{t-1} @ W_h + b``; ``i, f, o = sigmoid(z[:, :3H])``,
    ``g = tanh(z[:, 3H:])``; ``c_t = f * c_{t-1} + i * g``; ``h_t = o * tanh(c_t)``, then
    ``h_t = h_t @ projection`` when projected. A reverse direction reads each sequence from its
    last valid step back to its first; its outputs are put back in time order.

    ``layer.parameters()`` lists, layer by layer and forward direction first, each
    recurrence's ``weights``, ``bias`` (if any) and ``projection`` (if any), as torch's
    ``state_dict`` does; ``layer.recurrences`` holds them grouped, in the same order. For one
    layer in one direction ``layer.weights`` and ``layer.bias`` are its parameters.

    Args:
        input_size: features per time step of ``x``.
        hidden_size: features of ``c`` (and of ``h`` unless projected).
        num_layers: recurrent layers stacked, each reading the outputs of the one below.
        bidirectional: add a reverse direction to every layer; outputs are the forward then
            the reverse direction's, concatenated along the features.
        proj_size: when positive (and below ``hidden_size``), project h to this size (LSTMP).
        use_bias: whether the recurrences have biases (torch's ``bias=``; renamed here because
            ``bias=`` gives bias values).
        dropout: torch's dropout on the outputs of every layer but the last, drawn fresh per
            element and step; needs ``num_layers > 1``.
        recurrent_dropout: variational dropout (Gal and Ghahramani 2016) on h_{t-1}: one mask
            per sequence and recurrence, the same at every step and for all four gates, as
            Keras 3's ``LSTM(recurrent_dropout=)``.
        init: ``"torch"``: every parameter from U(-1/sqrt(H), 1/sqrt(H)) as torch.nn.LSTM;
            ``"keras"``: glorot-uniform input kernel (and projection), orthogonal recurrent
            kernel, zero bias with the forget block at 1, as Keras's LSTM.
        weights, bias, projection: initial values, any supported arrays (copied onto the
            layer's backend and device): an array for one layer in one direction, else a list
            with one per recurrence in ``recurrences`` order; the rest are drawn on the host
            with ``numpy.random.default_rng(seed)``, so a seed gives the same parameters on
            every backend.
        backend: a backend name (see :func:`xplstm.backends.available`); by default
            ``$XPLSTM_BACKEND``, else the backend of ``weights``, else CuPy with a GPU or NumPy.
        device: a device of that backend (``"cpu"``, ``"cuda:0"``, ...); default its default.
        dtype: ``"float32"`` or ``"float64"``; inputs must match it.
        seed: seed for the initialisation and for the dropout masks (see
            :meth:`dropout_seed`).
        fast_path: use the backend's fast path where it has one and it covers the call (see
            ``backends``); it gives the written-once path's results. Also off when
            ``$XPLSTM_FAST_PATH`` is ``0``. The attribute ``layer.fast_path`` switches it later.

    Dropout acts only in training mode, the default: :meth:`train` and :meth:`eval` switch.

    Example: two layers, both directions, rows of their own lengths.

    >>> import numpy as np
    >>> import xplstm
    >>> layer = xplstm.LSTM(3, 8, num_layers=2, bidirectional=True, backend="numpy", seed=0)
    >>> x = np.zeros((4, 5, 3), dtype="float32")
    >>> y, h_n, c_n = layer(x, lengths=[5, 3, 2, 1])
    >>> y.shape, h_n.shape  # (batch, seq, 2 * hidden), (layers * directions, batch, hidden)
    ((4, 5, 16), (4, 4, 8))
    >>> dx, dh0, dc0 = layer.backward(np.ones_like(y))
    >>> dx.shape, layer.recurrences[0].weights.deltas.shape
    ((4, 5, 3), (11, 32))
    """

    #: ``Sequential`` passes it ``lengths`` and ``mask``.
    reads_steps = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        proj_size: int = 0,
        use_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        init: str = "torch",
        weights: Array | list[Array] | None = None,
        bias: Array | list[Array] | None = None,
        projection: Array | list[Array] | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
        dtype: Any = "float32",
        seed: int | None = None,
        fast_path: bool = True,
    ) -> None:
        options = checks.lstm_options(
            input_size, hidden_size, num_layers, bidirectional, proj_size, use_bias, dropout,
            recurrent_dropout, init, _init.LSTM_SCHEMES,
        )  # fmt: skip
        vars(self).update(options)
        made = self._init_parameters(
            _init.lstm_specs(self.config(), weights, bias, projection),
            draw=_init.LSTM_SCHEMES[init](hidden_size, self.output_size),
            backend=backend,
            device=device,
            dtype=dtype,
            seed=seed,
        )
        self.recurrences = Recurrence.each(made, num_layers * self.directions)
        self.fast_path = fast_path
        self.whole_stack = True
        self._routes = paths.Routes()
        self.training = True
        self.dropout_seed(seed)

    # -- configuration ------------------------------------------------------------------
    @property
    def directions(self) -> int:
        """2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of h per direction: ``proj_size`` when projected, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def weights(self) -> Weights:
        """The weights of a one-layer, one-direction LSTM (else see ``recurrences``)."""
        return self._single().weights

    @property
    def bias(self) -> Weights | None:
        """The bias of a one-layer, one-direction LSTM (``None`` with ``use_bias=False``)."""
        return self._single().bias

    def _single(self) -> Recurrence:
        if len(self.recurrences) != 1:
            raise AttributeError(
                f"this LSTM has {len(self.recurrences)} recurrences (num_layers="
                f"{self.num_layers}, bidirectional={self.bidirectional}): use "
                "layer.recurrences[k].weights or layer.parameters()"
            )
        return self.recurrences[0]

    def _sizes(self) -> str:
        sizes = f"input_size={self.input_size}, hidden_size={self.hidden_size}"
        for name, default in checks.LSTM_OPTIONS.items():
            if getattr(self, name) != default:
                sizes += f", {name}={getattr(self, name)!r}"
        return sizes

    def config(self) -> dict[str, Any]:
        """The constructor's size and structure arguments (what a checkpoint records)."""
        sizes = {"input_size": self.input_size, "hidden_size": self.hidden_size}
        return sizes | {name: getattr(self, name) for name in checks.LSTM_OPTIONS}

    # -- dropout (on in training mode: see TrainingMode) -------------------------------
    def dropout_seed(self, seed: int | None) -> None:
        """Restart the dropout masks' generator from ``seed``: the same seed draws the same
        masks, on every backend and device (they are drawn on the host). ``LSTM(seed=s)``
        starts where ``dropout_seed(s)`` does."""
        self._dropout_rng = _dropout.generator(seed)

    # -- forward and backward -----------------------------------------------------------
    def forward(
        self,
        x: Array,
        h0: Array | None = None,
        c0: Array | None = None,
        *,
        lengths: Any = None,
        mask: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        """Run the sequences ``x`` (batch, seq, input_size) from state ``(h0, c0)``.

        Returns ``(y, h_n, c_n)``: ``y`` (batch, seq, D * out) holds the last layer's h at
        every step. For one layer in one direction the states are (batch, out) for h and
        (batch, hidden_size) for c; otherwise (num_layers * D, batch, out) and
        (num_layers * D, batch, hidden_size), layer-major, forward direction first, as torch's.
        Omitted states are zeros. One layer in one direction also takes torch's (1, batch, out)
        and (1, batch, hidden_size), and then returns its states (and backward ``dh0``, ``dc0``)
        shaped so too.

        ``lengths`` (a sequence or 1-D integer array of ``batch`` lengths in 1..seq; right
        padding) works as torch's ``pack_padded_sequence(enforce_sorted=False)``: ``y`` is
        zero past each length, ``h_n``, ``c_n`` are each row's state at its last valid step,
        and a reverse direction starts there. ``mask`` ((batch, seq) booleans, any pattern)
        works as Keras's: a masked step keeps h and c and outputs the carried h (so zeros
        before the first unmasked step from a zero initial state, h0 from a given one), or
        zeros when bidirectional, as ``keras.layers.Bidirectional`` does; a reverse direction
        reads the whole row backwards. Values of ``x`` past each length or at masked steps
        are never read: NaN there changes no output and no gradient.
        """
        self._check("x", x, (None, None, self.input_size), "(batch, seq, input_size)")
        batch, seq, _ = x.shape
        h0s = states.split(self, "h0", h0, batch, self.output_size)
        c0s = states.split(self, "c0", c0, batch, self.hidden_size)
        torch_states = states.torch_shaped(len(self.recurrences), h0, c0)
        if mask is not None:
            self._check("mask", mask, (batch, seq), "(batch, seq)", boolean=True)
        read = steps.read(self.xp, lengths, mask, batch, seq, self.directions, self.device)
        plan = stack.Plan(read, *_dropout.draw(self, batch, seq))
        no_bias = self.xp.zeros((4 * self.hidden_size,), dtype=self.dtype, device=self.device)
        params = [r.params(no_bias) for r in self.recurrences]
        route = self._routes.choose(
            self.xp, self._backend, len(params), stack.uses(params, plan),
            (batch, self.hidden_size), fast=self.fast_path, whole=self.whole_stack,
        )  # fmt: skip
        self._cache = None  # the last forward's arrays go before this one's are made
        y, h_n, c_n, saved = route.forward(params, plan, x, h0s, c0s)
        taken = getattr(route, "taken", [route] * len(params))
        runs = list(zip(taken, saved, strict=True))
        self._cache = _Cache(route, runs, params, plan, batch, seq, torch_states)
        return y, *(states.stacked(self.xp, s, torch_states) for s in (h_n, c_n))

    def backward(
        self, dy: Array | None, dh_n: Array | None = None, dc_n: Array | None = None
    ) -> tuple[Array, Array, Array]:
        """Back-propagate through the last ``forward``.

        ``dy`` (batch, seq, D * out) is the gradient of the loss with respect to ``y``;
        ``dh_n`` and ``dc_n`` (shaped like ``h_n`` and ``c_n``) those with respect to the final
        state (zeros when omitted, and ``dy`` may be omitted too). Stores the parameter
        gradients in every parameter's ``deltas`` and returns ``(dx, dh0, dc0)``. Values of
        ``dy`` where ``y`` is zero by construction (past each length) are never read.
        """
        cache = last_forward(self._cache)
        batch, out, directions = cache.batch, self.output_size, self.directions
        if dy is not None:
            meaning = "(batch, seq, hidden_size) like y"
            if directions > 1 or self.proj_size:
                meaning = "(batch, seq, num_directions * (proj_size or hidden_size)) like y"
            self._check("dy", dy, (batch, cache.seq, directions * out), meaning)
        dh_ns = states.split(self, "dh_n", dh_n, batch, out)
        dc_ns = states.split(self, "dc_n", dc_n, batch, self.hidden_size)
        saved = [saved for _, saved in cache.runs]
        dx, dh0s, dc0s, grads = cache.route.backward(
            cache.params, cache.plan, saved, dy, dh_ns, dc_ns
        )
        for recurrence, grad in zip(self.recurrences, grads, strict=True):
            recurrence.take(*grad)
        given = cache.torch_states
        return dx, states.stacked(self.xp, dh0s, given), states.stacked(self.xp, dc0s, given)

