"""The per-step products of NumPy's panel loop: W_h packed once a call, then compiled products.

Imported only when numba is installed. The BLAS loop (``_numpy_fast``) makes one product a step
each way, ``h_{t-1} @ W_h`` forward and ``dz_t @ W_h.T`` back: at (32, 512) @ (512, 2048)
OpenBLAS packs both operands on every call (4 MiB of W_h a step, more than L2 holds) and ran at
85 GF/s, where a 1024^3 product runs at 160. Here W_h (or W_h.T) is packed once a call
(:func:`pack`, into panels of ``panel_width`` columns, each panel K rows of contiguous values)
and every step's product (:func:`product`) reads the panels as they are: 0.6x OpenBLAS's time
at both (32, ...) shapes (docs/benchmarks.md, ``benchmarks/step_products.py``).

The tile (:func:`_tile`) is written in LLVM IR with explicit vectors of 64 bytes (16 float32,
8 float64): 8 rows by 3 vectors of sums held in registers over the whole depth, each loaded
panel vector serving 8 rows, each broadcast value of ``a`` 3 vectors. numba's loops leave
sums in memory and LLVM vectorises them 256 bits wide on this CPU; explicit 512-bit vectors
compile to AVX-512 where the CPU has it and to pairs (or fours) of narrower ones elsewhere,
correct but slower (``_numpy_fast`` picks this loop only where AVX-512 is present).

Each value of the result is the sum over k in order, k = 0 .. K-1, each term a multiply-add
(``llvm.fmuladd``: fused where the CPU fuses, as BLAS's kernels are): the same order on every
call, whatever the tile a value falls in, so results are deterministic.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

#: A tile of the result: this many rows, by this many vectors of ``VECTOR_BYTES`` across. 24
#: sums, 3 panel vectors and a broadcast value fill 28 of AVX-512's 32 registers. Measured at
#: (32, 512) @ (512, 2048) with ``benchmarks/step_products.py --tiles`` (docs/benchmarks.md):
#: 8 x 3 462-497 µs, 8 x 2 494-544, 12 x 2 467-549, 6 x 4 548-576, 4 x 4 523-636, OpenBLAS
#: 714-732; read when ``product`` compiles.
TILE_ROWS, TILE_VECTORS, VECTOR_BYTES = 8, 3, 64


def panel_width(dtype: np.dtype) -> int:
    """The columns of one packed panel for ``dtype``: 48 float32, 24 float64."""
    return TILE_VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize


def pack(b: np.ndarray) -> np.ndarray:
    """``b`` (K, N), any strides, as (ceil(N / width), K, width) column panels of
    :func:`panel_width`, each C-contiguous, the last one's missing columns zero."""
    depth, n = b.shape
    width = panel_width(b.dtype)
    packed = np.empty((-(-n // width), depth, width), b.dtype)
    _pack_into(packed, b)
    return packed


@njit(cache=True, error_model="numpy", nogil=True)
def _pack_into(packed, b):
    """:func:`pack` into ``packed``, read in ``b``'s memory order: a row of a panel at a time
    where b's rows are contiguous (W_h forward), else blocks of 16 rows a column (W_h.T back,
    a column at a time took twice as long: 1.27 ms against 0.65 at (2048, 512))."""
    depth, n = b.shape
    panels, _, width = packed.shape
    for p in range(panels):
        start = p * width
        columns, panel = min(width, n - start), packed[p]
        panel[:, columns:] = 0
        if b.strides[1] <= b.strides[0]:
            for k in range(depth):
                row, source = panel[k], b[k]
                for j in range(columns):
                    row[j] = source[start + j]
        else:
            for block in range(0, depth, 16):
                for j in range(columns):
                    for k in range(block, min(block + 16, depth)):
                        panel[k, j] = b[k, start + j]


@intrinsic
def _tile(typingctx, a, panel, out):
    """out[:r] = a @ panel: ``a`` (r, K) with r <= TILE_ROWS (C-contiguous rows; the rows
    missing below TILE_ROWS repeat its last row and are not stored), ``panel`` (K, width)
    C-contiguous, ``out`` (r', width) rows of unit stride, r' rows stored."""
    arrays = (a, panel, out)
    if not all(isinstance(x, types.Array) and x.ndim == 2 for x in arrays) or (
        len({x.dtype for x in arrays}) != 1 or a.dtype not in (types.float32, types.float64)
    ):
        raise TypingError("_tile takes three 2-d arrays of one float dtype")
    if a.layout != "C" or panel.layout != "C":
        raise TypingError("_tile reads C-contiguous a and panel")

    def codegen(context, builder, signature, args):
        a_, panel_, out_ = (
            context.make_array(t)(context, builder, v)
            for t, v in zip(signature.args, args, strict=True)
        )
        element = context.get_value_type(a.dtype)
        size = a.dtype.bitwidth // 8
        width = VECTOR_BYTES // size
        vector = ir.VectorType(element, width)
        i64 = ir.IntType(64)

        def const(value):
            return ir.Constant(i64, value)

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vector.as_pointer())

        a_rows, depth = (builder.extract_value(a_.shape, d) for d in (0, 1))
        a_stride = builder.sdiv(builder.extract_value(a_.strides, 0), const(size))
        out_rows = builder.extract_value(out_.shape, 0)
        out_stride = builder.sdiv(builder.extract_value(out_.strides, 0), const(size))
        last = builder.sub(a_rows, const(1))
        a_row = [
            builder.gep(a_.data, [builder.mul(builder.select(
                builder.icmp_signed("<", const(r), last), const(r), last), a_stride)])
            for r in range(TILE_ROWS)
        ]  # fmt: skip
        fmuladd = builder.module.declare_intrinsic(
            f"llvm.fmuladd.v{width}{'f32' if size == 4 else 'f64'}",
            fnty=ir.FunctionType(vector, [vector] * 3),
        )
        zero = ir.Constant(vector, [0.0] * width)
        undef = ir.Constant(vector, None)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", depth, const(0)), loop, done)

        # The loop over k: the sums are phi nodes (registers), one row of the panel loaded
        # once for every row of a.
        builder.position_at_end(loop)
        k = builder.phi(i64)
        sums = [builder.phi(vector) for _ in range(TILE_ROWS * TILE_VECTORS)]
        panel_row = builder.gep(panel_.data, [builder.mul(k, const(width * TILE_VECTORS))])
        b = [
            builder.load(vector_at(panel_row, const(v * width)), align=size)
            for v in range(TILE_VECTORS)
        ]
        updated = []
        for r in range(TILE_ROWS):
            value = builder.load(builder.gep(a_row[r], [k]))
            splat = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
            splat = builder.shuffle_vector(splat, undef, splat_mask)
            for v in range(TILE_VECTORS):
                updated.append(builder.call(fmuladd, [splat, b[v], sums[r * TILE_VECTORS + v]]))
        k_next = builder.add(k, const(1))
        k.add_incoming(const(0), entry)
        k.add_incoming(k_next, loop)
        for phi, value in zip(sums, updated, strict=True):
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, depth), loop, done)

        # The sums into out's rows (out_rows of them).
        builder.position_at_end(done)
        totals = []
        for value in updated:
            phi = builder.phi(vector)
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
            totals.append(phi)
        for r in range(TILE_ROWS):
            store = builder.append_basic_block(f"tile.store{r}")
            after = builder.append_basic_block(f"tile.stored{r}")
            builder.cbranch(builder.icmp_signed("<", const(r), out_rows), store, after)
            builder.position_at_end(store)
            row = builder.gep(out_.data, [builder.mul(const(r), out_stride)])
            for v in range(TILE_VECTORS):
                total = totals[r * TILE_VECTORS + v]
                builder.store(total, vector_at(row, const(v * width)), align=size)
            builder.branch(after)
            builder.position_at_end(after)
        return context.get_dummy_value()

    return types.none(a, panel, out), codegen


@njit(cache=True, error_model="numpy", nogil=True)
def product(c, a, packed):
    """c = a @ b, ``packed`` being ``pack(b)``: c (M, N) and a (M, K) C-contiguous, of
    ``packed``'s dtype. Tiles of TILE_ROWS rows of a panel's width; a tile that covers part of
    the last panel's columns is made in a buffer and copied."""
    m, n = c.shape
    panels, depth, width = packed.shape
    if a.shape[0] != m or a.shape[1] != depth or width != TILE_VECTORS * VECTOR_BYTES // c.itemsize:
        raise ValueError("product: c, a and packed do not fit")
    if c.size and c.strides[1] != c.itemsize:
        raise ValueError("product: c's rows must be contiguous")
    if n > panels * width or n <= (panels - 1) * width:
        raise ValueError("product: c and packed do not fit")
    part = np.empty((TILE_ROWS, width), c.dtype)
    for p in range(panels):
        j = p * width
        columns = min(width, n - j)
        for i in range(0, m, TILE_ROWS):
            if columns == width:
                _tile(a[i : i + TILE_ROWS], packed[p], c[i : i + TILE_ROWS, j : j + width])
            else:
                rows = min(TILE_ROWS, m - i)
                _tile(a[i : i + TILE_ROWS], packed[p], part[:rows])
                c[i : i + rows, j:] = part[:rows, :columns]
