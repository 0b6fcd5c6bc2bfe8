"""Batched predict (``xplstm predict`` and each Dask worker run it): the outputs of the model
in evaluation mode, a bounded batch at a time, and every layer left in the mode it was in."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import batched


def two_lstms(first: bool, second: bool) -> xplstm.Sequential:
    """Two LSTMs with dropout, in the modes given, then the last step and a head."""
    options = {"backend": "numpy", "dtype": "float64", "recurrent_dropout": 0.4}
    return xplstm.Sequential(
        xplstm.LSTM(3, 4, num_layers=2, dropout=0.5, seed=0, **options).train(first),
        xplstm.LSTM(4, 4, seed=1, **options).train(second),
        xplstm.LastStep(),
        xplstm.Linear(4, 2, backend="numpy", dtype="float64", seed=2),
    )


@pytest.mark.parametrize("modes", [(True, True), (False, False), (True, False), (False, True)])
def test_predict_runs_in_eval_mode_and_leaves_each_layer_in_its_mode(modes):
    model = two_lstms(*modes)
    x = np.random.default_rng(0).standard_normal((5, 6, 3))
    expected = two_lstms(False, False)(x)
    assert_close(batched.predict(model, x, 2), expected, like=expected, level="ulps")
    assert (model.layers[0].training, model.layers[1].training) == modes
    with pytest.raises(ValueError, match=r"lengths must be in 1\.\.seq"):
        batched.predict(model, x, 2, lengths=np.array([1, 2, 9, 1, 1]))
    assert (model.layers[0].training, model.layers[1].training) == modes, "after an error too"
