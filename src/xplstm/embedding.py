"""A lookup table of vectors, one per token id, written once against the array API: the first
layer of a tagger or a language model (``Embedding -> LSTM -> Linear``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xplstm import interop
from xplstm.backends import Backend
from xplstm.checks import positive_int
from xplstm.layer import Layer, last_forward
from xplstm.resolver import to_numpy
from xplstm.types import Array


class Embedding(Layer):
    """Token ids to vectors: ``y[..., :] = weights.values[tokens[...], :]``.

    ``tokens`` is an integer array of any shape, typically (batch, seq), on the layer's backend
    and device, each id in ``0..num_embeddings - 1``; ``y`` has its shape and
    ``embedding_dim`` last. ``backward(dy)`` adds up, for every id, ``dy`` at the positions it
    was read from (torch's scatter-add, here one matrix product over the ids of the batch) into
    ``weights.deltas``, and returns ``None``: integer inputs have no gradient.

    - ``weights.values``: shape ``(num_embeddings, embedding_dim)``, as
      ``torch.nn.Embedding.weight`` and Keras's ``Embedding`` (no transpose).

    Args:
        num_embeddings, embedding_dim: how many ids, and the size of each vector.
        padding_idx: an id whose vector gets no gradient (torch's ``padding_idx``; drawn as
            zeros), or ``None``.
        weights: initial values, any supported array; by default drawn from N(0, 1), as
            torch's, on the host with ``numpy.random.default_rng(seed)``.
        backend, device, dtype, seed: as for :class:`xplstm.LSTM`.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        padding_idx: int | None = None,
        weights: Array | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        self.num_embeddings = positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None and (
            isinstance(padding_idx, bool)
            or not isinstance(padding_idx, int)
            or not 0 <= padding_idx < num_embeddings
        ):
            raise ValueError(
                f"padding_idx must be None or an id in 0..{num_embeddings - 1}, got {padding_idx!r}"
            )
        self.padding_idx = padding_idx

        def draw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
            """torch.nn.Embedding's initialisation: N(0, 1), the padding row zeros."""
            drawn = rng.standard_normal(shape)
            if padding_idx is not None:
                drawn[padding_idx] = 0.0
            return drawn

        made = self._init_parameters(
            {
                "weights": (
                    weights,
                    (num_embeddings, embedding_dim),
                    "(num_embeddings, embedding_dim)",
                )
            },
            draw=draw,
            backend=backend,
            device=device,
            dtype=dtype,
            seed=seed,
        )
        self.weights = made["weights"]

    def _sizes(self) -> str:
        sizes = f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"
        return sizes + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}")

    @classmethod
    def from_torch(cls, source: Any, **layer_kwargs: Any) -> Embedding:
        """A layer with the parameters of a ``torch.nn.Embedding`` (and its ``padding_idx``)
        or its ``state_dict()``. ``layer_kwargs`` as for :meth:`xplstm.LSTM.from_torch`.
        Options with no counterpart here (``max_norm``, ``sparse``'s sparse gradients are the
        same numbers, ``scale_grad_by_freq``) are refused when set."""
        weight, padding_idx, tensor = interop.embedding_from_torch(source)
        layer_kwargs.setdefault("padding_idx", padding_idx)
        placed = interop.placed_like(tensor, layer_kwargs)
        return cls(*weight.shape, weights=weight.astype(placed["dtype"]), **placed, **layer_kwargs)

    def to_torch_state_dict(self, device: Any = None) -> dict[str, Any]:
        """The parameters as the state dict of ``torch.nn.Embedding(num_embeddings,
        embedding_dim, padding_idx=...)``, as :meth:`xplstm.Linear.to_torch_state_dict`."""
        return interop.torch_tensors({"weight": to_numpy(self.weights.values)}, self, device)

    def forward(self, tokens: Array) -> Array:
        """The vectors of ``tokens`` (integer ids, any shape): shape ``(*tokens.shape,
        embedding_dim)``."""
        self._check("tokens", tokens, tuple(None for _ in tokens.shape), "ids", integer=True)
        host = np.asarray(to_numpy(tokens)).reshape(-1)  # read once: checked, and for backward
        bad = np.flatnonzero((host < 0) | (host >= self.num_embeddings))
        if bad.size:
            raise ValueError(
                f"tokens must be ids in 0..{self.num_embeddings - 1} (num_embeddings="
                f"{self.num_embeddings}); found {int(host[bad[0]])}"
            )
        xp = self.xp
        flat = xp.reshape(tokens, (host.shape[0],))
        self._cache = (host, tuple(tokens.shape))
        y = xp.take(self.weights.values, flat, axis=0)
        return xp.reshape(y, (*tokens.shape, self.embedding_dim))

    def backward(self, dy: Array) -> None:
        """Store in ``weights.deltas`` the sum of ``dy`` over the positions of each id (zero
        for ids not read, and for ``padding_idx``); returns ``None``."""
        host, shape = last_forward(self._cache)
        self._check("dy", dy, (*shape, self.embedding_dim), "the shape of the forward's output")
        xp, backend = self.xp, self._backend
        ids, position = np.unique(host, return_inverse=True)  # the distinct ids, sorted
        index = np.int32 if host.shape[0] < 2**31 else np.int64  # JAX has no int64 by default
        # (distinct ids, positions) one-hot: each id's rows of dy summed by one matrix product.
        at = xp.reshape(backend.from_numpy(position.astype(index), self.device), (1, -1))
        distinct = xp.arange(ids.shape[0], dtype=at.dtype, device=self.device)
        one_hot = xp.astype(xp.reshape(distinct, (-1, 1)) == at, self.dtype)
        per_id = one_hot @ xp.reshape(dy, (host.shape[0], self.embedding_dim))
        # Row v of the gradient: 1 + the index of v among the distinct ids, 0 (a zero row) else.
        slot = np.zeros(self.num_embeddings, dtype=np.int64)
        slot[ids] = np.arange(1, ids.shape[0] + 1)
        if self.padding_idx is not None:
            slot[self.padding_idx] = 0
        zero = xp.zeros((1, self.embedding_dim), dtype=self.dtype, device=self.device)
        rows = xp.concat([zero, per_id], axis=0)
        self.weights.deltas = xp.take(
            rows, backend.from_numpy(slot.astype(index), self.device), axis=0
        )
        return None
