"""Gradients against central finite differences in float64, on every backend and path.

The loss is ``sum(y * dy) + sum(h_n * dh_n) + sum(c_n * dc_n)``. Each gradient is checked along
random directions of whole arrays: the inputs and the state in one direction each, the weights
and the bias one gate block at a time, so that a failure names the gate. Finite differences owe
nothing to our backward, and every direction covers every element it touches.
"""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.numerics import directional_derivative
from tests.support import (
    assert_close,
    assert_placed,
    assert_route,
    layer_for,
    on_path,
    random_problem,
)

pytestmark = pytest.mark.reference

GATES = ("input", "forget", "output", "candidate")  # xplstm's column blocks, in order


def directions(rng: np.random.Generator, p: dict) -> list[tuple[str, str, np.ndarray]]:
    """``(label, array name, direction)``: whole arrays for the inputs and the state, one gate
    block at a time for the parameters."""
    found = [(f"d{name}", name, rng.standard_normal(p[name].shape)) for name in ("x", "h0", "c0")]
    hidden = p["h0"].shape[1]
    for name in ("weights", "bias"):
        for k, gate in enumerate(GATES):
            direction = np.zeros_like(p[name])
            block = direction[..., k * hidden : (k + 1) * hidden]
            block[...] = rng.standard_normal(block.shape)
            found.append((f"d{name} ({gate} gate block)", name, direction))
    return found


@pytest.mark.parametrize("state", ["given", "omitted"])
def test_gradients_along_random_directions(target, path, state):
    """With ``omitted``, forward gets no state and backward no ``dh_n``/``dc_n``: the defaults
    (zeros) must be what the gradients are taken at."""
    p = random_problem(2, 5, 3, 4, seed=7)
    if state == "omitted":
        p |= {key: np.zeros_like(p[key]) for key in ("h0", "c0", "dh_n", "dc_n")}
    arrays = {key: target.asarray(value) for key, value in p.items()}
    layer = on_path(layer_for(target, p, "float64"), path)
    given = state == "given"

    def loss(host: dict, with_state: bool = given) -> float:
        layer.weights.values, layer.bias.values = (
            target.asarray(host[k]) for k in ("weights", "bias")
        )
        state_in = (target.asarray(host["h0"]), target.asarray(host["c0"])) if with_state else ()
        outputs = layer.forward(target.asarray(host["x"]), *state_in)
        return sum(
            float(np.sum(xplstm.to_numpy(out) * host[grad]))
            for out, grad in zip(outputs, ("dy", "dh_n", "dc_n"), strict=True)
        )

    loss(p)
    assert_route(layer, path)
    grads = (arrays["dh_n"], arrays["dc_n"]) if given else ()
    dx, dh0, dc0 = layer.backward(arrays["dy"], *grads)
    analytic = {"x": dx, "h0": dh0, "c0": dc0}
    analytic |= {"weights": layer.weights.deltas, "bias": layer.bias.deltas}
    for name, value in analytic.items():
        assert_placed(value, like=layer, shape=p[name].shape, name=f"d{name}")
    analytic = {name: xplstm.to_numpy(value) for name, value in analytic.items()}
    for label, name, direction in directions(np.random.default_rng(0), p):
        moved = given or name in ("h0", "c0")  # the state must be passed to be moved
        expected = directional_derivative(
            lambda t, n=name, d=direction, s=moved: loss(p | {n: p[n] + t * d}, s)
        )
        actual = np.asarray(np.sum(analytic[name] * direction))
        assert_close(actual, np.asarray(expected), like=actual, level="finite-difference",
                     name=f"{label} along a random direction")  # fmt: skip
