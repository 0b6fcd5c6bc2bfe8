"""xplstm.distributed on a real Dask LocalCluster in processes: sharded predict equals the
forward, data-parallel fit equals a plain loop on any number of workers, survives a killed
worker, resumes from a checkpoint, and refuses bad input with clear errors."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "distributed", reason="xplstm.distributed needs pip install 'xplstm[distributed]'"
)
import dask.array as da
from dask.distributed import Client, LocalCluster, get_task_stream

import xplstm
from tests.support import assert_close, assert_same_state, state_of
from xplstm import checkpoint, cli, distributed, losses, optim

ROWS, SEQ, FEATURES, HIDDEN = 24, 5, 3, 6


def small_model(backend: str = "numpy", dtype: str = "float64") -> xplstm.Sequential:
    return xplstm.Sequential(
        xplstm.LSTM(FEATURES, HIDDEN, backend=backend, dtype=dtype, seed=0),
        xplstm.LastStep(),
        xplstm.Linear(HIDDEN, 2, backend=backend, dtype=dtype, seed=1),
    )


def data(rows: int = ROWS, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, SEQ, FEATURES)).astype(dtype)
    return x, rng.standard_normal((rows, 2)).astype(dtype)


@pytest.fixture(scope="module")
def client():
    """Two worker processes for the whole module (not the default client: ``client=None``
    must start its own cluster)."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def parameters(model: xplstm.Sequential) -> list[np.ndarray]:
    return [xplstm.to_numpy(p.values) for p in model.parameters()]


def dropout_model() -> xplstm.Sequential:
    """A stacked LSTM with dropout between its layers and on h(t-1), in training mode."""
    return xplstm.Sequential(
        xplstm.LSTM(
            FEATURES, HIDDEN, num_layers=2, dropout=0.5, recurrent_dropout=0.3,
            dtype="float64", seed=0,
        ),
        xplstm.LastStep(),
        xplstm.Linear(HIDDEN, 2, dtype="float64", seed=1),
    )  # fmt: skip


def run_fit(client, steps: int = 4, make=small_model, **options):
    """A fresh model trained by fit with Adam and clipping; (losses, parameters)."""
    model = make()
    optimizer = optim.Adam(model.parameters(), lr=0.05)
    x, y = data()
    options = {"loss": losses.mse, "batch_size": 8, "steps": steps, "clip": 0.5} | options
    history = distributed.fit(model, optimizer, x, y, client=client, **options)
    return history, parameters(model)


def plain_loop(steps: int = 4) -> tuple[list[float], list[np.ndarray]]:
    """The same training in one process: batches drawn as fit's docstring says (a permutation
    of the rows per epoch from default_rng([seed, epoch]), read 8 rows at a time)."""
    model = small_model()
    optimizer = optim.Adam(model.parameters(), lr=0.05)
    x, y = data()
    order = np.concatenate([np.random.default_rng([0, e]).permutation(ROWS) for e in range(3)])
    history = []
    for step in range(steps):
        rows = order[8 * step : 8 * (step + 1)]
        loss, d_prediction = losses.mse(model(x[rows]), y[rows])
        model.backward(d_prediction)
        optim.clip_grad_norm(model.parameters(), 0.5)
        optimizer.step()
        history.append(float(loss))
    return history, parameters(model)


def assert_same(actual, expected, atol: float | None = None) -> None:
    """Equal losses and parameters: bit for bit, or to ``atol``."""
    (got_losses, got_params), (want_losses, want_params) = actual, expected
    level = {"level": "exact"} if atol is None else {"rtol": 0.0, "atol": atol}
    got_losses, want_losses = np.asarray(got_losses), np.asarray(want_losses)
    assert_close(got_losses, want_losses, like=want_losses, name="losses", **level)
    for index, (got, want) in enumerate(zip(got_params, want_params, strict=True)):
        assert_close(got, want, like=want, name=f"parameter {index}", **level)


# -- predict --------------------------------------------------------------------------------
def test_predict_with_a_ragged_last_chunk_equals_the_forward(client):
    """Blocks of 4, 4 and 2 rows, from a NumPy array and from a Dask array; only the rounding
    of matrix products over fewer rows may differ."""
    model = small_model()
    x, _ = data(10)
    expected = model(x)
    for given in (x, da.from_array(x, chunks=(4, -1, -1))):
        outputs = distributed.predict(model, given, client=client, batch_size=4)
        assert_close(outputs, expected, like=expected, level="ulps")
    lstm = xplstm.LSTM(FEATURES, HIDDEN, dtype="float64", seed=3)  # a bare LSTM gives its y
    outputs = distributed.predict(lstm, x, client=client, batch_size=3)
    assert_close(outputs, lstm(x)[0], like=x, level="ulps")


def test_the_task_stream_shows_fit_working_on_both_workers(client):
    with get_task_stream(client) as stream:
        run_fit(client, steps=2, shards=2)
    assert len({task["worker"] for task in stream.data}) == 2


def test_predict_spreads_its_blocks_and_sends_the_parameters_once(client, monkeypatch):
    """Every block depends on the replica, so the scheduler would put them all on the one
    worker that holds it: block i goes to worker i mod 2 instead. A second call with the model
    unchanged sends no replica, and a changed model a new one, whose outputs the workers give."""
    x = data(40)[0]
    distributed.predict(small_model(), x, client=client)  # both workers warm: no slow first
    # call, whose block the scheduler would move to the idle worker
    sent = []  # the keys of the replicas the driver sends
    compute = client.compute
    monkeypatch.setattr(
        client, "compute", lambda c, **kw: sent.append(getattr(c, "key", "")) or compute(c, **kw)
    )
    model = small_model()
    model.parameters()[-1].values[...] = 0.25  # a model no other test placed on the cluster

    def run(**options):
        with get_task_stream(client) as stream:
            outputs = distributed.predict(model, x[: options.pop("rows", 40)], client=client,
                                          **options)  # fmt: skip
        blocks = [t for t in stream.data if t["key"].startswith("predict_block")]
        replicas = [key for key in sent if key.startswith("xplstm-replica")]
        sent.clear()
        return outputs, blocks, len(replicas)

    # 8 rows at the default batch_size, the replica on one worker: 2 blocks of 4, one on each.
    outputs, blocks, replicas = run(rows=8)
    assert_close(outputs, model(x[:8]), like=x, level="ulps")
    assert (len(blocks), len({t["worker"] for t in blocks}), replicas) == (2, 2, 1)
    outputs, blocks, replicas = run(batch_size=4)
    assert_close(outputs, model(x), like=x, level="ulps")
    assert (len(blocks), len({t["worker"] for t in blocks}), replicas) == (10, 2, 0)
    # Each block reads the replica where it is, or fetches it once per worker, never per task.
    fetched = [t for t in blocks if any(s["action"] == "transfer" for s in t["startstops"])]
    assert len(fetched) <= 1, fetched
    model.parameters()[-1].values[...] = -0.5
    outputs, blocks, replicas = run()
    assert_close(outputs, model(x), like=x, level="ulps")
    assert replicas == 1


@pytest.mark.parametrize("call", ["predict", "fit step"])
def test_a_call_sends_one_graph_and_releases_the_last_calls_results_after_it(
    client, monkeypatch, call
):
    """One message to the scheduler a call (a fit step's shards and their parameters, once,
    not one graph a shard); the last call's results are released only after it, so that their
    release does not hold the next graph back in the client's batching window."""
    model, (x, y) = small_model(), data(16)
    engine = distributed.DataParallel(model, losses.mse, client, shards=2)
    run = {
        "predict": lambda: distributed.predict(model, x, client=client, batch_size=4),
        "fit step": lambda: engine.gradients(x, y),
    }[call]
    graphs: list[set[str]] = []  # the keys each compute call asked for (no futures held here)
    compute = client.compute

    def counted(collections, **options):
        futures = compute(collections, **options)
        graphs.append({future.key for future in futures})
        return futures

    run()  # the replica placed, the workers checked
    monkeypatch.setattr(client, "compute", counted)
    run()
    assert len(graphs) == 1 and len(graphs[0]) >= 2, "one graph a call, its tasks in it"
    time.sleep(0.1)  # the client releases a future on its event loop
    assert graphs[0] <= set(client.futures), "the last call's results were released at once"
    run()
    assert len(graphs) == 2
    deadline = time.monotonic() + 5
    while graphs[0] & set(client.futures) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not graphs[0] & set(client.futures), "the call before the last is still held"


def test_predict_blocks_give_every_worker_the_same_share():
    """At most batch_size rows a block, a multiple of the workers' count of blocks (at most
    one a row), sizes differing by at most one."""
    assert distributed.block_bounds(256, 256, 2) == [(0, 128), (128, 256)]
    assert distributed.block_bounds(40, 4, 2) == [(i, i + 4) for i in range(0, 40, 4)]
    assert distributed.block_bounds(10, 4, 2) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert distributed.block_bounds(3, 256, 4) == [(0, 1), (1, 2), (2, 3)]
    assert distributed.block_bounds(7, 256, 1) == [(0, 7)]


def test_a_worker_keeps_its_model_and_loads_each_replicas_parameters():
    """One model per worker thread and description (with the workspaces its layers keep),
    holding the parameters of the replica it was last given; another description builds
    another model."""
    from xplstm.replica import kept

    x = data(4)[0]
    first, second = small_model(), small_model()
    second.parameters()[0].values[...] = 0.5
    model = kept(distributed.Replica.of(first))
    assert_close(model(x), first(x), like=x, level="exact")
    replica = distributed.Replica.of(second)
    assert kept(replica) is model
    assert_close(model(x), second(x), like=x, level="exact")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(kept(replica)))
    thread.start()
    thread.join()
    assert seen[0] is not model  # one per thread: workspaces serve one call at a time
    assert kept(distributed.Replica.of(dropout_model())) is not model


def test_a_worker_loads_unaligned_parameters_into_aligned_memory():
    """Arrays unpickled from a Dask message may start at any byte; loaded into the kept model
    as they are, its forward ran slower (see ``kept``): they are copied, the values the same."""
    from xplstm.replica import kept

    def unaligned(a: np.ndarray) -> np.ndarray:
        raw = np.empty(a.nbytes + 1, np.uint8)[1:]  # one byte past an aligned start
        view = np.frombuffer(raw.data, dtype=a.dtype).reshape(a.shape)
        view[...] = a
        return view

    x = data(4)[0]
    first, second = small_model(), small_model()
    second.parameters()[0].values[...] = 0.5
    model = kept(distributed.Replica.of(first))
    replica = distributed.Replica.of(second)
    replica.arrays.update({k: unaligned(v) for k, v in replica.arrays.items()})
    assert not any(v.flags.aligned for v in replica.arrays.values())
    assert kept(replica) is model
    assert all(p.values.flags.aligned for p in model.parameters())
    assert_close(model(x), second(x), like=x, level="exact")


def test_fit_and_predict_with_the_model_on_each_backend(client, target):
    """The driver's model on any backend; workers rebuild it there (a device of the same kind)
    and the host gradients go back to the driver's device (float32: JAX workers lack x64)."""
    if target.backend == "dask":
        pytest.skip("a model on Dask is refused: see test_a_model_on_dask_is_refused")
    if target.backend in ("torch", "jax"):
        pytest.skip(f"{target.backend}: importing it in each worker takes 5-25 s on this machine")
    trained = []
    for backend, device in (("numpy", None), (target.backend, target.device)):
        model = xplstm.Sequential(
            xplstm.LSTM(FEATURES, HIDDEN, backend=backend, device=device, seed=0),
            xplstm.LastStep(),
            xplstm.Linear(HIDDEN, 2, backend=backend, device=device, seed=1),
        )
        x, y = data(dtype="float32")
        optimizer = optim.Adam(model.parameters(), lr=0.05)
        history = distributed.fit(
            model, optimizer, x, y, loss=losses.mse, batch_size=8, steps=2, client=client
        )
        assert model.backend == backend and model.device == (device or model.device)
        trained.append((history, parameters(model), distributed.predict(model, x, client=client)))
    (want_losses, want_params, want_y), (losses_, params, y_) = trained
    as_model = {"dtype": "float32"}  # the losses of a float32 model, read as Python floats
    assert_close(np.asarray(losses_, **as_model), np.asarray(want_losses, **as_model), like=x)
    for got, want in zip([*params, y_], [*want_params, want_y], strict=True):
        assert_close(got, want, like=want)  # another backend: the reference level


# -- fit ------------------------------------------------------------------------------------
def test_fit_on_one_two_and_three_workers_equals_a_plain_loop(client, tmp_path):
    expected = plain_loop()
    # client=None and one shard: a LocalCluster for the call, bit for bit the plain loop; a
    # Ctrl-C reaches its workers too (they share the terminal's process group) and they go on.
    calls = tmp_path / "calls"
    interrupted = SignalAtCall(str(calls), at=2, signum=signal.SIGINT)
    assert_same(run_fit(None, shards=1, loss=interrupted), expected)
    assert callers(calls)[1] in callers(calls)[2:], "the interrupted worker did not go on"
    fixed = run_fit(client, shards=3)
    assert_same(run_fit(client), expected, atol=1e-10)  # two shards, one per worker
    # One and three workers run in threads of this process: processes take seconds to start
    # on this 2-core machine, and the two clusters above run in processes.
    for workers in (1, 3):
        with distributed.cluster(workers=workers, processes=False) as other:
            assert_same(run_fit(other), expected, atol=1e-10)  # one and three shards
            assert_same(run_fit(other, shards=3), fixed)  # the same shards: the same bits


@dataclass(frozen=True)
class SignalAtCall:
    """MSE, but the process making call number ``at`` sends itself ``signum`` mid-step,
    between forward and backward. Each call appends its process id to the file ``calls``."""

    calls: str
    at: int
    signum: int

    def __call__(self, prediction, target):
        handle = os.open(self.calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(handle, b"%10d\n" % os.getpid())
            number = os.lseek(handle, 0, os.SEEK_CUR) // 11  # this call's own line
        finally:
            os.close(handle)
        if number == self.at:
            os.kill(os.getpid(), self.signum)
        return losses.mse(prediction, target)


def callers(calls: Path) -> list[int]:
    """The process ids of the calls of a ``SignalAtCall``, in order."""
    return [int(line) for line in calls.read_text().split()]


def test_a_worker_killed_mid_fit_does_not_change_the_result(client, tmp_path):
    x, y = data()
    chunked = (da.from_array(x, chunks=(6, -1, -1)), da.from_array(y, chunks=(6, -1)))

    def run(loss):
        model = small_model()
        optimizer = optim.Adam(model.parameters(), lr=0.05)
        history = distributed.fit(
            model,
            optimizer,
            *chunked,
            loss=loss,
            batch_size=8,
            steps=5,
            shards=2,
            client=client,
            clip=0.5,
        )
        return history, parameters(model)

    expected = run(losses.mse)
    before = set(client.run(os.getpid).values())
    tickets = tmp_path / "tickets"
    survived = run(SignalAtCall(str(tickets), at=5, signum=signal.SIGKILL))  # step 3, shard 1
    assert len(callers(tickets)) > 10, "the killed shard was not recomputed"
    client.wait_for_workers(2, timeout=30)
    after = set(client.run(os.getpid).values())
    assert len(before - after) == 1, "exactly one worker process should have been replaced"
    assert_same(survived, expected)


def test_predict_runs_without_dropout(client):
    """A prediction is not random: dropout is off on the workers and in the local batched run,
    and the caller's model keeps its training mode."""
    model = dropout_model()
    x, _ = data(6)
    expected = xplstm.to_numpy(model.eval()(x))
    model.train()
    assert_close(distributed.predict(model, x, client=client), expected, like=x, level="ulps")
    assert_close(distributed.predict(model, x, client=client), expected, like=x, level="ulps")
    from xplstm import batched

    assert_close(batched.predict(model, x, 4), expected, like=x, level="ulps")
    assert model.layers[0].training
    assert not np.allclose(xplstm.to_numpy(model(x)), expected)  # dropout acts in training


def test_fit_with_dropout_is_reproducible_and_resumes(client, tmp_path):
    """Each shard's masks come from (seed, step, shard): the same run twice, and a resumed run,
    end with the same parameters; and the masks act (eval mode trains differently)."""
    expected = run_fit(client, steps=4, make=dropout_model, shards=2)
    assert_same(run_fit(client, steps=4, make=dropout_model, shards=2), expected)
    path = tmp_path / "run.npz"
    run_fit(client, steps=2, make=dropout_model, shards=2, checkpoint=path, every=2)
    resumed = run_fit(client, steps=4, make=dropout_model, shards=2, checkpoint=path, every=2)
    assert_same(resumed, expected)
    without = run_fit(client, steps=4, make=lambda: dropout_model().eval(), shards=2)
    assert not np.allclose(without[1][0], expected[1][0])


def sharded_loop_with_dropout(steps: int = 3, seed: int = 5) -> tuple[list[float], list]:
    """fit's training with dropout in one process, as DataParallel's docstring says: each
    global batch cut into 2 shards of 4 rows, shard ``s`` of step ``t`` with its masks drawn
    after ``dropout_seed`` of the first word of ``SeedSequence([seed, t, s])``, the shards'
    gradients and losses weighted by rows and added in shard order."""
    model = dropout_model()
    optimizer = optim.Adam(model.parameters(), lr=0.05)
    x, y = data()
    order = np.concatenate([np.random.default_rng([seed, e]).permutation(ROWS) for e in range(3)])
    history = []
    for step in range(steps):
        rows = order[8 * step : 8 * (step + 1)]
        total_loss, total = 0.0, None
        for shard, part in enumerate((rows[:4], rows[4:])):
            state = np.random.SeedSequence([seed, step, shard]).generate_state(2, np.uint64)
            model.layers[0].dropout_seed(int(state[0]))
            loss, d_prediction = losses.mse(model(x[part]), y[part])
            model.backward(d_prediction)
            deltas = [0.5 * p.deltas for p in model.parameters()]
            total = deltas if total is None else [a + b for a, b in zip(total, deltas, strict=True)]
            total_loss += 0.5 * float(loss)
        for param, delta in zip(model.parameters(), total, strict=True):
            param.deltas = delta
        optim.clip_grad_norm(model.parameters(), 0.5)
        optimizer.step()
        history.append(total_loss)
    return history, parameters(model)


def test_each_shard_of_each_step_draws_its_own_dropout_masks(client):
    """The per-shard dropout seeds of data-parallel fit: (seed, step, shard), as documented."""
    expected = sharded_loop_with_dropout()
    actual = run_fit(client, steps=3, make=dropout_model, shards=2, seed=5)
    assert_same(actual, expected, atol=1e-12)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(client, tmp_path, capsys):
    expected = run_fit(client, steps=5, shards=2)
    path = tmp_path / "run.npz"
    run_fit(client, steps=2, shards=2, checkpoint=path, every=2)  # the driver stops here
    assert "resuming" not in capsys.readouterr().err
    saved = checkpoint.load(path)  # an ordinary checkpoint too
    assert isinstance(saved, xplstm.Sequential)
    assert_same(run_fit(client, steps=5, shards=2, checkpoint=path, every=2), expected)
    said = f"xplstm.distributed.fit: resuming from {path} at step 2 of 5 (resume=False starts"
    assert said in capsys.readouterr().err
    # A finished run found again: resume=False trains afresh (and overwrites the file).
    assert_same(run_fit(client, steps=5, shards=2, checkpoint=path, resume=False), expected)
    assert "resuming" not in capsys.readouterr().err
    with pytest.raises(checkpoint.CheckpointError, match=r"saved by a run with .*'seed': 0"):
        run_fit(client, steps=6, shards=2, checkpoint=path, seed=1)


def _training_record(**fields):
    """Edit the training record of a checkpoint (its JSON description)."""

    def change(path):
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        header = json.loads(str(arrays["__xplstm__"]))
        header["training"] |= fields
        arrays["__xplstm__"] = np.array(json.dumps(header))
        np.savez(path, **arrays)

    return change


#: Each reason fit refuses to resume from a checkpoint on its own: (a change to the file,
#: fit's options, the message).
RESUME_REFUSALS = {
    "another-seed": (None, {"seed": 1}, r"saved by a run with \{'seed': 0, .*\}, not \{'seed': 1"),
    "another-batch-size": (None, {"batch_size": 6}, r"'batch_size': 8, .*not .*'batch_size': 6"),
    "other-data": (
        _training_record(rows=ROWS + 1), {}, rf"'rows': {ROWS + 1}\}}, not .*'rows': {ROWS}"
    ),
    "past-the-steps": (None, {"steps": 1}, "is at step 2, past steps=1; ask for more steps"),
    "no-training-step": (
        _training_record(step=None), {}, r"is not a training checkpoint \(it holds no training"
    ),
    "bad-losses": (
        _training_record(losses=[1.0]), {}, "'losses' must list the 2 losses of the steps done"
    ),
    "no-optimizer-state": (
        lambda path: checkpoint.save(path, small_model()), {}, "holds no optimizer state"
    ),
    "too-many-shards": (None, {"shards": 9}, "a batch of 8 rows cannot be cut into 9 shards"),
}  # fmt: skip


@pytest.mark.parametrize("refusal", RESUME_REFUSALS.values(), ids=RESUME_REFUSALS.keys())
def test_a_refused_resume_changes_nothing(client, tmp_path, refusal):
    """The model's parameters and the optimizer's step count and buffers are as they were,
    and the checkpoint too: fit checks the file and its options, then restores."""
    change, options, message = refusal
    path = tmp_path / "run.npz"
    run_fit(client, steps=2, shards=2, checkpoint=path, every=2)
    if change is not None:
        change(path)
    saved = path.read_bytes()
    model = small_model()
    optimizer = optim.Adam(model.parameters(), lr=0.05)
    x, y = data()
    distributed.fit(model, optimizer, x, y, loss=losses.mse, batch_size=8, steps=1, client=client)
    before = state_of(model, optimizer)
    options = {"loss": losses.mse, "batch_size": 8, "steps": 4, "shards": 2} | options
    with pytest.raises(ValueError, match=message):
        distributed.fit(model, optimizer, x, y, client=client, checkpoint=path, **options)
    assert_same_state(state_of(model, optimizer), before)
    assert path.read_bytes() == saved


def test_a_non_finite_loss_stops_fit_before_its_update(client, tmp_path):
    """A NaN in one row: fit raises at the first step whose batch holds it, with the model
    (and the checkpoint) of the step before, the last finite one."""
    x, y = data()
    first = set(distributed.batch_rows(ROWS, 8, 0, 0))
    poisoned = next(r for r in distributed.batch_rows(ROWS, 8, 0, 1) if r not in first)
    x[poisoned, 2, 1] = np.nan
    expected = run_fit(client, steps=1, shards=2)
    model = small_model()
    optimizer = optim.Adam(model.parameters(), lr=0.05)
    path = tmp_path / "run.npz"
    with pytest.raises(
        FloatingPointError,
        match=r"step 2 gave a non-finite loss \(nan\) or gradient norm \(nan\); stopped before "
        r"its update: the model is that of step 1, the last finite one \(saved in .*run\.npz\)",
    ):
        distributed.fit(model, optimizer, x, y, loss=losses.mse, batch_size=8, steps=4,
                        shards=2, clip=0.5, client=client, checkpoint=path)  # fmt: skip
    assert_same(([], parameters(model)), ([], expected[1]))
    assert optimizer.steps == 1
    assert_same(([], parameters(checkpoint.load(path))), ([], expected[1]))


# -- the CuPy route, on the CPU -------------------------------------------------------------
BACKEND_PROBLEM = xplstm.backends.unavailable_reason


def test_workers_compute_on_their_own_device_and_send_host_gradients(client):
    """A model on a GPU other than the first (array_api_strict's ``device2`` here): workers
    rebuild it on their first device of that kind (``device1``; under dask-cuda a worker's
    first GPU is its own), place their shards there, and return host gradients, which go
    back to ``device2``. array_api_strict refuses NumPy operands and mixed devices, so any
    slip fails here as it would on GPUs."""
    model = small_model("array_api_strict").to("array_api_strict", "device2")
    rebuilt = distributed.Replica.of(model).build()
    assert str(rebuilt.device) == "array_api_strict.Device('device1')"
    x, y = data()
    expected = run_fit(client, shards=2)
    optimizer = optim.Adam(model.parameters(), lr=0.05)
    history = distributed.fit(
        model, optimizer, x, y, loss=losses.mse, batch_size=8, steps=4, shards=2,
        client=client, clip=0.5,
    )  # fmt: skip
    assert str(model.device) == "array_api_strict.Device('device2')"
    assert_same((history, parameters(model)), expected, atol=1e-12)
    host = checkpoint.model_from_arrays(*checkpoint.model_arrays(model), "numpy")
    assert_close(distributed.predict(model, x, client=client), host(x), like=x, level="ulps")


# -- clear errors ---------------------------------------------------------------------------
def test_no_scheduler_at_the_address_is_a_clear_error_within_the_timeout():
    started = time.perf_counter()
    with pytest.raises(
        distributed.ClusterError,
        match=r"no Dask scheduler answered at 'tcp://127.0.0.1:9' within 1 s",
    ):
        distributed.connect("tcp://127.0.0.1:9", timeout=1)
    assert time.perf_counter() - started < 10


@pytest.fixture
def silent_server():
    """The address of a local port that accepts TCP connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for connection in accepted:
            connection.close()


#: What a timeout may be overrun by: cluster.HANDSHAKE_MARGIN and the time to give up.
MARGIN = 2.0


def within(seconds: float, call):
    """``call()`` in a thread: what it raised (or returned), or a test failure when it is
    still running after ``seconds`` (a timeout that does not hold would hang the suite)."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except BaseException as error:  # handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    return outcome[0]


def test_a_port_that_accepts_but_never_answers_times_out(silent_server):
    error = within(2 + MARGIN, lambda: distributed.connect(silent_server, timeout=2))
    assert isinstance(error, distributed.ClusterError)
    assert str(error).startswith(
        f"no Dask scheduler answered at '{silent_server}' within 2 s (something accepted the "
        "connection but never answered)"
    )


@pytest.mark.parametrize("command", ["train", "predict"])
def test_the_command_line_times_out_on_a_port_that_never_answers(
    silent_server, tmp_path, capsys, command
):
    """--scheduler with --connect-timeout: exit status 2 in time, and nothing written."""
    checkpoint.save(tmp_path / "m.npz", small_model(dtype="float32"))
    np.save(tmp_path / "x.npy", data(dtype="float32")[0])
    argv = {
        "train": ["train", "--out", str(tmp_path / "run"), "--quiet", "--steps", "2"],
        "predict": ["predict", "--model", str(tmp_path / "m.npz"), "--input",
                    str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")],
    }[command]  # fmt: skip
    where = ["--scheduler", silent_server, "--connect-timeout", "1"]
    exit_ = within(1 + MARGIN + 1, lambda: cli.main([*argv, *where]))  # and a tiny set-up
    assert isinstance(exit_, SystemExit) and exit_.code == 2
    assert f"no Dask scheduler answered at '{silent_server}' within 1 s" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "x.npy"]


def _numpy_missing(missing: bool) -> None:
    """On a worker: pretend NumPy is not installed, or stop pretending."""
    reason = lambda name: "not installed (pip install numpy)"  # noqa: E731
    xplstm.backends.unavailable_reason = reason if missing else BACKEND_PROBLEM


def test_workers_without_the_models_backend_are_a_clear_error(client, monkeypatch):
    monkeypatch.setattr(xplstm.cluster, "_CHECKED", weakref.WeakKeyDictionary())  # ask again
    client.run(_numpy_missing, True)
    try:
        with pytest.raises(
            distributed.ClusterError,
            match=r"2 of 2 workers cannot run the model's backend 'numpy' \(tcp://.*: not inst",
        ):
            distributed.predict(small_model(), data()[0], client=client)
    finally:
        client.run(_numpy_missing, False)


def test_the_workers_are_asked_about_the_backend_once_until_they_change(monkeypatch):
    """A second predict on the same workers asks none of them whether it can run the backend
    (one look at the scheduler's list instead); a worker that joins is asked at the next call,
    and gets its share of the blocks."""
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        asked = []
        run = client.run
        monkeypatch.setattr(client, "run", lambda f, *a, **kw: asked.append(f) or run(f, *a, **kw))
        model, x = small_model(), data(8)[0]
        for _ in range(2):
            assert_close(distributed.predict(model, x, client=client), model(x), like=x)
        assert len(asked) == 1
        cluster.scale(2)
        client.wait_for_workers(2)
        with get_task_stream(client) as stream:
            distributed.predict(model, x, client=client)
        assert len(asked) == 2
        blocks = [t for t in stream.data if t["key"].startswith("predict_block")]
        assert len({t["worker"] for t in blocks}) == 2
        # A worker restarted at the same address (a fixed port) has a new local directory.
        listed = client.scheduler_info

        def restarted(*args, **kwargs):
            found = copy.deepcopy(listed(*args, **kwargs))
            for info in found["workers"].values():
                info["local_directory"] += "-restarted"
            return found

        monkeypatch.setattr(client, "scheduler_info", restarted)
        distributed.predict(model, x, client=client)
        assert len(asked) == 3


def test_every_worker_is_listed_where_the_scheduler_lists_five_by_default(monkeypatch):
    """On distributed 2025.4 to 2026.6 ``scheduler_info()`` lists 5 workers unless asked for
    all: predict's check finds the 6 it asked again at the next call (asks no worker twice),
    and DataParallel's refresh sees all 6. (The blocks went to all 6 before the fix too: the
    check returned the workers that answered it.)"""
    with (
        LocalCluster(n_workers=6, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        listed = client.scheduler_info

        def five_by_default(n_workers=5, **kwargs):
            found = copy.deepcopy(listed(n_workers=-1, **kwargs))
            kept = sorted(found["workers"])[:n_workers] if n_workers > 0 else found["workers"]
            found["workers"] = {address: found["workers"][address] for address in kept}
            return found

        monkeypatch.setattr(client, "scheduler_info", five_by_default)
        assert len(five_by_default()["workers"]) == 5
        asked = []
        run = client.run
        monkeypatch.setattr(client, "run", lambda f, *a, **kw: asked.append(f) or run(f, *a, **kw))
        model, x = small_model(), data(12)[0]
        for _ in range(2):
            with get_task_stream(client) as stream:
                distributed.predict(model, x, client=client, batch_size=2)
            blocks = [t for t in stream.data if t["key"].startswith("predict_block")]
            assert len({t["worker"] for t in blocks}) == 6
        assert len(asked) == 1  # the second call found the same 6 workers listed
        engine = distributed.DataParallel(model, losses.mse, client)
        monkeypatch.setattr(engine, "REFRESH", 0.0)
        assert len(engine._workers()) == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y": np.zeros((ROWS - 1, 2))}, f"x has {ROWS} rows but y has {ROWS - 1}"),
        (
            {"x": da.from_array(data()[0], chunks=(8, 2, -1))},
            r"x is chunked along time or features \(chunks \(\(2, 2, 1\)",
        ),
        (
            {"x": data()[0].astype("float32")},
            "x has dtype float32 but the model computes in float64",
        ),
        (
            {"x": data()[0][:, :, :2]},
            r"x must have shape \(rows, seq, features\) = \(\?, \?, 3\), got \(24, 5, 2\)",
        ),
        ({"batch_size": ROWS + 1}, f"batch_size {ROWS + 1} is larger than the {ROWS} rows of x"),
        ({"shards": 9}, "a batch of 8 rows cannot be cut into 9 shards"),
    ],
)
def test_bad_input_to_fit_is_a_clear_error(client, change, message):
    model = small_model()
    x, y = data()
    options = {"x": x, "y": y, "loss": losses.mse, "batch_size": 8, "steps": 1} | change
    with pytest.raises((ValueError, TypeError), match=message):
        distributed.fit(model, optim.SGD(model.parameters(), lr=0.1), client=client, **options)


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.zeros((ROWS, 3)), r"target has shape \(1, 3\) but prediction has \(1, 2\)"),
        (np.zeros((ROWS, 2), dtype="float32"), "target has dtype float32 but prediction has"),
    ],
)
def test_targets_the_loss_refuses_are_refused_before_any_work_is_sent(
    client, monkeypatch, y, message
):
    """Checked on the driver: one clear error, no worker's "Compute Failed" per shard."""

    def refuse(*args, **kwargs):
        raise AssertionError("work was sent to the workers")

    monkeypatch.setattr(client, "compute", refuse)
    model = small_model()
    with pytest.raises((ValueError, TypeError), match=rf"y does not fit .*: {message}"):
        distributed.fit(model, optim.SGD(model.parameters(), lr=0.1), data()[0], y,
                        loss=losses.mse, batch_size=8, steps=1, client=client)  # fmt: skip


def test_errors_inside_a_call_on_the_default_client_come_out_as_they_are(client):
    model = small_model()
    x, y = data()
    with client.as_current(), pytest.raises(ValueError, match="cannot be cut into 9 shards"):
        distributed.fit(model, optim.SGD(model.parameters(), lr=0.1), x, y, loss=losses.mse,
                        batch_size=8, steps=1, shards=9)  # fmt: skip


def test_a_model_on_dask_is_refused(client):
    model = small_model("dask")
    with pytest.raises(ValueError, match="the model is on the dask backend"):
        distributed.predict(model, da.from_array(data()[0]), client=client)


# -- the command line -----------------------------------------------------------------------
@pytest.mark.parametrize("task", ["adding", "adding-lengths"])
def test_train_on_a_scheduler_equals_the_local_run(client, tmp_path, capsys, task):
    """The variable-length task too: each row's lengths go to the workers with its row."""
    argv = ["train", "--task", task, "--seq-len", "10", "--hidden", "8", "--batch", "8"]
    argv += ["--steps", "4"]
    assert cli.main([*argv, "--out", str(tmp_path / "here"), "--quiet"]) == 0
    on_cluster = ["--scheduler", client.scheduler.address]
    assert cli.main([*argv, "--out", str(tmp_path / "there"), "--quiet", *on_cluster]) == 0
    printed = capsys.readouterr().out
    assert "(cpu, data-parallel on 2 Dask workers): 4 steps" in printed
    here, there = (
        json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("here", "there")
    )
    assert (here["workers"], there["workers"]) == (None, 2)
    assert there["train_loss"] == pytest.approx(here["train_loss"], rel=1e-5)  # float32
    assert there["test_metric"] == pytest.approx(here["test_metric"], rel=1e-5)
    ours, theirs = (checkpoint.load(tmp_path / d / "model.npz") for d in ("there", "here"))
    for a, b in zip(parameters(ours), parameters(theirs), strict=True):
        assert_close(a, b, like=b, level="ulps")  # float32, two shards against one
    assert (tmp_path / "there" / "loss.png").exists()


def test_predict_writes_the_models_outputs_here_and_on_workers(tmp_path, capsys):
    model = small_model(dtype="float32")
    checkpoint.save(tmp_path / "m.npz", model)
    x, _ = data(30, dtype="float32")
    np.save(tmp_path / "x.npy", x)
    argv = ["predict", "--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "x.npy")]
    for where in ([], ["--workers", "1"]):
        out = tmp_path / f"y{len(where)}.npy"
        assert cli.main([*argv, "--output", str(out), "--batch-size", "8", *where]) == 0
        assert_close(np.load(out), model(x), like=x, level="ulps")
    assert f"{out}: outputs (30, 2) float32 for 30 sequences" in capsys.readouterr().out


def test_train_refuses_bad_cluster_options(tmp_path, capsys):
    for argv, message in [
        (["--workers", "0"], "--workers must be a positive int, got 0"),
        (["--workers", "2", "--scheduler", "tcp://x:1"], "not allowed with argument --workers"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train", "--out", str(tmp_path), "--quiet", *argv])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "0.5"],
            "no Dask scheduler answered at 'tcp://127.0.0.1:9' within 0.5 s",
        ),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], "not allowed with argument"),
    ],
)
def test_the_command_line_says_what_is_wrong(tmp_path, capsys, argv, message):
    checkpoint.save(tmp_path / "m.npz", small_model())
    np.save(tmp_path / "x.npy", data()[0].astype("float32"))
    files = ["--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "x.npy")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict", *files, "--output", str(tmp_path / "y.npy"), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["predict", *files, "--output", str(tmp_path / "y.npy")])
    assert "x.npy has dtype float32 but the model computes in float64; convert it first" in (
        capsys.readouterr().err
    )


def test_a_file_named_distributed_py_that_hides_dask_is_named(tmp_path):
    """A script's folder comes first on sys.path: its distributed.py is what `dask.distributed`
    imports then. Say which file, not only that Dask is missing."""
    (tmp_path / "distributed.py").write_text("")
    (tmp_path / "script.py").write_text("import xplstm.distributed\n")
    run = subprocess.run(
        [sys.executable, str(tmp_path / "script.py")], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert f"{tmp_path / 'distributed.py'} hides Dask's distributed package" in run.stderr


def test_fit_with_lengths_or_a_mask_equals_a_plain_loop(client):
    """Each row's lengths or mask travel with the row to its shard: two workers end where one
    shard (a single-process loop over the same batches) ends."""
    lengths = np.random.default_rng(2).integers(1, SEQ + 1, size=ROWS)
    mask = np.random.default_rng(3).random((ROWS, SEQ)) < 0.7
    for steps in ({"lengths": lengths}, {"mask": mask}, {"lengths": da.from_array(lengths)}):
        runs = [run_fit(client, shards=shards, **steps) for shards in (1, 2)]
        assert_same(runs[1], runs[0], atol=1e-12)
        assert not np.allclose(runs[0][1][0], run_fit(client, shards=1)[1][0])


def test_predict_passes_each_rows_lengths_or_mask_with_its_block(client, tmp_path):
    """Blocks of rows take their rows' lengths or mask, from host or Dask x, and the command
    line's --workers reads them from an .npz: the same outputs as the forward."""
    model = small_model()
    x, _ = data(10)
    lengths = np.array([5, 1, 3, 5, 2, 4, 1, 5, 3, 2])
    mask = np.random.default_rng(1).random((10, SEQ)) < 0.6
    for given in (x, da.from_array(x, chunks=(4, SEQ, FEATURES))):
        for steps in ({"lengths": lengths}, {"mask": mask}):
            outputs = distributed.predict(model, given, client=client, batch_size=3, **steps)
            assert_close(outputs, model(x, **steps), like=x, level="ulps")
    assert np.abs(distributed.predict(model, x, client=client, lengths=lengths) - model(x)).max()
    checkpoint.save(tmp_path / "m.npz", model)
    np.savez(tmp_path / "x.npz", x=x, lengths=lengths)
    files = ["--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "x.npz")]
    on_cluster = ["--scheduler", client.scheduler.address]
    assert cli.main(["predict", *files, "--output", str(tmp_path / "y.npy"), *on_cluster]) == 0
    assert_close(np.load(tmp_path / "y.npy"), model(x, lengths=lengths), like=x, level="ulps")


def test_input_errors_are_the_drivers_alone(client):
    """Lengths or masks that do not fit are refused on the driver before any task runs: one
    clear error, no worker traceback."""
    model, (x, _) = small_model(), data()
    bad = [
        ({"lengths": np.full(ROWS, SEQ + 1)}, r"lengths must be in 1\.\.seq"),
        ({"mask": np.ones((ROWS, SEQ + 1), bool)}, "mask must be booleans of shape"),
    ]
    with get_task_stream(client) as stream:
        for steps, message in bad:
            with pytest.raises(ValueError, match=message):
                distributed.predict(model, x, client=client, **steps)
            with pytest.raises(ValueError, match=message):
                run_fit(client, steps=1, **steps)
    assert stream.data == []
