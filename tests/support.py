"""Test helpers: a backend target, a close-enough check, and references nobody here wrote."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import array_api_compat
import numpy as np

import xplstm
from xplstm import backends
from xplstm.layer import dtype_name

#: Named tolerance levels, ``(rtol, atol)`` by dtype: the one table every comparison draws from.
TOLERANCES = {
    # The same operations in the same order: equal bit for bit.
    "exact": {"float64": (0.0, 0.0), "float32": (0.0, 0.0)},
    # The same math rounded differently (a sigmoid formula, a summation order, another BLAS):
    # a few ulps per operation, over a short chain of them.
    "ulps": {"float64": (1e-12, 1e-14), "float32": (2e-5, 2e-6)},
    # Against an independent reference (torch, another backend) computed in float64: float32
    # drifts by about 1e-7 per operation over tens of recurrent steps.
    "reference": {"float64": (1e-9, 1e-11), "float32": (2e-4, 2e-5)},
    # Analytic gradients against central differences in float64 (tests/numerics.py): rounding
    # in f(x +- eps) is about 1e-16 * |f| / eps, a few parts in 1e9 at the sizes tested.
    "finite-difference": {"float64": (1e-6, 1e-8)},
}


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


def _expected_placement(like: Any) -> tuple[Any, Any, str | None]:
    """The namespace, device and dtype name (``None``: any) that ``like`` stands for: a
    :class:`Target`, a layer or model (its parameters), or an array."""
    if isinstance(like, Target):
        return backends.get(like.backend).namespace(), like.device, None
    if hasattr(like, "xp") and hasattr(like, "device"):  # a layer or a Sequential
        return like.xp, like.device, dtype_name(like.dtype)
    return (
        array_api_compat.array_namespace(like),
        array_api_compat.device(like),
        dtype_name(like.dtype),
    )


def assert_placed(
    actual: Any, *, like: Any, shape: tuple[int, ...] | None = None, name: str = ""
) -> None:
    """``actual`` is an array of ``like``'s namespace, on its device, in its dtype (with ``like``
    a :class:`Target`: any float dtype), and of ``shape`` when given."""
    __tracebackhide__ = True
    what = f"{name}: " if name else ""
    namespace, device, dtype = _expected_placement(like)
    found = array_api_compat.array_namespace(actual)
    assert found is namespace, f"{what}a {found.__name__} array, expected {namespace.__name__}"
    assert array_api_compat.device(actual) == device, (
        f"{what}on device {array_api_compat.device(actual)}, expected {device}"
    )
    found_dtype = dtype_name(actual.dtype)
    assert dtype in (None, found_dtype), f"{what}dtype {found_dtype}, expected {dtype}"
    assert shape is None or tuple(actual.shape) == tuple(shape), (
        f"{what}shape {tuple(actual.shape)}, expected {tuple(shape)}"
    )


def assert_close(
    actual: Any,
    expected: Any,
    *,
    like: Any,
    level: str = "reference",
    rtol: float | None = None,
    atol: float | None = None,
    name: str = "",
) -> None:
    """Check ``actual``'s namespace, device, dtype and shape (see :func:`assert_placed`), then
    its values against ``expected`` (any array; copied to the host) within a named tolerance
    ``level`` for ``actual``'s dtype, or the ``rtol``/``atol`` given."""
    __tracebackhide__ = True
    host_expected = np.asarray(xplstm.to_numpy(expected))
    assert_placed(actual, like=like, shape=host_expected.shape, name=name)
    levels = TOLERANCES[level]
    found_dtype = dtype_name(actual.dtype)
    if found_dtype not in levels:
        raise ValueError(f"tolerance level {level!r} has no {found_dtype} entry")
    default_rtol, default_atol = levels[found_dtype]
    np.testing.assert_allclose(
        xplstm.to_numpy(actual),
        host_expected,
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
        err_msg=name,
    )


#: What :func:`forward_backward` returns, in order.
OUTPUTS = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "d_weights", "d_bias")


def forward_backward(
    layer: xplstm.LSTM, target: Target, p: dict, *, state: bool = True, dy: bool = True
) -> dict[str, Any]:
    """Forward and backward of ``layer`` on the problem ``p`` (see :func:`random_problem`), cast
    to the layer's dtype and placed on ``target``: every output and gradient, as the layer's
    arrays, by the names of :data:`OUTPUTS`. ``state=False`` omits h0, c0, dh_n and dc_n (the
    defaults), ``dy=False`` omits dy."""
    dtype = dtype_name(layer.dtype)
    cast = {k: target.asarray(v.astype(dtype)) for k, v in p.items()}
    h0, c0 = (cast["h0"], cast["c0"]) if state else (None, None)
    y, h_n, c_n = layer.forward(cast["x"], h0, c0)
    grads = (cast["dh_n"], cast["dc_n"]) if state else (None, None)
    dx, dh0, dc0 = layer.backward(cast["dy"] if dy else None, *grads)
    d_bias = None if layer.bias is None else layer.bias.deltas  # use_bias=False: no bias
    found = (y, h_n, c_n, dx, dh0, dc0, layer.weights.deltas, d_bias)
    return dict(zip(OUTPUTS, found, strict=True))


def layer_for(target: Target, p: dict, dtype: str, **kwargs: Any) -> xplstm.LSTM:
    """A layer on ``target`` with the parameters of the problem ``p``, in ``dtype``."""
    inputs, hidden = p["x"].shape[2], p["h0"].shape[1]
    return target.lstm(
        inputs,
        hidden,
        weights=target.asarray(p["weights"].astype(dtype)),
        bias=target.asarray(p["bias"].astype(dtype)),
        dtype=dtype,
        **kwargs,
    )


#: A stand-in for the ``cupy`` module made of NumPy functions, ``fuse`` doing nothing: with it,
#: CuPy's fast path (``backends/_cupy_fast.py``) runs its own code on NumPy arrays here.
STAND_IN_CUPY = SimpleNamespace(
    fuse=lambda kernel_name: lambda kernel: kernel,
    exp=np.exp,
    abs=np.abs,
    where=np.where,
    tanh=np.tanh,
)


def numpy_loops() -> list[str]:
    """NumPy's fast-path time loops that can run here: ``"compiled"``, ``"blas"`` and
    ``"panels"`` (numba, where installed) and ``"ufuncs"``."""
    from xplstm.backends._numpy_fast import NUMBA_LOOPS, numba_installed

    return [*NUMBA_LOOPS] * numba_installed() + ["ufuncs"]


def paths_of(backend: str) -> list[str]:
    """The routes through a sequence that tests run on ``backend``: always ``"written-once"``
    (``xplstm.sequence`` over ``xplstm.cell``); ``"stack"`` where it has a whole-stack path;
    ``"fast"`` where it has a per-recurrence fast path, except on NumPy, whose fast path has two
    time loops, ``"compiled"`` (numba, where installed) and ``"ufuncs"``; and on NumPy also
    ``"cupy-seam"``: CuPy's fast path with :data:`STAND_IN_CUPY`."""
    from xplstm.paths import fast_path_of, stack_path_of

    whole = ["stack"] if stack_path_of(backends.get(backend)) is not None else []
    if backend == "numpy":
        return [*whole, *numpy_loops(), "written-once", "cupy-seam"]
    fast = ["fast"] if fast_path_of(backends.get(backend)) is not None else []
    return [*whole, *fast, "written-once"]


def on_path(layer: xplstm.LSTM, path: str) -> xplstm.LSTM:
    """``layer``, set to take ``path`` (one of :func:`paths_of`) from now on."""
    from xplstm import cell, sequence
    from xplstm.backends._cupy_fast import CuPyFastPath
    from xplstm.backends._numpy_fast import NumPyFastPath

    layer.fast_path = path != "written-once"
    layer.whole_stack = path == "stack"
    if path in numpy_loops():  # what $XPLSTM_NUMPY_LOOP=path would have made
        paths = [NumPyFastPath(cell.KERNELS, loop=path) for _ in layer.recurrences]
        layer._routes._fast = (layer._backend, paths)
    if path == "stack" and layer._backend.name == "numpy":  # packed at every size, tests' too
        from xplstm.backends._numpy_stack import NumPyStackPath
        from xplstm.paths import fast_path_of

        per = [fast_path_of(layer._backend) for _ in layer.recurrences]
        layer._routes._fast = (layer._backend, per)
        layer._routes._whole = NumPyStackPath(cell.KERNELS, every_size=True)
    if path == "cupy-seam":  # what LSTM._fast_path() would have made on CuPy
        paths = [
            CuPyFastPath(STAND_IN_CUPY, layer.xp, sequence.forward, sequence.backward, cell.KERNELS)
            for _ in layer.recurrences
        ]
        layer._routes._fast = (layer._backend, paths)
    return layer


def assert_route(layer: xplstm.LSTM, path: str) -> None:
    """The last forward of ``layer`` went by ``path``: with ``"stack"``, the whole-stack path
    where it covers the call (see ``paths.Routes.choose``), else the default per recurrence."""
    from xplstm import paths, stack

    cache, whole_path = layer._cache, layer._routes._whole
    uses, size = stack.uses(cache.params, cache.plan), (cache.batch, layer.hidden_size)
    covers = whole_path is not None and paths.covers(whole_path, uses, size)
    whole = cache.route is whole_path
    assert whole == (path == "stack" and covers), f"the whole-stack path ran: {whole}, for {path}"
    for taken, saved in layer._cache.runs:  # one (fast path or None, cache) per recurrence
        if path == "written-once":
            assert taken is None, "the fast path ran, not the written-once one"
            continue
        assert taken is not None, f"the written-once path ran, not the {path} one"
        cupy_path = path == "cupy-seam" or layer._backend.name == "cupy"
        assert (type(taken).__name__ == "CuPyFastPath") == cupy_path, type(taken)
        if path in numpy_loops():
            ran = saved[-1]
            assert ran == path, f"NumPy's {ran} loop ran, not its {path} one"


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


def state_of(model: Any, optimizer: Any = None) -> dict[str, Any]:
    """Every parameter's values and the optimizer's step count and buffers, copied to the host:
    what a refused call must leave as it found (compare with :func:`assert_same_state`)."""
    state = {"parameters": [np.array(xplstm.to_numpy(p.values)) for p in model.parameters()]}
    if optimizer is not None:
        saved = optimizer.state_dict()
        buffers = [{k: np.array(v) for k, v in b.items()} for b in saved["buffers"]]
        state["optimizer"] = {"steps": saved["steps"], "buffers": buffers}
    return state


def assert_same_state(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Two :func:`state_of` snapshots are equal bit for bit."""
    __tracebackhide__ = True
    pairs = zip(got["parameters"], expected["parameters"], strict=True)
    for index, (ours, theirs) in enumerate(pairs):
        np.testing.assert_array_equal(ours, theirs, err_msg=f"parameter {index} changed")
    assert ("optimizer" in got) == ("optimizer" in expected)
    if "optimizer" in expected:
        ours, theirs = got["optimizer"], expected["optimizer"]
        assert ours["steps"] == theirs["steps"], "the optimizer's step count changed"
        assert [sorted(b) for b in ours["buffers"]] == [sorted(b) for b in theirs["buffers"]]
        for index, (mine, other) in enumerate(zip(ours["buffers"], theirs["buffers"], strict=True)):
            for key in other:
                np.testing.assert_array_equal(
                    mine[key], other[key], err_msg=f"buffer {key!r} of parameter {index} changed"
                )
