"""A 10,000-step sequence runs forward and backward with memory bounded by the cache."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xplstm

STEPS, BATCH, INPUTS, HIDDEN = 10_000, 2, 3, 8


#: Dask builds one task graph over every step: 10,000 steps take minutes. It runs the same
#: written-once loop as array_api_strict, which takes seconds here.
SLOW_EAGER = {"dask"}


def test_ten_thousand_steps(target):
    if target.backend in SLOW_EAGER and target.device_spec in (None, "cpu"):
        pytest.skip(f"{target.backend}: a task graph of 10,000 steps takes minutes to build")
    layer = target.lstm(INPUTS, HIDDEN, seed=0)
    x = target.asarray(np.random.default_rng(0).standard_normal((BATCH, STEPS, INPUTS)) * 0.5)
    x = layer.xp.astype(x, layer.dtype)
    y, h_n, _ = layer.forward(x)
    dx, dh0, _ = layer.backward(layer.xp.ones_like(y))
    for array in (y, h_n, dx, dh0, layer.weights.deltas):
        assert np.isfinite(xplstm.to_numpy(array)).all()


@pytest.mark.parametrize("steps", [2_500, STEPS])
def test_memory_is_the_cache_and_nothing_per_step(steps):
    """NumPy peak memory is a fixed multiple of what backward must keep, whatever the length.

    Measured: about 3.4x the cache (5 * batch * seq * hidden values) in forward, which also
    holds the input projection and, while stacking, the per-step results; 3.3x in backward.
    """
    batch, hidden = 4, 32
    layer = xplstm.LSTM(INPUTS, hidden, backend="numpy", seed=0)
    x = np.random.default_rng(0).standard_normal((batch, steps, INPUTS)).astype("float32")
    cache_bytes = 5 * batch * steps * hidden * 4
    tracemalloc.start()
    try:
        y, _, _ = layer.forward(x)
        layer.backward(np.ones_like(y))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * cache_bytes, f"peak {peak / 1e6:.1f} MB vs cache {cache_bytes / 1e6:.1f} MB"
