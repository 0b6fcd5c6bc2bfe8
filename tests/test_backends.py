"""The backend registry, the resolver, host copies, and the installed package layout."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import backends

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_registry_lists_every_backend_module():
    assert set(backends.known()) == {"numpy", "cupy", "torch", "jax", "dask", "array_api_strict"}
    assert "numpy" in backends.available()
    assert set(backends.available()).isdisjoint(backends.unavailable())
    assert set(backends.available()) | set(backends.unavailable()) == set(backends.known())


def test_missing_backends_say_why():
    for name, reason in backends.unavailable().items():
        assert reason.startswith(("not installed (pip install", "installed, but")), name
    if "cupy" in backends.unavailable():
        assert backends.unavailable()["cupy"].startswith(
            ("not installed", "installed, but no CUDA device found")
        )


def test_unavailable_backend_error_lists_alternatives():
    if not backends.unavailable():
        pytest.skip("every backend is available here")
    name = next(iter(backends.unavailable()))
    with pytest.raises(backends.BackendError, match=r"cannot run here: .*available here: "):
        backends.get(name)


def test_resolve_explicit_beats_environment(monkeypatch):
    monkeypatch.setenv("XPLSTM_BACKEND", "array_api_strict")
    assert xplstm.resolve("numpy").name == "numpy"


def test_resolve_environment_beats_arrays(monkeypatch):
    monkeypatch.setenv("XPLSTM_BACKEND", "array_api_strict")
    assert xplstm.resolve(None, np.zeros(3)).name == "array_api_strict"
    layer = xplstm.LSTM(2, 3, seed=0)
    assert layer.backend == "array_api_strict"


def test_resolve_arrays_beat_auto(monkeypatch):
    monkeypatch.delenv("XPLSTM_BACKEND", raising=False)
    import array_api_strict

    assert xplstm.resolve(None, None, array_api_strict.asarray([1.0])).name == "array_api_strict"
    weights = array_api_strict.zeros((5, 12), dtype=array_api_strict.float32)
    assert xplstm.LSTM(2, 3, weights=weights).backend == "array_api_strict"


def test_resolve_auto_prefers_cupy_with_a_gpu(monkeypatch):
    monkeypatch.delenv("XPLSTM_BACKEND", raising=False)
    expected = "cupy" if "cupy" in backends.available() else "numpy"
    assert xplstm.resolve().name == expected
    assert xplstm.resolve("auto").name == expected


def test_resolve_refuses_mixed_arrays(monkeypatch):
    monkeypatch.delenv("XPLSTM_BACKEND", raising=False)
    import array_api_strict

    with pytest.raises(backends.BackendError, match="mixed: array_api_strict, numpy"):
        xplstm.resolve(None, np.zeros(1), array_api_strict.asarray([1.0]))


def test_environment_variable_with_unknown_name(monkeypatch):
    monkeypatch.setenv("XPLSTM_BACKEND", "tensorflow")
    with pytest.raises(backends.BackendError, match="unknown backend 'tensorflow'"):
        xplstm.LSTM(2, 3)


def test_to_numpy_and_back(target):
    host = np.arange(12.0).reshape(3, 4)
    array = target.asarray(host)
    assert backends.backend_of(array).name == target.backend
    copied = xplstm.to_numpy(array)
    assert isinstance(copied, np.ndarray)
    assert_close(copied, host, like=host, level="exact")


def test_layer_moves_between_backends(target):
    layer = xplstm.LSTM(3, 4, backend="numpy", dtype="float64", seed=1)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    expected = layer.forward(x)[0]
    layer.to(target.backend, device=target.device)
    assert layer.backend == target.backend and layer.device == target.device
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward"):
        layer.backward(None)  # the cache does not survive a move
    assert_close(layer(target.asarray(x))[0], expected, like=layer, level="ulps")
    assert "LSTM(input_size=3, hidden_size=4, backend=" in repr(layer)


def test_generic_fallback_serves_unknown_array_libraries(monkeypatch):
    """A library with no backend module still works through its __array_namespace__."""
    import array_api_strict

    from xplstm.backends._generic import GenericBackend

    generic = GenericBackend(array_api_strict)
    monkeypatch.setattr(backends, "_BY_TYPE", {})
    only_numpy = {"numpy": backends.get("numpy")}
    monkeypatch.setattr(backends, "known", lambda: only_numpy)
    x = array_api_strict.asarray(np.ones((2, 3, 2)))
    assert backends.backend_of(x).name == generic.name == "array_api_strict"
    layer = xplstm.LSTM(2, 3, weights=array_api_strict.zeros((5, 12)), dtype="float64")
    y, _, _ = layer.forward(x)
    assert xplstm.to_numpy(y).shape == (2, 3, 3)


def test_detection_never_imports_unused_libraries():
    """Using xplstm with NumPy imports neither torch, jax, dask, cupy nor array_api_strict."""
    code = (
        "import sys, numpy as np, xplstm\n"
        "layer = xplstm.LSTM(2, 3, backend='numpy')\n"
        "y, _, _ = layer.forward(np.zeros((1, 2, 2), 'float32'))\n"
        "layer.backward(y); xplstm.to_numpy(y)\n"
        "print(sorted(m for m in ('torch', 'jax', 'dask', 'cupy', 'array_api_strict')"
        " if m in sys.modules))\n"
    )
    env = {"XPLSTM_BACKEND": "numpy", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


def test_editable_and_regular_installs_expose_backends(tmp_path):
    """`pip install -e .` maps xplstm.backends to backends/; `pip install .` installs it whole."""
    assert pathlib.Path(backends.__file__).resolve().parent in (
        ROOT / "backends",
        pathlib.Path(xplstm.__file__).resolve().parent / "backends",
    )
    source = tmp_path / "source"  # a copy, so the build leaves the checkout clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info"))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "import numpy as np, xplstm, xplstm.backends as b\n"
        f"assert xplstm.__file__.startswith({str(target)!r}), xplstm.__file__\n"
        "print(sorted(b.known()))\n"
        "y, _, _ = xplstm.LSTM(2, 3, backend='numpy')(np.zeros((1, 4, 2), 'float32'))\n"
        "print(y.shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(target), "PATH": "", "XPLSTM_BACKEND": ""},
        cwd=tmp_path,
    )
    expected = "['array_api_strict', 'cupy', 'dask', 'jax', 'numpy', 'torch']\n(1, 4, 3)\n"
    assert out.stdout == expected


def test_given_parameters_are_copied_not_shared(target):
    host = np.zeros((7, 16), "float32")
    given = target.asarray(host)
    layer = target.lstm(3, 4, weights=given)
    assert layer.weights.values is not given
    host[...] = 1.0  # writing into the caller's NumPy array leaves the layer alone
    assert float(np.abs(xplstm.to_numpy(layer.weights.values)).max()) == 0.0


def test_generic_fallback_copies_through_dlpack():
    """An array that only speaks DLPack still reaches the host; one that speaks nothing fails."""
    from xplstm.backends._generic import GenericBackend

    class DLPackOnly:
        def __init__(self, data):
            self._data = data

        def __dlpack__(self, **kwargs):
            return self._data.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._data.__dlpack_device__()

    generic = GenericBackend(np)
    expected = np.arange(3.0)
    assert_close(generic.to_numpy(DLPackOnly(expected)), expected, like=expected, level="exact")
    with pytest.raises(TypeError, match="supports neither DLPack on the CPU nor NumPy"):
        generic.to_numpy(object())


def test_jax_without_64_bit_floats_refuses_float64():
    """JAX silently stores float64 as float32 unless x64 is on: xplstm says so instead."""
    if "jax" not in backends.available():
        pytest.skip(f"jax: {backends.unavailable()['jax']}")
    code = (
        "import xplstm\n"
        "try:\n"
        "    xplstm.LSTM(2, 3, backend='jax', dtype='float64')\n"
        "except xplstm.backends.BackendError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "64-bit floats are off; enable them with jax.config.update" in out.stdout
