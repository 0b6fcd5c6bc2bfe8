"""Which steps of a padded or masked batch count, as free functions of ``xp`` and arrays.

``lengths`` (torch's right padding) and ``mask`` (Keras's, any pattern) become one
:class:`Steps`: the steps read, each direction's ``keep`` for the recurrence, where each
direction's output is zero, and how to reverse a row in time. The stack (:mod:`xplstm.stack`)
reads every value through these, so a value at a step that does not count (padding, masked)
is never read: :func:`select` replaces it with zero by ``where``, never by a product, which
would turn NaN or inf into NaN. Flax's ``flip_sequences`` is the model for :func:`reverse`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat

from xplstm.resolver import to_numpy
from xplstm.types import Array


class Steps(NamedTuple):
    """Which steps count in one call; ``None`` wherever every step counts.

    A NamedTuple of arrays, so that a compiled stack (JAX) takes it as it takes any input.
    """

    valid: Array | None  # (batch, seq, 1) booleans: the steps whose x is read
    keep: tuple[Array | None, ...]  # per direction, (seq, batch, 1) in that direction's time
    out: tuple[Array | None, ...]  # per direction, (batch, seq, 1): False where y is zero
    index: Array | None  # (batch * seq,): reverses each row within its length; None: flip


def one_of(lengths: Any, mask: Any) -> None:
    """A ValueError when both ``lengths`` and ``mask`` are given."""
    if lengths is not None and mask is not None:
        raise ValueError(
            "pass lengths (right padding, torch's semantics) or mask (any pattern, Keras's "
            "semantics), not both"
        )


def check_lengths(lengths: Any, batch: int, seq: int) -> list[int]:
    """``lengths`` (a sequence or 1-D integer array, one per row) as ints, each in 1..seq;
    the one check of ``lengths`` everywhere (layer, ``LastStep``), with one message."""
    host = to_numpy(lengths) if not isinstance(lengths, (list, tuple)) else None
    found = None
    if host is not None and (host.dtype.kind not in "iu" or host.ndim != 1):
        found = f"{host.dtype} of shape {host.shape}"
    elif host is None:
        wrong = (f"{v!r} in row {row}" for row, v in enumerate(lengths) if not _is_int(v))
        found = next(wrong, None)
    if found is not None:
        raise ValueError(f"lengths must be a 1-D sequence of ints (one per row), got {found}")
    values = [int(v) for v in (host.tolist() if host is not None else lengths)]
    if len(values) != batch:
        raise ValueError(f"lengths must have one length per row: {batch}, got {len(values)}")
    bad = next((row for row, n in enumerate(values) if not 1 <= n <= seq), None)
    if bad is not None:
        raise ValueError(
            f"lengths must be in 1..seq = 1..{seq}; row {bad} has length {values[bad]} "
            "(drop empty rows, or pad x to the longest length)"
        )
    return values


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and hasattr(value, "__index__")


def _index_dtype(xp: Any, size: int) -> Any:
    """int32 where it suffices: JAX without 64-bit mode has no int64."""
    return xp.int32 if size < 2**31 else xp.int64


def _time_major(xp: Any, kept: Array) -> Array:
    """(batch, seq) booleans as (seq, batch, 1), the recurrence's ``keep``."""
    return xp.expand_dims(xp.permute_dims(kept, (1, 0)), axis=2)


def read(
    xp: Any, lengths: Any, mask: Array | None, batch: int, seq: int, directions: int, device: Any
) -> Steps:
    """Which steps count, from ``lengths`` or ``mask`` (checked by the caller against the
    layer's backend and ``(batch, seq)``), or every step when neither is given."""
    one_of(lengths, mask)
    if mask is not None:
        return from_mask(xp, mask, directions)
    if lengths is None:
        return all_steps(directions)
    return from_lengths(xp, check_lengths(lengths, batch, seq), seq, directions, device)


def all_steps(directions: int) -> Steps:
    """Every step counts (no ``lengths``, no ``mask``)."""
    return Steps(None, (None,) * directions, (None,) * directions, None)


def from_lengths(xp: Any, lengths: list[int], seq: int, directions: int, device: Any) -> Steps:
    """The steps of rows ``lengths`` long (checked by :func:`check_lengths`), right padded to
    ``seq``: torch's ``pack_padded_sequence`` semantics. Both directions keep the same steps,
    and zero the same outputs; the reverse one reads each row from its last valid step."""
    batch = len(lengths)
    if all(n == seq for n in lengths):
        return all_steps(directions)
    itype = _index_dtype(xp, batch * seq)
    t = xp.expand_dims(xp.arange(seq, dtype=itype, device=device), axis=0)
    n = xp.expand_dims(xp.asarray(lengths, dtype=itype, device=device), axis=1)
    valid = t < n  # (batch, seq)
    rows = xp.expand_dims(xp.arange(batch, dtype=itype, device=device), axis=1)
    within = xp.where(valid, n - 1 - t, t) + rows * seq
    keep, out = _time_major(xp, valid), xp.expand_dims(valid, axis=2)
    return Steps(out, (keep,) * directions, (out,) * directions, xp.reshape(within, (-1,)))


def from_mask(xp: Any, mask: Array, directions: int) -> Steps:
    """The steps of a (batch, seq) boolean ``mask``: Keras's semantics. One direction keeps
    h and c at a masked step and outputs the carried h; bidirectional, both directions output
    zeros there (``keras.layers.Bidirectional`` forces ``zero_output_for_mask``), and the
    reverse direction reads the whole row backwards."""
    valid = xp.expand_dims(mask, axis=2)
    if directions == 1:
        return Steps(valid, (_time_major(xp, mask),), (None,), None)
    flipped = xp.flip(mask, axis=1)
    keep = (_time_major(xp, mask), _time_major(xp, flipped))
    return Steps(valid, keep, (valid, xp.expand_dims(flipped, axis=2)), None)


def select(xp: Any, a: Array, where: Array | None) -> Array:
    """``a`` where ``where`` holds, else zero, whatever ``a`` holds there (NaN and inf too).
    Its own adjoint: the backward of a select is the same select."""
    if where is None:
        return a
    return xp.where(where, a, xp.zeros((), dtype=a.dtype, device=array_api_compat.device(a)))


def reverse(xp: Any, a: Array, steps: Steps) -> Array:
    """``a`` (batch, seq, features) with each row reversed in time, within its length (the
    padding stays where it is). Reversing twice gives ``a``, and the backward of a reversal
    is the same reversal."""
    if steps.index is None:
        return xp.flip(a, axis=1)
    batch, seq, features = a.shape
    flat = xp.take(xp.reshape(a, (batch * seq, features)), steps.index, axis=0)
    return xp.reshape(flat, (batch, seq, features))


def last_index(xp: Any, lengths: list[int], seq: int, device: Any) -> Array:
    """Where each row's last valid step sits in a (batch * seq, features) reshape."""
    itype = _index_dtype(xp, len(lengths) * seq)
    flat = [row * seq + n - 1 for row, n in enumerate(lengths)]
    return xp.asarray(flat, dtype=itype, device=device)


def reads_steps(layer: Any) -> bool:
    """Whether ``layer`` takes ``lengths`` and ``mask`` (an ``LSTM``, a ``LastStep``)."""
    return bool(getattr(layer, "reads_steps", False))


