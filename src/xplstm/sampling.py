"""Text from a trained character model, sampled on the host: a seed gives the same text on
every backend. Used by ``xplstm generate`` and by the text task's showcase."""

from __future__ import annotations

from typing import Any

import numpy as np

from xplstm import backends, checks
from xplstm.resolver import to_numpy

#: What text samples start from: a speaker's name, as in the play.
PRIME = "HAMLET:\n"


def generate(
    model: Any,
    task: Any,
    prime: str,
    length: int,
    temperature: float = 0.8,
    rng: np.random.Generator | None = None,
) -> str:
    """``length`` characters sampled from ``model`` (an LSTM then a Linear) after ``prime``.

    ``task`` is the text task the model was trained on (its vocabulary and encoding). Lower
    ``temperature`` samples more conservatively; sampling happens on the host with ``rng``.
    """
    if not prime:
        raise ValueError(f"prime must be at least one character, e.g. {PRIME!r}")
    checks.positive("temperature", temperature)
    checks.positive_int("length", length)
    rng = np.random.default_rng() if rng is None else rng
    lstm, head = model.layers[0], model.layers[-1]
    if (lstm.input_size, head.out_features) != (task.input_size, task.output_size):
        raise ValueError(
            f"this model reads {lstm.input_size} and writes {head.out_features} classes, "
            f"but the text task has {task.input_size} characters: it was not trained on "
            "the text task (train one with `xplstm train --task text`)"
        )
    if lstm.bidirectional:
        raise ValueError(
            "a bidirectional model cannot generate text: its reverse direction reads "
            "characters not yet written; train one without --bidirectional"
        )
    lstm.eval()
    backend = backends.backend_of(lstm.parameters()[0].values)
    eye = np.eye(task.input_size, dtype="float32")
    codes, state = task.encode(prime), (None, None)
    sampled = []
    for _ in range(length):
        x = lstm.xp.astype(backend.from_numpy(eye[codes][None], lstm.device), lstm.dtype)
        y, *state = lstm.forward(x, *state)
        logits = to_numpy(head.forward(y[:, -1, :]))[0].astype("float64") / temperature
        p = np.exp(logits - logits.max())
        code = int(rng.choice(task.input_size, p=p / p.sum()))
        sampled.append(task.vocab[code])
        codes = np.array([code])
    return "".join(sampled)
