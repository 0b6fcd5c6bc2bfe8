"""Forward outputs and every gradient equal torch.nn.LSTM + autograd, on every backend and path."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import (
    assert_close,
    assert_route,
    forward_backward,
    layer_for,
    on_path,
    random_problem,
    torch_reference,
)

pytest.importorskip("torch", reason="torch.nn.LSTM is the reference; pip install '.[test]'")
pytestmark = pytest.mark.reference

SHAPES = {
    "batch1": (1, 4, 3, 5),
    "seq1": (3, 1, 4, 4),
    "input_ne_hidden": (2, 6, 7, 3),
    "longer": (4, 40, 5, 6),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_torch(target, path, shape, dtype):
    """Each path a target has (fast, written-once, CuPy's through its seam on NumPy) on its
    own: a failure names the code that is wrong."""
    p = random_problem(*shape, seed=sum(shape))
    expected = torch_reference(p)
    layer = on_path(layer_for(target, p, dtype), path)
    actual = forward_backward(layer, target, p)
    assert_route(layer, path)
    for name, value in actual.items():
        assert_close(value, expected[name], like=layer, name=name)


def test_reference_sees_a_wrong_gate_order(target):
    """The comparison has teeth: swapping two gate blocks is caught."""
    p = random_problem(2, 3, 3, 4, seed=1)
    expected = torch_reference(p)
    hidden = 4
    swapped = dict(p)
    order = np.arange(4 * hidden).reshape(4, hidden)[[0, 1, 3, 2]].reshape(-1)
    swapped["weights"], swapped["bias"] = p["weights"][:, order], p["bias"][order]
    layer = layer_for(target, swapped, "float64")
    actual = forward_backward(layer, target, swapped)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_close(actual["y"], expected["y"], like=layer, name="y")
