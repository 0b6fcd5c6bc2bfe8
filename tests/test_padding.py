"""Padding and masked steps are never read (issue 18): NaN or inf there gives the outputs,
states and gradients that zeros give, on every backend and path.

torch's packed sequences never read padded values (NaN in the padding leaves outputs and all
gradients finite, checked with ``pack_padded_sequence(enforce_sorted=False)``); a product with
a 0/1 factor would turn NaN into NaN, a select by ``where`` does not.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xplstm
from tests.support import assert_close, on_path

BATCH, SEQ, INPUTS, HIDDEN = 3, 5, 2, 3
LENGTHS = [5, 2, 3]
MASK = np.array(
    [[True, False, True, True, False], [False, True, True, False, True], [True] * 5]
)
CONFIGS = {
    "one-layer": {},
    "bidirectional": {"bidirectional": True},
    "2-layers-bidirectional-proj": {"num_layers": 2, "bidirectional": True, "proj_size": 2},
}


def _poison(a: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``a`` with NaN, inf and -inf in turn at the (batch, seq) positions ``where``."""
    poisoned = a.copy()
    values = np.resize([np.nan, np.inf, -np.inf], int(where.sum()) * a.shape[-1])
    poisoned[where] = values.reshape(-1, a.shape[-1])
    return poisoned


def _run(layer: xplstm.LSTM, target, x: np.ndarray, dy: np.ndarray, steps: dict) -> dict:
    given = dict(steps)
    if "mask" in given:
        given["mask"] = target.asarray(given["mask"])
    y, h_n, c_n = layer.forward(target.asarray(x), **given)
    dx, dh0, dc0 = layer.backward(target.asarray(dy), layer.xp.ones_like(h_n), None)
    found = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
    found |= {name: p.deltas for name, p in layer.named_parameters().items()}
    return found


def _check_unread(target, layer, steps: dict, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out = layer.directions * layer.output_size
    x = rng.standard_normal((BATCH, SEQ, INPUTS))
    dy = rng.standard_normal((BATCH, SEQ, out))
    if "lengths" in steps:
        unread = np.arange(SEQ)[None, :] >= np.array(steps["lengths"])[:, None]
        zero_output = unread  # y is zero past each length, so dy there reaches nothing
    else:
        unread = ~steps["mask"]
        # One direction outputs the carried h at a masked step (dy there is a real gradient);
        # bidirectional, y is zero there.
        zero_output = unread if layer.bidirectional else np.zeros_like(unread)
    x[unread], dy[zero_output] = 0.0, 0.0
    clean = _run(layer, target, x, dy, steps)
    poisoned = _run(layer, target, _poison(x, unread), _poison(dy, zero_output), steps)
    for name, value in poisoned.items():
        assert_close(value, clean[name], like=layer, level="exact", name=name)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("steps", ["lengths", "mask"])
def test_padding_and_masked_steps_are_never_read(target, path, config, steps):
    layer = target.lstm(INPUTS, HIDDEN, dtype="float64", seed=0, **config)
    on_path(layer, path)
    _check_unread(target, layer, {"lengths": LENGTHS} if steps == "lengths" else {"mask": MASK})


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, SEQ), min_size=BATCH, max_size=BATCH),
    bidirectional=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_lengths_leave_the_padding_unread(lengths, bidirectional, seed):
    layer = xplstm.LSTM(
        INPUTS, HIDDEN, num_layers=2, bidirectional=bidirectional, backend="numpy",
        dtype="float64", seed=seed, fast_path=False,
    )  # fmt: skip
    target = type("NumPyTarget", (), {"asarray": staticmethod(np.asarray)})
    _check_unread(target, layer, {"lengths": lengths}, seed)
