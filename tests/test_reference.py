"""Forward outputs and every gradient equal torch.nn.LSTM + autograd, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import assert_close, random_problem, torch_reference

pytest.importorskip("torch", reason="torch.nn.LSTM is the reference; pip install '.[test]'")

SHAPES = {
    "batch1": (1, 4, 3, 5),
    "seq1": (3, 1, 4, 4),
    "input_ne_hidden": (2, 6, 7, 3),
    "longer": (4, 40, 5, 6),
}


def run_layer(target, p: dict, dtype: str):
    """Forward and backward through an xplstm layer on ``target`` with the problem ``p``."""
    cast = {k: target.asarray(v.astype(dtype)) for k, v in p.items()}
    inputs, hidden = p["x"].shape[2], p["h0"].shape[1]
    layer = target.lstm(inputs, hidden, weights=cast["weights"], bias=cast["bias"], dtype=dtype)
    y, h_n, c_n = layer.forward(cast["x"], cast["h0"], cast["c0"])
    dx, dh0, dc0 = layer.backward(cast["dy"], cast["dh_n"], cast["dc_n"])
    results = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
    results |= {"d_weights": layer.weights.deltas, "d_bias": layer.bias.deltas}
    return layer, results


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_torch(target, shape, dtype):
    p = random_problem(*shape, seed=sum(shape))
    expected = torch_reference(p)
    layer, actual = run_layer(target, p, dtype)
    for name, value in actual.items():
        assert_close(value, expected[name], layer, name)


def test_reference_sees_a_wrong_gate_order(target):
    """The comparison has teeth: swapping two gate blocks is caught."""
    p = random_problem(2, 3, 3, 4, seed=1)
    expected = torch_reference(p)
    hidden = 4
    swapped = dict(p)
    order = np.arange(4 * hidden).reshape(4, hidden)[[0, 1, 3, 2]].reshape(-1)
    swapped["weights"], swapped["bias"] = p["weights"][:, order], p["bias"][order]
    layer, actual = run_layer(target, swapped, "float64")
    with pytest.raises(AssertionError):
        assert_close(actual["y"], expected["y"], layer, "y")
