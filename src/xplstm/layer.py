"""What every layer with parameters shares: the ``Weights`` contract, placing the parameters on
a backend and device, moving them, and refusing inputs that do not match them."""

from __future__ import annotations

import copy
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import array_api_compat
import numpy as np

from xplstm import backends, checks
from xplstm.backends import Backend
from xplstm.resolver import resolve, to_numpy
from xplstm.types import Array

if TYPE_CHECKING:
    from xplstm.init import Draw

_DTYPES = ("float32", "float64")

ModeT = TypeVar("ModeT", bound="TrainingMode")
LayerT = TypeVar("LayerT", bound="Layer")
CacheT = TypeVar("CacheT")


def last_forward(cache: CacheT | None) -> CacheT:
    """What the last ``forward`` kept for ``backward``; an error saying what to do if none."""
    if cache is None:
        raise RuntimeError(
            "backward() needs a forward() first (none since the layer was built or moved "
            "with .to()): call layer.forward(x) first"
        )
    return cache


@dataclass
class Weights:
    """A parameter and its gradient: ``deltas`` is replaced by every ``backward``."""

    values: Array
    deltas: Array


class NamedParameters:
    """A layer's parameters by name: iterating gives ``(name, Weights)`` pairs, in order, as
    torch's ``named_parameters()`` does (``for name, p in layer.named_parameters()``), and
    ``["weights"]``, ``keys()``, ``values()``, ``items()``, ``len`` and ``in`` work as on a
    dict (``dict(layer.named_parameters())`` is one)."""

    def __init__(self, named: dict[str, Weights]) -> None:
        self._named = dict(named)

    def __iter__(self) -> Iterator[tuple[str, Weights]]:
        return iter(self._named.items())

    def __getitem__(self, name: str) -> Weights:
        return self._named[name]

    def __len__(self) -> int:
        return len(self._named)

    def __contains__(self, name: object) -> bool:
        return name in self._named

    def keys(self) -> KeysView[str]:
        return self._named.keys()

    def values(self) -> ValuesView[Weights]:
        return self._named.values()

    def items(self) -> ItemsView[str, Weights]:
        return self._named.items()

    def __repr__(self) -> str:
        return f"NamedParameters({self._named!r})"


def dtype_name(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` for any library's spelling of those dtypes."""
    for name in _DTYPES:
        if str(dtype) == name or str(dtype).endswith((f".{name}", f".{name}'>")):
            return name
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def host_parameter(
    name: str,
    given: Array | None,
    shape: tuple[int, ...],
    meaning: str,
    dtype: str,
    draw: Callable[[], np.ndarray],
) -> np.ndarray:
    """The given values copied to the host and checked, or ``draw()`` in ``dtype``."""
    if given is None:
        return draw().astype(dtype)
    host = np.array(to_numpy(given), copy=True)  # the layer never shares the caller's memory
    if host.shape != shape:
        raise ValueError(f"{name} must have shape {shape} = {meaning}, got {host.shape}")
    if host.dtype.name != dtype:
        fix = f"pass dtype={host.dtype.name!r} or " if host.dtype.name in _DTYPES else ""
        raise ValueError(
            f"{name} have dtype {host.dtype.name} but the layer's dtype is {dtype}; "
            f"{fix}cast the {name} to {dtype} first"
        )
    return host


class Module:
    """What every layer and model shares: calling it runs its ``forward``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``self.forward(*args, **kwargs)``, as torch modules are called."""
        return self.forward(*args, **kwargs)  # type: ignore[attr-defined]


class TrainingMode:
    """A training mode, for layers whose forward differs in training (dropout): ``training``,
    recorded by checkpoints, and :meth:`train` and :meth:`eval` to switch it."""

    #: Training mode (the default): dropout acts.
    training = True

    def train(self: ModeT, mode: bool = True) -> ModeT:
        """Training mode (the default): dropout acts. Returns self."""
        self.training = checks.flag("mode", mode)
        return self

    def eval(self: ModeT) -> ModeT:
        """Evaluation mode: no dropout. Returns self."""
        return self.train(False)


class Layer(Module):
    """Base of layers whose parameters live on one backend and device.

    A subclass creates its parameters with :meth:`_init_parameters` from ``__init__`` (the one
    registry: ``named_parameters()`` lists what it made, in order), checks its inputs with
    :meth:`_check` and keeps what backward needs in ``self._cache``.
    """

    _backend: Backend
    device: Any
    _parameters: dict[str, Weights]

    def _init_parameters(
        self,
        given: dict[str, tuple[Array | None, tuple[int, ...], str]],
        *,
        draw: Draw,
        backend: str | Backend | None,
        device: Any,
        dtype: Any,
        seed: int | None,
    ) -> dict[str, Weights]:
        """Create and register the parameters ``name: (given values or None, shape, meaning)``
        in that order, and return them by name.

        Missing values are drawn in order with ``draw(rng, last part of name, shape)`` (see
        :mod:`xplstm.init`), ``rng = numpy.random.default_rng(seed)`` on the host, so a seed
        gives the same parameters on every backend. The backend is ``backend``, else the one of
        the given values (see :func:`xplstm.resolve`); the device is ``device``, else that of
        the given values.
        """
        name_of_dtype = dtype_name(dtype)
        chosen, device = self._where(backend, device, [v for v, _, _ in given.values()])
        rng = np.random.default_rng(checks.seed(seed))
        self._parameters = {}
        for name, (values, shape, meaning) in given.items():
            *owner, last = name.split(".")
            label = last + (f" of {owner[0].rstrip('s')} {owner[1]}" if owner else "")
            make = partial(draw, rng, last, shape)
            host = host_parameter(label, values, shape, meaning, name_of_dtype, make)
            self._parameters[name] = Weights(host, np.zeros_like(host))
        self._place(chosen, device)
        return dict(self._parameters)

    @staticmethod
    def _where(
        backend: str | Backend | None, device: Any, arrays: list[Array | None]
    ) -> tuple[Backend, Any]:
        """The backend (see :func:`xplstm.resolve`) and device for parameters given as
        ``arrays`` (``None`` where drawn): by default those of the first given array."""
        chosen = resolve(backend, *arrays)
        first = next((a for a in arrays if a is not None), None)
        if device is None and first is not None and chosen.is_array(first):
            device = array_api_compat.device(first)
        return chosen, chosen.parse_device(device)

    def _place(self, backend: Backend, device: Any) -> None:
        """Copy the parameters (and their deltas) onto ``backend``'s ``device``."""
        for param in self.parameters():
            host_values, host_deltas = to_numpy(param.values), to_numpy(param.deltas)
            param.values = backend.from_numpy(host_values, device)
            param.deltas = backend.from_numpy(host_deltas, device)
        self._backend = backend
        self.device = array_api_compat.device(self.parameters()[0].values)
        self._cache: Any = None

    def __deepcopy__(self, memo: dict) -> Layer:
        """Copies of the arrays, on the same backend and device (which are shared, not copied)."""
        copied = copy.copy(self)
        memo[id(self)] = copied
        for key, value in vars(self).items():
            if key not in ("_backend", "device"):
                setattr(copied, key, copy.deepcopy(value, memo))
        return copied

    # -- public properties --------------------------------------------------------------
    @property
    def xp(self) -> Any:
        """The array-API namespace of the parameters: build inputs with ``layer.xp.asarray``."""
        return array_api_compat.array_namespace(self.parameters()[0].values)

    @property
    def backend(self) -> str:
        """The name of the backend holding the parameters."""
        return self._backend.name

    @property
    def dtype(self) -> Any:
        """The floating dtype of the parameters; inputs must have it too."""
        return self.parameters()[0].values.dtype

    def parameters(self) -> list[Weights]:
        """The trainable parameters, for optimizers, in ``named_parameters()`` order."""
        return [param for _, param in self.named_parameters()]

    def named_parameters(self) -> NamedParameters:
        """The parameters by name, in the order they were created (the names checkpoints
        store them under); iterating gives ``(name, Weights)`` pairs, as torch's."""
        return NamedParameters(self._parameters)

    def to(self: LayerT, backend: str | Backend, device: Any = None) -> LayerT:
        """Move the parameters to another backend and device (through the host); returns self."""
        chosen = resolve(backend)
        self._place(chosen, chosen.parse_device(device))
        return self

    def _sizes(self) -> str:
        """The constructor's size arguments, for ``repr``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._sizes()}, backend={self.backend!r}, "
            f"device={str(self.device)!r}, dtype={dtype_name(self.dtype)!r})"
        )

    # -- input checks -------------------------------------------------------------------
    def _check(
        self,
        name: str,
        a: Array,
        shape: tuple[int | None, ...],
        meaning: str,
        boolean: bool = False,
        integer: bool = False,
    ) -> None:
        """Refuse arrays of another backend, device or dtype (the layer's, bool when
        ``boolean``, any integer dtype when ``integer``), or of the wrong shape."""
        owner = backends.backend_of(a)
        move = f"move the layer with layer.to({owner.name!r}) or convert {name} with "
        convert = f"layer.xp.asarray({name}, device=layer.device)"
        if array_api_compat.array_namespace(a) is not self.xp:
            raise ValueError(
                f"{name} is a {owner.name} array but this layer's parameters are {self.backend} "
                f"arrays; {move}{convert}"
            )
        where = array_api_compat.device(a)
        if where is not None and where != self.device:
            raise ValueError(
                f"{name} is on device {where} but this layer's parameters are on {self.device}; "
                f"move the layer with layer.to({self.backend!r}, device=...) or convert {name} "
                f"with {convert}"
            )
        if boolean and a.dtype != self.xp.bool:
            raise TypeError(
                f"{name} has dtype {a.dtype} but must be boolean (True where a step counts); "
                f"convert with {name} != 0"
            )
        if integer and not self.xp.isdtype(a.dtype, "integral"):
            raise TypeError(
                f"{name} has dtype {a.dtype} but must hold integer indices; convert with "
                f"layer.xp.astype({name}, layer.xp.int64)"
            )
        if not boolean and not integer and a.dtype != self.dtype:
            fix = f"convert with layer.xp.astype({name}, layer.dtype)"
            if str(a.dtype).endswith(_DTYPES):
                fix += f" or build the layer with dtype={dtype_name(a.dtype)!r}"
            raise TypeError(
                f"{name} has dtype {a.dtype} but this layer computes in {self.dtype}; {fix}"
            )
        checks.shape(name, tuple(a.shape), shape, meaning)
