"""JAX arrays on whatever devices jaxlib sees (CPU here; GPU with jax[cuda])."""

from __future__ import annotations

import functools
from collections.abc import Callable
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

    def precision(self) -> str:
        import jax

        x64 = (
            "on"
            if jax.config.jax_enable_x64
            else (
                "off: float32 only, enable float64 with jax.config.update('jax_enable_x64', True)"
            )
        )
        matmul = jax.config.jax_default_matmul_precision
        return (
            f"64-bit floats {x64}; float32 matrix products at precision {matmul!r}"
            if matmul
            else f"64-bit floats {x64}; float32 matrix products in TF32 on Ampere and Hopper "
            "GPUs (about 1e-3 relative error): set jax_default_matmul_precision to 'highest' "
            "for full float32"
        )

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

    def fast_path(self, forward: Callable, backward: Callable, kernels: Any) -> _JitScan:
        return _jit_scan(forward, backward)

    def start_with_threads(self, count: int) -> str:
        """XLA sizes its CPU pools once, when JAX starts its first backend. Its flags alone do
        not hold JAX 0.10's products to one thread (measured: a 1024^3 product took two cores'
        CPU time with ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``),
        but the pool takes its size from the CPUs the process may run on: so JAX starts while
        the process is limited to ``count`` CPUs, which are then given back."""
        import os

        from jax._src import xla_bridge

        flags = (
            f"--xla_cpu_multi_thread_eigen={str(count > 1).lower()} "
            f"intra_op_parallelism_threads={count}"
        )
        if xla_bridge.backends_are_initialized():
            return f"not set: JAX had started already; run with XLA_FLAGS='{flags}' taskset"
        given = os.environ.get("XLA_FLAGS", "")
        if flags not in given:
            os.environ["XLA_FLAGS"] = f"{given} {flags}".strip()
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        if cpus is None or len(cpus) <= count:
            xla_bridge.backends()
            return f"XLA_FLAGS={os.environ['XLA_FLAGS']}"
        os.sched_setaffinity(0, sorted(cpus)[:count])
        try:
            xla_bridge.backends()
        finally:
            os.sched_setaffinity(0, cpus)
        return f"XLA_FLAGS={os.environ['XLA_FLAGS']}, started on {count} of {len(cpus)} CPUs"

    def stack_path(
        self, stack: tuple[Callable, Callable], recurrence: tuple[Callable, Callable], kernels: Any
    ) -> _JitStack:
        return _jit_stack(stack, recurrence)

    def peak_memory(self, device: Any) -> int | None:
        # XLA's GPU allocator reports a peak since start (it cannot be reset); none on the CPU.
        stats = device.memory_stats() if device.platform != "cpu" else None
        return stats.get("peak_bytes_in_use") if stats else None

    def wait(self, *arrays: Any) -> None:
        import jax

        jax.block_until_ready(arrays)


def _lax_scan(
    step: Callable, xp: Any, consts: Any, carry: Any, xs: tuple, reverse: bool = False
) -> tuple[Any, tuple]:
    """``xplstm.sequence``'s scan protocol on ``jax.lax.scan``: the loop compiled by XLA."""
    import jax

    return jax.lax.scan(lambda c, x_t: step(xp, consts, c, x_t), carry, xs, reverse=reverse)


@functools.cache
def _jit_scan(forward: Callable, backward: Callable) -> _JitScan:
    """One compiled fast path shared by every layer: it holds no per-layer state."""
    return _JitScan(forward, backward)


class _JitScan:
    """The written-once forward and backward, each under ``jax.jit`` with ``lax.scan``.

    jit compiles once per shape and dtype and caches the result; the backward is xplstm's own
    (the core's ``step_backward`` scanned in reverse), not ``jax.grad``. Being the written-once
    functions, it covers every optional input (masks, projection, recurrent dropout).
    """

    features = frozenset({"keep", "w_proj", "h_drop"})

    def __init__(self, forward: Callable, backward: Callable) -> None:
        import jax
        import jax.numpy as jnp

        self.forward = jax.jit(functools.partial(forward, jnp, scan=_lax_scan))
        self.backward = jax.jit(functools.partial(backward, jnp, scan=_lax_scan))

    def __deepcopy__(self, memo: dict) -> _JitScan:
        return self  # stateless: compiled functions only, shared by every copy of a layer


@functools.cache
def _jit_stack(
    stack: tuple[Callable, Callable], recurrence: tuple[Callable, Callable]
) -> _JitStack:
    """One compiled whole-stack path shared by every layer: it holds no per-layer state."""
    return _JitStack(stack, recurrence)


class _JitStack:
    """The written-once stack, forward and backward, each one program under ``jax.jit``: every
    recurrence a ``lax.scan`` of the written-once step, and the steps between them (reversal,
    selects, concatenation, dropout) compiled with them. A 2-layer bidirectional call with
    lengths is then one program each way, where recurrence by recurrence it is four compiled
    scans and the steps between them dispatched one by one."""

    features = frozenset({"bidirectional", "lengths", "mask", "w_proj", "h_drop", "dropout"})
    requires: frozenset[str] = frozenset()

    def __init__(self, stack: tuple[Callable, Callable], recurrence: tuple[Callable, Callable]):
        import jax
        import jax.numpy as jnp

        path = tuple(functools.partial(f, jnp, scan=_lax_scan) for f in recurrence)
        self.forward = jax.jit(functools.partial(stack[0], jnp, path=lambda *_: path))
        self.backward = jax.jit(functools.partial(stack[1], jnp, path=lambda *_: path))

    def fits(self, batch: int, hidden: int) -> bool:
        return True  # one program at every size

    def __deepcopy__(self, memo: dict) -> _JitStack:
        return self  # stateless: compiled functions only, shared by every copy of a layer


BACKEND = JaxBackend()
