"""Where xplstm's GPU time goes: a forward+backward run eagerly, and the same written-once math
replayed from a CUDA graph, beside cuDNN.

For each shape: cuDNN (torch.nn.LSTM with autograd, TF32 off); xplstm on CuPy's fast path and on
torch, run eagerly (Python and a kernel launch for every operation of every step); and xplstm on
torch captured once into a ``torch.cuda.CUDAGraph`` and replayed, which removes the Python and
launch cost and leaves the GPU's own time for the same kernels. The graph goes through torch
because CuPy refuses cuBLAS calls while a stream is captured (cupy/cupy#6290). The replay's
outputs are checked against the eager call's.

    python benchmarks/gpu_graph.py                          # on a machine with a CUDA GPU
    python benchmarks/gpu_graph.py --device cpu --configs 4,10,8,8   # the eager rows only
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import xplstm

CONFIGS = ("64,100,128,128", "64,100,512,512", "256,100,1024,1024")


def timed(run: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall milliseconds of ``run``, the device synchronised around each call."""
    walls = []
    for _ in range(repeats + 1):  # the first call warms up
        sync()
        start = time.perf_counter()
        run()
        sync()
        walls.append((time.perf_counter() - start) * 1e3)
    return statistics.median(walls[1:])


def cudnn(x: torch.Tensor, dy: torch.Tensor, hidden: int) -> Callable[[], Any]:
    torch.backends.cudnn.allow_tf32 = False  # full float32, as xplstm's products
    module = torch.nn.LSTM(x.shape[-1], hidden, batch_first=True).to(x.device)
    x = x.detach().requires_grad_(True)

    def run() -> Any:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x)[0].backward(dy)
        return x.grad

    return run


def ours(layer: xplstm.LSTM, x: Any, dy: Any) -> Callable[[], Any]:
    def run() -> Any:
        layer.forward(x)
        dx, _, _ = layer.backward(dy)
        return dx, layer.weights.deltas

    return run


def graphed(run: Callable[[], Any]) -> tuple[Callable[[], Any], Any]:
    """``run`` captured into a CUDA graph (after warm-up on a side stream, as torch asks):
    the replay, and the tensors the capture returned (the replay rewrites them)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()
    return graph.replay, outputs


def measure(config: tuple[int, int, int, int], device: str, repeats: int) -> list[tuple]:
    batch, seq, inputs, hidden = config
    rng = np.random.default_rng(0)
    host_x = rng.standard_normal((batch, seq, inputs), dtype=np.float32)
    host_dy = rng.standard_normal((batch, seq, hidden), dtype=np.float32)
    x, dy = (torch.from_numpy(a).to(device) for a in (host_x, host_dy))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    peer = "cuDNN (torch.nn.LSTM)" if device == "cuda" else "torch.nn.LSTM"
    rows = [(peer, timed(cudnn(x, dy, hidden), repeats, sync))]
    on_torch = xplstm.LSTM(inputs, hidden, backend="torch", device=device, seed=0)
    eager = ours(on_torch, x, dy)
    rows.append(("xplstm torch, eager", timed(eager, repeats, sync)))
    if device == "cuda":
        import cupy

        on_cupy = xplstm.LSTM(inputs, hidden, backend="cupy", seed=0)
        cupy_run = ours(on_cupy, cupy.asarray(host_x), cupy.asarray(host_dy))
        cupy_sync = cupy.cuda.Device().synchronize
        rows.append(("xplstm cupy fast, eager", timed(cupy_run, repeats, cupy_sync)))
        expected = [t.clone() for t in eager()]
        replay, outputs = graphed(eager)
        replay()
        sync()
        pairs = zip(outputs, expected, strict=True)
        worst = max(float((a - e).abs().max() / e.abs().max()) for a, e in pairs)
        name = f"xplstm torch, CUDA graph (vs eager {worst:.1e})"
        rows.append((name, timed(replay, repeats, sync)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, metavar="B,T,I,H")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on a GPU machine, or pass --device cpu")
    for text in args.configs:
        config = tuple(int(v) for v in text.split(","))
        print(f"\n(B,T,I,H) = {config}  forward+backward, float32, median of {args.repeats}")
        print(f"{'row':58} {'ms':>9} {'x first':>8}")
        rows = measure(config, args.device, args.repeats)
        for name, ms in rows:
            print(f"{name:58} {ms:9.2f} {ms / rows[0][1]:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
