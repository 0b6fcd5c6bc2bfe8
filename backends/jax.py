"""JAX arrays on whatever devices jaxlib sees (CPU here; GPU with jax[cuda])."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from xplstm.backends._base import Backend, BackendError


class JaxBackend(Backend):
    name = "jax"
    library = "jax"
    install = "pip install 'xplstm[jax]'"

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_jax_array(x)

    def namespace(self) -> Any:
        import jax.numpy

        return jax.numpy

    def default_device(self) -> Any:
        import jax

        return jax.devices()[0]

    def devices(self) -> list[Any]:
        import jax

        found = []
        for platform in ("cpu", "gpu", "tpu"):
            try:
                found.extend(jax.devices(platform))
            except RuntimeError:  # jax raises when a platform has no backend here
                continue
        return found

    def parse_device(self, device: Any) -> Any:
        if isinstance(device, str):
            platform, _, index = device.partition(":")
            platform = {"cuda": "gpu"}.get(platform, platform)
            matches = [d for d in self.devices() if d.platform == platform]
            if matches and (index or "0").isdigit() and int(index or 0) < len(matches):
                return matches[int(index or 0)]
        return super().parse_device(device)

    def from_numpy(self, host: np.ndarray, device: Any) -> Any:
        import jax

        placed = jax.device_put(host, device)
        if placed.dtype != host.dtype:
            raise BackendError(
                f"JAX stored {host.dtype} as {placed.dtype}: 64-bit floats are off; enable them "
                "with jax.config.update('jax_enable_x64', True) before creating arrays"
            )
        return placed

    def synchronize(self, device: Any = None) -> None:
        import jax

        jax.effects_barrier()


BACKEND = JaxBackend()
