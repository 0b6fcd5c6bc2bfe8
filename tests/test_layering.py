"""The architecture, enforced: the core's math names no array library and no backend module,
and the backends import nothing of the core. Read from the source (imports inside functions
included), so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "xplstm"
BACKENDS = ROOT / "backends"

#: The modules that hold the math, written once against ``xp``.
CORE_MATH = (
    "cell", "sequence", "stack", "steps", "init", "layer", "lstm", "states", "dropout",
    "sequential", "linear", "embedding", "losses", "optim",
)  # fmt: skip
ARRAY_LIBRARIES = ("numpy", "cupy", "torch", "jax", "jaxlib", "dask", "array_api_strict")
#: Host-side NumPy for seeded initialisation, dropout masks, lengths and token ids: the one
#: exception the architecture allows.
HOST_NUMPY = ("init", "layer", "dropout", "embedding")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, dotted; ``from a import b`` gives ``a`` and ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import of {node.module}"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _is_backend_module(name: str) -> bool:
    """``xplstm.backends.<module>`` naming a file of ``backends/`` (not the package's API)."""
    parts = name.split(".")
    return (
        parts[:2] == ["xplstm", "backends"]
        and len(parts) > 2
        and ((BACKENDS / f"{parts[2]}.py").exists())
    )


@pytest.mark.parametrize("module", CORE_MATH)
def test_core_math_names_no_array_library_and_no_backend_module(module):
    found = imports(CORE / f"{module}.py")
    allowed = ("numpy",) if module in HOST_NUMPY else ()
    libraries = {
        name for name in found
        if name.split(".")[0] in ARRAY_LIBRARIES and name.split(".")[0] not in allowed
    }  # fmt: skip
    assert not libraries, f"xplstm/{module}.py imports {sorted(libraries)}"
    backend_modules = {name for name in found if _is_backend_module(name)}
    assert not backend_modules, f"xplstm/{module}.py imports {sorted(backend_modules)}"


#: What of xplstm each of the stack's own modules may import: its floor. The stack is built
#: on the steps and on nothing of the layer, so a backend can run it whole (see backends/).
FLOORS = {
    "stack": {"xplstm", "xplstm.steps", "xplstm.steps.Steps", "xplstm.types", "xplstm.types.Array"},
    "steps": {"xplstm.resolver", "xplstm.resolver.to_numpy", "xplstm.types", "xplstm.types.Array"},
    # The initialisation schemes draw on the host; Keras's gate order comes from the layout.
    "init": {"xplstm.layout", "xplstm.layout.gate_order"},
}


@pytest.mark.parametrize("module", FLOORS)
def test_the_stack_stands_on_its_floor(module):
    found = {name for name in imports(CORE / f"{module}.py") if name.split(".")[0] == "xplstm"}
    above = found - FLOORS[module]
    assert not above, f"xplstm/{module}.py imports {sorted(above)}, above its floor"


@pytest.mark.parametrize("path", sorted(BACKENDS.glob("*.py")), ids=lambda p: p.name)
def test_backends_import_nothing_of_the_core(path):
    core = {
        name for name in imports(path)
        if name.split(".")[0] == "xplstm" and name.split(".")[:2] != ["xplstm", "backends"]
    }  # fmt: skip
    assert not core, f"backends/{path.name} imports {sorted(core)}: pass what it needs in instead"


def test_the_checks_see_imports_inside_functions():
    """The reader finds lazy imports (the ones a fast path is most likely to add)."""
    found = imports(BACKENDS / "numpy.py")
    assert "xplstm.backends._numpy_fast" in found and "array_api_compat.numpy" in found
