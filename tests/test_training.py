"""A short training run: LSTM -> LastStep -> Linear with Adam and clipping learns a small adding
problem well below its baseline, using only the public API."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import losses, optim

#: Dask computes each step's small graph on demand, about a second per step here: a few hundred
#: steps would take minutes. Every piece of the loop is tested on it in test_linear, test_losses,
#: test_optim and test_every_backend_trains_exactly_as_the_reference below.
SLOW = {"dask"}


def adding_problem(rng: np.random.Generator, batch: int, seq: int) -> tuple[np.ndarray, ...]:
    """The adding problem (Arjovsky et al. 2016): values U[0, 1] and one marker in each half of
    the sequence; the target is the sum of the two marked values."""
    values = rng.uniform(0.0, 1.0, (batch, seq))
    markers = np.zeros((batch, seq))
    rows = np.arange(batch)
    markers[rows, rng.integers(0, seq // 2, batch)] = 1.0
    markers[rows, rng.integers(seq // 2, seq, batch)] = 1.0
    x = np.stack([values, markers], axis=-1).astype("float32")
    return x, np.sum(values * markers, axis=1, keepdims=True).astype("float32")


def test_training_cuts_the_adding_loss_well_below_baseline(target):
    if target.backend in SLOW:
        pytest.skip(f"{target.backend}: about a second per step here, minutes for the run")
    model = xplstm.Sequential(
        target.lstm(2, 16, seed=0),
        xplstm.LastStep(),
        xplstm.Linear(16, 1, backend=target.backend, device=target.device, seed=1),
    )
    optimizer = optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    for _ in range(300):
        x, y = adding_problem(rng, 32, 10)
        _, d_prediction = losses.mse(model(target.asarray(x)), target.asarray(y))
        model.backward(d_prediction)
        optim.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
    x, y = adding_problem(np.random.default_rng(1), 512, 10)
    held_out, _ = losses.mse(model(target.asarray(x)), target.asarray(y))
    baseline = float(np.mean((y - 1.0) ** 2))  # always predicting 1: about 0.167
    assert baseline == pytest.approx(1 / 6, abs=0.02)
    assert float(held_out) < 0.2 * baseline, f"held-out MSE {float(held_out)} vs {baseline}"


def train_steps(backend: str, device, steps: int, fast_path: bool = True) -> list[np.ndarray]:
    """A few Adam steps with clipping on a small adding problem; the final parameters (host)."""
    model = xplstm.Sequential(
        xplstm.LSTM(
            2, 8, backend=backend, device=device, dtype="float64", seed=0, fast_path=fast_path
        ),
        xplstm.LastStep(),
        xplstm.Linear(8, 1, backend=backend, device=device, dtype="float64", seed=1),
    )
    optimizer = optim.Adam(model.parameters(), lr=0.01)
    to_target = xplstm.backends.get(backend).from_numpy
    rng = np.random.default_rng(2)
    for _ in range(steps):
        x, y = (a.astype("float64") for a in adding_problem(rng, 4, 4))
        _, d_prediction = losses.mse(model(to_target(x, device)), to_target(y, device))
        model.backward(d_prediction)
        optim.clip_grad_norm(model.parameters(), 0.1)
        optimizer.step()
    return [p.values for p in model.parameters()]


def test_every_backend_trains_exactly_as_the_reference(target):
    """With the learning shown above, the same steps on any backend land on the same parameters
    (float64), so every backend learns the same. The reference is NumPy's written-once path, so
    a bug in NumPy's fast path shows on NumPy, not on every other target."""
    expected = train_steps("numpy", None, 3, fast_path=False)
    actual = train_steps(target.backend, target.device, 3)
    for ours, reference in zip(actual, expected, strict=True):
        assert_close(ours, reference, like=target, level="reference")
