"""The per-step products of the BLAS loop against the panel loop's, alone, one thread.

For each shape (M, K, N) the product a (M, K) @ b (K, N) into a preallocated result, as a loop
step makes it: OpenBLAS (``np.dot(a, b, out=)``) against ``_numpy_gemm.product`` on ``b``
packed once (the packing, once a call in the loop, is timed apart). Medians of alternating
repeats of ``--calls`` products each, the process's CPU time.

``--tiles`` times the panel loop's product for other tile shapes too, each ``rows,vectors``
(rows of ``a`` by vectors of 64 bytes, 16 float32 columns each; the module's is
``_numpy_gemm.TILE_ROWS, TILE_VECTORS``): the product compiled anew for each (its tile shape is
read when it compiles, and numba's cache does not know it: these are not cached) with ``b``
packed in panels as wide as its tile.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/step_products.py \\
        --shapes 32,512,2048 32,2048,512 64,256,1024 [--tiles 8,3 8,2 6,4]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from xplstm.backends import _numpy_gemm


def cpu_time(function, calls: int) -> float:
    """Seconds of CPU time a call, over ``calls`` calls."""
    start = time.process_time()
    for _ in range(calls):
        function()
    return (time.process_time() - start) / calls


Tile = tuple[int, int]


@contextmanager
def tile_shape(tile: Tile) -> Iterator[None]:
    """``_numpy_gemm``'s tile shape (rows, vectors) set to ``tile`` for the block only."""
    saved = _numpy_gemm.TILE_ROWS, _numpy_gemm.TILE_VECTORS
    _numpy_gemm.TILE_ROWS, _numpy_gemm.TILE_VECTORS = tile
    try:
        yield
    finally:
        _numpy_gemm.TILE_ROWS, _numpy_gemm.TILE_VECTORS = saved


@functools.cache
def product_for(tile: Tile) -> Callable:
    """``_numpy_gemm.product`` for tiles of ``tile``: the module's own (cached by numba) for its
    tile, else a dispatcher of its own, compiled at its first call (inside :func:`tile_shape`)."""
    if tile == (_numpy_gemm.TILE_ROWS, _numpy_gemm.TILE_VECTORS):
        return _numpy_gemm.product
    return njit(error_model="numpy", nogil=True)(_numpy_gemm.product.py_func)


def packed_in(tile: Tile, b: np.ndarray) -> np.ndarray:
    """``b`` packed in panels as wide as ``tile``'s."""
    with tile_shape(tile):
        return _numpy_gemm.pack(b)


def time_shape(
    m: int, k: int, n: int, dtype: str, calls: int, repeats: int, tiles: list[Tile]
) -> str:
    """Lines of results for a (m, k) @ (k, n) product: OpenBLAS's, then one per tile shape."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    blas_out = np.empty((m, n), a.dtype)
    contenders = {"blas": (lambda: np.dot(a, b, out=blas_out), calls)}
    errors = {"blas": np.abs(a @ b - exact).max()}
    for tile in tiles:
        out, packed = np.empty((m, n), a.dtype), packed_in(tile, b)
        product = product_for(tile)
        with tile_shape(tile):
            product(out, a, packed)  # compiles (or loads) it
        errors[tile] = np.abs(out - exact).max()
        contenders[tile] = (functools.partial(product, out, a, packed), calls)
        contenders[tile, "pack"] = (functools.partial(packed_in, tile, b), 3)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (function, count) in contenders.items():
            times[name].append(cpu_time(function, count))
    medians = {name: statistics.median(found) for name, found in times.items()}
    blas, gflops = medians["blas"], 2 * m * k * n / 1e9
    lines = [
        f"({m},{k})@({k},{n}) {dtype}: OpenBLAS {blas * 1e6:.0f} µs ({gflops / blas:.0f} GF/s), "
        f"max error {errors['blas']:.1e}"
    ]
    for tile in tiles:
        packed_time, width = medians[tile], _numpy_gemm.VECTOR_BYTES // a.itemsize * tile[1]
        lines.append(
            f"  packed, tiles {tile[0]} x {width}: {packed_time * 1e6:.0f} µs "
            f"({gflops / packed_time:.0f} GF/s, {packed_time / blas:.2f}x), packing b once "
            f"{medians[tile, 'pack'] * 1e6:.0f} µs; max error {errors[tile]:.1e}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["32,512,2048", "32,2048,512"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiles", nargs="+", help="rows,vectors (default: the module's)")
    args = parser.parse_args()
    tiles: list[Tile] = []
    for tile in args.tiles or [f"{_numpy_gemm.TILE_ROWS},{_numpy_gemm.TILE_VECTORS}"]:
        if tile.count(",") != 1 or not tile.replace(",", "").isdigit():
            parser.error(f"--tiles: each tile is rows,vectors (such as 8,3), got {tile!r}")
        rows, vectors = tile.split(",")
        tiles.append((int(rows), int(vectors)))
    with threadpool_limits(1):
        for shape in args.shapes:
            m, k, n = (int(s) for s in shape.split(","))
            print(time_shape(m, k, n, args.dtype, args.calls, args.repeats, tiles), flush=True)


if __name__ == "__main__":
    main()
