"""Properties over shapes and dtypes on every backend: shapes, dtypes and values hold, against
torch.nn.LSTM in float64 (the seeded weights are the ones every backend draws)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xplstm
from tests.support import assert_close, torch_reference

sizes = st.integers(min_value=1, max_value=4)


@pytest.mark.reference
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
    layer = target.lstm(inputs, hidden, dtype=dtype, seed=seed)
    seeded = {key: xplstm.to_numpy(w.values).astype("float64") for key, w in
              (("weights", layer.weights), ("bias", layer.bias))}  # fmt: skip
    zeros = {key: np.zeros((batch, hidden)) for key in ("dh_n", "dc_n")}
    expected = torch_reference(host | seeded | zeros)  # torch.nn.LSTM, float64

    cast = {k: target.asarray(v.astype(dtype)) for k, v in host.items()}
    actual = layer.forward(cast["x"], cast["h0"], cast["c0"])
    actual += layer.backward(cast["dy"])
    actual += (layer.weights.deltas, layer.bias.deltas)
    names = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "d_weights", "d_bias")
    for name, a in zip(names, actual, strict=True):
        assert_close(
            a, expected[name], like=layer, name=name
        )  # namespace, device, dtype, shape, values
