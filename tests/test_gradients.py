"""Gradients by central finite differences in float64, on every backend."""

from __future__ import annotations

import numpy as np

import xplstm
from tests.numerics import numeric_partials, random_indices
from tests.support import assert_close, assert_placed, random_problem


def test_finite_differences(target):
    """Every input's and parameter's gradient, at random coordinates, against central
    differences of ``sum(y * dy) + sum(h_n * dh_n) + sum(c_n * dc_n)``."""
    p = random_problem(2, 4, 3, 3, seed=7)

    def run(host: dict) -> tuple[xplstm.LSTM, dict, tuple]:
        arrays = {k: target.asarray(v) for k, v in host.items()}
        layer = target.lstm(3, 3, weights=arrays["weights"], bias=arrays["bias"], dtype="float64")
        return layer, arrays, layer.forward(arrays["x"], arrays["h0"], arrays["c0"])

    def loss(host: dict) -> float:
        y, h_n, c_n = run(host)[2]
        return sum(
            float(np.sum(xplstm.to_numpy(out) * host[grad]))
            for out, grad in ((y, "dy"), (h_n, "dh_n"), (c_n, "dc_n"))
        )

    layer, arrays, _ = run(p)
    dx, dh0, dc0 = layer.backward(arrays["dy"], arrays["dh_n"], arrays["dc_n"])
    analytic = {"x": dx, "h0": dh0, "c0": dc0}
    analytic |= {"weights": layer.weights.deltas, "bias": layer.bias.deltas}
    rng = np.random.default_rng(0)
    for name, grad in analytic.items():
        # A few random coordinates of each input: enough to catch any wrong term.
        indices = random_indices(rng, p[name].shape, 6)
        expected = numeric_partials(lambda v, name=name: loss(p | {name: v}), p[name], indices)
        assert_placed(grad, like=layer, shape=p[name].shape, name=f"d{name}")
        picked = xplstm.to_numpy(grad)[tuple(zip(*indices, strict=True))]
        assert_close(picked, expected, like=picked, level="finite-difference", name=f"d{name}")
