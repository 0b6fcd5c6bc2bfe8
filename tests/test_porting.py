"""docs/porting.md, run: every Python block of it, in order, in one namespace, in a fresh
folder. Its asserts compare each step with torch, Keras 3 (on JAX) and ONNX Runtime."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "porting.md"

for module, why in [
    ("torch", "the torch walkthrough"),
    ("onnx", "the ONNX export: pip install '.[onnx]'"),
    ("onnxruntime", "running the exported graphs"),
]:
    pytest.importorskip(module, reason=f"{why}; pip install '.[test]'")


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_porting_guide_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "jax"))
    pytest.importorskip("keras", reason="the Keras walkthrough; pip install '.[test]'")
    found = blocks()
    assert len(found) >= 10, "docs/porting.md lost its code blocks"
    namespace: dict = {"__name__": "porting"}
    for index, code in enumerate(found):
        exec(compile(code, f"docs/porting.md block {index + 1}", "exec"), namespace)
    assert (tmp_path / "tagger.onnx").exists() and (tmp_path / "keras_tagger.onnx").exists()
