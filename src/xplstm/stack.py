"""A whole stack of recurrences (layers x directions), forward and backward, written once.

:func:`describe` is the one description of the stack: per layer, per direction, which
recurrence runs, which optional inputs it takes, and the maps around it: into its own time
(a reverse direction reverses each row), out of it (outputs zero where no step counts, then
back in the layer's time), at the entry of the stack (values at steps that do not count
replaced by zero) and between layers (dropout). Every one of those maps is its own adjoint
(a select by ``where``, a reversal, a product with a fixed mask), so :func:`backward` runs
the same maps in the reverse order: it cannot drift from :func:`forward`.

The recurrences run by the ``path`` given: ``path(index, names)`` returns a
``(forward, backward)`` pair with the signatures of :func:`xplstm.sequence.forward` and
:func:`xplstm.sequence.backward` less ``xp`` (the written-once functions, or a backend's
per-recurrence fast path), for recurrence ``index`` taking the optional inputs ``names``.
States are listed in torch's order: layer-major, forward direction first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

from xplstm import steps as steps_
from xplstm.steps import Steps
from xplstm.types import Array

Path = tuple[Callable[..., tuple], Callable[..., tuple]]
ChoosePath = Callable[[int, frozenset[str]], Path]


class Params(NamedTuple):
    """One recurrence's parameters: ``w`` (in + out, 4H), ``b`` (4H,), ``w_proj`` or None."""

    w: Array
    b: Array
    w_proj: Array | None


class Plan(NamedTuple):
    """What one call adds to the parameters: which steps count, and the dropout masks (already
    scaled; ``None`` where none acts)."""

    steps: Steps
    recurrent: tuple[Array | None, ...]  # per recurrence, (batch, out) on h_{t-1}
    between: tuple[Array | None, ...]  # per layer but the last, (batch, seq, D * out)


class Route(NamedTuple):
    """One recurrence's place in the stack."""

    index: int  # into the parameters and states, in torch's order
    into: tuple[Callable[[Array], Array], ...]  # the layer's input into its own time
    out: tuple[Callable[[Array], Array], ...]  # its output back into the layer's time
    optional: dict[str, Array]  # keep, w_proj, h_drop: the ones this call uses


class Level(NamedTuple):
    """One layer of the stack: maps on its input, its routes, maps on its output."""

    entry: tuple[Callable[[Array], Array], ...]
    routes: tuple[Route, ...]
    exit: tuple[Callable[[Array], Array], ...]


def describe(xp: Any, params: Sequence[Params], plan: Plan) -> list[Level]:
    """The stack for ``params`` (one per recurrence) and ``plan``, bottom layer first."""
    steps = plan.steps
    directions = len(steps.keep)
    select = partial(steps_.select, xp)
    flip = (partial(steps_.reverse, xp, steps=steps),)
    levels = []
    for layer in range(len(params) // directions):
        routes = []
        for direction in range(directions):
            index = layer * directions + direction
            given = {
                "keep": steps.keep[direction],
                "w_proj": params[index].w_proj,
                "h_drop": plan.recurrent[index],
            }
            optional = {name: a for name, a in given.items() if a is not None}
            into = flip if direction else ()
            out = steps.out[direction]
            zero = (partial(select, where=out),) if out is not None else ()
            routes.append(Route(index, into, zero + into, optional))
        valid = steps.valid if layer == 0 else None
        between = plan.between[layer] if layer < len(plan.between) else None
        entry = (partial(select, where=valid),) if valid is not None else ()
        exit_ = (partial(_scale, mask=between),) if between is not None else ()
        levels.append(Level(entry, tuple(routes), exit_))
    return levels


def needs(xp: Any, params: Sequence[Params], plan: Plan) -> list[frozenset[str]]:
    """Per recurrence, the optional inputs this call gives it (for choosing its path)."""
    levels = describe(xp, params, plan)
    return [frozenset(route.optional) for level in levels for route in level.routes]


def uses(params: Sequence[Params], plan: Plan) -> frozenset[str]:
    """What a call uses beyond one layer in one direction over every step, in the words of
    :class:`xplstm.backends.StackPath`'s ``features``."""
    steps = plan.steps
    used = {
        "bidirectional": len(steps.keep) > 1,
        "lengths": steps.index is not None,
        "mask": steps.index is None and steps.valid is not None,
        "w_proj": any(p.w_proj is not None for p in params),
        "h_drop": any(m is not None for m in plan.recurrent),
        "dropout": any(m is not None for m in plan.between),
    }
    return frozenset(name for name, used_here in used.items() if used_here)


def forward(
    xp: Any,
    params: Sequence[Params],
    plan: Plan,
    x: Array,
    h0s: Sequence[Array],
    c0s: Sequence[Array],
    path: ChoosePath,
) -> tuple[Array, list[Array], list[Array], list[Any]]:
    """Run ``x`` (batch, seq, input) through the stack from the states ``h0s``, ``c0s`` (one
    per recurrence): returns ``(y, h_n, c_n, saved)``, ``saved`` per recurrence for
    :func:`backward`."""
    count = len(params)
    h_n, c_n, saved = [None] * count, [None] * count, [None] * count
    inputs = x
    for level in describe(xp, params, plan):
        inputs = _apply(level.entry, inputs)
        outputs = []
        for route in level.routes:
            k, p = route.index, params[route.index]
            run = path(k, frozenset(route.optional))[0]
            given = _apply(route.into, inputs)
            y, h_n[k], c_n[k], saved[k] = run(p.w, p.b, given, h0s[k], c0s[k], **route.optional)
            outputs.append(_apply(route.out, y))
        inputs = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=-1)
        inputs = _apply(level.exit, inputs)
    return inputs, h_n, c_n, saved


def backward(
    xp: Any,
    params: Sequence[Params],
    plan: Plan,
    saved: Sequence[Any],
    dy: Array | None,
    dh_ns: Sequence[Array],
    dc_ns: Sequence[Array],
    path: ChoosePath,
) -> tuple[Array, list[Array], list[Array], list[tuple[Array, Array, Array | None]]]:
    """Back-propagate through the :func:`forward` that returned ``saved``: returns ``(dx,
    dh0s, dc0s, grads)``, ``grads`` per recurrence ``(d_w, d_b, d_proj)``. ``dy`` may be
    ``None`` (no gradient reaches the outputs)."""
    count = len(params)
    dh0s, dc0s, grads = [None] * count, [None] * count, [None] * count
    grad = dy
    for level in reversed(describe(xp, params, plan)):
        grad = _apply_adjoint(level.exit, grad)
        width = None if grad is None else grad.shape[-1] // len(level.routes)
        split = len(level.routes) > 1
        d_inputs = None
        for part, route in enumerate(level.routes):
            k, p = route.index, params[route.index]
            back = path(k, frozenset(route.optional))[1]
            d_y = None
            if grad is not None:
                d_y = grad[..., part * width : (part + 1) * width] if split else grad
                d_y = _apply_adjoint(route.out, d_y)
            projection = {"w_proj": p.w_proj} if p.w_proj is not None else {}
            dx, dh0s[k], dc0s[k], d_w, d_b, d_proj = back(
                p.w, saved[k], d_y, dh_ns[k], dc_ns[k], **projection
            )
            grads[k] = (d_w, d_b, d_proj)
            dx = _apply_adjoint(route.into, dx)
            if d_inputs is None:
                d_inputs = dx
            else:  # in place where the library allows it (dx is each path's own new array)
                d_inputs += dx
        grad = _apply_adjoint(level.entry, d_inputs)
    return grad, dh0s, dc0s, grads


def _scale(a: Array, mask: Array) -> Array:
    """Dropout between layers: ``a`` times its (already scaled) mask."""
    return a * mask


def _apply(maps: tuple[Callable[[Array], Array], ...], a: Array) -> Array:
    for f in maps:
        a = f(a)
    return a


def _apply_adjoint(maps: tuple[Callable[[Array], Array], ...], a: Array | None) -> Array | None:
    """The adjoint of ``_apply(maps, .)``: each map is its own, so the same maps reversed."""
    if a is None:
        return None
    return _apply(tuple(reversed(maps)), a)
