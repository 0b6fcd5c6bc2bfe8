"""JAX as users get it: 64-bit floats off (the suite turns them on for its float64 tests, so this
runs in a fresh process), float32 on both paths, against torch.nn.LSTM in float64."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.support import assert_close, random_problem, torch_reference
from xplstm import backends

pytestmark = pytest.mark.reference

#: Runs in a fresh interpreter: loads the problem, runs both paths, saves what they return.
SCRIPT = """
import sys, numpy as np, jax, xplstm
assert not jax.config.jax_enable_x64, "64-bit floats must be off, as users get them"
p = dict(np.load(sys.argv[1]))
found = {}
for path in ("fast", "written-once"):
    cast = {k: jax.numpy.asarray(v.astype("float32")) for k, v in p.items()}
    layer = xplstm.LSTM(3, 4, backend="jax", weights=cast["weights"], bias=cast["bias"],
                        fast_path=path == "fast")
    out = layer.forward(cast["x"], cast["h0"], cast["c0"])
    out += layer.backward(cast["dy"], cast["dh_n"], cast["dc_n"])
    out += (layer.weights.deltas, layer.bias.deltas)
    assert all((run is not None) == (path == "fast") for run, _ in layer._cache.runs)
    for name, value in zip(sys.argv[3:], out, strict=True):
        found[f"{path}/{name}"] = np.asarray(value)
np.savez(sys.argv[2], **found)
"""
OUTPUTS = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "d_weights", "d_bias")


def test_float32_without_64_bit_floats(tmp_path):
    if "jax" not in backends.available():
        pytest.skip(f"jax: {backends.unavailable()['jax']}")
    p = random_problem(2, 5, 3, 4, seed=21)
    np.savez(tmp_path / "problem.npz", **p)
    subprocess.run(
        [sys.executable, "-c", SCRIPT, tmp_path / "problem.npz", tmp_path / "out.npz", *OUTPUTS],
        check=True,
        capture_output=True,
        env={
            k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XPLSTM_FAST_PATH")
        },
    )
    expected = torch_reference(p)
    with np.load(tmp_path / "out.npz") as found:
        for key in found.files:
            path, name = key.split("/")
            assert found[key].dtype == np.float32, key  # a float32 NumPy array, from JAX's
            assert_close(found[key], expected[name], like=found[key], name=f"{path}: {name}")
        assert len(found.files) == 2 * len(OUTPUTS)
