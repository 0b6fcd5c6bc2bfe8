"""The wheel: built from a copy of the sources, it carries the package data, without warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the build reads: pyproject.toml maps src/xplstm and backends/ into the package.
SOURCES = ("pyproject.toml", "README.md", "src", "backends")


def test_the_wheel_carries_the_text_data_and_builds_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="the wheel is built offline with setuptools")
    source = tmp_path / "source"  # a copy, so that the build writes nothing into the checkout
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps"]
    build = subprocess.run(
        [*command, "--no-build-isolation", "--no-index", "-w", str(wheels)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    # setuptools warns about a misdeclared package (e.g. "Package 'xplstm.data' is absent from
    # the `packages` configuration") on every install; none may appear.
    output = build.stdout + build.stderr
    assert "Warning" not in output and "!!" not in output, output
    (wheel,) = wheels.glob("xplstm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = sorted(p.name for p in (ROOT / "src" / "xplstm" / "data").iterdir())
    assert "hamlet.txt" in data
    for name in data:
        assert f"xplstm/data/{name}" in names, name
    assert {"xplstm/__init__.py", "xplstm/onnx.py", "xplstm/backends/numpy.py"} <= names
