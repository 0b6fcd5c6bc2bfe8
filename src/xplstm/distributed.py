"""Batch-sharded inference and synchronous data-parallel training on a Dask cluster.

The same model, unchanged, spread over the workers of a `Dask distributed
<https://distributed.dask.org>`_ cluster: a ``LocalCluster`` on this machine by default, or any
scheduler by address (Kubernetes, HPC job queues, ``dask_cuda.LocalCUDACluster`` with one worker
per GPU). Dask schedules the tasks, moves the data, and restarts lost workers; xplstm adds:

- :func:`predict`: the model's output for every row of ``x``, cut into blocks along the batch.
- :func:`fit`: each global batch (drawn from ``seed`` by :func:`batch_rows`, whatever the number
  of workers) is cut into fixed shards; workers compute each shard's loss and parameter
  gradients with the model's own ``forward``/``backward``; the driver adds them up in shard
  order, weighted by shard size over the global batch, clips, and steps the optimizer.
- :class:`DataParallel`: that gradient step alone, for a training loop of one's own.

Workers rebuild the model from its description and host parameters (as a checkpoint holds them)
on the model's backend, on their first device of the kind the model is on (see
:meth:`Replica.build`): under ``LocalCUDACluster`` each worker's own GPU, where its shards go
too; gradients come back to the host for the sum. Everything a worker
needs travels through the task graph, never only by ``scatter``, so a task lost with its worker
is recomputed elsewhere from its lineage.

Scripts that start a ``LocalCluster`` (any of these functions without ``client=``) need
``if __name__ == "__main__":``: its worker processes import the main module again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib.util
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from xplstm import backends, batched, checkpoint, loop, optim
from xplstm.checks import flag, positive, positive_int
from xplstm.resolver import to_numpy
from xplstm.sequential import Sequential
from xplstm.types import Array

try:
    import dask
    import dask.array as da
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

Model = Any
#: A loss as in :mod:`xplstm.losses`: ``(prediction, target) -> (loss, d_prediction)``.
Loss = Callable[[Array, Array], tuple[Array, Array]]

#: Seconds to wait for a scheduler (and for its first worker) before giving up.
CONNECT_TIMEOUT = 10.0
#: Rows per forward pass in :func:`predict`, unless told otherwise.
PREDICT_BATCH = 256


class ClusterError(ValueError):
    """No usable cluster: no scheduler at an address, no workers, or workers that cannot run
    the model's backend."""


# -- the cluster ----------------------------------------------------------------------------
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
def _using(client: Client | None) -> Iterator[Client]:
    """``client``; else the default client; else a ``LocalCluster`` for the block."""
    if client is None:
        try:
            client = default_client()
        except ValueError:  # no client in this process
            with cluster() as local:
                yield local
            return
    yield client


def _check_workers(client: Client, backend: str, timeout: float = CONNECT_TIMEOUT) -> list[str]:
    """The workers' addresses, once every one of them can run ``backend``."""
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
    return sorted(problems)


def _backend_problem(name: str) -> str | None:
    """On a worker: why it cannot run the backend ``name``, or ``None`` when it can."""
    return backends.unavailable_reason(name)


# -- the model on the workers ---------------------------------------------------------------
@dataclass(frozen=True)
class Replica:
    """What a worker needs to rebuild a model: its description and host parameters (as in a
    checkpoint), its backend's name, and the kind of device it lives on (see :meth:`build`)."""

    description: dict[str, Any]
    arrays: dict[str, np.ndarray]
    backend: str
    device_kind: str
    training: bool  # any layer in training mode: dropout acts in the shards' forward

    @classmethod
    def of(cls, model: Model) -> Replica:
        """The replica of ``model`` as it stands now."""
        if model.backend == "dask":
            raise ValueError(
                "the model is on the dask backend; xplstm.distributed runs its own Dask tasks "
                "over NumPy (or CuPy) models: move the model with model.to('numpy')"
            )
        description, arrays = checkpoint.model_arrays(model)
        layers = model.layers if isinstance(model, Sequential) else [model]
        training = any(getattr(layer, "training", False) for layer in layers)
        return cls(description, arrays, model.backend, _kind(model.device), training)

    def build(self) -> Model:
        """The model, here, on the first device of the kind the original lives on: a GPU
        for a model on a GPU (under ``dask_cuda.LocalCUDACluster`` a worker's first GPU is its
        own), the host for one on the host; the backend's default device if there is none."""
        backend = backends.get(self.backend)
        same = [d for d in backend.devices() if _kind(d) == self.device_kind]
        device = same[0] if same else backend.default_device()
        return checkpoint.model_from_arrays(self.description, self.arrays, backend, device)


def _kind(device: Any) -> str:
    """A device's name without its numbers: ``cuda:1`` -> ``cuda:``; ``<CUDA Device 1>`` ->
    ``<CUDA Device >``; ``cpu`` stays ``cpu``."""
    return re.sub(r"\d+", "", str(device))


def _predict_block(
    replica: Replica, block: Any, batch_size: int, steps: dict[str, np.ndarray]
) -> np.ndarray:
    """On a worker: the model's output for ``block`` with its rows' ``lengths`` or ``mask``
    (``steps``), run ``batch_size`` rows at a time."""
    return batched.predict(replica.build(), block, batch_size, **steps)


def _shard_gradients(
    replica: Replica, loss: Loss, x: Any, y: Any, dropout_seed: int, per_row: dict[str, Any]
) -> tuple[float, list[np.ndarray]]:
    """On a worker: the loss of one shard (with its rows' ``lengths`` or ``mask`` in
    ``per_row``) and its parameter gradients, on the host. Dropout masks (in training mode) are
    drawn from ``dropout_seed``, so a recomputed shard draws the same ones."""
    model = replica.build()
    for layer in model.layers if isinstance(model, Sequential) else [model]:
        if hasattr(layer, "dropout_seed"):
            layer.train(replica.training)
            layer.dropout_seed(dropout_seed)
    prediction = batched.output(model(batched.on_model(model, x), **_on_model(model, per_row)))
    value, d_prediction = loss(prediction, batched.on_model(model, y))
    model.backward(d_prediction)
    return float(value), [to_numpy(param.deltas) for param in model.parameters()]


def _on_model(model: Model, per_row: dict[str, Any]) -> dict[str, Any]:
    """``lengths`` as host NumPy (read on the host anyway), ``mask`` on the model's device."""
    return {
        name: np.asarray(values) if name == "lengths" else batched.on_model(model, values)
        for name, values in per_row.items()
    }


# -- predict --------------------------------------------------------------------------------
def predict(
    model: Model,
    x: Any,
    *,
    client: Client | None = None,
    batch_size: int = PREDICT_BATCH,
    lengths: Any = None,
    mask: Any = None,
) -> np.ndarray:
    """The model's output for every row of ``x``, computed on the cluster; a host NumPy array
    equal to ``model.eval()(x, lengths=lengths, mask=mask)`` on one machine (an LSTM's ``y``):
    predictions run in evaluation mode, without dropout.

    ``x`` (rows, seq, features) is a host NumPy array, cut into blocks of ``batch_size`` rows,
    or a Dask array chunked along the rows only (its chunks are the blocks, run ``batch_size``
    rows at a time): the recurrence cannot cross chunks along time. ``lengths`` (rows,) or
    ``mask`` (rows, seq), host or Dask arrays, travel with the blocks of ``x``. The parameters
    travel once per call, as one key of the task graph. ``client``: see :func:`fit`.

    Example, on an in-process cluster (pass the client of a real one):

    >>> import numpy as np
    >>> from dask.distributed import Client
    >>> from xplstm import LSTM, distributed
    >>> layer = LSTM(2, 4, backend="numpy", seed=0)
    >>> x = np.zeros((10, 3, 2), dtype="float32")
    >>> with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
    ...     y = distributed.predict(layer, x, client=client, batch_size=4, lengths=[3] * 10)
    >>> y.shape
    (10, 3, 4)
    """
    batch_size = positive_int("batch_size", batch_size)
    steps = {k: np.asarray(v) for k, v in (("lengths", lengths), ("mask", mask)) if v is not None}
    _check_inputs(model, x, "x", **steps)
    blocks: Sequence[Any]
    if isinstance(x, da.Array):
        blocks = list(x.to_delayed().ravel())
        stops = np.cumsum(x.chunks[0])
    else:
        stops = np.arange(batch_size, x.shape[0] + batch_size, batch_size)
        blocks = [x[stop - batch_size : stop] for stop in stops]
    starts = [0, *stops[:-1]]
    replica = dask.delayed(Replica.of(model), pure=False, traverse=False)
    tasks = [
        dask.delayed(_predict_block, pure=False)(
            replica, block, batch_size, {k: v[start:stop] for k, v in steps.items()}
        )
        for block, start, stop in zip(blocks, starts, stops, strict=True)
    ]
    with _using(client) as active:
        _check_workers(active, model.backend)
        outputs = active.gather(active.compute(tasks))
    return np.concatenate(outputs)


# -- fit ------------------------------------------------------------------------------------
def batch_rows(rows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The rows of the global batch of training step ``step`` (0, 1, ...): epoch after epoch,
    each a permutation of all rows drawn with ``numpy.random.default_rng([seed, epoch])``,
    read ``batch_size`` rows at a time (a batch may straddle two epochs). Depends on nothing
    else, so any number of workers sees the same batches, and a resumed run too."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, rows)
    return np.concatenate(
        [_permutation(rows, seed, int(e))[offsets[epochs == e]] for e in np.unique(epochs)]
    )


@functools.lru_cache(maxsize=2)
def _permutation(rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(rows)


def shard_bounds(batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Where each shard of a global batch starts and stops: ``shards`` contiguous pieces
    whose sizes differ by at most one, the larger first (as ``numpy.array_split``)."""
    size, extra = divmod(batch_size, shards)
    stops = np.cumsum([size + (s < extra) for s in range(shards)])
    return [(int(stop - size - (s < extra)), int(stop)) for s, stop in enumerate(stops)]


class DataParallel:
    """Synchronous data-parallel gradients of ``model``'s ``loss`` on a Dask cluster.

    :meth:`gradients` cuts a global batch into ``shards`` fixed pieces (shard ``s`` goes to
    worker ``s mod workers``, or to another if that one is gone), has each worker compute its
    shard's mean loss and parameter gradients with the model's own ``forward`` and
    ``backward``, and leaves in each parameter's ``deltas`` the gradient of the global batch's
    mean loss, ``sum_s (n_s / batch) * gradient_s``, added in shard order: the result does not
    depend on which worker ran what. Clip and step the optimizer then, as in a local loop.

    Dropout (a model in training mode) draws each shard's masks from ``seed``, the step
    (:attr:`step`, counted by :meth:`gradients`; set it when resuming) and the shard's index
    (``dropout_seed`` of the first 64-bit word of ``SeedSequence([seed, step, shard])``), on
    the host: the same run gives the same masks, recomputed shards included. With dropout
    the result depends on how the batch is sharded, so fix ``shards`` to compare runs.
    """

    #: Seconds between looks at which workers there are (restarted ones have new addresses).
    REFRESH = 10.0

    def __init__(
        self,
        model: Model,
        loss: Loss,
        client: Client,
        shards: int | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.loss = loss
        self.client = client
        self.seed = seed
        #: The next step's index: part of the dropout masks' seed.
        self.step = 0
        self.workers = _check_workers(client, model.backend)
        self._seen = time.monotonic()
        #: Shards per global batch: by default one per worker at the start.
        self.shards = len(self.workers) if shards is None else positive_int("shards", shards)

    def gradients(self, x: Any, y: Any, *, lengths: Any = None, mask: Any = None) -> float:
        """Set every parameter's ``deltas`` to the gradient of the mean loss over the global
        batch ``x``, ``y`` (host NumPy arrays, or Dask arrays), with each row's ``lengths``
        or ``mask`` when given; return that loss."""
        batch = x.shape[0]
        bounds = self.bounds(batch)
        replica = dask.delayed(Replica.of(self.model), pure=False, traverse=False)
        workers = self._workers()
        per_row = {k: v for k, v in (("lengths", lengths), ("mask", mask)) if v is not None}
        futures = [
            self.client.compute(
                dask.delayed(_shard_gradients, pure=False)(
                    replica,
                    self.loss,
                    x[start:stop],
                    y[start:stop],
                    self._dropout_seed(shard),
                    {name: values[start:stop] for name, values in per_row.items()},
                ),
                workers=[workers[shard % len(workers)]],
                allow_other_workers=True,
            )
            for shard, (start, stop) in enumerate(bounds)
        ]
        losses, gradients = zip(*self.client.gather(futures), strict=True)
        self.step += 1
        weights = [(stop - start) / batch for start, stop in bounds]
        for index, param in enumerate(self.model.parameters()):
            total = _in_order(weights, [shard[index] for shard in gradients])
            param.deltas = batched.on_model(self.model, total)
        return _in_order(weights, losses)

    def bounds(self, batch: int) -> list[tuple[int, int]]:
        """Where each shard of a global batch of ``batch`` rows starts and stops (see
        :func:`shard_bounds`); a clear error when there are fewer rows than shards."""
        if self.shards > batch:
            raise ValueError(
                f"a batch of {batch} rows cannot be cut into {self.shards} shards; use at most "
                f"{batch} shards, or bigger batches"
            )
        return shard_bounds(batch, self.shards)

    def _dropout_seed(self, shard: int) -> int:
        """The seed of one shard's dropout masks at this step."""
        state = np.random.SeedSequence([self.seed, self.step, shard]).generate_state(2, np.uint64)
        return int(state[0])

    def _workers(self) -> list[str]:
        """The workers' addresses, looked up again every ``REFRESH`` seconds."""
        if time.monotonic() - self._seen > self.REFRESH:
            self.workers = sorted(self.client.scheduler_info()["workers"]) or self.workers
            self._seen = time.monotonic()
        return self.workers


def _in_order(weights: Sequence[float], values: Sequence[Any]) -> Any:
    """``sum(w * v)``, added strictly first to last: the same bits whatever computed them."""
    total = weights[0] * values[0]
    for weight, value in zip(weights[1:], values[1:], strict=True):
        total = total + weight * value
    return total


def fit(
    model: Model,
    optimizer: optim.Optimizer,
    x: Any,
    y: Any,
    *,
    loss: Loss,
    batch_size: int,
    steps: int,
    client: Client | None = None,
    shards: int | None = None,
    seed: int = 0,
    clip: float | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    every: int = 100,
    progress: bool = False,
    lengths: Any = None,
    mask: Any = None,
    resume: bool = True,
) -> list[float]:
    """Train ``model`` with ``optimizer`` for ``steps`` synchronous data-parallel steps on a
    Dask cluster; return the loss of every step.

    ``x`` (rows, seq, features) and ``y`` (rows, ...) are host NumPy arrays or Dask arrays
    chunked along the rows; they are placed on the cluster once, and each step's global batch
    of ``batch_size`` rows (:func:`batch_rows` with ``seed``) is cut into ``shards`` pieces
    (default: one per worker) and run by :class:`DataParallel`; then the gradients are clipped
    to a global norm of ``clip`` (unless ``None``) and the optimizer steps. In float64 the
    result does not depend on the number of workers beyond rounding, and with fixed ``shards``
    not at all; ``shards=1`` gives a plain single-process loop over the same batches.

    ``client``: a ``Client`` (of any scheduler), else the default client, else a
    ``LocalCluster`` started for the call. ``checkpoint``: a path; every ``every`` steps and at
    the end the parameters, optimizer state, step and losses are saved there (an xplstm
    checkpoint, loadable with :func:`xplstm.checkpoint.load`), and a call that finds the file
    resumes from it, saying so on stderr ("resuming from FILE at step N of STEPS"), ending where
    an uninterrupted run ends; one saved by a run with another seed, batch size or data is
    refused, with the model and optimizer unchanged. ``resume=False`` starts afresh instead,
    and the file is overwritten at the first save.

    ``lengths`` (rows,) ints or ``mask`` (rows, seq) booleans, host or Dask arrays, give each
    row's steps (see :meth:`xplstm.LSTM.forward`); they travel with their rows.

    The loop is :func:`xplstm.loop.fit`, the one ``xplstm train`` runs: a step whose loss or
    gradients are not finite raises ``FloatingPointError`` before its update, the model (and
    the checkpoint) left as the last finite step made them.
    """
    batch_size = positive_int("batch_size", batch_size)
    steps = positive_int("steps", steps)
    every = positive_int("every", every)
    seed = positive_int("seed", seed, minimum=0)
    resume = flag("resume", resume)
    if clip is not None:
        positive("clip", clip)  # the largest gradient norm
    if [id(p) for p in optimizer.parameters] != [id(p) for p in model.parameters()]:
        raise ValueError(
            "the optimizer must be built on this model: optim.Adam(model.parameters())"
        )
    per_row = {k: v for k, v in (("lengths", lengths), ("mask", mask)) if v is not None}
    _check_inputs(model, x, "x", **{k: np.asarray(v) for k, v in per_row.items()})
    rows = x.shape[0]
    if y.shape[0] != rows:
        raise ValueError(
            f"x has {rows} rows but y has {y.shape[0]}; they need one target per sequence "
            "(the first axis)"
        )
    if batch_size > rows:
        raise ValueError(f"batch_size {batch_size} is larger than the {rows} rows of x")
    _check_targets(model, loss, x, y, per_row)
    position = {"seed": seed, "batch_size": batch_size, "rows": rows}
    with _using(client) as active:
        engine = DataParallel(model, loss, active, shards, seed=seed)
        engine.bounds(batch_size)  # refuse too many shards before anything is restored
        history: list[float] = []
        if resume and checkpoint is not None and os.path.exists(checkpoint):
            history = loop.resume(checkpoint, model, optimizer, position, steps)
            print(
                f"xplstm.distributed.fit: resuming from {os.fspath(checkpoint)} at step "
                f"{len(history)} of {steps} (resume=False starts afresh)",
                file=sys.stderr,
            )
        data_x, data_y, *data_steps = active.persist(
            [_rows_chunked(a) for a in (x, y, *per_row.values())]
        )

        def gradients(step: int) -> float:
            chosen = batch_rows(rows, batch_size, seed, step)
            given = {k: v[chosen] for k, v in zip(per_row, data_steps, strict=True)}
            engine.step = step  # part of the dropout masks' seed
            return engine.gradients(data_x[chosen], data_y[chosen], **given)

        with tqdm(total=steps, initial=len(history), unit="step", disable=not progress) as bar:
            run = loop.fit(
                model, optimizer, gradients, steps=steps, clip=clip, losses=history,
                checkpoint_path=checkpoint, every=every, position=position, bar=bar,
            )  # fmt: skip
    if run.stopped == loop.NON_FINITE:
        kept = "" if checkpoint is None else f" (saved in {os.fspath(checkpoint)})"
        raise FloatingPointError(
            f"{run.problem}{kept}; lower the learning rate, clip the gradients, or look for NaN "
            "or inf in the data"
        )
    return run.losses


def _rows_chunked(a: Any) -> da.Array:
    """``a`` as a Dask array chunked along the rows only (host arrays: about 64 MiB chunks,
    under fresh keys, so that nothing is hashed and no other call's data is mistaken for it)."""
    if isinstance(a, da.Array):
        return a
    whole = {axis: -1 for axis in range(1, np.ndim(a))}
    return da.from_array(np.asarray(a), chunks={0: "64MiB", **whole}, name=False)


# -- input checks ---------------------------------------------------------------------------
def _check_targets(model: Model, loss: Loss, x: Any, y: Any, per_row: dict[str, Any]) -> None:
    """The loss of the model's prediction for the first row, here: targets the loss refuses
    (another shape, dtype) raise its own clear error before any work is sent, not once per
    shard from the workers. Evaluation mode (see :func:`xplstm.batched.predict`), so no
    dropout mask is drawn."""
    first = {name: np.asarray(values[:1]) for name, values in per_row.items()}
    prediction = batched.on_model(model, batched.predict(model, x[:1], 1, **first))
    try:
        loss(prediction, batched.on_model(model, y[:1]))
    except (ValueError, TypeError) as error:
        message = f"y does not fit loss(model(x), y) (tried on the first row): {error}"
        raise type(error)(message) from None


def _check_inputs(model: Model, x: Any, name: str, **steps: Any) -> None:
    """``x`` (with ``lengths`` or ``mask``) fits the model (see
    :func:`xplstm.batched.check_inputs`), chunked along rows only."""
    batched.check_inputs(model, x, name, **steps)
    if isinstance(x, da.Array) and any(len(c) > 1 for c in x.chunks[1:]):
        raise ValueError(
            f"{name} is chunked along time or features (chunks {x.chunks[1:]}); the "
            f"recurrence cannot cross chunks: rechunk with {name}.rechunk({{1: -1, 2: -1}})"
        )


__all__ = [
    "CONNECT_TIMEOUT",
    "ClusterError",
    "DataParallel",
    "Replica",
    "batch_rows",
    "client_for",
    "cluster",
    "connect",
    "fit",
    "predict",
    "shard_bounds",
]
