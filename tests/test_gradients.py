"""Gradients by central finite differences in float64, on every backend."""

from __future__ import annotations

import numpy as np

import xplstm
from tests.support import random_problem


def test_finite_differences(target):
    p = random_problem(2, 4, 3, 3, seed=7)
    inputs, hidden = 3, 3

    def loss_and_grads(host: dict, with_grads: bool = True) -> tuple[float, dict]:
        arrays = {k: target.asarray(v) for k, v in host.items()}
        layer = target.lstm(
            inputs, hidden, weights=arrays["weights"], bias=arrays["bias"], dtype="float64"
        )
        y, h_n, c_n = layer.forward(arrays["x"], arrays["h0"], arrays["c0"])
        loss = sum(
            float(np.sum(xplstm.to_numpy(out) * host[grad]))
            for out, grad in ((y, "dy"), (h_n, "dh_n"), (c_n, "dc_n"))
        )
        if not with_grads:
            return loss, {}
        dx, dh0, dc0 = layer.backward(arrays["dy"], arrays["dh_n"], arrays["dc_n"])
        grads = {"x": dx, "h0": dh0, "c0": dc0}
        grads |= {"weights": layer.weights.deltas, "bias": layer.bias.deltas}
        return loss, {k: xplstm.to_numpy(v) for k, v in grads.items()}

    _, analytic = loss_and_grads(p)
    rng = np.random.default_rng(0)
    step = 1e-6
    for name, grad in analytic.items():
        # A few random coordinates of each input: enough to catch any wrong term.
        for flat in rng.choice(grad.size, size=min(6, grad.size), replace=False):
            index = np.unravel_index(flat, grad.shape)
            plus, minus = dict(p), dict(p)
            plus[name], minus[name] = p[name].copy(), p[name].copy()
            plus[name][index] += step
            minus[name][index] -= step
            numeric = (loss_and_grads(plus, False)[0] - loss_and_grads(minus, False)[0]) / (
                2 * step
            )
            np.testing.assert_allclose(
                grad[index], numeric, rtol=1e-6, atol=1e-8, err_msg=f"d{name}{index}"
            )
