"""The LSTM layer: its parameters, configuration, modes and dropout generator.

The computation is elsewhere, written once: the stack (layers x directions, dropout between
layers) in :mod:`xplstm.stack`, which steps count in :mod:`xplstm.steps`, and the one
recurrence (one layer, one direction) in :mod:`xplstm.sequence`. This layer chooses, per
recurrence, the backend's fast path or the written-once one, and keeps what backward needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from xplstm import checks, interop, paths, stack
from xplstm import init as _init
from xplstm.backends import Backend, FastPath, StackPath
from xplstm.layer import Layer, Weights, dtype_name, last_forward
from xplstm.paths import FAST_PATH_ENV as FAST_PATH_ENV  # where it was first
from xplstm.paths import fast_path_of as fast_path_of  # where it was first
from xplstm.steps import Steps, all_steps, check_lengths, from_lengths, from_mask, one_of
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


class _Dropout(NamedTuple):
    """Dropout masks of one forward (already scaled by 1 / (1 - p)), ``None`` where none acts."""

    recurrent: tuple[Array | None, ...]  # per recurrence, (batch, out)
    between: tuple[Array | None, ...]  # per layer but the last, (batch, seq, D * out)


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


class LSTM(Layer, interop.Interop):
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
        options = _checked_options(
            input_size, hidden_size, num_layers, bidirectional, proj_size, use_bias, dropout,
            recurrent_dropout, init,
        )  # fmt: skip
        vars(self).update(options)
        if not use_bias and bias is not None:
            raise ValueError("bias values were given but use_bias=False: drop one of the two")
        if not proj_size and projection is not None:
            raise ValueError("projection values were given but proj_size=0: set proj_size")
        count = num_layers * self.directions
        given = {
            name: _per_recurrence(name, values, count)
            for name, values in (("weights", weights), ("bias", bias), ("projection", projection))
        }
        made = self._init_parameters(
            _parameter_specs(self, given),
            draw=_init.LSTM_SCHEMES[init](hidden_size, self.output_size),
            backend=backend,
            device=device,
            dtype=dtype,
            seed=seed,
        )
        prefixes = [f"recurrences.{k}." for k in range(count)] if count > 1 else [""]
        self.recurrences = [
            Recurrence(*(made.get(prefix + name) for name in ("weights", "bias", "projection")))
            for prefix in prefixes
        ]
        self.fast_path = fast_path
        self.whole_stack = True
        self._fast: tuple[Backend, list[FastPath | None]] | None = None
        self._whole: StackPath | None = None
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
        for name, default in _OPTIONS.items():
            if getattr(self, name) != default:
                sizes += f", {name}={getattr(self, name)!r}"
        return sizes

    def config(self) -> dict[str, Any]:
        """The constructor's size and structure arguments (what a checkpoint records)."""
        sizes = {"input_size": self.input_size, "hidden_size": self.hidden_size}
        return sizes | {name: getattr(self, name) for name in _OPTIONS}

    # -- training mode and dropout ------------------------------------------------------
    def train(self, mode: bool = True) -> LSTM:
        """Training mode (the default): dropout acts. Returns self."""
        self.training = checks.flag("mode", mode)
        return self

    def eval(self) -> LSTM:
        """Evaluation mode: no dropout. Returns self."""
        return self.train(False)

    def dropout_seed(self, seed: int | None) -> None:
        """Restart the dropout masks' generator from ``seed``: the same seed draws the same
        masks, on every backend and device (they are drawn on the host). ``LSTM(seed=s)``
        starts where ``dropout_seed(s)`` does."""
        sequence_of_seeds = np.random.SeedSequence(checks.seed(seed), spawn_key=(1,))
        self._dropout_rng = np.random.default_rng(sequence_of_seeds)

    def _draw_dropout(self, batch: int, seq: int) -> _Dropout:
        """This forward's masks, drawn in the order: per layer, each
        direction's recurrent mask, then the mask between it and the next layer (``None``
        where no dropout acts)."""
        out, directions = self.output_size, self.directions
        recurrent: list[Array | None] = []
        between: list[Array | None] = []
        acts = self.training and (self.dropout or self.recurrent_dropout)
        for layer in range(self.num_layers):
            for _ in range(directions):
                recurrent.append(self._mask(self.recurrent_dropout, (batch, out)) if acts else None)
            if layer < self.num_layers - 1:
                shape = (batch, seq, directions * out)
                between.append(self._mask(self.dropout, shape) if acts else None)
        return _Dropout(tuple(recurrent), tuple(between))

    def _mask(self, p: float, shape: tuple[int, ...]) -> Array | None:
        if not p:
            return None
        kept = self._dropout_rng.random(shape) >= p
        host = (kept * (1.0 / (1.0 - p))).astype(dtype_name(self.dtype))
        return self._backend.from_numpy(host, self.device)

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
        h0s = self._states("h0", h0, batch, self.output_size)
        c0s = self._states("c0", c0, batch, self.hidden_size)
        torch_states = len(self.recurrences) == 1 and any(
            getattr(state, "ndim", 2) == 3 for state in (h0, c0)
        )
        plan = stack.Plan(self._steps(lengths, mask, batch, seq), *self._draw_dropout(batch, seq))
        params = [
            stack.Params(r.weights.values, self._bias(k), _values(r.projection))
            for k, r in enumerate(self.recurrences)
        ]
        route = self._route(stack.uses(params, plan))
        y, h_n, c_n, saved = route.forward(params, plan, x, h0s, c0s)
        taken = getattr(route, "taken", [route] * len(params))
        runs = list(zip(taken, saved, strict=True))
        self._cache = _Cache(route, runs, params, plan, batch, seq, torch_states)
        return y, self._stacked(h_n, torch_states), self._stacked(c_n, torch_states)

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
        dh_ns = self._states("dh_n", dh_n, batch, out)
        dc_ns = self._states("dc_n", dc_n, batch, self.hidden_size)
        saved = [saved for _, saved in cache.runs]
        dx, dh0s, dc0s, grads = cache.route.backward(
            cache.params, cache.plan, saved, dy, dh_ns, dc_ns
        )
        for recurrence, (d_w, d_b, d_proj) in zip(self.recurrences, grads, strict=True):
            recurrence.weights.deltas = d_w
            if recurrence.bias is not None:
                recurrence.bias.deltas = d_b
            if recurrence.projection is not None:
                recurrence.projection.deltas = d_proj
        given = cache.torch_states
        return dx, self._stacked(dh0s, given), self._stacked(dc0s, given)

    def _route(self, uses: frozenset[str]) -> Any:
        """The backend's whole-stack path when it covers what this call ``uses`` (see
        :func:`xplstm.stack.uses`), else the stack recurrence by recurrence (see
        :mod:`xplstm.paths`); the backend's paths are made once per backend."""
        on = paths.switched_on(self.fast_path)
        if on and (self._fast is None or self._fast[0] is not self._backend):
            made = [paths.fast_path_of(self._backend) for _ in self.recurrences]
            self._fast = (self._backend, made)
            self._whole = paths.stack_path_of(self._backend)
        whole = self._whole if on and self.whole_stack else None
        if whole is not None and uses <= whole.features:
            return whole
        fast = self._fast[1] if on and self._fast else [None] * len(self.recurrences)
        return paths.PerRecurrence(self.xp, self._backend, fast)

    def _bias(self, index: int) -> Array:
        """The recurrence's bias, or zeros without biases (whose gradient is dropped)."""
        bias = self.recurrences[index].bias
        if bias is not None:
            return bias.values
        return self.xp.zeros((4 * self.hidden_size,), dtype=self.dtype, device=self.device)

    # -- lengths and masks --------------------------------------------------------------
    def _steps(self, lengths: Any, mask: Array | None, batch: int, seq: int) -> Steps:
        """Which steps count, from ``lengths`` or ``mask`` (see :mod:`xplstm.steps`)."""
        one_of(lengths, mask)
        if mask is not None:
            self._check("mask", mask, (batch, seq), "(batch, seq)", boolean=True)
            return from_mask(self.xp, mask, self.directions)
        if lengths is None:
            return all_steps(self.directions)
        valid = check_lengths(lengths, batch, seq)
        return from_lengths(self.xp, valid, seq, self.directions, self.device)

    # -- input state --------------------------------------------------------------------
    def _states(self, name: str, state: Array | None, batch: int, size: int) -> list[Array]:
        """Per recurrence a (batch, size) state or gradient: checked when given (one recurrence
        also takes torch's (1, batch, size)), zeros when omitted."""
        count = len(self.recurrences)
        if state is None:
            zeros = self.xp.zeros((batch, size), dtype=self.dtype, device=self.device)
            return [zeros] * count
        what = "proj_size" if size != self.hidden_size else "hidden_size"
        if count == 1 and getattr(state, "ndim", None) == 3:
            self._check(name, state, (1, batch, size), f"(1, batch, {what}), torch's")
            return [state[0, ...]]
        if count == 1:
            self._check(name, state, (batch, size), f"(batch, {what})")
            return [state]
        self._check(
            name, state, (count, batch, size), f"(num_layers * num_directions, batch, {what})"
        )
        return [state[k, ...] for k in range(count)]

    def _stacked(self, states: list[Array], torch_states: bool = False) -> Array:
        """Per-recurrence states as one array: (batch, size) for one recurrence (torch's
        (1, batch, size) when ``torch_states``), else (count, batch, size)."""
        if len(states) == 1 and not torch_states:
            return states[0]
        return self.xp.stack(states, axis=0)


#: Constructor options beyond the sizes, with their defaults (for repr and checkpoints).
_OPTIONS = {
    "num_layers": 1,
    "bidirectional": False,
    "proj_size": 0,
    "use_bias": True,
    "dropout": 0.0,
    "recurrent_dropout": 0.0,
}


def _values(weights: Weights | None) -> Array | None:
    return None if weights is None else weights.values


def _checked_options(
    input_size: Any, hidden_size: Any, num_layers: Any, bidirectional: Any, proj_size: Any,
    use_bias: Any, dropout: Any, recurrent_dropout: Any, init: Any,
) -> dict[str, Any]:  # fmt: skip
    """The constructor's sizes and options, each checked, by attribute name."""
    options = {
        "input_size": checks.positive_int("input_size", input_size),
        "hidden_size": checks.positive_int("hidden_size", hidden_size),
        "num_layers": checks.positive_int("num_layers", num_layers),
        "bidirectional": checks.flag("bidirectional", bidirectional),
        "use_bias": checks.flag("use_bias", use_bias),
        "dropout": checks.probability("dropout", dropout),
        "recurrent_dropout": checks.probability("recurrent_dropout", recurrent_dropout),
    }
    if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(f"proj_size must be an int >= 0 (0: no projection), got {proj_size!r}")
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}; "
            "use proj_size=0 for no projection"
        )
    if options["dropout"] and num_layers == 1:
        raise ValueError(
            "dropout acts between stacked layers (on the outputs of all but the last), so "
            "it needs num_layers > 1; for dropout on the outputs of a single layer add it "
            "after the layer, or use recurrent_dropout"
        )
    if init not in _init.LSTM_SCHEMES:
        schemes = sorted(_init.LSTM_SCHEMES)
        raise ValueError(f"init must be one of {schemes}, got {init!r}")
    return options | {"proj_size": proj_size, "init": init}


def _parameter_specs(
    layer: LSTM, given: dict[str, list[Any]]
) -> dict[str, tuple[Any, tuple[int, ...], str]]:
    """Each parameter's registry name, given values (or None), shape and shape in words, in
    ``parameters()`` order: per recurrence, weights, bias, projection."""
    count, directions, out = len(given["weights"]), layer.directions, layer.output_size
    hidden = layer.hidden_size
    kept = "proj_size" if layer.proj_size else "hidden_size"
    specs = {}
    for index in range(count):
        prefix = f"recurrences.{index}." if count > 1 else ""
        rows = (layer.input_size if index < directions else directions * out) + out
        reads = "input_size" if index < directions else f"{directions} * {kept}"
        reads = reads.replace("1 * ", "")
        wanted = {
            "weights": ((rows, 4 * hidden), f"({reads} + {kept}, 4 * hidden_size)"),
            "bias": ((4 * hidden,), "(4 * hidden_size,)") if layer.use_bias else None,
            "projection": ((hidden, out), "(hidden_size, proj_size)") if layer.proj_size else None,
        }
        for name, spec in wanted.items():
            if spec is not None:
                specs[prefix + name] = (given[name][index], *spec)
    return specs


def _per_recurrence(name: str, values: Any, count: int) -> list[Any]:
    """Given values as one entry per recurrence (``None`` where to draw)."""
    if values is None:
        return [None] * count
    if isinstance(values, (list, tuple)):
        if len(values) != count:
            raise ValueError(
                f"{name} must list one array per recurrence (num_layers * num_directions = "
                f"{count}), got {len(values)}"
            )
        return list(values)
    if count != 1:
        raise ValueError(
            f"this LSTM has {count} recurrences (num_layers * num_directions): pass {name} "
            f"as a list of {count} arrays, in layer.recurrences order"
        )
    return [values]


def _parameter_specs(
    layer: LSTM, given: dict[str, list[Any]]
) -> dict[str, tuple[Any, tuple[int, ...], str]]:
    """Each parameter's registry name, given values (or None), shape and shape in words, in
    ``parameters()`` order: per recurrence, weights, bias, projection."""
    count, directions, out = len(given["weights"]), layer.directions, layer.output_size
    hidden = layer.hidden_size
    kept = "proj_size" if layer.proj_size else "hidden_size"
    specs = {}
    for index in range(count):
        prefix = f"recurrences.{index}." if count > 1 else ""
        rows = (layer.input_size if index < directions else directions * out) + out
        reads = "input_size" if index < directions else f"{directions} * {kept}"
        reads = reads.replace("1 * ", "")
        wanted = {
            "weights": ((rows, 4 * hidden), f"({reads} + {kept}, 4 * hidden_size)"),
            "bias": ((4 * hidden,), "(4 * hidden_size,)") if layer.use_bias else None,
            "projection": ((hidden, out), "(hidden_size, proj_size)") if layer.proj_size else None,
        }
        for name, spec in wanted.items():
            if spec is not None:
                specs[prefix + name] = (given[name][index], *spec)
    return specs


def _per_recurrence(name: str, values: Any, count: int) -> list[Any]:
    """Given values as one entry per recurrence (``None`` where to draw)."""
    if values is None:
        return [None] * count
    if isinstance(values, (list, tuple)):
        if len(values) != count:
            raise ValueError(
                f"{name} must list one array per recurrence (num_layers * num_directions = "
                f"{count}), got {len(values)}"
            )
        return list(values)
    if count != 1:
        raise ValueError(
            f"this LSTM has {count} recurrences (num_layers * num_directions): pass {name} "
            f"as a list of {count} arrays, in layer.recurrences order"
        )
    return [values]

