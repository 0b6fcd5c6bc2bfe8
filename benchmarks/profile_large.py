"""Where the time of one NumPy fast-path forward+backward goes at a large configuration.

Times, one BLAS thread, medians of alternating repeats (the process's CPU time, so other jobs on
a shared machine count less): the whole forward+backward on each loop, and the same products
alone in the same layouts (the input projection, one (B,H)@(H,4H) product a step each way, the
two weight-gradient products, dx). What is left is the element-wise work and the calls.

    python benchmarks/profile_large.py --config 64,100,256,256 [--repeats 7] [--torch]

``--torch`` adds torch's per-step products in its own layout (``h @ W_hh.T`` forward,
``dz @ W_hh`` back, W_hh (4H, H)), with its intra-op pool at one thread: on x86 its CPU wheels
multiply with MKL, NumPy's with OpenBLAS, so the two rows compare the libraries on the one
product a recurrence cannot batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import xplstm
from xplstm.backends._numpy_fast import LOOP_ENV


def products(batch: int, seq: int, inputs: int, hidden: int, time_major: bool) -> dict:
    """The products of one forward+backward in the fast path's layouts, as closures."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    x_rows = rng.standard_normal((batch * seq, inputs)).astype(f32)
    w = rng.standard_normal((inputs + hidden, 4 * hidden)).astype(f32)
    lead = (seq, batch) if time_major else (batch, seq)
    gates = rng.standard_normal((*lead, 4 * hidden)).astype(f32)
    hs = rng.standard_normal((*lead, hidden)).astype(f32)
    z_h, dh = np.empty((batch, 4 * hidden), f32), np.empty((batch, hidden), f32)
    w_h, w_h_t = w[inputs:], np.ascontiguousarray(w[inputs:].T)
    step = (lambda a, t: a[t]) if time_major else (lambda a, t: a[:, t])

    def projection() -> None:
        np.matmul(x_rows, w[:inputs], out=gates.reshape(batch * seq, -1))

    def forward_steps() -> None:
        for t in range(seq):
            np.dot(step(hs, t), w_h, out=z_h)

    def backward_steps() -> None:
        for t in range(seq):
            np.dot(step(gates, t), w_h_t, out=dh)

    def gradients() -> None:
        flat = gates.reshape(batch * seq, -1)
        x_rows.T @ flat
        hs.reshape(batch * seq, -1).T @ flat
        flat @ w[:inputs].T

    return {
        "input projection": projection,
        "forward step products": forward_steps,
        "backward step products": backward_steps,
        "weight gradients and dx": gradients,
    }


def torch_steps(batch: int, seq: int, hidden: int) -> dict:
    """torch's per-step products, one (B,H)@(H,4H) and one (B,4H)@(4H,H) a step."""
    import torch

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    w_hh = torch.randn(4 * hidden, hidden, generator=gen)
    hs = torch.randn(seq, batch, hidden, generator=gen)
    dz = torch.randn(seq, batch, 4 * hidden, generator=gen)

    def forward_steps() -> None:
        for t in range(seq):
            torch.mm(hs[t], w_hh.t())

    def backward_steps() -> None:
        for t in range(seq):
            torch.mm(dz[t], w_hh)

    return {"torch forward step products": forward_steps,
            "torch backward step products": backward_steps}  # fmt: skip


def layer_run(config: tuple[int, int, int, int], loop: str):
    """One layer's forward+backward held to ``loop`` (its fast path made at the first call)."""
    batch, seq, inputs, hidden = config
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq, inputs)).astype("float32")
    dy = rng.standard_normal((batch, seq, hidden)).astype("float32")
    os.environ[LOOP_ENV] = loop
    layer = xplstm.LSTM(inputs, hidden, backend="numpy", dtype="float32", seed=0)
    layer.forward(x)
    del os.environ[LOOP_ENV]

    def run() -> None:
        layer.forward(x)
        layer.backward(dy)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="64,100,256,256", help="B,T,I,H")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loops", default="ufuncs,compiled", help="NumPy loops to time")
    parser.add_argument("--torch", action="store_true", help="torch's per-step products too")
    args = parser.parse_args()
    config = tuple(int(n) for n in args.config.split(","))
    batch, seq, inputs, hidden = config
    runs = {f"fwd+bwd, {loop} loop": layer_run(config, loop) for loop in args.loops.split(",")}
    for layout in ("batch-major", "time-major"):
        for name, run in products(*config, layout == "time-major").items():
            runs[f"{name} ({layout})"] = run
    if args.torch:
        runs.update(torch_steps(batch, seq, hidden))
    times: dict[str, list[float]] = {name: [] for name in runs}
    with threadpool_limits(1):
        for run in runs.values():
            run()  # warm-up
        for repeat in range(args.repeats):
            names = list(runs)
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                start = time.process_time()
                runs[name]()
                times[name].append((time.process_time() - start) * 1e3)
    flops = 3 * 2.0 * batch * seq * (inputs + hidden) * 4 * hidden
    print(f"(B,T,I,H) = {config}: {flops / 1e9:.2f} GFLOP of products forward+backward")
    for name, found in times.items():
        median = statistics.median(found)
        rate = ""
        if "step products" in name:  # one (B,H)x(H,4H) product a step
            rate = f" ({2.0 * batch * seq * hidden * 4 * hidden / median / 1e6:.1f} GFLOP/s)"
        print(f"{name:48s} {median:9.2f} ms{rate}")
    for layout in ("batch-major", "time-major"):
        total = sum(statistics.median(times[f"{n} ({layout})"]) for n in products(1, 1, 1, 1, 1))
        print(f"{'all products (' + layout + ')':48s} {total:9.2f} ms "
              f"({flops / total / 1e6:.1f} GFLOP/s)")  # fmt: skip


if __name__ == "__main__":
    main()
