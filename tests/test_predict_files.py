"""``xplstm predict`` in this process: x with each row's lengths or a mask from .npy and .npz
files, --dtype, outputs by suffix, and a message for every file it cannot read."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import checkpoint, cli

ROWS, SEQ, FEATURES = 7, 6, 3


def model(dtype: str = "float32") -> xplstm.Sequential:
    return xplstm.Sequential(
        xplstm.LSTM(FEATURES, 5, dtype=dtype, seed=0),
        xplstm.LastStep(),
        xplstm.Linear(5, 2, dtype=dtype, seed=1),
    )


def inputs(dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x with garbage past each row's length (so ignoring lengths changes the outputs)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, SEQ, FEATURES)).astype(dtype)
    lengths = np.array([6, 1, 3, 6, 2, 5, 4])
    mask = rng.random((ROWS, SEQ)) < 0.7
    return x, lengths, mask


def predict(tmp_path: Path, *argv: str, output: str = "y.npy") -> Path:
    files = ["--model", str(tmp_path / "m.npz"), "--output", str(tmp_path / output)]
    assert cli.main(["predict", *files, "--batch-size", "3", *argv]) == 0
    return tmp_path / output


@pytest.fixture
def saved(tmp_path: Path) -> xplstm.Sequential:
    built = model()
    checkpoint.save(tmp_path / "m.npz", built)
    return built


def test_lengths_and_masks_from_an_npz_or_from_flags(tmp_path, saved):
    x, lengths, mask = inputs()
    np.savez(tmp_path / "x_lengths.npz", x=x, lengths=lengths)
    np.savez(tmp_path / "x_mask.npz", x=x, mask=mask)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "lengths.npy", lengths)
    np.save(tmp_path / "mask.npy", mask)
    with_lengths = saved(x, lengths=lengths)
    with_mask = saved(x, mask=mask)
    plain = ["--input", str(tmp_path / "x.npy")]
    for argv, expected in [
        (["--input", str(tmp_path / "x_lengths.npz")], with_lengths),
        ([*plain, "--lengths", str(tmp_path / "lengths.npy")], with_lengths),
        (["--input", str(tmp_path / "x_mask.npz")], with_mask),
        ([*plain, "--mask", str(tmp_path / "mask.npy")], with_mask),
        (plain, saved(x)),
    ]:
        assert_close(np.load(predict(tmp_path, *argv)), expected, like=x, level="ulps")
    assert np.abs(xplstm.to_numpy(with_lengths) - xplstm.to_numpy(saved(x))).max() > 1e-2


def test_outputs_go_to_npy_or_npz_by_suffix(tmp_path, saved):
    x, lengths, _ = inputs()
    np.savez(tmp_path / "x.npz", x=x, lengths=lengths)
    written = predict(tmp_path, "--input", str(tmp_path / "x.npz"), output="y.npz")
    with np.load(written, allow_pickle=False) as archive:
        assert archive.files == ["y"]
        assert_close(archive["y"], saved(x, lengths=lengths), like=x, level="ulps")
    assert not Path(f"{written}.partial").exists()


def test_dtype_converts_the_model_and_the_input(tmp_path, saved):
    x, lengths, _ = inputs(dtype="float64")
    np.savez(tmp_path / "x.npz", x=x, lengths=lengths)
    y = np.load(predict(tmp_path, "--input", str(tmp_path / "x.npz"), "--dtype", "float64"))
    assert y.dtype == np.float64
    expected = checkpoint.load(tmp_path / "m.npz", dtype="float64")(x, lengths=lengths)
    assert_close(y, expected, like=y, level="ulps")


def test_a_memory_mapped_input_on_torch_warns_nothing(tmp_path, saved):
    pytest.importorskip("torch")
    x, _, _ = inputs()
    np.save(tmp_path / "x.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = np.load(predict(tmp_path, "--input", str(tmp_path / "x.npy"), "--backend", "torch"))
    assert_close(y, saved(x), like=y, level="reference")


def bad_files(tmp_path: Path) -> list[tuple[list[str], str]]:
    """Files predict must refuse, with (arguments, what its message says)."""
    x, lengths, mask = inputs()
    (tmp_path / "x.csv").write_text("1,2,3\n")
    (tmp_path / "fake.npy").write_text("1,2,3\n")
    np.savez(tmp_path / "no_x.npz", inputs=x)
    np.savez(tmp_path / "both.npz", x=x, lengths=lengths, mask=mask)
    np.savez(tmp_path / "short.npz", x=x, lengths=lengths[:3])
    np.savez(tmp_path / "long.npz", x=x, lengths=lengths + 1)
    np.savez(tmp_path / "int_mask.npz", x=x, mask=mask.astype(int))
    np.save(tmp_path / "objects.npy", np.array([x, "text"], dtype=object), allow_pickle=True)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "lengths.npy", lengths)
    accepted = "predict reads an .npy of x (rows, seq, features), or an .npz holding x"
    return [
        (["--input", str(tmp_path / "x.csv")], f"x.csv: {accepted}"),
        (["--input", str(tmp_path / "fake.npy")], "fake.npy is not an .npy file (it starts with"),
        (["--input", str(tmp_path / "no_x.npz")], "no_x.npz holds arrays ['inputs']; " + accepted),
        (["--input", str(tmp_path / "both.npz")], "give lengths (right padding"),
        (["--input", str(tmp_path / "short.npz")], "lengths must have one length per row: 7, got"),
        (["--input", str(tmp_path / "long.npz")], "lengths must be in 1..seq = 1..6; row 0 has"),
        (["--input", str(tmp_path / "int_mask.npz")], "mask must be booleans of shape (rows, seq)"),
        (["--input", str(tmp_path / "objects.npy")], "objects.npy holds Python objects"),
        (
            ["--input", str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "x.csv")],
            "--lengths must name an .npy file",
        ),
    ]


def test_files_it_cannot_read_are_refused_with_what_it_accepts(tmp_path, saved, capsys):
    for argv, message in bad_files(tmp_path):
        with pytest.raises(SystemExit) as exit_:
            predict(tmp_path, *argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "y.npy").exists()
    np.save(tmp_path / "x.npy", inputs()[0])
    with pytest.raises(SystemExit):
        predict(tmp_path, "--input", str(tmp_path / "x.npy"), output="y.csv")
    assert "y.csv: predict writes .npy (the outputs alone) or .npz" in capsys.readouterr().err
