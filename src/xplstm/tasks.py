"""The training tasks of ``xplstm train``: adding, adding-lengths, copy, sine and text.

Each task generates its data on the host with NumPy from a seed (so a seed gives the same data
on every backend), and says what the model needs: the input and output sizes, whether the head
reads only the last time step, the loss, the metric reported on a held-out set, the baseline a
model without memory scores, and the target at which training may stop early.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xplstm import losses
from xplstm.checks import positive_int
from xplstm.sampling import PRIME, generate

#: Class targets are int32: JAX without 64-bit mode has no int64, and every backend has int32.
CLASS_DTYPE = "int32"


@dataclass(frozen=True)
class Data:
    """A set of examples on the host: ``inputs`` (n, seq, features) float32 and ``targets``;
    ``lengths`` (n,) when the rows have their own lengths (right padding), else ``None``."""

    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def rows(self, start: int, stop: int) -> Data:
        """Examples ``start`` to ``stop``."""
        lengths = None if self.lengths is None else self.lengths[start:stop]
        return Data(self.inputs[start:stop], self.targets[start:stop], lengths)


class Task:
    """What a task must say; subclasses fill it in.

    ``sample(rng, n)`` draws ``n`` training examples; ``test_set()`` is the fixed held-out set
    (drawn from its own seed, never from the training stream); ``loss(prediction, target)`` is
    one of :mod:`xplstm.losses`; ``metric(mean_loss)`` turns a mean loss into the reported
    metric, in which ``baseline`` and ``target`` are given too.
    """

    name: ClassVar[str]
    #: The settings ``xplstm train --task NAME`` uses unless told otherwise.
    defaults: ClassVar[dict[str, Any]]
    metric_name: ClassVar[str]
    #: What scores the baseline, in words, for the report.
    baseline_name: ClassVar[str]
    #: True when the head reads only the last step's output (``LastStep`` before ``Linear``).
    last_step: ClassVar[bool]
    input_size: int
    output_size: int
    #: Training may stop once the held-out metric is below this.
    target: float
    #: Examples in the held-out set.
    test_size: ClassVar[int] = 1000
    #: True when :meth:`plot` draws the predictions against the truth.
    has_plot: ClassVar[bool] = False

    def __init__(self, seq_len: int | None = None, seed: int = 0) -> None:
        seq_len = self.defaults["seq_len"] if seq_len is None else seq_len
        self.seq_len = positive_int("--seq-len", seq_len, minimum=2)
        self.seed = seed

    def sample(self, rng: np.random.Generator, n: int) -> Data:
        """``n`` examples drawn with ``rng``."""
        raise NotImplementedError

    def test_set(self) -> Data:
        """The held-out examples: the same for a given seed and sequence length."""
        return self.sample(np.random.default_rng([self.seed, 1]), self.test_size)

    #: ``(prediction, target) -> (loss, d_prediction)`` for a batch, on the prediction's
    #: backend: a function of :mod:`xplstm.losses`, so that it travels to Dask workers by name.
    loss = staticmethod(losses.mse)

    def metric(self, mean_loss: float) -> float:
        """The reported metric for a mean loss (the loss itself unless a task converts it)."""
        return mean_loss

    @property
    def baseline(self) -> float:
        """What a model without memory scores on the held-out set, in the metric's units."""
        raise NotImplementedError

    def extra_metrics(self, data: Data, predictions: np.ndarray) -> dict[str, float]:
        """More held-out numbers worth reporting, from the host predictions."""
        return {}

    def showcase(self, model: Any, rng: np.random.Generator) -> dict[str, str]:
        """Things the trained model makes that a person wants to see (a text sample)."""
        return {}

    def plot(self, ax: Any, data: Data, predictions: np.ndarray) -> None:
        """Draw held-out predictions against the truth on ``ax`` (when ``has_plot``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for reports: the task and its sequence length."""
        return f"{self.name} (seq-len {self.seq_len})"


class Adding(Task):
    """The adding problem (Hochreiter & Schmidhuber 1997; as set in Arjovsky et al. 2016).

    Each step has two features: a value drawn from U[0, 1], and a marker that is 1 at exactly
    two steps, one drawn uniformly in each half of the sequence, and 0 elsewhere. The target is
    the sum of the two marked values. Always answering 1 (the target's mean) scores the target's
    variance, 2 * 1/12 = 0.167: the baseline.
    """

    name = "adding"
    defaults: ClassVar[dict[str, Any]] = {
        "seq_len": 100,
        "hidden": 32,
        "batch": 32,
        "lr": 1e-2,
        "steps": 4000,
    }
    metric_name = "mse"
    baseline_name = "always predicting 1"
    last_step = True
    has_plot = True
    input_size = 2
    output_size = 1
    target = 0.01

    def sample(self, rng: np.random.Generator, n: int) -> Data:
        seq = self.seq_len
        values = rng.uniform(0.0, 1.0, size=(n, seq))
        half = seq // 2
        first = rng.integers(0, half, size=n)
        second = rng.integers(half, seq, size=n)
        markers = np.zeros((n, seq))
        rows = np.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        inputs = np.stack([values, markers], axis=-1).astype("float32")
        sums = values[rows, first] + values[rows, second]
        return Data(inputs, sums[:, None].astype("float32"))

    @property
    def baseline(self) -> float:
        targets = self.test_set().targets
        return float(np.mean((targets - 1.0) ** 2))

    def plot(self, ax: Any, data: Data, predictions: np.ndarray) -> None:
        shown = slice(0, 300)
        ax.scatter(data.targets[shown, 0], predictions[shown, 0], s=6, alpha=0.6)
        ax.plot([0.0, 2.0], [0.0, 2.0], color="black", linewidth=0.8, label="perfect")
        ax.set(
            xlabel="true sum",
            ylabel="predicted sum",
            title="held-out predictions (300 shown)",
        )
        ax.legend(loc="upper left")


class AddingLengths(Adding):
    """The adding problem over sequences of different lengths, as padded batches really come.

    Each row has its own length, drawn uniformly from ``seq_len // 2`` to ``seq_len``; its two
    markers fall one in each half of its own length, and the steps past it are zeros (right
    padding). The model reads the batch with ``lengths=`` and answers at each row's last
    valid step: without them, the padding would have to be learnt away. Baseline and target as
    for ``adding``.
    """

    name = "adding-lengths"
    defaults: ClassVar[dict[str, Any]] = Adding.defaults | {"seq_len": 50}

    def __init__(self, seq_len: int | None = None, seed: int = 0) -> None:
        super().__init__(seq_len, seed)
        if self.seq_len < 4:  # the shortest row, seq_len // 2, needs a step in each half
            raise ValueError(f"--seq-len must be at least 4 for adding-lengths, got {seq_len}")

    def sample(self, rng: np.random.Generator, n: int) -> Data:
        seq = self.seq_len
        lengths = rng.integers(seq // 2, seq + 1, size=n)
        values = rng.uniform(0.0, 1.0, size=(n, seq))
        first = rng.integers(0, lengths // 2)
        second = rng.integers(lengths // 2, lengths)
        rows = np.arange(n)
        markers = np.zeros((n, seq))
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        inputs = np.stack([values, markers], axis=-1)
        inputs[np.arange(seq)[None, :] >= lengths[:, None]] = 0.0
        sums = values[rows, first] + values[rows, second]
        return Data(inputs.astype("float32"), sums[:, None].astype("float32"), lengths)


class Copy(Task):
    """The copy-memory task of Arjovsky et al. 2016.

    The input is 10 symbols drawn from 8 (classes 1..8), then ``seq_len - 1`` blanks (0), a
    delimiter (9), and 10 more blanks: ``seq_len + 20`` steps, one-hot over 10 classes. The
    model must output blanks for the first ``seq_len + 10`` steps, then the 10 symbols. The
    loss is the cross-entropy per step over all ``seq_len + 20`` steps; a model without
    memory outputs blanks and then guesses uniformly among 8: ``10 log(8) / (seq_len + 20)``.
    """

    name = "copy"
    defaults: ClassVar[dict[str, Any]] = {
        "seq_len": 20,
        "hidden": 64,
        "batch": 32,
        "lr": 1e-2,
        "steps": 3000,
    }
    metric_name = "cross-entropy (nats per step)"
    baseline_name = "blanks, then uniform guesses among 8"
    last_step = False
    input_size = 10
    output_size = 9
    test_size = 500
    symbols = 10
    blank, delimiter = 0, 9

    def __init__(self, seq_len: int | None = None, seed: int = 0) -> None:
        super().__init__(seq_len, seed)
        # A tenth of the baseline: by then nearly every recalled symbol is right.
        self.target = self.baseline / 10

    def sample(self, rng: np.random.Generator, n: int) -> Data:
        length = self.seq_len + 2 * self.symbols
        recall = rng.integers(1, 9, size=(n, self.symbols))
        codes = np.full((n, length), self.blank)
        codes[:, : self.symbols] = recall
        codes[:, self.seq_len + self.symbols - 1] = self.delimiter
        targets = np.full((n, length), self.blank)
        targets[:, -self.symbols :] = recall
        inputs = np.eye(self.input_size, dtype="float32")[codes]
        return Data(inputs, targets.astype(CLASS_DTYPE))

    loss = staticmethod(losses.softmax_cross_entropy)

    @property
    def baseline(self) -> float:
        return self.symbols * math.log(8) / (self.seq_len + 2 * self.symbols)

    def extra_metrics(self, data: Data, predictions: np.ndarray) -> dict[str, float]:
        guessed = np.argmax(predictions[:, -self.symbols :, :], axis=-1)
        right = guessed == data.targets[:, -self.symbols :]
        return {"recall_accuracy": float(np.mean(right))}


class Sine(Task):
    """Multi-step forecasting of noisy sinusoids.

    Each example is one sinusoid with amplitude U[0.5, 1.5], period U[8, 32] steps and a random
    phase, observed for ``seq_len`` steps with Gaussian noise (std 0.1). The model forecasts
    the next ``horizon`` noiseless values. The baseline forecasts 0, the signals' mean, and is
    scored on the held-out set.
    """

    name = "sine"
    defaults: ClassVar[dict[str, Any]] = {
        "seq_len": 50,
        "hidden": 32,
        "batch": 32,
        "lr": 1e-2,
        "steps": 2000,
    }
    metric_name = "mse"
    baseline_name = "forecasting 0, the mean"
    last_step = True
    has_plot = True
    input_size = 1
    horizon = 20
    output_size = horizon
    noise = 0.1
    target = 0.01

    def sample(self, rng: np.random.Generator, n: int) -> Data:
        amplitude = rng.uniform(0.5, 1.5, size=(n, 1))
        period = rng.uniform(8.0, 32.0, size=(n, 1))
        phase = rng.uniform(0.0, 2.0 * math.pi, size=(n, 1))
        t = np.arange(self.seq_len + self.horizon)
        clean = amplitude * np.sin(2.0 * math.pi * t / period + phase)
        observed = clean[:, : self.seq_len] + rng.normal(0.0, self.noise, (n, self.seq_len))
        return Data(
            observed[:, :, None].astype("float32"),
            clean[:, self.seq_len :].astype("float32"),
        )

    @property
    def baseline(self) -> float:
        return float(np.mean(self.test_set().targets ** 2))

    def plot(self, ax: Any, data: Data, predictions: np.ndarray) -> None:
        history = np.arange(self.seq_len)
        future = np.arange(self.seq_len, self.seq_len + self.horizon)
        for row in range(3):
            offset = 3.5 * row
            color = f"C{row}"
            ax.plot(history, data.inputs[row, :, 0] + offset, color=color, alpha=0.5)
            ax.plot(future, data.targets[row] + offset, color=color, linestyle="--")
            ax.plot(future, predictions[row] + offset, color=color, marker=".", linestyle="")
        ax.axvline(self.seq_len - 0.5, color="gray", linewidth=0.8)
        ax.set(
            xlabel="step",
            yticks=[],
            title="held-out: observed, truth (dashed), forecast (dots)",
        )


class Text(Task):
    """A character-level language model on Shakespeare's *Hamlet*, shipped in the package.

    Inputs are one-hot characters, targets the next character at every step. The last tenth
    of the text is held out. The metric is bits per character; the baseline is a model without
    memory: the training text's character frequencies, scored on the held-out text.
    """

    name = "text"
    defaults: ClassVar[dict[str, Any]] = {
        "seq_len": 100,
        "hidden": 128,
        "batch": 32,
        "lr": 1e-2,
        "steps": 1000,
    }
    metric_name = "bits per character"
    baseline_name = "character frequencies"
    last_step = False
    target = 2.0
    held_out = 0.1

    def __init__(self, seq_len: int | None = None, seed: int = 0) -> None:
        super().__init__(seq_len, seed)
        self.text = corpus()
        self.vocab = vocabulary(self.text)
        self.input_size = self.output_size = len(self.vocab)
        codes = self.encode(self.text)
        split = int(len(codes) * (1.0 - self.held_out))
        self.train_codes, self.test_codes = codes[:split], codes[split:]
        longest = len(self.test_codes) - 1  # at least one held-out window
        if self.seq_len > longest:
            raise ValueError(
                f"--seq-len {self.seq_len} is too long for the text task: its held-out text has "
                f"{len(self.test_codes)} characters; use --seq-len {longest} or less"
            )

    def encode(self, text: str) -> np.ndarray:
        """Character codes of ``text``; characters outside the vocabulary are an error."""
        index = {char: code for code, char in enumerate(self.vocab)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(
                f"characters {''.join(unknown)!r} are not in the text task's vocabulary "
                f"{''.join(self.vocab)!r}"
            )
        return np.array([index[char] for char in text], dtype=CLASS_DTYPE)

    def _windows(self, codes: np.ndarray, starts: np.ndarray) -> Data:
        spans = codes[starts[:, None] + np.arange(self.seq_len + 1)]
        inputs = np.eye(self.input_size, dtype="float32")[spans[:, :-1]]
        return Data(inputs, spans[:, 1:])

    def sample(self, rng: np.random.Generator, n: int) -> Data:
        starts = rng.integers(0, len(self.train_codes) - self.seq_len, size=n)
        return self._windows(self.train_codes, starts)

    def test_set(self) -> Data:
        """The held-out text cut into consecutive windows."""
        starts = np.arange(0, len(self.test_codes) - self.seq_len, self.seq_len)
        return self._windows(self.test_codes, starts)

    loss = staticmethod(losses.softmax_cross_entropy)

    def metric(self, mean_loss: float) -> float:
        return mean_loss / math.log(2)

    def showcase(self, model: Any, rng: np.random.Generator) -> dict[str, str]:
        return {"sample": PRIME + generate(model, self, PRIME, 300, rng=rng)}

    @property
    def baseline(self) -> float:
        counts = np.bincount(self.train_codes, minlength=self.input_size) + 1.0
        probabilities = counts / counts.sum()
        return float(-np.mean(np.log2(probabilities[self.test_set().targets])))


def corpus() -> str:
    """The text of the ``text`` task: Shakespeare's *Hamlet* (public domain, see data/README)."""
    return (importlib.resources.files("xplstm") / "data" / "hamlet.txt").read_text("utf-8")


def vocabulary(text: str) -> list[str]:
    """The characters of ``text``, sorted: code ``i`` stands for ``vocabulary(text)[i]``."""
    return sorted(set(text))


TASKS: dict[str, type[Task]] = {
    task.name: task for task in (Adding, AddingLengths, Copy, Sine, Text)
}


def get(name: str, seq_len: int | None = None, seed: int = 0) -> Task:
    """The task called ``name`` with this sequence length (its default when ``None``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](seq_len, seed)
