"""The Dask cluster that :mod:`xplstm.distributed` runs on: a ``LocalCluster`` started here, or a
scheduler reached by address, and the check that its workers can run a model's backend.

Dask's own ``Client`` waits for a scheduler's handshake without a limit; :func:`connect` bounds
it, and every way of not finding a usable cluster (no scheduler answers, no workers come, the
workers lack the model's backend) is a :class:`ClusterError` that says how to fix it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import signal
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from xplstm import backends
from xplstm.checks import positive_int

try:
    from dask.distributed import Client, LocalCluster, WorkerPlugin, default_client
    from distributed.comm import connect as dask_connect
except ImportError as error:  # the extra is not installed, or a file hides it
    found = importlib.util.find_spec("distributed")
    if found is not None and found.submodule_search_locations is None:
        raise ImportError(
            f"{found.origin} hides Dask's distributed package (it is imported as "
            "'distributed'); rename that file"
        ) from error
    raise ImportError(
        f"xplstm.distributed needs Dask distributed ({error}); install it with "
        "pip install 'xplstm[distributed]'"
    ) from error

#: Seconds to wait for a scheduler (and for its first worker) before giving up.
CONNECT_TIMEOUT = 10.0


class ClusterError(ValueError):
    """No usable cluster: no scheduler at an address, no workers, or workers that cannot run
    the model's backend."""


@contextlib.contextmanager
def cluster(workers: int = 2, threads_per_worker: int = 1, **options: Any) -> Iterator[Client]:
    """A ``LocalCluster`` of ``workers`` processes on this machine, and its ``Client``.

    ``options`` go to ``dask.distributed.LocalCluster`` (``memory_limit``, ...). The client is
    the default one while the block runs, so ``client=`` may be left out inside it. Each worker
    runs ``threads_per_worker`` tasks at once, with one BLAS thread each (Dask's default)::

        with xplstm.distributed.cluster(workers=4) as client:
            y = xplstm.distributed.predict(model, x)
    """
    count = positive_int("workers", workers)
    threads = positive_int("threads_per_worker", threads_per_worker)
    options = {"processes": True, "dashboard_address": ":0"} | options
    with (
        LocalCluster(n_workers=count, threads_per_worker=threads, **options) as lc,
        Client(lc) as client,
    ):
        if options["processes"]:
            client.register_plugin(_IgnoreCtrlC())
        yield client


class _IgnoreCtrlC(WorkerPlugin):
    """Worker processes of a LocalCluster share the terminal's process group with the driver,
    so a Ctrl-C meant for the driver (``xplstm train`` stops after the step) would kill them
    mid-step. They ignore it; the driver stops them when it leaves :func:`cluster`. Applied to
    every worker, restarted ones too."""

    name = "xplstm-ignore-ctrl-c"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def connect(address: str, timeout: float = CONNECT_TIMEOUT) -> Client:
    """A ``Client`` of the scheduler at ``address`` (``tcp://host:8786``), or a
    :class:`ClusterError` after ``timeout`` seconds when none answers there.

    The scheduler's handshake is awaited here first, within ``timeout``: Dask's ``Client``
    waits for it without a limit, so a port that accepts connections but never answers would
    hold it forever.
    """
    try:
        _handshake(address, timeout)
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as error:
        reason = str(error) or "something accepted the connection but never answered"
        raise ClusterError(
            f"no Dask scheduler answered at {address!r} within {timeout:g} s ({reason}); check "
            "the address, or start one there with `dask scheduler` and workers with "
            f"`dask worker {address}`"
        ) from None


#: Seconds given to a scheduler's handshake beyond the connection's own timeout (after which
#: Dask says why it could not connect, if it could not).
HANDSHAKE_MARGIN = 0.5


def _handshake(address: str, timeout: float) -> None:
    """Connect to ``address`` and wait for its handshake, at most ``timeout`` seconds and
    :data:`HANDSHAKE_MARGIN` in all (``TimeoutError`` then), in an event loop of a thread of its
    own: the caller's thread may already run one."""

    async def greet() -> None:
        connecting = dask_connect(address, timeout=timeout)
        comm = await asyncio.wait_for(connecting, timeout + HANDSHAKE_MARGIN)
        await comm.close()

    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, greet()).result()


@contextlib.contextmanager
def client_for(
    workers: int | None = None, scheduler: str | None = None, timeout: float = CONNECT_TIMEOUT
) -> Iterator[Client]:
    """A client of a ``LocalCluster`` of ``workers`` processes, or of the scheduler at the
    address ``scheduler`` (closed at the end, the cluster left running): one, not both."""
    if (workers is None) == (scheduler is None):
        raise ValueError(
            "give either workers (a LocalCluster here) or scheduler (an address), exactly one; "
            f"got workers={workers!r}, scheduler={scheduler!r}"
        )
    if scheduler is None:
        with cluster(workers=workers) as client:
            yield client
    else:
        with contextlib.closing(connect(scheduler, timeout)) as client:
            yield client


@contextlib.contextmanager
def using(client: Client | None) -> Iterator[Client]:
    """``client``; else the default client; else a ``LocalCluster`` for the block."""
    if client is None:
        try:
            client = default_client()
        except ValueError:  # no client in this process
            with cluster() as local:
                yield local
            return
    yield client


#: Per client and backend name: the workers last found able to run that backend, each as its
#: address and its local directory (new for every worker process, so a worker restarted at the
#: same address is a new entry).
_CHECKED: weakref.WeakKeyDictionary[Client, dict[str, list[tuple[str, str]]]] = (
    weakref.WeakKeyDictionary()
)


def check_workers(client: Client, backend: str, timeout: float = CONNECT_TIMEOUT) -> list[str]:
    """The workers' addresses, once every one of them can run ``backend``.

    Each worker is asked once per client and backend: while the scheduler lists the same
    workers as at the last check, one look at that list (a round trip to the scheduler) is all
    a call costs, not a message to every worker. A worker that joins, or restarts (a new
    local directory, whatever its address), is asked at the next call."""
    checked = _CHECKED.setdefault(client, {})
    listed = workers_listed(client).items()
    instances = sorted((address, str(info.get("local_directory"))) for address, info in listed)
    if instances and checked.get(backend) == instances:
        return [address for address, _ in instances]
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ClusterError(
            f"the scheduler at {client.scheduler.address} has no workers after {timeout:g} s; "
            f"start some with `dask worker {client.scheduler.address}`"
        ) from None
    problems = client.run(_backend_problem, backend)
    missing = {worker: reason for worker, reason in problems.items() if reason}
    if missing:
        said = "; ".join(f"{worker}: {reason}" for worker, reason in sorted(missing.items()))
        raise ClusterError(
            f"{len(missing)} of {len(problems)} workers cannot run the model's backend "
            f"{backend!r} ({said}); install it where the workers run, or move the model "
            "with model.to('numpy')"
        )
    if [address for address, _ in instances] == sorted(problems):  # else: ask again next time
        checked[backend] = instances
    return sorted(problems)


def workers_listed(client: Client) -> dict[str, dict[str, Any]]:
    """The scheduler's information on each of its workers, by address: all of them (a
    synchronous client's). From distributed 2025.4 until the default was undone in 2026.7
    (dask/distributed#9045, #9308) ``scheduler_info()`` lists 5 unless asked ``n_workers=-1``;
    earlier versions take and ignore the argument."""
    return client.scheduler_info(n_workers=-1)["workers"]


def _backend_problem(name: str) -> str | None:
    """On a worker: why it cannot run the backend ``name``, or ``None`` when it can."""
    return backends.unavailable_reason(name)


__all__ = [
    "CONNECT_TIMEOUT",
    "HANDSHAKE_MARGIN",
    "ClusterError",
    "check_workers",
    "client_for",
    "cluster",
    "connect",
    "using",
    "workers_listed",
]
