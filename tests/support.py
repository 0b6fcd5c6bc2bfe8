"""Test helpers: a backend target, a close-enough check, and references nobody here wrote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import xplstm
from xplstm import backends

#: Tolerances by dtype, for comparing against a float64 reference on the host.
TOLERANCES = {"float64": {"rtol": 1e-9, "atol": 1e-11}, "float32": {"rtol": 2e-4, "atol": 2e-5}}


#: Every target the suite knows: (backend, device as a user would write it, test id).
CANDIDATES = (
    ("numpy", None, "numpy"),
    ("array_api_strict", None, "array_api_strict"),
    ("array_api_strict", "device1", "array_api_strict-device1"),
    ("torch", "cpu", "torch"),
    ("torch", "cuda", "torch-cuda"),
    ("jax", "cpu", "jax"),
    ("jax", "gpu", "jax-gpu"),
    ("dask", None, "dask"),
    ("cupy", None, "cupy"),
)


def skip_reason(backend: str, device: str | None) -> str | None:
    """Why a target cannot run here, or ``None`` when it can."""
    reason = backends.unavailable_reason(backend)
    if reason:
        return f"{backend}: {reason}"
    if device is not None:
        try:
            backends.get(backend).parse_device(device)
        except backends.BackendError:
            return f"{backend}: no {device} device here ({backends.get(backend).devices()})"
    return None


@dataclass(frozen=True)
class Target:
    """One backend on one device, as the test matrix runs it."""

    backend: str
    device_spec: str | None
    id: str

    @property
    def device(self) -> Any:
        return backends.get(self.backend).parse_device(self.device_spec)

    def lstm(self, input_size: int, hidden_size: int, **kwargs: Any) -> xplstm.LSTM:
        return xplstm.LSTM(
            input_size, hidden_size, backend=self.backend, device=self.device, **kwargs
        )

    def asarray(self, host: np.ndarray) -> Any:
        """A backend array on this target's device with the same values and dtype."""
        return backends.get(self.backend).from_numpy(np.asarray(host), self.device)


def assert_close(actual: Any, expected: np.ndarray, layer: xplstm.LSTM, name: str = "") -> None:
    """Check namespace, device, dtype, shape, then values against a host reference."""
    assert layer.xp is backends.backend_of(actual).namespace() or (
        backends.backend_of(actual).name == layer.backend
    ), f"{name}: {type(actual)} is not a {layer.backend} array"
    import array_api_compat

    assert array_api_compat.device(actual) == layer.device, f"{name}: wrong device"
    assert actual.dtype == layer.dtype, f"{name}: dtype {actual.dtype} != {layer.dtype}"
    assert tuple(actual.shape) == expected.shape, f"{name}: shape {actual.shape}"
    tolerance = TOLERANCES[np.dtype(xplstm.to_numpy(actual).dtype).name]
    np.testing.assert_allclose(xplstm.to_numpy(actual), expected, **tolerance, err_msg=name)


def random_problem(batch: int, seq: int, inputs: int, hidden: int, seed: int = 0) -> dict:
    """Float64 host arrays for one forward/backward: parameters, inputs, state and gradients."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(hidden)
    return {
        "weights": rng.uniform(-bound, bound, (inputs + hidden, 4 * hidden)),
        "bias": rng.uniform(-bound, bound, (4 * hidden,)),
        "x": rng.standard_normal((batch, seq, inputs)),
        "h0": rng.standard_normal((batch, hidden)) * 0.5,
        "c0": rng.standard_normal((batch, hidden)) * 0.5,
        "dy": rng.standard_normal((batch, seq, hidden)),
        "dh_n": rng.standard_normal((batch, hidden)),
        "dc_n": rng.standard_normal((batch, hidden)),
    }


def torch_reference(p: dict) -> dict:
    """Outputs and gradients from torch.nn.LSTM + autograd in float64, in xplstm's layout."""
    import torch

    inputs, hidden = p["x"].shape[2], p["h0"].shape[1]
    # xplstm's gate blocks are i, f, o, g; torch's are i, f, g, o.
    blocks = np.arange(4 * hidden).reshape(4, hidden)
    to_torch = blocks[[0, 1, 3, 2]].reshape(-1)
    module = torch.nn.LSTM(inputs, hidden, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(p["weights"][:inputs, to_torch].T.copy()))
        module.weight_hh_l0.copy_(torch.from_numpy(p["weights"][inputs:, to_torch].T.copy()))
        module.bias_ih_l0.copy_(torch.from_numpy(p["bias"][to_torch].copy()))
        module.bias_hh_l0.zero_()
    x, h0, c0 = (torch.tensor(p[k], requires_grad=True) for k in ("x", "h0", "c0"))
    y, (h_n, c_n) = module(x, (h0[None], c0[None]))
    loss = (
        (y * torch.from_numpy(p["dy"])).sum()
        + (h_n[0] * torch.from_numpy(p["dh_n"])).sum()
        + (c_n[0] * torch.from_numpy(p["dc_n"])).sum()
    )
    loss.backward()
    from_torch = np.argsort(to_torch)
    d_weights = np.concatenate(
        [module.weight_ih_l0.grad.numpy().T, module.weight_hh_l0.grad.numpy().T]
    )[:, from_torch]
    return {
        "y": y.detach().numpy(),
        "h_n": h_n[0].detach().numpy(),
        "c_n": c_n[0].detach().numpy(),
        "dx": x.grad.numpy(),
        "dh0": h0.grad.numpy(),
        "dc0": c0.grad.numpy(),
        "d_weights": d_weights,
        "d_bias": module.bias_ih_l0.grad.numpy()[from_torch],
    }
