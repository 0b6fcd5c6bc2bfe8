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
is recomputed elsewhere from its lineage. The model on the workers is :mod:`xplstm.replica`;
starting a cluster, connecting to one and checking its workers is :mod:`xplstm.cluster`.

Scripts that start a ``LocalCluster`` (any of these functions without ``client=``) need
``if __name__ == "__main__":``: its worker processes import the main module again.
"""

from __future__ import annotations

# First, alone: when Dask is missing, or a file hides it, it says what to do.
from xplstm.cluster import (
    CONNECT_TIMEOUT,
    HANDSHAKE_MARGIN,
    ClusterError,
    client_for,
    cluster,
    connect,
)

# isort: split
import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.distributed import Client, Future
from tqdm import tqdm

from xplstm import batched, loop, optim
from xplstm.checks import flag, positive, positive_int
from xplstm.cluster import check_workers, using, workers_listed
from xplstm.replica import Loss, Model, Replica, predict_block, shard_gradients

#: Rows per forward pass in :func:`predict`, unless told otherwise.
PREDICT_BATCH = 256


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

    ``x`` (rows, seq, features) is a host NumPy array, cut into blocks of at most
    ``batch_size`` rows, the same share for every worker (:func:`block_bounds`; block ``i`` on
    worker ``i mod W``), or a Dask array chunked along the rows only (its chunks are the blocks,
    run ``batch_size`` rows at a time): the recurrence cannot cross chunks along time.
    ``lengths`` (rows,) or ``mask`` (rows, seq), host or Dask arrays, travel with the blocks of
    ``x``. The parameters travel as one key of the task graph, and only when they changed since
    the last call on this client; each worker thread keeps the model it built, with its
    workspaces, and loads other parameters into it when they come. ``client``: see :func:`fit`.

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
    with using(client) as active:
        workers = check_workers(active, model.backend)
        replica = _replica_on(active, model)
        places: list[dict[str, Any]]
        if isinstance(x, da.Array):  # its chunks' tasks place the blocks
            blocks = list(x.to_delayed().ravel())
            stops = np.cumsum(x.chunks[0])
            bounds = list(zip([0, *stops[:-1]], stops, strict=True))
            places = [{}] * len(blocks)
        else:  # block i on worker i mod W; else all would go where the replica is
            bounds = block_bounds(x.shape[0], batch_size, len(workers))
            blocks = [x[start:stop] for start, stop in bounds]
            places = [
                {"workers": [workers[i % len(workers)]], "allow_other_workers": True}
                for i in range(len(blocks))
            ]
        tasks = []
        for block, (start, stop), place in zip(blocks, bounds, places, strict=True):
            rows = {k: v[start:stop] for k, v in steps.items()}
            with dask.annotate(**place):
                task = dask.delayed(predict_block, pure=False)
                tasks.append(task(replica, block, batch_size, rows))
        futures = active.compute(tasks)  # one message to the scheduler
        _HELD[active.id] = futures  # the last call's are released only now: see _HELD
        outputs = active.gather(futures)
    return np.concatenate(outputs)


def block_bounds(rows: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """Where each of :func:`predict`'s blocks of a host array starts and stops: blocks of at
    most ``batch_size`` rows, as many as the fewest such blocks rounded up to a multiple of
    ``workers`` (at most one a row), sizes differing by at most one (:func:`shard_bounds`):
    every worker gets the same share, and 256 rows at ``batch_size=256`` on 2 workers are 2
    blocks of 128, not 1 block that leaves a worker idle."""
    fewest = -(-rows // batch_size)
    return shard_bounds(rows, min(rows, -(-fewest // workers) * workers))


#: Per client (by id), the replica last placed on its cluster by :func:`predict`, under a key
#: made of its content: predicting again with an unchanged model sends nothing.
_PLACED: dict[str, Future] = {}
#: The states of a future that cannot be used again.
_FAILED = ("cancelled", "error", "lost")
#: Per client (by id), the futures of :func:`predict`'s last call, released when the next call
#: has sent its graph. Released at once, they would start the client's 10 ms window of batched
#: messages (``BatchedSend``) just before the next call's graph, which would then wait for
#: the window's end: 4-5 ms a call when calls follow each other (docs/distributed.md).
_HELD: dict[str, list[Future]] = {}


def _replica_on(client: Client, model: Model) -> Future:
    """The future of ``model``'s :class:`Replica` on ``client``'s cluster: the one placed by an
    earlier call when the hash of its content (description, parameters, backend, device kind,
    mode) is unchanged, else a new one, sent once, replacing the old. A computed task, not
    scattered data: if its worker dies, the scheduler computes it again."""
    replica = Replica.of(model)
    key = f"xplstm-replica-{dask.base.tokenize(replica)}"
    held = _PLACED.get(client.id)
    if held is None or held.key != key or held.status in _FAILED:
        for closed in [c for c, f in _PLACED.items() if f.client.status != "running"]:
            del _PLACED[closed]  # and with it the client
            _HELD.pop(closed, None)
        held = _PLACED[client.id] = client.compute(dask.delayed(replica, name=key, traverse=False))
    return held


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
        self.workers = check_workers(client, model.backend)
        self._seen = time.monotonic()
        self._held: list[Future] = []
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
        tasks = []
        for shard, (start, stop) in enumerate(bounds):
            rows = {name: values[start:stop] for name, values in per_row.items()}
            with dask.annotate(workers=[workers[shard % len(workers)]], allow_other_workers=True):
                task = dask.delayed(shard_gradients, pure=False)
                tasks.append(
                    task(
                        replica,
                        self.loss,
                        x[start:stop],
                        y[start:stop],
                        self._dropout_seed(shard),
                        rows,
                    )
                )
        # One message to the scheduler, the parameters in it once; the last step's futures
        # released only after it (as predict's: see _HELD).
        futures = self._held = self.client.compute(tasks)
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
            self.workers = sorted(workers_listed(self.client)) or self.workers
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
    with using(client) as active:
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
    "HANDSHAKE_MARGIN",
    "ClusterError",
    "DataParallel",
    "Replica",
    "batch_rows",
    "block_bounds",
    "client_for",
    "cluster",
    "connect",
    "fit",
    "predict",
    "shard_bounds",
]
