"""Finite differences in float64: the gradient reference that owes nothing to our own backward."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: Central differences with this step have O(eps^2) ~ 1e-12 truncation error in float64.
EPS = 1e-6


def numeric_partials(
    f: Callable[[np.ndarray], float], x: np.ndarray, indices: Sequence[tuple[int, ...]]
) -> np.ndarray:
    """d f / d x[index] by central differences for each of ``indices``, in their order."""
    partials = np.zeros(len(indices), dtype=np.float64)
    for k, index in enumerate(indices):
        step = np.zeros_like(x)
        step[index] = EPS
        partials[k] = (f(x + step) - f(x - step)) / (2 * EPS)
    return partials


def numeric_gradient(f: Callable[[np.ndarray], float], x: np.ndarray) -> np.ndarray:
    """d f / d x by central differences, one element at a time (keep ``x`` small)."""
    return numeric_partials(f, x, list(np.ndindex(x.shape))).reshape(x.shape)


def directional_derivative(f: Callable[[float], float]) -> float:
    """d f(t) / d t at t = 0 by central differences: checks a whole gradient along one direction."""
    return (f(EPS) - f(-EPS)) / (2 * EPS)
