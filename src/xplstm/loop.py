"""The one training loop behind ``xplstm train`` and :func:`xplstm.distributed.fit`.

Each step takes the gradients of one batch from a source the caller gives (forward and
backward in this process, or shard by shard on Dask workers: the only difference between the
two), checks that the loss and the gradients are finite, clips the global gradient norm, and
steps the optimizer. A training checkpoint is written every ``every`` steps and when the loop
ends; a run that finds its checkpoint resumes from it, ending where an uninterrupted run ends.

A non-finite loss or gradient stops the loop before that step's update: the model is left as
the last finite step made it (torch propagates NaN the same way through a step; a training run
should not lose its work to it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xplstm import checkpoint, optim

#: Leaves the gradient of step ``step``'s batch (0, 1, ...) in every parameter's ``deltas``
#: and returns that batch's loss.
Gradients = Callable[[int], float]
#: Called after each step with the losses of the steps done; a reason to stop, or ``None``.
AfterStep = Callable[[list[float]], str | None]
#: What ``Run.stopped`` says when the loss or the gradients stopped being finite.
NON_FINITE = "non-finite loss"


@dataclass
class Run:
    """What the loop did: the loss of every step taken, and why it stopped."""

    losses: list[float] = field(default_factory=list)
    stopped: str = "max steps"
    #: Says which step gave a non-finite loss or gradient, and what the model holds (when
    #: ``stopped`` is ``NON_FINITE``).
    problem: str | None = None


def fit(
    model: Any,
    optimizer: optim.Optimizer,
    gradients: Gradients,
    *,
    steps: int,
    clip: float | None = None,
    losses: list[float] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    every: int = 100,
    position: dict[str, Any] | None = None,
    bar: Any = None,
    after_step: AfterStep | None = None,
) -> Run:
    """Train ``model`` up to step ``steps``, from the ``losses`` of the steps already done
    (by :func:`resume`): gradients, finite check, clipping to ``clip`` (unless ``None``), the
    optimizer's step. With ``checkpoint_path``, a training checkpoint recording ``position``
    (what a resumed run must share, e.g. the seed) is saved every ``every`` steps and at the
    end. ``bar`` (a tqdm bar) shows the loss; ``after_step`` may stop the loop early.
    """
    run = Run(losses=list(losses or []))
    saved = len(run.losses)
    params = model.parameters()
    for step in range(len(run.losses), steps):
        loss = gradients(step)
        norm = optim.grad_norm(params) if clip is None else optim.clip_grad_norm(params, clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            run.stopped = NON_FINITE
            run.problem = (
                f"step {step + 1} gave a non-finite loss ({loss}) or gradient norm ({norm}); "
                f"stopped before its update: the model is that of step {step}, the last finite one"
            )
            break
        optimizer.step()
        run.losses.append(loss)
        if bar is not None:
            bar.set_postfix({"loss": f"{loss:.4g}"}, refresh=False)
            bar.update()
        if checkpoint_path is not None and len(run.losses) % every == 0:
            save(checkpoint_path, model, optimizer, position or {}, run.losses)
            saved = len(run.losses)
        reason = None if after_step is None else after_step(run.losses)
        if reason is not None:
            run.stopped = reason
            break
    if checkpoint_path is not None and saved != len(run.losses):
        save(checkpoint_path, model, optimizer, position or {}, run.losses)
    return run


def save(
    path: str | os.PathLike[str],
    model: Any,
    optimizer: optim.Optimizer,
    position: dict[str, Any],
    losses: list[float],
) -> None:
    """A training checkpoint: the model, the optimizer's state, the step, ``position`` and
    the losses so far."""
    training = {"step": len(losses), **position, "losses": losses}
    checkpoint.save(path, model, optimizer=optimizer, training=training)


def resume(
    path: str | os.PathLike[str],
    model: Any,
    optimizer: optim.Optimizer,
    position: dict[str, Any],
    steps: int,
) -> list[float]:
    """Put back the model and optimizer of the training checkpoint at ``path``; the losses of
    the steps it holds. Refused, with nothing changed, when the file is not such a checkpoint,
    was saved with another ``position`` (its batches would differ), or is past ``steps``."""

    def check(training: dict[str, Any] | None) -> None:
        if training is None or not _is_count(training.get("step")):
            raise checkpoint.CheckpointError(
                f"{path} is not a training checkpoint (it holds no training step); give "
                "another path, or remove the file"
            )
        saved = {key: training.get(key) for key in position}
        if saved != position:
            raise checkpoint.CheckpointError(
                f"{path} was saved by a run with {saved}, not {position}: resuming would draw "
                "other batches; use the same seed, batch_size and data, or another path"
            )
        done, losses = training["step"], training.get("losses")
        if not (isinstance(losses, list) and len(losses) == done and all(map(_is_real, losses))):
            raise checkpoint.CheckpointError(
                f"{path}: its training record is not valid: 'losses' must list the {done} "
                "losses of the steps done"
            )
        if done > steps:
            raise ValueError(f"{path} is at step {done}, past steps={steps}; ask for more steps")

    training = checkpoint.restore(path, model, optimizer, check=check)
    assert training is not None  # check refused anything else
    return [float(v) for v in training["losses"]]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = ["NON_FINITE", "AfterStep", "Gradients", "Run", "fit", "resume", "save"]
