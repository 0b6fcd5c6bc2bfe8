"""The training loop behind ``xplstm train``: an LSTM and a Linear head, Adam, clipping.

:func:`train` builds the model a task asks for on the chosen backend and device, trains it on
batches drawn on the host, checks the held-out metric now and then, stops early once the task's
target is met (or on Ctrl-C, keeping what was trained), and writes ``metrics.json``,
``loss.png`` and ``model.npz`` to the output folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import xplstm
from xplstm import checkpoint, checks, loop, optim, tasks
from xplstm.resolver import resolve, to_numpy

#: Examples per forward pass when evaluating, to bound memory on long sequences.
EVAL_CHUNK = 250
#: Training steps averaged for the reported ``train_loss`` and the early-stop gate.
RECENT = 50


@dataclass
class Settings:
    """What ``xplstm train`` was asked for; ``None`` means the task's default."""

    task: str = "adding"
    backend: str | None = None
    device: str | None = None
    seq_len: int | None = None
    hidden: int | None = None
    #: The LSTM's structure: stacked layers, a reverse direction, projection, dropout.
    layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dropout: float = 0.0
    batch: int | None = None
    steps: int | None = None
    lr: float | None = None
    clip: float = 1.0
    seed: int = 0
    out: Path | None = None
    eval_every: int = 50
    #: BLAS threads on CPU backends while training; 0 leaves the library's default.
    threads: int = 1
    progress: bool = True
    #: Data-parallel training on a LocalCluster of this many worker processes...
    workers: int | None = None
    #: ... or on the Dask scheduler at this address (see xplstm.distributed).
    scheduler: str | None = None
    #: Seconds to wait for the scheduler at ``scheduler``.
    connect_timeout: float = 10.0

    def setting(self, name: str) -> Any:
        """The value asked for, else the task's default."""
        value = getattr(self, name)
        return tasks.TASKS[self.task].defaults[name] if value is None else value


def build_model(
    task: tasks.Task, hidden: int, backend: Any, device: Any, seed: int, **structure: Any
) -> xplstm.Sequential:
    """LSTM -> (last step) -> Linear, sized for ``task``; ``structure`` (``num_layers``,
    ``bidirectional``, ``proj_size``, ``dropout``) goes to the LSTM."""
    head = [xplstm.LastStep()] if task.last_step else []
    lstm = xplstm.LSTM(
        task.input_size, hidden, backend=backend, device=device, seed=seed, **structure
    )
    features = lstm.directions * lstm.output_size
    return xplstm.Sequential(
        lstm,
        *head,
        xplstm.Linear(features, task.output_size, backend=backend, device=device, seed=seed + 1),
    )


def evaluate(
    model: xplstm.Sequential, task: tasks.Task, data: tasks.Data, backend: Any
) -> tuple[float, np.ndarray]:
    """The task's metric on ``data`` and the predictions, on the host (in eval mode: no
    dropout; the model is back in training mode after)."""
    model.eval()
    try:
        return _evaluate(model, task, data, backend)
    finally:
        model.train()


def _evaluate(
    model: xplstm.Sequential, task: tasks.Task, data: tasks.Data, backend: Any
) -> tuple[float, np.ndarray]:
    total, predictions = 0.0, []
    for start in range(0, len(data), EVAL_CHUNK):
        chunk = data.rows(start, start + EVAL_CHUNK)
        prediction = model(backend.from_numpy(chunk.inputs, model.device), lengths=chunk.lengths)
        loss, _ = task.loss(prediction, backend.from_numpy(chunk.targets, model.device))
        total += float(loss) * len(chunk)
        predictions.append(to_numpy(prediction))
    return task.metric(total / len(data)), np.concatenate(predictions)


@contextlib.contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """While inside, a first Ctrl-C sets the event (the loop finishes its step and stops);
    a second one interrupts at once, as usual."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this step and saving (Ctrl-C again to quit now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _checked(settings: Settings) -> tuple[int, int, int, float]:
    """``hidden, batch, steps, lr`` (the task's defaults where unset), checked."""
    hidden, batch, steps, lr = (settings.setting(n) for n in ("hidden", "batch", "steps", "lr"))
    counts = {"hidden": hidden, "batch": batch, "steps": steps, "eval-every": settings.eval_every}
    for name, value in counts.items():
        checks.positive_int(f"--{name}", value)
    checks.positive("--lr", lr)
    checks.positive("--clip", settings.clip)  # the largest gradient norm
    checks.positive_int("--seed", settings.seed, minimum=0)
    if settings.threads < 0:
        raise ValueError(
            f"--threads must be 0 (the library's default) or more, got {settings.threads}"
        )
    if settings.workers is not None and settings.scheduler is not None:
        raise ValueError("give --workers (a cluster on this machine) or --scheduler, not both")
    if settings.workers is not None:
        checks.positive_int("--workers", settings.workers)
    return hidden, batch, steps, lr


@dataclass
class _History:
    """What the loop did: the loss of every batch, the held-out checks, why it stopped."""

    losses: list[float] = field(default_factory=list)
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    stopped: str = "max steps"
    seconds: float = 0.0
    #: Which step gave a non-finite loss, when that stopped the run.
    problem: str | None = None


#: Leaves the gradient of a batch's loss in the model's ``deltas``; returns the loss.
Gradients = Callable[[tasks.Data], float]


def _local_gradients(model: xplstm.Sequential, task: tasks.Task, backend: Any) -> Gradients:
    """Forward and backward in this process."""

    def gradients(data: tasks.Data) -> float:
        x = backend.from_numpy(data.inputs, model.device)
        prediction = model(x, lengths=data.lengths)
        loss, d_prediction = task.loss(prediction, backend.from_numpy(data.targets, model.device))
        model.backward(d_prediction)
        return float(loss)

    return gradients


@contextlib.contextmanager
def _gradients(
    settings: Settings, model: xplstm.Sequential, task: tasks.Task, backend: Any
) -> Iterator[tuple[Gradients, int | None]]:
    """How gradients are computed, and on how many workers: here, or shard by shard on a Dask
    cluster (a LocalCluster of ``settings.workers``, or the scheduler at ``settings.scheduler``).
    """
    if settings.workers is None and settings.scheduler is None:
        yield _local_gradients(model, task, backend), None
        return
    from xplstm import distributed  # only here: Dask is an optional dependency

    where = {"workers": settings.workers, "scheduler": settings.scheduler}
    with distributed.client_for(**where, timeout=settings.connect_timeout) as active:
        engine = distributed.DataParallel(model, task.loss, active, seed=settings.seed)
        yield (
            (lambda data: engine.gradients(data.inputs, data.targets, lengths=data.lengths)),
            len(engine.workers),
        )


def _fit(
    model: xplstm.Sequential,
    task: tasks.Task,
    test: tasks.Data,
    backend: Any,
    settings: Settings,
    batch: int,
    steps: int,
    lr: float,
    gradients: Gradients,
) -> _History:
    """Adam with clipping in the one training loop (:func:`xplstm.loop.fit`), with held-out
    checks, early stop and Ctrl-C."""
    optimizer = optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng([settings.seed, 0])
    history = _History()
    bar = tqdm(
        total=steps,
        desc=task.describe(),
        unit="step",
        disable=None if settings.progress else True,  # None: only on a terminal
        dynamic_ncols=True,
    )

    def after_step(losses: list[float]) -> str | None:
        step = len(losses)
        # The held-out set is checked only once the recent training loss is near the target.
        recent = task.metric(float(np.mean(losses[-RECENT:])))
        if step % settings.eval_every == 0 and recent < 2.0 * task.target:
            metric, _ = evaluate(model, task, test, backend)
            history.evaluations.append((step, metric))
            bar.write(f"step {step}: held-out {task.metric_name} {metric:.4g}")
            if metric < task.target:
                return "target reached"
        return "interrupted" if interrupted.is_set() else None

    # A small LSTM's matrix products are too small for BLAS threads to pay off, and on a busy
    # machine the threads wait for each other (docs/training.md has the numbers).
    blas = threadpool_limits(limits=settings.threads or None, user_api="blas")
    started = time.perf_counter()
    with _interruptible() as interrupted, bar, blas:
        run = loop.fit(
            model, optimizer, lambda step: gradients(task.sample(rng, batch)), steps=steps,
            clip=settings.clip, bar=bar, after_step=after_step,
        )  # fmt: skip
    history.seconds = time.perf_counter() - started
    history.losses, history.stopped, history.problem = run.losses, run.stopped, run.problem
    return history


def train(settings: Settings) -> dict[str, Any]:
    """Train as ``settings`` say; write the output folder; return the metrics written."""
    task = tasks.get(settings.task, settings.seq_len, settings.seed)
    hidden, batch, steps, lr = _checked(settings)
    out = Path(settings.out or Path("runs") / task.name)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder (made if missing)")
    backend = resolve(settings.backend)
    device = backend.parse_device(settings.device)
    structure = {
        "num_layers": settings.layers,
        "bidirectional": settings.bidirectional,
        "proj_size": settings.proj_size,
        "dropout": settings.dropout,
    }
    model = build_model(task, hidden, backend, device, settings.seed, **structure)
    test = task.test_set()

    with _gradients(settings, model, task, backend) as (gradients, workers):
        history = _fit(model, task, test, backend, settings, batch, steps, lr, gradients)
    # Everything was checked before training: the folder is made only now, and the model is
    # written first, so that the training is kept whatever follows.
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save(out / "model.npz", model)

    test_metric, predictions = evaluate(model, task, test, backend)
    done, seconds = len(history.losses), history.seconds
    metrics = {
        "task": task.name,
        "backend": backend.name,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "seq_len": task.seq_len,
        "hidden": hidden,
        "layers": settings.layers,
        "bidirectional": settings.bidirectional,
        "proj_size": settings.proj_size,
        "dropout": settings.dropout,
        "batch": batch,
        "lr": lr,
        "clip": settings.clip,
        "seed": settings.seed,
        "max_steps": steps,
        "steps": done,
        "seconds": round(seconds, 3),
        "steps_per_second": round(done / seconds, 2) if seconds > 0 else None,
        "stopped": history.stopped,
        "problem": history.problem,
        "workers": workers,
        "train_loss": float(np.mean(history.losses[-RECENT:])) if done else None,
        "metric_name": task.metric_name,
        "test_metric": test_metric,
        "test_examples": len(test),
        "baseline": task.baseline,
        "baseline_name": task.baseline_name,
        "target": task.target,
        "target_met": test_metric < task.target,
        "evaluations": history.evaluations,
        **task.extra_metrics(test, predictions),
        **task.showcase(model, np.random.default_rng([settings.seed, 2])),
        "out": str(out),
    }
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    plot(out / "loss.png", task, history, test, predictions)
    return metrics


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (a diverged run) as ``null``: strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def plot(
    path: Path, task: tasks.Task, history: _History, test: tasks.Data, predictions: np.ndarray
) -> None:
    """The training curve in the metric's units and, where the task has one, a prediction plot."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = 2 if task.has_plot else 1
    figure, axes = pyplot.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    curve = axes[0, 0]
    steps = np.arange(1, len(history.losses) + 1)
    per_step = np.array([task.metric(v) for v in history.losses])
    curve.plot(steps, per_step, color="C0", alpha=0.3, linewidth=0.8, label="training batch")
    if len(per_step) >= RECENT:
        smooth = np.convolve(per_step, np.ones(RECENT) / RECENT, mode="valid")
        curve.plot(steps[RECENT - 1 :], smooth, color="C0", label=f"mean of {RECENT} batches")
    if history.evaluations:
        at, value = zip(*history.evaluations, strict=True)
        curve.plot(at, value, "o", color="C1", label="held-out")
    curve.axhline(
        task.baseline, color="C3", linestyle="--", label=f"baseline ({task.baseline_name})"
    )
    curve.axhline(task.target, color="C2", linestyle=":", label="target")
    curve.set(xlabel="step", ylabel=task.metric_name, title=task.describe())
    if len(per_step) and np.all(per_step > 0) and per_step.max() > 10 * per_step.min():
        curve.set_yscale("log")
    curve.legend(fontsize="small")
    if task.has_plot:
        task.plot(axes[0, 1], test, predictions)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _on_workers(metrics: dict[str, Any]) -> str:
    workers = metrics.get("workers")
    return "" if workers is None else f", data-parallel on {workers} Dask workers"


def summary(metrics: dict[str, Any]) -> str:
    """What ``xplstm train`` prints at the end: the result against the baseline, and the files."""
    metric, baseline = metrics["test_metric"], metrics["baseline"]
    if metric < baseline:
        versus = f"{baseline / metric:.1f}x lower" if metric > 0 else "perfect"
    else:
        versus = "no better"
    lines = [
        f"{metrics['task']} (seq-len {metrics['seq_len']}) on {metrics['backend']} "
        f"({metrics['device']}{_on_workers(metrics)}): {metrics['steps']} steps in "
        f"{metrics['seconds']:.1f} s "
        f"({metrics['steps_per_second']} steps/s), stopped: {metrics['stopped']}",
        f"held-out {metrics['metric_name']}: {metric:.4g}  vs baseline {baseline:.4g} "
        f"({metrics['baseline_name']}): {versus}; "
        f"target < {metrics['target']:.4g} {'met' if metrics['target_met'] else 'not met'}",
    ]
    if "recall_accuracy" in metrics:
        lines.append(f"recalled symbols right: {metrics['recall_accuracy']:.1%}")
    if "sample" in metrics:
        lines.append(f"sample:\n{metrics['sample']}\n")
    out = Path(metrics["out"])
    lines.append(
        f"plot: {out / 'loss.png'}  metrics: {out / 'metrics.json'}  model: {out / 'model.npz'}"
    )
    return "\n".join(lines)
