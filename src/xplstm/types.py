"""Type aliases shared by the core: one place, so every module names things alike."""

from __future__ import annotations

from typing import Any

#: An array of any array-API library (NumPy, CuPy, torch, JAX, Dask, array-api-strict).
Array = Any
