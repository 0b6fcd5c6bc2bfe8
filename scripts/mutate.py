"""A mutation pass: plant plausible one-line bugs in the math, one at a time, and see which test
catches each.

    make mutate                       # every mutation (a few minutes)
    .venv/bin/python scripts/mutate.py -k cell -k optim   # those whose file or id match
    .venv/bin/python scripts/mutate.py --list             # the bugs, without running anything

For each mutation the line is replaced in the working tree, then pytest runs twice at most:
first only the tests marked ``reference`` (they compare with torch, Keras, finite
differences or values worked out by hand: references independent of our code) in the files that
guard the mutated module and in the whole-model files (``BROAD``); if none fails, the remaining
tests of those files (comparisons between two of our own paths, properties). The report says,
per bug, the first test that failed and whether it was an independent reference; the score
counts bugs caught by an independent reference. The file is restored after every mutation, also
on Ctrl-C or SIGTERM; a copy of it waits in ``.mutate-backup/`` while it is mutated, so that even
a killed run is undone by the next (``--restore`` alone does only that).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKUP = ROOT / ".mutate-backup"

#: The tests that guard each module, and the backends they run on for the pass (NumPy runs both
#: paths, fast and written-once, in the reference tests; JAX's fast path needs JAX).
GUARDS = {
    "src/xplstm/cell.py": ["tests/test_reference.py", "tests/test_gradients.py"],
    "src/xplstm/sequence.py": ["tests/test_reference.py", "tests/test_gradients.py"],
    "src/xplstm/lstm.py": [
        "tests/test_reference.py",
        "tests/test_gradients.py",
        "tests/test_dropout.py",
    ],
    "src/xplstm/states.py": ["tests/test_reference.py", "tests/test_gradients.py"],
    "src/xplstm/dropout.py": [
        "tests/test_reference.py",
        "tests/test_gradients.py",
        "tests/test_dropout.py",
    ],
    "backends/_numpy_fast.py": [
        "tests/test_reference.py",
        "tests/test_gradients.py",
        "tests/test_fast_paths.py",
    ],
    "backends/_numpy_jit.py": [
        "tests/test_reference.py",
        "tests/test_gradients.py",
        "tests/test_fast_paths.py",
    ],
    "backends/_numpy_gemm.py": [
        "tests/test_reference.py",
        "tests/test_gradients.py",
        "tests/test_fast_paths.py",
    ],
    "backends/jax.py": ["tests/test_reference.py", "tests/test_gradients.py"],
    "backends/_cupy_fast.py": [
        "tests/test_reference.py",
        "tests/test_gradients.py",
        "tests/test_fast_paths.py",
    ],
    "src/xplstm/optim.py": ["tests/test_optim.py"],
    "src/xplstm/losses.py": ["tests/test_losses.py"],
    "src/xplstm/linear.py": ["tests/test_linear.py"],
    # -- the periphery: what is built around the math -----------------------------------------
    "src/xplstm/stack.py": [
        "tests/test_padding.py",
        "tests/test_reference.py",
        "tests/test_gradients.py",
        "tests/test_stacked.py",
        "tests/test_dropout.py",
    ],
    "src/xplstm/steps.py": [
        "tests/test_stacked.py",
        "tests/test_padding.py",
        "tests/test_keras.py",
    ],
    "src/xplstm/distributed.py": ["tests/test_distributed.py"],
    "src/xplstm/replica.py": ["tests/test_distributed.py"],
    "src/xplstm/checkpoint.py": ["tests/test_checkpoint.py"],
    "src/xplstm/sampling.py": ["tests/test_tasks.py"],
    "src/xplstm/train.py": ["tests/test_cli.py"],
    "src/xplstm/loop.py": ["tests/test_loop.py", "tests/test_distributed.py"],
    "src/xplstm/cli.py": ["tests/test_cli.py", "tests/test_distributed.py"],
    "src/xplstm/batched.py": ["tests/test_batched.py", "tests/test_distributed.py"],
    "src/xplstm/interop.py": ["tests/test_interop.py", "tests/test_keras.py", "tests/test_onnx.py"],
    "src/xplstm/interop_keras.py": ["tests/test_interop.py", "tests/test_keras.py"],
    "src/xplstm/onnx.py": ["tests/test_onnx.py"],
}
#: Checks shared by every mutation of a module, after its own guards: whole-model tests.
BROAD = ["tests/test_state.py", "tests/test_training.py"]


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once in ``path``) with ``new``."""

    path: str
    old: str
    new: str
    backends: str = "numpy"

    @property
    def id(self) -> str:
        return f"{Path(self.path).stem}: {self.old.strip()}  ->  {self.new.strip()}"


def _m(path: str, old: str, new: str, backends: str = "numpy") -> Mutation:
    return Mutation(path, old, new, backends)


CELL, SEQ, FAST = "src/xplstm/cell.py", "src/xplstm/sequence.py", "backends/_numpy_fast.py"
JIT, GEMM = "backends/_numpy_jit.py", "backends/_numpy_gemm.py"
OPTIM, LOSSES, LINEAR = "src/xplstm/optim.py", "src/xplstm/losses.py", "src/xplstm/linear.py"
STACK, DIST = "src/xplstm/stack.py", "src/xplstm/distributed.py"
STEPS, REPLICA, DROPOUT = "src/xplstm/steps.py", "src/xplstm/replica.py", "src/xplstm/dropout.py"
CHECKPOINT, SAMPLING = "src/xplstm/checkpoint.py", "src/xplstm/sampling.py"
TRAIN, CLI, BATCHED = "src/xplstm/train.py", "src/xplstm/cli.py", "src/xplstm/batched.py"
INTEROP, ONNX, LOOP = "src/xplstm/interop.py", "src/xplstm/onnx.py", "src/xplstm/loop.py"
KERAS = "src/xplstm/interop_keras.py"

MUTATIONS = [
    # -- the cell: forward ---------------------------------------------------------------
    _m(CELL, "return xp.where(z >= 0, r, e * r)", "return xp.where(z >= 0, r, e)"),
    _m(CELL, "c = f * c_prev + i * g", "c = f * c_prev + o * g"),
    _m(CELL, "return o * xp.tanh(c), c", "return o * xp.tanh(c_prev), c"),
    _m(CELL, "g = xp.tanh(z[:, 3 * hidden :])", "g = sigmoid(xp, z[:, 3 * hidden :])"),
    _m(
        CELL,
        "i, f, o = ifo[:, :hidden], ifo[:, hidden : 2 * hidden], ifo[:, 2 * hidden :]",
        "i, o, f = ifo[:, :hidden], ifo[:, hidden : 2 * hidden], ifo[:, 2 * hidden :]",
    ),
    # -- the cell: backward --------------------------------------------------------------
    _m(
        CELL,
        "dc = dc + dh * o * (1.0 - tanh_c * tanh_c)",
        "dc = dc + dh * o * (1.0 - tanh_c)",
    ),
    _m(CELL, "di = dc * g * i * (1.0 - i)", "di = dc * g * (1.0 - i)"),
    _m(CELL, "df = dc * c_prev * f * (1.0 - f)", "df = dc * c * f * (1.0 - f)"),
    # A 1% error in the forget-gate block alone: sampled coordinates can miss a whole block.
    _m(CELL, "df = dc * c_prev * f * (1.0 - f)", "df = dc * c_prev * f * (1.0 - f) * 1.01"),
    _m(CELL, "do = dh * tanh_c * o * (1.0 - o)", "do = dc * tanh_c * o * (1.0 - o)"),
    _m(CELL, "dg = dc * i * (1.0 - g * g)", "dg = dc * i * (1.0 - g)"),
    _m(CELL, "return di, df, do, dg, dc * f", "return di, df, do, dg, dc"),
    # -- the sequence driver -------------------------------------------------------------
    _m(SEQ, "        outs.reverse()", "        pass"),
    _m(
        SEQ,
        "z_x = xp.reshape(x_flat @ w[:inputs, :] + b, (batch, seq, four_h))",
        "z_x = xp.reshape(x_flat @ w[:inputs, :], (batch, seq, four_h))",
    ),
    _m(SEQ, "z = z_x + (h if h_drop", "z = z_x + (c if h_drop"),
    _m(SEQ, "dh = dh + dy_t", "dh = dy_t"),
    _m(SEQ, "dh_prev = dz @ w_h_t\n", "dh_prev = dz @ w_h_t + dh\n"),
    _m(SEQ, "cache.cells[:-1, ...]], axis=0)", "cache.cells[1:, ...]], axis=0)"),
    _m(SEQ, "cache.hs[:-1, ...]], axis=0)", "cache.hs[1:, ...]], axis=0)"),
    _m(SEQ, "d_b = xp.sum(dz_flat, axis=0)", "d_b = xp.mean(dz_flat, axis=0)"),
    # -- the layer: omitted state must be zeros ------------------------------------------
    _m(
        "src/xplstm/states.py",
        "zeros = layer.xp.zeros((batch, size), dtype=layer.dtype, device=layer.device)",
        "zeros = layer.xp.full((batch, size), 0.5, dtype=layer.dtype, device=layer.device)",
    ),
    # -- NumPy's fast path (a restatement of the math) -----------------------------------
    _m(FAST, "sign[: 3 * hidden] = -1.0", "sign[: 2 * hidden] = -1.0"),
    _m(FAST, "ws.gates += b * sign", "ws.gates += b"),
    _m(FAST, "np.multiply(f, c, out=c_t)", "np.multiply(i, c, out=c_t)"),
    _m(FAST, "np.subtract(1.0, f, out=df)", "np.subtract(1.0, i, out=df)"),
    _m(FAST, "df[:, 0] *= c0", "df[:, 0] *= h0"),
    _m(FAST, "    a *= o\n", "    a *= i\n"),
    _m(FAST, "dz_o *= dh", "dz_o *= dc"),
    _m(FAST, "dc *= f_t", "dc *= dz_g"),
    _m(FAST, "steps[0] = h0", "steps[0] = 0.0"),
    _m(FAST, "dh, dc, d_w, column_sums(dz_flat)", "dh, dc, d_w, dz_flat.mean(axis=0)"),
    _m(FAST, "    return h.copy(), c.copy()", "    return h.copy(), c"),
    # -- NumPy's compiled loop (numba): its restated tanh and its products -------------------
    _m(JIT, "return t if x >= 0 else -t", "return t"),
    _m(JIT, "g[j] = xp.tanh(g[j] + bias_g[j])", "g[j] = xp.tanh(g[j] + bias_ifo[j])"),
    _m(
        JIT,
        "for k in range(depth - depth % 4, depth):",
        "for k in range(depth - depth % 4, depth - 1):",
    ),
    _m(JIT, "s3 += d_k * w3[k]", "s3 += d_k * w2[k]"),
    _m(JIT, "z2[j] += a20 * x0 + a21 * x1", "z2[j] += a20 * x0 + a12 * x1"),
    _m(JIT, "s20 + x2 * y0, s21 + x2 * y1", "s20 + x2 * y0, s21 + x2 * y2"),
    # -- NumPy's panel loop: W_h packed into panels, the tiles' depth, rows and last panel ---
    _m(GEMM, "row[j] = source[start + j]", "row[j] = source[j]"),
    _m(GEMM, "panel[k, j] = b[k, start + j]", "panel[k, j] = b[k, j]"),
    _m(GEMM, "k_next = builder.add(k, const(1))", "k_next = builder.add(k, const(2))"),
    _m(GEMM, "for i in range(0, m, TILE_ROWS):", "for i in range(0, m - 1, TILE_ROWS):"),
    _m(GEMM, "= part[:rows, :columns]", "= part[:rows, width - columns :]"),
    # -- JAX's fast path: the loop direction ---------------------------------------------
    _m(
        "backends/jax.py",
        "carry, xs, reverse=reverse)",
        "carry, xs, reverse=False)",
        backends="jax",
    ),
    # -- CuPy's fast path, run on NumPy through a stand-in cupy (tests/support.py) ----------
    _m(
        "backends/_cupy_fast.py",
        "self._forward(self._xp, w, b, x, h0, c0, kernels=",
        "self._forward(self._xp, w, b, x, c0, h0, kernels=",
    ),
    _m(
        "backends/_cupy_fast.py",
        "self._backward(self._xp, w, cache, dy, dh_n, dc_n, kernels=",
        "self._backward(self._xp, w, cache, dy, dc_n, dh_n, kernels=",
    ),
    # -- optimizers and clipping ---------------------------------------------------------
    _m(
        OPTIM,
        'velocity = self.momentum * self._buffer(state, "velocity", w) + g',
        'velocity = self.momentum * self._buffer(state, "velocity", w) + (1 - self.momentum) * g',
    ),
    _m(OPTIM, "step_size = self.lr / (1.0 - beta1**self.steps)", "step_size = self.lr"),
    _m(
        OPTIM,
        "denominator = xp.sqrt(v) / math.sqrt(1.0 - beta2**self.steps) + self.eps",
        "denominator = xp.sqrt(v + self.eps) / math.sqrt(1.0 - beta2**self.steps)",
    ),
    _m(OPTIM, "(g / (xp.sqrt(v) + self.eps))", "(g / xp.sqrt(v + self.eps))"),
    _m(OPTIM, "self.steps += 1", "self.steps = 1"),
    _m(OPTIM, "else math.sqrt(float(total))", "else float(total)"),
    _m(OPTIM, "scale = max_norm / (norm + 1e-6)", "scale = max_norm / norm"),
    _m(OPTIM, "return w - self.lr * g, {}", "w -= self.lr * g; return w, {}  # noqa"),
    # -- losses ----------------------------------------------------------------------------
    _m(LOSSES, "diff * (2.0 * scale)", "diff * scale"),
    _m(LOSSES, "xp.sum(diff * diff) * scale", "xp.sum(diff * diff)"),
    _m(
        LOSSES,
        "shifted = logits - xp.max(logits, axis=-1, keepdims=True)",
        "shifted = logits",
    ),
    _m(
        LOSSES,
        "xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))",
        "xp.log(xp.sum(xp.exp(shifted), axis=0, keepdims=True))",
    ),
    _m(
        LOSSES,
        "return loss, (xp.exp(log_p) - xp.astype(chosen, logits.dtype)) * scale",
        "return loss, (xp.exp(log_p) - xp.astype(chosen, logits.dtype))",
    ),
    _m(LOSSES, "scale = 1.0 / math.prod(targets.shape)", "scale = 1.0 / math.prod(logits.shape)"),
    # -- the linear layer ------------------------------------------------------------------
    _m(
        LINEAR,
        "y_flat = x_flat @ self.weights.values + self.bias.values",
        "y_flat = x_flat @ self.weights.values - self.bias.values",
    ),
    _m(
        LINEAR,
        "self.bias.deltas = xp.sum(dy_flat, axis=0)",
        "self.bias.deltas = xp.mean(dy_flat, axis=0)",
    ),
    _m(LINEAR, "dy_flat @ self.weights.values.T", "dy_flat @ self.weights.deltas.T"),
    # -- the stack: directions, lengths and masks, padding never read --------------------------
    _m(
        STEPS,
        "within = xp.where(valid, n - 1 - t, t) + rows * seq",
        "within = xp.where(valid, seq - 1 - t, t) + rows * seq",
    ),
    _m(STEPS, "flipped = xp.flip(mask, axis=1)", "flipped = mask"),
    _m(
        STEPS,
        "return xp.where(where, a, xp.zeros((), dtype=a.dtype, device=array_api_compat.device(a)))",
        "return a * xp.astype(where, a.dtype)",
    ),
    _m(STACK, "entry = (partial(select, where=valid),) if valid is not None else ()", "entry = ()"),
    _m(STACK, "into = flip if direction else ()", "into = ()"),
    # -- the periphery: dropout ---------------------------------------------------------------
    _m(STACK, '"h_drop": plan.recurrent[index],', '"h_drop": plan.recurrent[layer * directions],'),
    _m(
        STACK,
        "between = plan.between[layer] if layer < len(plan.between) else None",
        "between = plan.between[0] if layer < len(plan.between) else None",
    ),
    _m(DROPOUT, "host = (kept * (1.0 / (1.0 - p)))", "host = (kept * 1.0)"),
    # -- data-parallel fit ----------------------------------------------------------------------
    _m(DIST, "SeedSequence([self.seed, self.step, shard])", "SeedSequence([self.seed, 0, shard])"),
    _m(
        DIST,
        "weights = [(stop - start) / batch for start, stop in bounds]",
        "weights = [1 / len(bounds) for start, stop in bounds]",
    ),
    _m(REPLICA, "layer.train(replica.training)", "layer.train(True)"),
    _m(
        DIST,
        "return np.random.default_rng([seed, epoch])",
        "return np.random.default_rng([seed, 0])",
    ),
    # -- checkpoints ----------------------------------------------------------------------------
    _m(CHECKPOINT, 'for key in ("model", "dtype", "layers"):', 'for key in ("model", "layers"):'),
    _m(
        CHECKPOINT,
        "if _without_modes(header[key]) != _without_modes(expected[key]):",
        "if header[key] != expected[key]:",
    ),
    # -- sampling -------------------------------------------------------------------------------
    _m(SAMPLING, '.astype("float64") / temperature', '.astype("float64") * temperature'),
    _m(SAMPLING, "y, *state = lstm.forward(x, *state)", "y, *_ = lstm.forward(x, *state)"),
    # -- training and the command line ----------------------------------------------------------
    _m(TRAIN, "clip=settings.clip, bar=bar,", "clip=1.0, bar=bar,"),
    _m(TRAIN, "seed=seed + 1),", "seed=seed),"),
    _m(TRAIN, "if metric < task.target:", "if metric < 2.0 * task.target:"),
    _m(
        LOOP,
        "norm = optim.grad_norm(params) if clip is None else optim.clip_grad_norm(params, clip)",
        "norm = optim.grad_norm(params)",
    ),
    _m(LOOP, "for step in range(len(run.losses), steps):", "for step in range(steps):"),
    _m(CLI, '"--clip", type=float, default=1.0,', '"--clip", type=float, default=0.5,'),
    # -- batched predict ------------------------------------------------------------------------
    _m(BATCHED, "            layer.train(training)", "            layer.train()"),
    _m(BATCHED, "        layer.eval()", "        pass"),
    # -- interop: torch, Keras, ONNX ------------------------------------------------------------
    _m(INTEROP, "bias = (terms[0] + terms[1])[gates]", "bias = terms[0][gates]"),
    _m(
        INTEROP,
        'state[f"bias_ih{suffix}"] = np.ascontiguousarray(bias[gates])',
        'state[f"bias_ih{suffix}"] = np.ascontiguousarray(bias)',
    ),
    _m(KERAS, "gates = gate_order(units)", "gates = gate_order(units, (0, 1, 2, 3))"),
    _m(INTEROP, "(bias.shape[0] // 4, (0, 2, 1, 3))", "(bias.shape[0] // 4, (0, 1, 3, 2))"),
    _m(
        ONNX,
        'start = graph.constant("start", np.array([stacked * directions]))',
        'start = graph.constant("start", np.array([0]))',
    ),
    _m(
        ONNX,
        'y = graph.op("Transpose", outputs[0], perm=[0, 2, 1, 3])',
        'y = graph.op("Transpose", outputs[0], perm=[0, 1, 2, 3])',
    ),
]


# -- applying and undoing ---------------------------------------------------------------------
def restore_leftovers() -> list[str]:
    """Put back any file a killed earlier run left mutated; returns their paths."""
    restored = []
    if BACKUP.is_dir():
        for saved in BACKUP.rglob("*"):
            if saved.is_file():
                relative = saved.relative_to(BACKUP)
                shutil.copy2(saved, ROOT / relative)  # contents and modification time
                restored.append(str(relative))
        shutil.rmtree(BACKUP)
    return restored


def check(mutation: Mutation) -> str:
    """The file's text, after checking that ``old`` occurs in it exactly once."""
    text = (ROOT / mutation.path).read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(
            f"mutate: {mutation.path}: {mutation.old!r} occurs {count} times, not once; "
            "the code changed: update MUTATIONS in scripts/mutate.py"
        )
    return text


def _on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM undoes the mutation as Ctrl-C does


def run_pytest(files: list[str], marker: str, backends: str) -> tuple[str | None, float]:
    """Run ``files`` restricted to ``marker``; the first failing test's id (or None), seconds."""
    python = ROOT / ".venv" / "bin" / "python"
    command = [
        str(python if python.exists() else sys.executable), "-m", "pytest", "-x", "-q",
        "-p", "no:cacheprovider", "-rfE", "--tb=no", "-m", marker, "--backend", backends, *files,
    ]  # fmt: skip
    # No bytecode: a .pyc of a mutated file could outlive it when restored within a second.
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("XPLSTM_TEST_BACKENDS", None)
    env.pop("XPLSTM_FAST_PATH", None)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1, 5):  # 5: no test of that kind in these files
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"pytest exited with {done.returncode}:\n{tail}")
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
    return (failed.group(1) if failed else None), seconds


def mutate_and_test(mutation: Mutation) -> tuple[str, str | None, float]:
    """Apply ``mutation``, run its guards, restore the file. Returns (verdict, test, seconds)."""
    path = ROOT / mutation.path
    text = check(mutation)
    saved = BACKUP / mutation.path
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, saved)
    files = GUARDS[mutation.path] + [f for f in BROAD if f not in GUARDS[mutation.path]]
    try:
        path.write_text(text.replace(mutation.old, mutation.new))
        test, seconds = run_pytest(files, "reference", mutation.backends)
        if test:
            return "reference", test, seconds
        test, more = run_pytest(files, "not reference", mutation.backends)
        return ("ours only" if test else "survived"), test, seconds + more
    finally:
        restore_leftovers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", action="append", default=[], help="only mutations whose id has this")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--restore", action="store_true", help="only undo a killed run's changes")
    args = parser.parse_args(argv)
    for path in restore_leftovers():
        print(f"mutate: restored {path}, left mutated by an earlier run that was killed")
    if args.restore:
        return 0
    chosen = [m for m in MUTATIONS if not args.k or any(k in m.id for k in args.k)]
    for mutation in chosen:
        check(mutation)
    if args.list:
        print("\n".join(m.id for m in chosen))
        return 0
    previous = signal.signal(signal.SIGTERM, _on_term)
    results: list[tuple[Mutation, str, str | None]] = []
    try:
        for number, mutation in enumerate(chosen, 1):
            verdict, test, seconds = mutate_and_test(mutation)
            results.append((mutation, verdict, test))
            print(f"[{number}/{len(chosen)}] {verdict:9s} {mutation.id}", flush=True)
            print(f"    {test or 'no test failed'}  ({seconds:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("mutate: interrupted; the tree is restored", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        restore_leftovers()
    counts = {v: sum(r[1] == v for r in results) for v in ("reference", "ours only", "survived")}
    print(
        f"\nscore: {counts['reference']}/{len(results)} caught by an independent reference; "
        f"{counts['ours only']} only by our own comparisons; {counts['survived']} survived"
    )
    for mutation, verdict, _ in results:
        if verdict != "reference":
            print(f"  {verdict}: {mutation.id}")
    return 0 if counts["reference"] == len(results) == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
