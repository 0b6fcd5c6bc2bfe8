"""The rows of a benchmark: xplstm on each backend and path, torch.nn.LSTM, a naive baseline.

Each row knows how to build fresh runs (closures for ``forward``, ``forward+backward`` and
``train-step`` that return what to wait on), so that memory can be counted over one build from
nothing. A train step is the demo's (``xplstm train --task adding``): the LSTM, its last step, a
Linear head to one output, MSE, clipping of the global gradient norm at 1, Adam at lr 1e-2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

import xplstm
from xplstm import backends, losses, optim
from xplstm.backends import Backend
from xplstm.backends._numpy_fast import LOOP_ENV as NUMPY_LOOP_ENV
from xplstm.backends._numpy_fast import NUMBA_LOOPS, numba_installed
from xplstm.cell import step_backward, step_forward
from xplstm.lstm import fast_path_of

#: The reference every ratio is taken against.
REFERENCE = "torch.nn.LSTM"

Config = tuple[int, int, int, int]
Runs = dict[str, Callable[[], Any]]


@dataclass(frozen=True)
class Structure:
    """What every contender of a run builds beyond one plain layer: a stack, a reverse
    direction, rows of their own lengths (torch then runs ``pack_padded_sequence``)."""

    num_layers: int = 1
    bidirectional: bool = False
    lengths: bool = False

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def label(self) -> str:
        """A suffix for row names, empty for one plain layer."""
        parts = [f"{self.num_layers} layers"] if self.num_layers > 1 else []
        parts += ["bidirectional"] if self.bidirectional else []
        parts += ["lengths"] if self.lengths else []
        return f" [{', '.join(parts)}]" if parts else ""

    def host_lengths(self, batch: int, seq: int) -> np.ndarray | None:
        """Each row's length, from seq // 2 to seq (seeded), or ``None``."""
        if not self.lengths:
            return None
        return np.random.default_rng(1).integers(max(seq // 2, 1), seq + 1, size=batch)

    def flops_forward(self, config: Config) -> float:
        """Multiply-adds of the products of a forward, times 2, over every recurrence."""
        batch, seq, inputs, hidden = config
        per_input = [inputs] + [self.directions * hidden] * (self.num_layers - 1)
        return sum(
            2.0 * batch * seq * (size + hidden) * 4 * hidden * self.directions for size in per_input
        )


#: One plain layer: what the benchmark measures unless told otherwise.
PLAIN = Structure()


@dataclass(frozen=True, eq=False)
class Row:
    """One contender: how to build its runs, and where it runs. Hashed by identity: a device
    need not be hashable (CuPy's is not)."""

    name: str
    backend: Backend
    device: Any
    build: Callable[[], Runs]
    #: Whether this row is another library's LSTM: every row's ratio to the best peer is read.
    peer: bool = False


def naive_runs(xp: Any, w: Any, b: Any, x: Any, dy: Any) -> Runs:
    """The original layer's loop: [x_t, h] concatenated and multiplied at every step.

    A baseline only (no train step); it uses the same cell math (``step_forward``,
    ``step_backward``).
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


#: NumPy's fast path held to one of its loops (``$XPLSTM_NUMPY_LOOP``), as ``--paths`` names them.
NUMPY_LOOPS = ("compiled", "blas", "panels", "ufuncs")


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``$name`` set to ``value`` for the block only."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


#: The train step's learning rate and clipping threshold: the demo's.
LR, CLIP = 1e-2, 1.0


def xplstm_runs(layer: xplstm.LSTM, x: Any, dy: Any, target: Any, lengths: Any = None) -> Runs:
    """A layer's forward; its forward and backward with the first weight gradient; and one
    training step of ``Sequential(layer, LastStep(), Linear(features, 1))`` towards ``target``
    (batch, 1); every call with ``lengths`` when given."""
    features = layer.directions * layer.output_size
    head = xplstm.Linear(
        features, 1, backend=layer.backend, device=layer.device, dtype=layer.dtype, seed=1
    )
    model = xplstm.Sequential(layer, xplstm.LastStep(), head)
    optimizer = optim.Adam(model.parameters(), lr=LR)

    def forward() -> Any:
        return layer.forward(x, lengths=lengths)[0]

    def forward_backward() -> tuple:
        layer.forward(x, lengths=lengths)
        dx, _, _ = layer.backward(dy)
        return dx, layer.parameters()[0].deltas

    def train_step() -> Any:
        loss, d_prediction = losses.mse(model(x, lengths=lengths), target)
        model.backward(d_prediction)
        optim.clip_grad_norm(model.parameters(), CLIP)
        optimizer.step()
        return loss

    return {"forward": forward, "forward+backward": forward_backward, "train-step": train_step}


def torch_runs(
    hidden: int, x: Any, dy: Any, target: Any, structure: Structure = PLAIN, lengths: Any = None
) -> Runs:
    """torch.nn.LSTM (cuDNN on CUDA, TF32 off) with autograd, on the device and dtype of the
    tensor ``x``, with ``lengths`` through ``pack_padded_sequence(enforce_sorted=False)`` and
    back; the train step as xplstm's: nn.LSTM, nn.Linear on the last (valid) step, MSE,
    clip_grad_norm_, torch.optim.Adam."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    if x.is_cuda:
        # torch lets cuDNN compute float32 in TF32 unless told not to; xplstm's products on a GPU
        # do not (CuPy's and cuBLAS's defaults): both sides compute in full float32.
        torch.backends.cudnn.allow_tf32 = False
    module = torch.nn.LSTM(
        x.shape[-1],
        hidden,
        num_layers=structure.num_layers,
        bidirectional=structure.bidirectional,
        batch_first=True,
        dtype=x.dtype,
    ).to(x.device)
    head = torch.nn.Linear(structure.directions * hidden, 1, dtype=x.dtype).to(x.device)
    parameters = [*module.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=LR)
    inputs = x.detach()
    x = x.detach().requires_grad_(True)
    batch, seq = x.shape[:2]
    rows = torch.arange(batch, device=x.device)
    last = torch.full((batch,), seq - 1) if lengths is None else lengths - 1

    def run(given: Any) -> Any:
        if lengths is None:
            return module(given)[0]
        packed = pack_padded_sequence(given, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(module(packed)[0], batch_first=True, total_length=seq)[0]

    def forward_backward() -> Any:
        module.zero_grad(set_to_none=True)
        x.grad = None
        run(x).backward(dy)
        return x.grad

    def train_step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        kept = run(inputs)[rows, last.to(x.device)]
        loss = torch.nn.functional.mse_loss(head(kept), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, CLIP)
        optimizer.step()
        return loss.detach()

    return {
        "forward": lambda: run(x),
        "forward+backward": forward_backward,
        "train-step": train_step,
    }


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


def _keras_rows(
    want: str, config: Config, structure: Structure, host: tuple
) -> tuple[list[Row], str | None]:
    """Keras's LSTM on JAX as a peer row, or why it cannot run here."""
    from xplstm.bench import keras_peer

    reason = keras_peer.unavailable_reason() or backends.unavailable_reason("jax")
    if reason is not None:
        return [], f"{keras_peer.KERAS}: {reason}"
    jax_backend = backends.get("jax")
    device = device_for(jax_backend, want)
    if device is None:
        return [], f"{keras_peer.KERAS}: no {want} device"
    host_x, host_dy, host_target, host_lengths = host

    def build() -> Runs:
        x, dy, target = (jax_backend.from_numpy(a, device) for a in (host_x, host_dy, host_target))
        return keras_peer.keras_runs(config[3], x, dy, target, structure, host_lengths)

    return [Row(keras_peer.KERAS + structure.label(), jax_backend, device, build, True)], None


def bench_data(
    config: Config, dtype: str, directions: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bench's host data at ``config`` (B,T,I,H), from seed 0: ``x``, the output gradient
    ``dy`` of forward+backward, the train step's ``target``."""
    batch, seq, inputs, hidden = config
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq, inputs)).astype(dtype)
    dy = rng.standard_normal((batch, seq, directions * hidden)).astype(dtype)
    return x, dy, rng.uniform(0.0, 2.0, (batch, 1)).astype(dtype)


def numpy_train_step(config: Config) -> Callable[[], None]:
    """The bench's float32 train step of a NumPy LSTM at ``config`` (``--modes train-step``:
    its data and the layer from seed 0), for scripts that take it apart."""
    x, dy, target = bench_data(config, "float32")
    layer = xplstm.LSTM(config[2], config[3], backend="numpy", dtype="float32", seed=0)
    return xplstm_runs(layer, x, dy, target)["train-step"]


def build_rows(
    names: Sequence[str],
    paths: Sequence[str],
    want: str,
    config: Config,
    dtype: str,
    naive: bool,
    reference: bool,
    structure: Structure = PLAIN,
    keras: bool = False,
) -> tuple[list[Row], list[str]]:
    """The contenders for one configuration, and why any asked for is missing; ``reference``
    adds torch.nn.LSTM, ``keras`` Keras's LSTM on JAX (:mod:`.keras_peer`)."""
    batch, seq, inputs, hidden = config
    host_x, host_dy, host_target = bench_data(config, dtype, structure.directions)
    host_lengths = structure.host_lengths(batch, seq)
    layer_options = {"num_layers": structure.num_layers, "bidirectional": structure.bidirectional}
    rows, skipped = [], []
    for name in names:
        backend = backends.get(name)
        device = device_for(backend, want)
        if device is None:
            skipped.append(f"{name}: no {want} device")
            continue
        has_fast = fast_path_of(backend) is not None
        for path in paths:
            if (path == "fast" and not has_fast) or (path in NUMPY_LOOPS and name != "numpy"):
                continue
            if path in NUMBA_LOOPS and not numba_installed():
                skipped.append(f"numpy {path} loop: numba is not installed (xplstm[fast])")
                continue
            suffix = " written-once" if has_fast else ""
            label = f"xplstm {name}" + {"fast": " fast", "written-once": suffix}.get(
                path, f" fast, {path} loop"
            )
            label += structure.label()

            def build(backend: Backend = backend, device: Any = device, path: str = path) -> Runs:
                layer = xplstm.LSTM(
                    inputs, hidden, backend=backend, device=device, dtype=dtype, seed=0,
                    fast_path=path != "written-once", **layer_options,
                )  # fmt: skip
                x, dy, target = (
                    backend.from_numpy(a, device) for a in (host_x, host_dy, host_target)
                )
                if path in NUMPY_LOOPS:  # the layer makes its fast path at its first forward
                    with _environment(NUMPY_LOOP_ENV, path):
                        layer.forward(x, lengths=host_lengths)
                return xplstm_runs(layer, x, dy, target, host_lengths)

            rows.append(Row(label, backend, device, build))
    peers = []
    if reference and "torch" in backends.available():
        torch_backend = backends.get("torch")
        device = device_for(torch_backend, want) or torch_backend.default_device()

        def build_reference() -> Runs:
            x, dy, target = (
                torch_backend.from_numpy(a, device) for a in (host_x, host_dy, host_target)
            )
            lengths = None
            if host_lengths is not None:  # pack_padded_sequence wants them on the CPU
                lengths = torch_backend.from_numpy(host_lengths, torch_backend.default_device())
            return torch_runs(hidden, x, dy, target, structure, lengths)

        peers.append(
            Row(REFERENCE + structure.label(), torch_backend, device, build_reference, True)
        )
    elif reference:
        skipped.append(f"{REFERENCE}: {backends.unavailable()['torch']}")
    if keras:
        found, reason = _keras_rows(
            want, config, structure, (host_x, host_dy, host_target, host_lengths)
        )
        peers += found
        skipped += [reason] if reason else []
    rows = peers + rows
    if naive and structure == PLAIN:

        def build_naive() -> Runs:
            layer = xplstm.LSTM(inputs, hidden, backend="numpy", dtype=dtype, seed=0)
            xp = layer.xp
            x, dy = xp.asarray(host_x), xp.asarray(host_dy)
            return naive_runs(xp, layer.weights.values, layer.bias.values, x, dy)

        rows.append(Row("naive concat (numpy)", backends.get("numpy"), "cpu", build_naive))
    return rows, skipped
