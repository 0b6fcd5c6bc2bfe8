"""An LSTM's states at the edges of a call: ``h0``, ``c0`` in, ``h_n``, ``c_n`` out (and their
gradients the other way), between the user's one array and the stack's list per recurrence.

The user's shapes are torch's: (num_layers * num_directions, batch, size), layer-major and
forward direction first; one recurrence takes (batch, size), or torch's (1, batch, size) and
then gets its states back shaped so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xplstm.types import Array

if TYPE_CHECKING:
    from xplstm.lstm import LSTM


def split(layer: LSTM, name: str, state: Array | None, batch: int, size: int) -> list[Array]:
    """Per recurrence of ``layer`` a (batch, size) state or gradient: checked when given (one
    recurrence also takes torch's (1, batch, size)), zeros when omitted."""
    count = len(layer.recurrences)
    if state is None:
        zeros = layer.xp.zeros((batch, size), dtype=layer.dtype, device=layer.device)
        return [zeros] * count
    what = "proj_size" if size != layer.hidden_size else "hidden_size"
    if count == 1 and getattr(state, "ndim", None) == 3:
        layer._check(name, state, (1, batch, size), f"(1, batch, {what}), torch's")
        return [state[0, ...]]
    if count == 1:
        layer._check(name, state, (batch, size), f"(batch, {what})")
        return [state]
    layer._check(
        name, state, (count, batch, size), f"(num_layers * num_directions, batch, {what})"
    )
    return [state[k, ...] for k in range(count)]


def torch_shaped(count: int, *given: Any) -> bool:
    """Whether one recurrence (``count`` 1) was given a state as torch's (1, batch, size)."""
    return count == 1 and any(getattr(state, "ndim", 2) == 3 for state in given)


def stacked(xp: Any, states: list[Array], torch_states: bool = False) -> Array:
    """Per-recurrence states as one array: (batch, size) for one recurrence (torch's
    (1, batch, size) when ``torch_states``), else (count, batch, size)."""
    if len(states) == 1 and not torch_states:
        return states[0]
    return xp.stack(states, axis=0)
