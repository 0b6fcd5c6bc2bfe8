"""Any other library whose arrays carry ``__array_namespace__``: the fallback backend."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from xplstm.backends._base import Backend


class GenericBackend(Backend):
    """A backend made on the spot from the namespace of an array xplstm does not know."""

    def __init__(self, xp: Any) -> None:
        self._xp = xp
        self.name = self.library = xp.__name__

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str | None:
        return getattr(self._xp, "__version__", None)

    def is_array(self, x: Any) -> bool:
        return getattr(x, "__array_namespace__", None) is not None and (
            array_api_compat.array_namespace(x) is self._xp
        )

    def namespace(self) -> Any:
        return self._xp

    def default_device(self) -> Any:
        return self._xp.__array_namespace_info__().default_device()

    def devices(self) -> list[Any]:
        return list(self._xp.__array_namespace_info__().devices())

    def to_numpy(self, x: Any) -> np.ndarray:
        try:
            return np.from_dlpack(x)
        except (AttributeError, TypeError, ValueError, RuntimeError, BufferError):
            host = np.asarray(x)
        if host.dtype == object:
            raise TypeError(
                f"cannot copy a {type(x).__name__} to NumPy: it supports neither DLPack on the "
                "CPU nor NumPy's array protocol; move it to the CPU first"
            )
        return host
