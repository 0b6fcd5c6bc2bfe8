"""PyTorch tensors on the CPU or on CUDA devices."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from xplstm.backends._base import Backend, BackendError


class TorchBackend(Backend):
    name = "torch"
    library = "torch"
    install = "pip install 'xplstm[torch]'"

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_torch_array(x)

    def precision(self) -> str:
        import torch

        if torch.backends.cuda.matmul.allow_tf32:
            return "float32 matrix products on CUDA in TF32 (torch.backends.cuda.matmul.allow_tf32)"
        return "full float32 matrix products on CUDA (TF32 off, torch's default)"

    def namespace(self) -> Any:
        import array_api_compat.torch

        return array_api_compat.torch

    def default_device(self) -> Any:
        import torch

        return torch.device("cpu")

    def devices(self) -> list[Any]:
        import torch

        cuda = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        return [torch.device("cpu"), *cuda]

    def parse_device(self, device: Any) -> Any:
        import torch

        if device is None:
            return self.default_device()
        if isinstance(device, str) and device == "cuda":
            device = "cuda:0"
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise BackendError(
                f"device {device!r} is not a torch device ({error}); choose one of {self.devices()}"
            ) from error
        return super().parse_device(device)

    def from_numpy(self, host: np.ndarray, device: Any) -> Any:
        # torch shares a CPU array's memory, and warns when it is read-only (a memory map):
        # copy those, as the contract says.
        return super().from_numpy(host if host.flags.writeable else np.array(host), device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().resolve_conj().numpy()

    def synchronize(self, device: Any = None) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize(device if getattr(device, "type", None) == "cuda" else None)

    def peak_memory(self, device: Any) -> int | None:
        import torch

        return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    def reset_peak_memory(self, device: Any) -> None:
        import torch

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)


BACKEND = TorchBackend()
