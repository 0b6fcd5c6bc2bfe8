"""Properties over shapes and dtypes on every backend: shapes, dtypes and values hold."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xplstm
from tests.support import assert_close

sizes = st.integers(min_value=1, max_value=4)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=sizes,
    seq=sizes,
    inputs=sizes,
    hidden=sizes,
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
)
def test_shapes_dtypes_and_values(target, batch, seq, inputs, hidden, dtype, seed):
    rng = np.random.default_rng(seed)
    host = {
        "x": rng.standard_normal((batch, seq, inputs)),
        "h0": rng.standard_normal((batch, hidden)),
        "c0": rng.standard_normal((batch, hidden)),
        "dy": rng.standard_normal((batch, seq, hidden)),
    }
    reference = xplstm.LSTM(inputs, hidden, backend="numpy", dtype="float64", seed=seed)
    expected = reference.forward(host["x"], host["h0"], host["c0"])
    expected += reference.backward(host["dy"])
    expected += (reference.weights.deltas, reference.bias.deltas)

    layer = target.lstm(inputs, hidden, dtype=dtype, seed=seed)
    cast = {k: target.asarray(v.astype(dtype)) for k, v in host.items()}
    actual = layer.forward(cast["x"], cast["h0"], cast["c0"])
    actual += layer.backward(cast["dy"])
    actual += (layer.weights.deltas, layer.bias.deltas)
    for name, a, e in zip(
        ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dW", "db"), actual, expected, strict=True
    ):
        assert_close(a, e, like=layer, name=name)  # namespace, device, dtype, shape, values
