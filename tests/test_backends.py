"""The backend registry, the resolver, host copies, and the installed package layout."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import xplstm
from tests.support import assert_close, random_problem, torch_reference
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


def test_unavailable_backend_error_lists_why_each_missing_one_is_missing(monkeypatch):
    """The README: the error lists what is available here and why each missing one is missing
    (two backends are made unavailable, so this runs whatever is installed)."""
    reasons = {"jax": "not installed (pip install 'xplstm[jax]')", "dask": "broken, for a test"}
    real = backends.unavailable_reason
    monkeypatch.setattr(backends, "unavailable_reason", lambda n: reasons.get(n) or real(n))
    with pytest.raises(backends.BackendError) as raised:
        xplstm.LSTM(2, 3, backend="dask")
    message = str(raised.value)
    assert message.startswith("backend 'dask' cannot run here: broken, for a test; available here:")
    for name, reason in backends.unavailable().items():
        assert message.count(reason) == 1, name  # the one asked for: said once, not twice
        if name != "dask":
            assert f"{name}: {reason}" in message.split("(missing: ")[1], name
    assert "numpy" in message.split("available here: ")[1].split(" (missing")[0]
    with pytest.raises(backends.BackendError, match=r"unknown backend 'nope'; available here: "):
        backends.get("nope")


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


def test_inputs_built_with_the_layer_s_namespace(target):
    """The README's recipe for inputs on any backend: ``layer.xp.asarray(host, device=
    layer.device)`` (and ``model.xp``/``model.device`` for a Sequential) gives arrays the layer
    takes, with the host's values."""
    host = np.random.default_rng(1).standard_normal((2, 3, 2)).astype("float32")
    lstm = target.lstm(2, 4, seed=0)
    model = xplstm.Sequential(lstm, xplstm.LastStep())
    for owner, run in ((lstm, lambda x: lstm(x)[0][:, -1, :]), (model, model)):
        x = owner.xp.asarray(host, device=owner.device)
        assert backends.backend_of(x).name == target.backend
        assert_close(x, host, like=owner, level="exact")
        last = xplstm.to_numpy(run(x))
        assert last.shape == (2, 4) and np.all(np.isfinite(last))


def test_layer_moves_between_backends(target):
    layer = xplstm.LSTM(3, 4, backend="numpy", dtype="float64", seed=1, fast_path=False)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    expected = layer.forward(x)[0]  # NumPy's written-once path: the reference for every target
    layer.to(target.backend, device=target.device)
    layer.fast_path = True
    assert layer.backend == target.backend and layer.device == target.device
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward"):
        layer.backward(None)  # the cache does not survive a move
    assert_close(layer(target.asarray(x))[0], expected, like=layer, level="ulps")
    assert "LSTM(input_size=3, hidden_size=4, backend=" in repr(layer)


@pytest.mark.reference
def test_generic_fallback_serves_unknown_array_libraries(monkeypatch):
    """A library with no backend module still works through its __array_namespace__: forward
    and backward agree with torch.nn.LSTM."""
    pytest.importorskip("torch", reason="torch.nn.LSTM is the reference")
    import array_api_strict

    from xplstm.backends._generic import GenericBackend

    generic = GenericBackend(array_api_strict)
    monkeypatch.setattr(backends, "_BY_TYPE", {})
    only_numpy = {"numpy": backends.get("numpy")}
    monkeypatch.setattr(backends, "known", lambda: only_numpy)
    p = random_problem(2, 3, 2, 3, seed=4)
    expected = torch_reference(p)
    arrays = {key: array_api_strict.asarray(value) for key, value in p.items()}
    assert backends.backend_of(arrays["x"]).name == generic.name == "array_api_strict"
    layer = xplstm.LSTM(2, 3, weights=arrays["weights"], bias=arrays["bias"], dtype="float64")
    assert isinstance(layer._backend, GenericBackend)
    actual = layer.forward(arrays["x"], arrays["h0"], arrays["c0"])
    actual += layer.backward(arrays["dy"], arrays["dh_n"], arrays["dc_n"])
    actual += (layer.weights.deltas, layer.bias.deltas)
    names = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "d_weights", "d_bias")
    for name, value in zip(names, actual, strict=True):
        assert_close(value, expected[name], like=layer, name=name)


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


def fake_cupy(monkeypatch: pytest.MonkeyPatch, device_count) -> None:
    """Put a stand-in ``cupy`` in ``sys.modules`` whose CUDA runtime reports ``device_count``
    (a number, or an exception to raise), and forget what was known about CuPy until the end."""
    import types

    def count() -> int:
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    runtime = types.SimpleNamespace(getDeviceCount=count)
    module = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime), __version__="0")
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.delenv("XPLSTM_BACKEND", raising=False)
    backends.unavailable_reason.cache_clear()


@pytest.fixture
def forget_cupy():
    yield
    backends.unavailable_reason.cache_clear()


@pytest.mark.parametrize(
    ("device_count", "reason", "auto"),
    [
        (1, None, "cupy"),
        (0, "installed, but no CUDA device found", "numpy"),
        (
            RuntimeError("no CUDA driver"),
            "installed, but no CUDA device found (no CUDA driver)",
            "numpy",
        ),
    ],
    ids=["one-gpu", "no-gpu", "no-driver"],
)
def test_auto_resolution_picks_cupy_exactly_when_it_sees_a_gpu(
    monkeypatch, forget_cupy, device_count, reason, auto
):
    """CuPy's availability and the auto rule, with CuPy faked: installed with a GPU it is the
    default, installed without one it says why not and NumPy is chosen."""
    fake_cupy(monkeypatch, device_count)
    assert backends.unavailable_reason("cupy") == reason
    assert xplstm.resolve().name == auto and xplstm.resolve("auto").name == auto
    assert ("cupy" in backends.available()) == (reason is None)


def test_backend_option_and_environment_variable_narrow_the_matrix():
    """The README: ``XPLSTM_TEST_BACKENDS=...`` (the default of ``pytest --backend ...``, which
    this very run may use) narrows the targets, by names of backends or of targets; an unknown
    name is a usage error."""

    def collected(*options: str, env: str | None = None) -> list[str]:
        environment = {k: v for k, v in os.environ.items() if k != "XPLSTM_TEST_BACKENDS"}
        if env is not None:
            environment["XPLSTM_TEST_BACKENDS"] = env
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
             "tests/test_backends.py::test_to_numpy_and_back", *options],
            capture_output=True, text=True, cwd=ROOT, env=environment,
        )  # fmt: skip
        return [line.split("[")[1].rstrip("]") for line in done.stdout.splitlines() if "[" in line]

    assert collected(env="numpy,torch-cuda") == ["numpy", "torch-cuda"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--backend", "nunpy",
         "tests/test_backends.py::test_to_numpy_and_back"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 4
    assert done.stderr.startswith("ERROR: --backend: unknown ['nunpy']; choose from ['numpy',")
