"""Optimizers that update any layer's ``Weights`` on any backend, and gradient-norm clipping.

``step()`` reads each parameter's ``deltas`` (left there by ``backward``) and replaces its
``values`` with new arrays: no in-place writes, so JAX's immutable arrays work too. Optimizer
state (momentum, moments) lives next to the parameter, on its backend, device and dtype;
hyper-parameters are Python floats so they never change a float32 parameter's dtype.
The update rules are PyTorch's (``torch.optim.SGD``, ``Adam``, ``RMSprop``) with the same
defaults for the arguments offered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import array_api_compat

from xplstm import backends, checks
from xplstm.layer import Weights, dtype_name
from xplstm.resolver import to_numpy
from xplstm.types import Array


def _check_deltas(index: int, param: Weights) -> None:
    """A clear error when ``param.deltas`` cannot update ``param.values``: another backend,
    device, shape or dtype."""
    owner, home = backends.backend_of(param.deltas), backends.backend_of(param.values)
    where, place = array_api_compat.device(param.deltas), array_api_compat.device(param.values)
    if owner.name != home.name or where != place:
        raise ValueError(
            f"parameter {index}: deltas are {owner.name} arrays on {where} but values are "
            f"{home.name} arrays on {place}; convert them on the values' backend with "
            "xp.asarray(deltas, device=values.device)"
        )
    shape, got = tuple(param.values.shape), tuple(param.deltas.shape)
    if got != shape:
        raise ValueError(
            f"parameter {index}: deltas have shape {got} but values have shape {shape}; "
            f"backward must leave deltas shaped like values (set param.deltas to the gradient "
            f"of shape {shape})"
        )
    if param.deltas.dtype != param.values.dtype:
        raise TypeError(
            f"parameter {index}: deltas have dtype {param.deltas.dtype} but values have dtype "
            f"{param.values.dtype}; convert with xp.astype(deltas, values.dtype)"
        )


class Optimizer:
    """The shared loop: one state dict per parameter, updated functionally by ``_update``."""

    def __init__(self, parameters: Iterable[Weights], lr: float) -> None:
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("the optimizer got no parameters; pass model.parameters()")
        for index, param in enumerate(self.parameters):
            if not isinstance(param, Weights):
                raise TypeError(
                    f"parameter {index} is a {type(param).__name__}, not xplstm.Weights; "
                    "pass model.parameters()"
                )
        self.lr = checks.positive("lr", lr)
        #: Steps taken so far (Adam's bias correction counts them).
        self.steps = 0
        self._state: list[dict[str, Array]] = [{} for _ in self.parameters]

    def step(self) -> None:
        """Update every parameter's ``values`` from its ``deltas``.

        Refuses deltas whose backend, device, shape or dtype differ from the values' before
        changing anything: the update would fail halfway, broadcast the parameter to a new
        shape, or upcast it.
        """
        for index, param in enumerate(self.parameters):
            _check_deltas(index, param)
        self.steps += 1
        updates = [
            self._update(param.values, param.deltas, state)
            for param, state in zip(self.parameters, self._state, strict=True)
        ]
        # A lazy backend (Dask) computes the new values and state now, in one go, so that the
        # graph does not grow with every step.
        backend = backends.backend_of(self.parameters[0].values)
        arrays = [w for w, _ in updates] + [a for _, state in updates for a in state.values()]
        done = iter(backend.persist(arrays))
        for param in self.parameters:
            param.values = next(done)
        self._state = [{key: next(done) for key in state} for _, state in updates]

    def state_dict(self) -> dict[str, Any]:
        """What resumes this optimizer where it stands: its type, the steps taken, and each
        parameter's buffers (momentum, moments) as host NumPy arrays, in parameter order (they
        may share memory with the buffers, which :meth:`step` replaces, never writes into)."""
        return {
            "type": type(self).__name__,
            "steps": self.steps,
            "buffers": [{k: to_numpy(v) for k, v in s.items()} for s in self._state],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the state :meth:`state_dict` gave (of an optimizer of the same type over
        parameters of the same shapes); buffers go where each parameter lives."""
        if state["type"] != type(self).__name__:
            raise TypeError(f"the state is {state['type']}'s, not {type(self).__name__}'s")
        buffers = state["buffers"]
        if len(buffers) != len(self.parameters):
            raise ValueError(
                f"the state has buffers for {len(buffers)} parameters; this optimizer has "
                f"{len(self.parameters)}"
            )
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"the state's step count must be an int >= 0, got {steps!r}")
        placed = []
        for index, (param, saved) in enumerate(zip(self.parameters, buffers, strict=True)):
            values = param.values
            for key, buffer in saved.items():
                if buffer.shape != tuple(values.shape) or buffer.dtype.name != dtype_name(
                    values.dtype
                ):
                    raise ValueError(
                        f"parameter {index}: buffer {key!r} is {buffer.dtype.name} of shape "
                        f"{buffer.shape}; the parameter is {values.dtype} of shape "
                        f"{tuple(values.shape)}"
                    )
            owner, where = backends.backend_of(values), array_api_compat.device(values)
            placed.append({key: owner.from_numpy(b, where) for key, b in saved.items()})
        self.steps = steps
        self._state = placed

    def _update(
        self, w: Array, g: Array, state: dict[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        """The new values of ``w`` given its gradient ``g``, and the new state."""
        raise NotImplementedError

    @staticmethod
    def _buffer(state: dict[str, Array], key: str, like: Array) -> Array:
        """``state[key]``, zeros at first, and moved along when the parameter was moved."""
        buffer = state.get(key)
        if buffer is None:
            return array_api_compat.array_namespace(like).zeros_like(like)
        if backends.backend_of(buffer) is not backends.backend_of(like) or (
            array_api_compat.device(buffer) != array_api_compat.device(like)
        ):
            where = array_api_compat.device(like)
            return backends.backend_of(like).from_numpy(to_numpy(buffer), where)
        return buffer


class SGD(Optimizer):
    """Stochastic gradient descent, with momentum as torch.optim.SGD (no dampening):
    ``v = momentum * v + g; w = w - lr * v``."""

    def __init__(self, parameters: Iterable[Weights], lr: float, momentum: float = 0.0) -> None:
        super().__init__(parameters, lr)
        self.momentum = checks.in_range("momentum", momentum, 0.0, 1.0, low_open=False)

    def _update(
        self, w: Array, g: Array, state: dict[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        if self.momentum == 0.0:
            return w - self.lr * g, {}
        velocity = self.momentum * self._buffer(state, "velocity", w) + g
        return w - self.lr * velocity, {"velocity": velocity}


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015), computed as torch.optim.Adam does:
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``w = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""

    def __init__(
        self,
        parameters: Iterable[Weights],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(parameters, lr)
        self.betas = (
            checks.in_range("betas[0]", betas[0], 0.0, 1.0, low_open=False),
            checks.in_range("betas[1]", betas[1], 0.0, 1.0, low_open=False),
        )
        self.eps = checks.in_range("eps", eps, 0.0, math.inf, low_open=False)

    def _update(
        self, w: Array, g: Array, state: dict[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        xp = array_api_compat.array_namespace(w)
        beta1, beta2 = self.betas
        m = beta1 * self._buffer(state, "m", w) + (1.0 - beta1) * g
        v = beta2 * self._buffer(state, "v", w) + (1.0 - beta2) * (g * g)
        step_size = self.lr / (1.0 - beta1**self.steps)
        denominator = xp.sqrt(v) / math.sqrt(1.0 - beta2**self.steps) + self.eps
        return w - step_size * (m / denominator), {"m": m, "v": v}


class RMSProp(Optimizer):
    """RMSProp (Tieleman and Hinton, 2012) as torch.optim.RMSprop: ``v = alpha v + (1 - alpha)
    g^2; w = w - lr * g / (sqrt(v) + eps)`` (eps outside the square root, as torch has it)."""

    def __init__(
        self,
        parameters: Iterable[Weights],
        lr: float = 1e-3,
        alpha: float = 0.99,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(parameters, lr)
        self.alpha = checks.in_range("alpha", alpha, 0.0, 1.0, low_open=False)
        self.eps = checks.in_range("eps", eps, 0.0, math.inf, low_open=False)

    def _update(
        self, w: Array, g: Array, state: dict[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        xp = array_api_compat.array_namespace(w)
        v = self.alpha * self._buffer(state, "v", w) + (1.0 - self.alpha) * (g * g)
        return w - self.lr * (g / (xp.sqrt(v) + self.eps)), {"v": v}


def clip_grad_norm(parameters: Iterable[Weights], max_norm: float) -> float:
    """Scale all ``deltas`` together so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping, as a Python float (one read from the device). As
    torch.nn.utils.clip_grad_norm_, the scale is ``max_norm / (norm + 1e-6)``; nothing changes
    when the norm is at most ``max_norm``, or is NaN (check ``math.isfinite`` on the result to
    catch a diverged run).
    """
    max_norm = checks.positive("max_norm", max_norm)
    params = list(parameters)
    norm = grad_norm(params)
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for param in params:
            param.deltas = param.deltas * scale
    return norm


def grad_norm(parameters: Iterable[Weights]) -> float:
    """The global L2 norm of all ``deltas``, as a Python float (one read from the device):
    NaN or infinite when any gradient is."""
    total = None
    for param in parameters:
        xp = array_api_compat.array_namespace(param.deltas)
        square = xp.sum(param.deltas * param.deltas)
        total = square if total is None else total + square
    return 0.0 if total is None else math.sqrt(float(total))
