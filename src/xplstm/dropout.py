"""An LSTM's dropout masks: drawn on the host from the layer's own generator, so that a seed
draws the same masks on every backend and device, then placed on the layer's backend.

Masks are scaled by 1 / (1 - p) (inverted dropout), so evaluation needs none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from xplstm import checks
from xplstm.layer import dtype_name
from xplstm.types import Array

if TYPE_CHECKING:
    from xplstm.lstm import LSTM


class Masks(NamedTuple):
    """Dropout masks of one forward (already scaled by 1 / (1 - p)), ``None`` where none acts."""

    recurrent: tuple[Array | None, ...]  # per recurrence, (batch, out)
    between: tuple[Array | None, ...]  # per layer but the last, (batch, seq, D * out)


def generator(seed: int | None) -> np.random.Generator:
    """The masks' generator for ``seed``: its own stream, apart from the initialisation's."""
    return np.random.default_rng(np.random.SeedSequence(checks.seed(seed), spawn_key=(1,)))


def draw(layer: LSTM, batch: int, seq: int) -> Masks:
    """The masks of one forward of ``layer`` on (batch, seq), drawn from its generator in the
    order: per layer, each direction's recurrent mask, then the mask between it and the next
    layer. Nothing is drawn where no dropout acts (a probability of 0, or evaluation mode)."""
    out, directions, rng = layer.output_size, layer.directions, layer._dropout_rng
    p, p_h = (layer.dropout, layer.recurrent_dropout) if layer.training else (0.0, 0.0)
    recurrent: list[Array | None] = []
    between: list[Array | None] = []
    for index in range(layer.num_layers):
        for _ in range(directions):
            recurrent.append(_mask(layer, rng, p_h, (batch, out)))
        if index < layer.num_layers - 1:
            between.append(_mask(layer, rng, p, (batch, seq, directions * out)))
    return Masks(tuple(recurrent), tuple(between))


def _mask(layer: LSTM, rng: np.random.Generator, p: float, shape: tuple[int, ...]) -> Array | None:
    if not p:
        return None
    kept = rng.random(shape) >= p
    host = (kept * (1.0 / (1.0 - p))).astype(dtype_name(layer.dtype))
    return layer._backend.from_numpy(host, layer.device)
