"""The tasks' data: shapes, the rules each task states, held-out sets and baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import tasks
from xplstm.sampling import generate


def test_get_refuses_unknown_tasks_and_bad_lengths() -> None:
    with pytest.raises(
        ValueError, match=r"unknown task 'add'; choose one of adding, adding-lengths, copy"
    ):
        tasks.get("add")
    with pytest.raises(ValueError, match=r"--seq-len must be an int of at least 2, got 1"):
        tasks.get("adding", seq_len=1)
    with pytest.raises(ValueError, match=r"--seq-len must be at least 4 for adding-lengths, got 3"):
        tasks.get("adding-lengths", seq_len=3)


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_same_seed_same_data_and_held_out_apart_from_training(name: str) -> None:
    task = tasks.get(name, seq_len=12, seed=3)
    again = tasks.get(name, seq_len=12, seed=3)
    a = task.sample(np.random.default_rng([3, 0]), 5)
    b = again.sample(np.random.default_rng([3, 0]), 5)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    test = task.test_set()
    np.testing.assert_array_equal(test.inputs, again.test_set().inputs)
    assert a.inputs.dtype == np.float32 and a.inputs.shape[2] == task.input_size
    assert not any(np.array_equal(a.inputs[0], row) for row in test.inputs)


def test_adding_marks_one_value_in_each_half_and_targets_their_sum() -> None:
    task = tasks.get("adding", seq_len=10)
    data = task.sample(np.random.default_rng(0), 200)
    assert data.inputs.shape == (200, 10, 2) and data.targets.shape == (200, 1)
    values, markers = data.inputs[..., 0], data.inputs[..., 1]
    assert np.all((values >= 0.0) & (values < 1.0))
    np.testing.assert_array_equal(markers[:, :5].sum(axis=1), 1.0)
    np.testing.assert_array_equal(markers[:, 5:].sum(axis=1), 1.0)
    np.testing.assert_allclose(data.targets[:, 0], (values * markers).sum(axis=1), rtol=1e-6)


def test_adding_lengths_marks_each_half_of_each_row_and_pads_with_zeros() -> None:
    task = tasks.get("adding-lengths", seq_len=12)
    data = task.sample(np.random.default_rng(0), 300)
    lengths = data.lengths
    assert lengths.min() == 6 and lengths.max() == 12 and data.inputs.shape == (300, 12, 2)
    values, markers = data.inputs[..., 0], data.inputs[..., 1]
    steps = np.arange(12)[None, :]
    assert not np.any(data.inputs[steps >= lengths[:, None]]), "zeros past each length"
    first_half = steps < (lengths // 2)[:, None]
    np.testing.assert_array_equal((markers * first_half).sum(axis=1), 1.0)
    np.testing.assert_array_equal((markers * ~first_half).sum(axis=1), 1.0)
    np.testing.assert_allclose(data.targets[:, 0], (values * markers).sum(axis=1), rtol=1e-6)
    assert data.rows(5, 9).lengths.tolist() == lengths[5:9].tolist()


def test_last_step_keeps_each_rows_last_valid_step(target) -> None:
    import xplstm

    y = np.random.default_rng(1).standard_normal((3, 4, 2))
    last = xplstm.LastStep()
    kept = last(target.asarray(y), lengths=[2, 4, 1])
    np.testing.assert_array_equal(xplstm.to_numpy(kept), y[[0, 1, 2], [1, 3, 0]])
    d = xplstm.to_numpy(last.backward(target.asarray(np.ones((3, 2)))))
    expected = np.zeros((3, 4, 2))
    expected[[0, 1, 2], [1, 3, 0]] = 1.0
    np.testing.assert_array_equal(d, expected)
    with pytest.raises(ValueError, match=r"lengths must be in 1..seq = 1..4; row 1 has length 5"):
        last(target.asarray(y), lengths=[2, 5, 1])


def test_adding_baseline_is_the_variance_of_the_sum() -> None:
    # Predicting 1 always scores Var(U1 + U2) = 2/12 (Arjovsky et al. 2016: about 0.167).
    baseline = tasks.get("adding", seq_len=100).baseline
    assert baseline == pytest.approx(1 / 6, abs=0.015)


def test_copy_layout_and_memoryless_baseline() -> None:
    blanks = 15
    task = tasks.get("copy", seq_len=blanks)
    data = task.sample(np.random.default_rng(0), 50)
    length = blanks + 20
    assert data.inputs.shape == (50, length, 10) and data.targets.shape == (50, length)
    codes = data.inputs.argmax(axis=-1)
    np.testing.assert_array_equal(data.inputs.sum(axis=-1), 1.0)
    assert np.all((codes[:, :10] >= 1) & (codes[:, :10] <= 8))
    np.testing.assert_array_equal(codes[:, 10 : blanks + 9], 0)
    np.testing.assert_array_equal(codes[:, blanks + 9], 9)
    np.testing.assert_array_equal(codes[:, blanks + 10 :], 0)
    np.testing.assert_array_equal(data.targets[:, : blanks + 10], 0)
    np.testing.assert_array_equal(data.targets[:, -10:], codes[:, :10])
    # The memoryless strategy: certain of blanks, then uniform over symbols 1..8.
    p = np.zeros((length, 9))
    p[: blanks + 10, 0] = 1.0
    p[blanks + 10 :, 1:] = 1 / 8
    cross_entropy = -np.mean(np.log(p[np.arange(length), data.targets]))
    assert task.baseline == pytest.approx(cross_entropy, rel=1e-12)
    assert task.baseline == pytest.approx(10 * math.log(8) / (blanks + 20))


def test_copy_recall_accuracy_reads_the_last_ten_steps() -> None:
    task = tasks.get("copy", seq_len=5)
    data = task.sample(np.random.default_rng(0), 4)
    perfect = np.eye(9)[data.targets] * 10.0
    assert task.extra_metrics(data, perfect) == {"recall_accuracy": 1.0}
    blanks_only = np.eye(9)[np.zeros_like(data.targets)]
    assert task.extra_metrics(data, blanks_only) == {"recall_accuracy": 0.0}


def test_sine_forecasts_the_clean_continuation() -> None:
    task = tasks.get("sine", seq_len=30)
    data = task.sample(np.random.default_rng(0), 300)
    assert data.inputs.shape == (300, 30, 1) and data.targets.shape == (300, 20)
    # A sinusoid obeys s[t+1] + s[t-1] = k s[t] with k = 2 cos(2 pi / period): fit k per row on
    # the targets, which must fit exactly (no noise), then check the inputs around it.
    s = data.targets.astype("float64")
    k = np.sum((s[:, 2:] + s[:, :-2]) * s[:, 1:-1], axis=1) / np.sum(s[:, 1:-1] ** 2, axis=1)
    clean = s[:, 2:] + s[:, :-2] - k[:, None] * s[:, 1:-1]
    assert np.max(np.abs(clean)) < 1e-5
    assert np.all((k > 2 * math.cos(2 * math.pi / 8)) & (k < 2 * math.cos(2 * math.pi / 32)))
    # The observed history follows the same sinusoid, with noise of the stated std.
    x = np.concatenate([data.inputs[..., 0], s[:, :1]], axis=1)
    residual = (x[:, 2:] + x[:, :-2] - k[:, None] * x[:, 1:-1]) / np.sqrt(2 + k[:, None] ** 2)
    assert np.std(residual[:, :-2]) == pytest.approx(task.noise, rel=0.1)
    # Forecasting 0 scores the mean power: E[A^2] / 2 = (1 + 1/12) / 2 for A ~ U[0.5, 1.5].
    assert task.baseline == pytest.approx(13 / 24, rel=0.05)


def test_text_windows_predict_the_next_character() -> None:
    task = tasks.get("text", seq_len=16)
    assert task.vocab == sorted(set(task.text)) and task.input_size == len(task.vocab)
    assert 100_000 < len(task.text) < 400_000
    data = task.sample(np.random.default_rng(0), 8)
    assert data.inputs.shape == (8, 16, task.input_size) and data.targets.dtype == np.int32
    np.testing.assert_array_equal(data.inputs[:, 1:, :].argmax(axis=-1), data.targets[:, :-1])
    text = "".join(task.vocab[c] for c in data.targets[0])
    assert text in task.text
    held_out = task.test_set()
    assert len(held_out) == (len(task.test_codes) - 17) // 16 + 1
    start = len(task.train_codes)
    assert "".join(task.vocab[c] for c in held_out.targets[0]) == task.text[start + 1 : start + 17]


def test_text_baseline_is_the_unigram_cross_entropy() -> None:
    task = tasks.get("text", seq_len=50)
    # Character frequencies of English with capitals, newlines and punctuation: 4 to 5 bits.
    assert 4.0 < task.baseline < 5.0
    with pytest.raises(ValueError, match=r"characters '\\x00' are not in the text task"):
        task.encode("to be\x00")


def test_generate_samples_from_the_vocabulary_and_checks_the_model() -> None:
    task = tasks.get("text", seq_len=8)
    model = xplstm.Sequential(
        xplstm.LSTM(task.input_size, 8, backend="numpy", seed=0),
        xplstm.Linear(8, task.output_size, backend="numpy", seed=1),
    )
    first = generate(model, task, "HAMLET:\n", 40, rng=np.random.default_rng(5))
    again = generate(model, task, "HAMLET:\n", 40, rng=np.random.default_rng(5))
    assert first == again and len(first) == 40 and set(first) <= set(task.vocab)
    other = xplstm.Sequential(
        xplstm.LSTM(2, 8, backend="numpy", seed=0), xplstm.Linear(8, 1, backend="numpy")
    )
    with pytest.raises(ValueError, match=r"reads 2 and writes 1 classes.*not trained on"):
        generate(other, task, "HAMLET:\n", 5)
    for temperature in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"temperature must be a positive finite number"):
            generate(model, task, "HAMLET:\n", 5, temperature=temperature)
    with pytest.raises(ValueError, match=r"length must be a positive int, got -3"):
        generate(model, task, "HAMLET:\n", -3)


class _Recorder:
    """A stand-in for ``numpy.random.Generator`` that keeps each distribution it is asked to
    sample from and always picks class 0."""

    def __init__(self) -> None:
        self.p: list[np.ndarray] = []

    def choice(self, n: int, p: np.ndarray) -> int:
        self.p.append(np.asarray(p))
        return 0


@pytest.mark.reference
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_generate_samples_from_softmax_of_the_logits_over_the_temperature(temperature) -> None:
    """Each character is drawn from softmax(logits / temperature) (torch's softmax here), the
    logits being the model's output after the prime, then after each character drawn."""
    torch = pytest.importorskip("torch")
    task = tasks.get("text", seq_len=8)
    model = xplstm.Sequential(
        xplstm.LSTM(task.input_size, 8, backend="numpy", dtype="float64", seed=0),
        xplstm.Linear(8, task.output_size, backend="numpy", dtype="float64", seed=1),
    )
    recorder = _Recorder()
    generate(model, task, "HAMLET:\n", 2, temperature=temperature, rng=recorder)
    eye = np.eye(task.input_size)
    for step, text in enumerate(["HAMLET:\n", "HAMLET:\n" + task.vocab[0]]):
        y, _, _ = model.layers[0](eye[task.encode(text)][None])
        logits = torch.from_numpy(model.layers[-1](y[:, -1, :])[0])
        expected = torch.softmax(logits / temperature, dim=0).numpy()
        assert_close(recorder.p[step], expected, like=expected, name=f"p at step {step}")
