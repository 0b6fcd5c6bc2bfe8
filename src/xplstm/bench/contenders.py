"""The rows of a benchmark: xplstm on each backend and path, torch.nn.LSTM, a naive baseline.

Each row knows how to build fresh runs (closures for ``forward`` and ``forward+backward`` that
return what to wait on), so that memory can be counted over one build from nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import xplstm
from xplstm import backends
from xplstm.backends import Backend
from xplstm.cell import step_backward, step_forward
from xplstm.lstm import fast_path_of

#: The reference every ratio is taken against.
REFERENCE = "torch.nn.LSTM"

Config = tuple[int, int, int, int]
Runs = dict[str, Callable[[], Any]]


@dataclass(frozen=True)
class Row:
    """One contender: how to build its runs, and where it runs."""

    name: str
    backend: Backend
    device: Any
    build: Callable[[], Runs]


def naive_runs(xp: Any, w: Any, b: Any, x: Any, dy: Any) -> Runs:
    """The original layer's loop: [x_t, h] concatenated and multiplied at every step.

    A baseline only; it uses the same cell math (``step_forward``, ``step_backward``).
    """
    batch, seq, inputs = x.shape
    hidden = w.shape[1] // 4

    def forward() -> list:
        zeros = xp.zeros((batch, hidden), dtype=w.dtype, device=x.device)
        h, c, saved = zeros, zeros, []
        for t in range(seq):
            xh = xp.concat([x[:, t, :], h], axis=1)
            h_new, c_new, ifog = step_forward(xp, xh @ w + b, c)
            saved.append((xh, ifog, c_new, c))
            h, c = h_new, c_new
        return saved

    def forward_backward() -> Any:
        saved = forward()
        dh = dc = xp.zeros((batch, hidden), dtype=w.dtype, device=x.device)
        dw, db, dxs = xp.zeros_like(w), xp.zeros_like(b), []
        for t in range(seq - 1, -1, -1):
            xh, ifog, c, c_prev = saved[t]
            dz, dc = step_backward(xp, dy[:, t, :] + dh, dc, ifog, c, c_prev)
            dw, db = dw + xh.T @ dz, db + xp.sum(dz, axis=0)
            dxh = dz @ w.T
            dxs.append(dxh[:, :inputs])
            dh = dxh[:, inputs:]
        return xp.stack(dxs[::-1], axis=1), dw

    return {"forward": lambda: forward()[-1][2], "forward+backward": forward_backward}


def xplstm_runs(layer: xplstm.LSTM, x: Any, dy: Any) -> Runs:
    """A layer's forward, and its forward and backward with the weight gradient."""

    def forward_backward() -> tuple:
        layer.forward(x)
        dx, _, _ = layer.backward(dy)
        return dx, layer.weights.deltas

    return {"forward": lambda: layer.forward(x)[0], "forward+backward": forward_backward}


def torch_runs(hidden: int, x: Any, dy: Any) -> Runs:
    """torch.nn.LSTM (cuDNN on CUDA) with autograd, on the device and dtype of the tensor ``x``."""
    import torch

    module = torch.nn.LSTM(x.shape[-1], hidden, batch_first=True, dtype=x.dtype).to(x.device)
    x = x.detach().requires_grad_(True)

    def forward() -> Any:
        return module(x)[0]

    def forward_backward() -> Any:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x)[0].backward(dy)
        return x.grad

    return {"forward": forward, "forward+backward": forward_backward}


def is_gpu(device: Any) -> bool:
    """Whether ``device`` (any library's) is an accelerator rather than the host."""
    return "cpu" not in str(device).lower()


def device_for(backend: Backend, want: str) -> Any | None:
    """The backend's GPU for ``want="gpu"``, its CPU for ``"cpu"``, a GPU if any for auto."""
    try:
        gpu = backend.parse_device("cuda")
    except ValueError:  # BackendError included
        gpu = None
    if want == "gpu":
        return gpu
    if want == "cpu":
        cpu = backend.default_device()
        return None if is_gpu(cpu) else cpu
    return gpu if gpu is not None else backend.default_device()


def build_rows(
    names: Sequence[str],
    paths: Sequence[str],
    want: str,
    config: Config,
    dtype: str,
    naive: bool,
    reference: bool,
) -> tuple[list[Row], list[str]]:
    """The contenders for one configuration, and why any asked for is missing."""
    batch, seq, inputs, hidden = config
    rng = np.random.default_rng(0)
    host_x = rng.standard_normal((batch, seq, inputs)).astype(dtype)
    host_dy = rng.standard_normal((batch, seq, hidden)).astype(dtype)
    rows, skipped = [], []
    for name in names:
        backend = backends.get(name)
        device = device_for(backend, want)
        if device is None:
            skipped.append(f"{name}: no {want} device")
            continue
        has_fast = fast_path_of(backend) is not None
        for path in paths:
            if path == "fast" and not has_fast:
                continue
            suffix = " written-once" if has_fast else ""
            label = f"xplstm {name}" + (" fast" if path == "fast" else suffix)

            def build(
                backend: Backend = backend, device: Any = device, fast: bool = path == "fast"
            ) -> Runs:
                layer = xplstm.LSTM(
                    inputs, hidden, backend=backend, device=device, dtype=dtype, seed=0,
                    fast_path=fast,
                )  # fmt: skip
                x, dy = backend.from_numpy(host_x, device), backend.from_numpy(host_dy, device)
                return xplstm_runs(layer, x, dy)

            rows.append(Row(label, backend, device, build))
    if reference and "torch" in backends.available():
        torch_backend = backends.get("torch")
        device = device_for(torch_backend, want) or torch_backend.default_device()

        def build_reference() -> Runs:
            x = torch_backend.from_numpy(host_x, device)
            return torch_runs(hidden, x, torch_backend.from_numpy(host_dy, device))

        rows.insert(0, Row(REFERENCE, torch_backend, device, build_reference))
    elif reference:
        skipped.append(f"{REFERENCE}: {backends.unavailable()['torch']}")
    if naive:

        def build_naive() -> Runs:
            layer = xplstm.LSTM(inputs, hidden, backend="numpy", dtype=dtype, seed=0)
            xp = layer.xp
            x, dy = xp.asarray(host_x), xp.asarray(host_dy)
            return naive_runs(xp, layer.weights.values, layer.bias.values, x, dy)

        rows.append(Row("naive concat (numpy)", backends.get("numpy"), "cpu", build_naive))
    return rows, skipped
