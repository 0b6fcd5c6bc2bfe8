"""Run every test that takes ``target`` once per backend and device that can run here.

Narrow the matrix with ``pytest --backend numpy,torch`` or ``XPLSTM_TEST_BACKENDS=numpy,torch``
(names of backends, or of targets such as ``torch-cuda``). A target that cannot run here is
reported as skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.support import CANDIDATES, Target, numpy_loops, paths_of, skip_reason
from xplstm import backends

ENV_VAR = "XPLSTM_TEST_BACKENDS"

#: Modules --doctest-modules must not import: ``python -m xplstm`` runs the command line, and
#: a module whose optional dependency is missing here (its examples cannot run).
_OPTIONAL = {"src/xplstm/onnx.py": "onnx", "src/xplstm/distributed.py": "distributed"}
collect_ignore = ["src/xplstm/__main__.py"] + [
    path for path, module in _OPTIONAL.items() if importlib.util.find_spec(module) is None
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        default=os.environ.get(ENV_VAR, ""),
        help=f"comma-separated backends or targets to test (default: all; env {ENV_VAR})",
    )


def pytest_configure(config: pytest.Config) -> None:
    _selected(config)  # an unknown name is a usage error now, not a traceback per test file
    # JAX computes in float32 unless told otherwise; the float64 tests need it on.
    # On GPUs, float32 matrix products may use TF32: the agreement tests demand full precision.
    # Every problem in the suite is tiny: torch's extra threads only wait for the other jobs on
    # a small machine (25x slower on 2 busy cores, measured), so torch gets one.
    if backends.unavailable_reason("torch") is None:
        import torch

        torch.set_num_threads(1)
    if backends.unavailable_reason("jax") is None:
        import jax

        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_default_matmul_precision", "highest")


def _selected(config: pytest.Config) -> list[tuple[str, str | None, str]]:
    wanted = {w.strip() for w in config.getoption("--backend").split(",") if w.strip()}
    unknown = wanted - {c[0] for c in CANDIDATES} - {c[2] for c in CANDIDATES}
    if unknown:
        raise pytest.UsageError(
            f"--backend: unknown {sorted(unknown)}; choose from {[c[2] for c in CANDIDATES]}"
        )
    return [c for c in CANDIDATES if not wanted or c[0] in wanted or c[2] in wanted]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``target``: every selected target. ``target`` with ``path``: each target once per route
    through the sequence it has, ``"fast"`` (where its backend has a fast path) and
    ``"written-once"``, so that a reference test names the code that is wrong. ``target`` with
    ``numpy_loop``: the numpy target once per NumPy loop, every other target once."""
    if "target" not in metafunc.fixturenames:
        return
    with_path = "path" in metafunc.fixturenames
    with_loop = "numpy_loop" in metafunc.fixturenames
    params = []
    for backend, device, test_id in _selected(metafunc.config):
        reason = skip_reason(backend, device)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        value = None if reason else Target(backend, device, test_id)
        if with_loop:
            for loop in numpy_loops() if backend == "numpy" else [None]:
                loop_id = f"{test_id}-{loop}" if loop else test_id
                params.append(pytest.param(value, loop, id=loop_id, marks=marks))
        elif not with_path:
            params.append(pytest.param(value, id=test_id, marks=marks))
        else:
            for path in paths_of(backend) if value else ["written-once"]:
                params.append(pytest.param(value, path, id=f"{test_id}-{path}", marks=marks))
    names = ("target", "path") if with_path else ("target", "numpy_loop") if with_loop else "target"
    metafunc.parametrize(names, params, indirect=["numpy_loop"] if with_loop else False)
