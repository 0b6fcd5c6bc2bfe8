"""array-api-strict: the standard and nothing else, with fake devices to catch device bugs."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from xplstm.backends._base import Backend, BackendError


class ArrayApiStrictBackend(Backend):
    name = "array_api_strict"
    library = "array_api_strict"
    distribution = "array-api-strict"

    install = "pip install array-api-strict"

    def is_array(self, x: Any) -> bool:
        # Never import the library: its arrays can only exist once the user has imported it.
        return "array_api_strict" in sys.modules and type(x).__module__.startswith(
            "array_api_strict."
        )

    def namespace(self) -> Any:
        import array_api_strict

        return array_api_strict

    def default_device(self) -> Any:
        return self.namespace().Device("CPU_DEVICE")

    def devices(self) -> list[Any]:
        return list(self.namespace().__array_namespace_info__().devices())

    def parse_device(self, device: Any) -> Any:
        if isinstance(device, str):
            try:
                device = self.namespace().Device(device)
            except ValueError as error:
                raise BackendError(
                    f"device {device!r} is not an array_api_strict device; choose one of "
                    f"{self.devices()}"
                ) from error
        return super().parse_device(device)

    def to_numpy(self, x: Any) -> np.ndarray:
        # NumPy can only read arrays on the default device: move the others there first.
        xp = self.namespace()
        return np.asarray(xp.asarray(x, device=self.default_device(), copy=True))


BACKEND = ArrayApiStrictBackend()
