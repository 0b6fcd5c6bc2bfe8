"""The one training loop (xplstm.loop) that ``xplstm train`` and ``distributed.fit`` share, in
this process: it equals the loop written out with the library, stops before the update of a
step whose loss or gradients are not finite, stops when asked, checkpoints, and resumes."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.support import assert_same_state, state_of
from xplstm import checkpoint, loop, losses, optim

ROWS = 12


def model() -> xplstm.Sequential:
    return xplstm.Sequential(
        xplstm.LSTM(2, 3, dtype="float64", seed=0),
        xplstm.LastStep(),
        xplstm.Linear(3, 1, dtype="float64", seed=1),
    )


def batches(steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(4)
    return [
        (rng.standard_normal((ROWS, 5, 2)), rng.standard_normal((ROWS, 1))) for _ in range(steps)
    ]


def source(net: xplstm.Sequential, data: list[tuple[np.ndarray, np.ndarray]]) -> loop.Gradients:
    """Forward and backward of step ``step``'s batch in this process."""

    def gradients(step: int) -> float:
        x, y = data[step]
        loss, d_prediction = losses.mse(net(x), y)
        net.backward(d_prediction)
        return float(loss)

    return gradients


def written_out(steps: int, clip: float) -> tuple[list[float], dict]:
    """The same training with the library's pieces, step by step (the README's loop)."""
    net = model()
    optimizer = optim.Adam(net.parameters(), lr=0.05)
    history = []
    for x, y in batches(steps):
        loss, d_prediction = losses.mse(net(x), y)
        net.backward(d_prediction)
        optim.clip_grad_norm(net.parameters(), clip)
        optimizer.step()
        history.append(float(loss))
    return history, state_of(net, optimizer)


def test_the_loop_is_the_written_out_loop():
    net = model()
    optimizer = optim.Adam(net.parameters(), lr=0.05)
    run = loop.fit(net, optimizer, source(net, batches(4)), steps=4, clip=0.3)
    expected_losses, expected_state = written_out(4, 0.3)
    assert (run.stopped, run.problem) == ("max steps", None)
    assert run.losses == expected_losses
    assert_same_state(state_of(net, optimizer), expected_state)


@pytest.mark.parametrize("clip", [None, 0.3])
def test_non_finite_gradients_with_a_finite_loss_stop_before_the_update(clip):
    """+inf in x: finite outputs at the last step (the forget gate saturates) but NaN weight
    gradients. The step is not taken: the model is that of the step before."""
    data = batches(4)
    data[2][0][1, 2, 0] = np.inf
    net = model()
    optimizer = optim.Adam(net.parameters(), lr=0.05)
    with np.errstate(invalid="ignore"):
        run = loop.fit(net, optimizer, source(net, data), steps=4, clip=clip)
    assert run.stopped == loop.NON_FINITE and len(run.losses) == 2
    assert run.problem.startswith("step 3 gave a non-finite loss (")
    assert "or gradient norm (nan); stopped before its update: the model is that of step 2" in (
        run.problem
    )
    two = model()
    expected = optim.Adam(two.parameters(), lr=0.05)
    loop.fit(two, expected, source(two, data), steps=2, clip=clip)
    assert_same_state(state_of(net, optimizer), state_of(two, expected))
    with np.errstate(invalid="ignore"):
        assert np.isfinite(float(losses.mse(two(data[2][0]), data[2][1])[0]))  # the loss alone


def test_a_stop_asked_after_a_step_is_saved_and_resumed_to_the_same_end(tmp_path):
    """after_step stops the run after step 3 of 5; the checkpoint (every 2 steps and at the
    end) holds step 3; resuming from it ends where an uninterrupted run ends, bit for bit."""
    path, position = tmp_path / "run.npz", {"seed": 0}
    data = batches(5)
    net = model()
    optimizer = optim.Adam(net.parameters(), lr=0.05)
    stop_at_3 = lambda done: "asked" if len(done) == 3 else None  # noqa: E731
    run = loop.fit(
        net, optimizer, source(net, data), steps=5, clip=0.3, checkpoint_path=path, every=2,
        position=position, after_step=stop_at_3,
    )  # fmt: skip
    assert (run.stopped, len(run.losses)) == ("asked", 3)
    resumed = model()
    again = optim.Adam(resumed.parameters(), lr=0.05)
    done = loop.resume(path, resumed, again, position, steps=5)
    assert done == run.losses and again.steps == 3
    run = loop.fit(resumed, again, source(resumed, data), steps=5, clip=0.3, losses=done)
    expected_losses, expected_state = written_out(5, 0.3)
    assert run.losses == expected_losses
    assert_same_state(state_of(resumed, again), expected_state)
    assert checkpoint.load(path).layers[0].hidden_size == 3  # an ordinary checkpoint too
