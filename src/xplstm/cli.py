"""The ``xplstm`` command: ``info``, ``train``, ``generate``, ``predict``, ``export`` and ``bench``.

xplstm info                       the backends found here, and whether they agree
xplstm train --task adding        train an LSTM on a task; writes runs/adding/
xplstm train --workers 4          the same, data-parallel on 4 local Dask worker processes
xplstm generate --model runs/text/model.npz   sample text from a text model
xplstm predict --model M.npz --input X.npz --output Y.npy [--workers N]   a model's outputs
xplstm export --model runs/adding/model.npz --onnx adding.onnx   the model as an ONNX graph
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import xplstm
from xplstm import backends, checkpoint, sampling, tasks
from xplstm.bench import add_bench_command

#: Exit status after Ctrl-C, as shells report a command ended by SIGINT.
INTERRUPTED = 130


def self_check(batch: int = 2, seq: int = 5, inputs: int = 3, hidden: int = 4) -> dict[str, str]:
    """Run one small LSTM forward and backward on every backend here and compare with NumPy.

    Returns, per backend, ``"ok (max difference ...)"`` or what went wrong.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq, inputs)).astype("float32")
    dy = rng.standard_normal((batch, seq, hidden)).astype("float32")

    def run(name: str) -> list[np.ndarray]:
        layer = xplstm.LSTM(inputs, hidden, backend=name, seed=0)
        backend = backends.get(name)
        y, h_n, c_n = layer.forward(backend.from_numpy(x, layer.device))
        dx, _, _ = layer.backward(backend.from_numpy(dy, layer.device))
        outputs = (y, h_n, c_n, dx, layer.weights.deltas, layer.bias.deltas)
        return [xplstm.to_numpy(a) for a in outputs]

    reference = run("numpy")
    results = {}
    for name in backends.available():
        try:
            got = run(name)
        except Exception as error:  # any failure is the answer to report
            results[name] = f"FAILED: {type(error).__name__}: {error}"
            continue
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(got, reference, strict=True))
        verdict = "ok" if worst <= 1e-4 else "DISAGREES"
        results[name] = f"{verdict} (max difference from numpy {worst:.1e})"
    return results


def info(args: argparse.Namespace) -> int:
    """Print the version, the backends found here (with why missing ones are missing), and
    whether the available ones agree on a small problem."""
    print(f"xplstm {xplstm.__version__}")
    for name, backend in backends.known().items():
        reason = backends.unavailable().get(name)
        if reason:
            print(f"  {name:17s} -- {reason}")
        else:
            devices = ", ".join(str(d) for d in backend.devices())
            print(f"  {name:17s} {backend.version() or '':12s} devices: {devices}")
    notes = {name: backends.get(name).precision() for name in backends.available()}
    print("precision:")
    for name, note in notes.items():
        if note:
            print(f"  {name:17s} {note}")
    print("self-check: LSTM forward and backward, batch 2, seq 5, float32, against numpy")
    results = self_check()
    for name, result in results.items():
        print(f"  {name:17s} {result}")
    return 0 if all(r.startswith("ok") for r in results.values()) else 1


def run_train(args: argparse.Namespace) -> int:
    """Train an LSTM and a Linear head on a task; write metrics.json, loss.png and model.npz."""
    # Imported here so that `info` and `generate` need only the core dependencies (an offline
    # `pip install --no-deps` on a GPU machine has no threadpoolctl or matplotlib).
    from xplstm.train import Settings, summary, train

    settings = Settings(
        task=args.task,
        backend=args.backend,
        device=args.device,
        seq_len=args.seq_len,
        hidden=args.hidden,
        layers=args.layers,
        bidirectional=args.bidirectional,
        proj_size=args.proj_size,
        dropout=args.dropout,
        batch=args.batch,
        steps=args.steps,
        lr=args.lr,
        clip=args.clip,
        seed=args.seed,
        out=args.out,
        eval_every=args.eval_every,
        threads=args.threads,
        progress=not args.quiet,
        workers=args.workers,
        scheduler=args.scheduler,
        connect_timeout=args.connect_timeout,
    )
    metrics = train(settings)
    print(summary(metrics))
    if metrics["problem"]:
        print(
            f"xplstm train: {metrics['problem']} (saved in {metrics['out']}); lower --lr or "
            "--clip, or look for NaN or inf in the data",
            file=sys.stderr,
        )
        return 1
    return INTERRUPTED if metrics["stopped"] == "interrupted" else 0


def generate(args: argparse.Namespace) -> int:
    """Sample text from a model trained with ``xplstm train --task text``."""
    model = checkpoint.load(args.model, backend=args.backend, device=args.device)
    task = tasks.get("text")
    prime = args.prime.replace("\\n", "\n")
    rng = np.random.default_rng(args.seed)
    text = sampling.generate(model, task, prime, args.length, args.temperature, rng)
    print(prime + text)
    return 0


def export(args: argparse.Namespace) -> int:
    """Write a checkpoint as an ONNX graph that ONNX Runtime (or any ONNX runtime) runs."""
    from xplstm import onnx as onnx_export  # needs the onnx package: pip install 'xplstm[onnx]'

    model = checkpoint.load(args.model, backend="numpy")
    options = {"dtype": args.dtype} | ({} if args.opset is None else {"opset": args.opset})
    proto = onnx_export.export(model, args.onnx, **options)
    opset = proto.opset_import[0].version
    print(f"wrote {args.onnx} (ONNX opset {opset}) from {args.model}:")
    print(onnx_export.summary(proto))
    return 0


def predict(args: argparse.Namespace) -> int:
    """Write a model's outputs for every sequence of x (rows, seq, features) to an .npy (or
    .npz) file: in this process, or spread over Dask workers with --workers or --scheduler.
    x comes from an .npy, or from an .npz holding x with each row's lengths (rows,) or a mask
    (rows, seq); --lengths and --mask name .npy files of those instead."""
    from xplstm import files

    files.check_target(args.output)  # before any work: a folder, or no folder to write in
    inputs = files.read_inputs(args.input, lengths=args.lengths, mask=args.mask, dtype=args.dtype)
    model = checkpoint.load(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
    steps = {"lengths": inputs.lengths, "mask": inputs.mask}
    if args.workers is None and args.scheduler is None:
        from xplstm import batched

        batched.check_inputs(model, inputs.x, str(args.input), **steps)
        y = batched.predict(model, inputs.x, args.batch_size, **steps)
    else:
        from xplstm import distributed  # only here: Dask is an optional dependency

        where = {"workers": args.workers, "scheduler": args.scheduler}
        with distributed.client_for(**where, timeout=args.connect_timeout) as client:
            y = distributed.predict(
                model, inputs.x, client=client, batch_size=args.batch_size, **steps
            )
    files.write_outputs(args.output, y)
    print(f"{args.output}: outputs {y.shape} {y.dtype} for {inputs.x.shape[0]} sequences")
    finite = np.isfinite(y).reshape(y.shape[0], -1).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        print(
            f"xplstm predict: warning: the outputs of {rows.size} of {y.shape[0]} sequences are "
            f"not finite (NaN or inf), the first in row {rows[0]}; look for NaN or inf in "
            f"{args.input}",
            file=sys.stderr,
        )
    return 0


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    """--workers or --scheduler, and how long to wait for a scheduler."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="spread the work over a Dask LocalCluster of N processes",
    )
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="... or over the Dask scheduler at ADDRESS"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for --scheduler (default 10)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xplstm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="backends found here, and a self-check").set_defaults(run=info)

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--backend", default=None, help="numpy, cupy, torch, jax, ... or auto (the default)"
    )
    where.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: the backend's)")

    train_parser = commands.add_parser(
        "train",
        parents=[where],
        help="train on a task",
        description=run_train.__doc__ + " Unset options take the task's defaults (shown).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="task defaults:\n"
        + "\n".join(
            f"  {name:7s} " + ", ".join(f"{k}={v}" for k, v in task.defaults.items())
            for name, task in tasks.TASKS.items()
        ),
    )
    train_parser.add_argument("--task", choices=list(tasks.TASKS), default="adding")
    train_parser.add_argument("--seq-len", type=int, help="sequence length (copy: blanks)")
    train_parser.add_argument("--hidden", type=int, help="LSTM hidden size")
    train_parser.add_argument("--layers", type=int, default=1, help="stacked LSTM layers")
    train_parser.add_argument(
        "--bidirectional", action="store_true", help="add a reverse direction to every layer"
    )
    train_parser.add_argument(
        "--proj-size", type=int, default=0, help="project h to this size (LSTMP; 0: none)"
    )
    train_parser.add_argument(
        "--dropout", type=float, default=0.0, help="dropout between stacked layers (training)"
    )
    train_parser.add_argument("--batch", type=int, help="sequences per step")
    train_parser.add_argument("--steps", type=int, help="at most this many steps")
    train_parser.add_argument("--lr", type=float, help="Adam learning rate")
    train_parser.add_argument("--clip", type=float, default=1.0, help="global gradient norm cap")
    train_parser.add_argument("--seed", type=int, default=0, help="seeds data and weights")
    train_parser.add_argument("--out", type=Path, help="output folder (default runs/TASK)")
    train_parser.add_argument(
        "--eval-every", type=int, default=50, help="steps between held-out checks"
    )
    train_parser.add_argument(
        "--threads", type=int, default=1, help="BLAS threads on the CPU (0: the library's default)"
    )
    train_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _cluster_options(train_parser)
    train_parser.set_defaults(run=run_train)

    generate_parser = commands.add_parser(
        "generate", parents=[where], help="sample text from a text model"
    )
    generate_parser.add_argument("--model", required=True, help="DIR/model.npz of a text run")
    generate_parser.add_argument("--length", type=int, default=500, help="characters to sample")
    generate_parser.add_argument("--temperature", type=float, default=0.8)
    generate_parser.add_argument("--prime", default=sampling.PRIME, help="text to start from")
    generate_parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    generate_parser.set_defaults(run=generate)

    predict_parser = commands.add_parser(
        "predict",
        parents=[where],
        help="a model's outputs for sequences in an .npy file",
        description=predict.__doc__,
    )
    predict_parser.add_argument("--model", required=True, help="a checkpoint (.npz)")
    predict_parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="an .npy of x (rows, seq, features), or an .npz of x and lengths or mask",
    )
    predict_parser.add_argument(
        "--output", required=True, type=Path, help="where to write: .npy, or .npz (as 'y')"
    )
    predict_parser.add_argument(
        "--lengths", type=Path, help="an .npy of each row's length (rows,), right padding"
    )
    predict_parser.add_argument(
        "--mask", type=Path, help="an .npy of booleans (rows, seq), True where a step counts"
    )
    predict_parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        help="compute in this dtype, converting the model and x (default: the model's)",
    )
    predict_parser.add_argument(
        "--batch-size", type=int, default=256, help="sequences per forward pass"
    )
    _cluster_options(predict_parser)
    predict_parser.set_defaults(run=predict)

    export_parser = commands.add_parser(
        "export", help="write a checkpoint as an ONNX graph", description=export.__doc__
    )
    export_parser.add_argument("--model", required=True, help="a checkpoint, e.g. DIR/model.npz")
    export_parser.add_argument("--onnx", required=True, help="the ONNX file to write")
    export_parser.add_argument(
        "--opset", type=int, help="ONNX opset version (default: xplstm.onnx.DEFAULT_OPSET, 18)"
    )
    export_parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        help="the graph's float type (default: the model's; a float64 model needs it said, as "
        "ONNX Runtime's CPU LSTM runs float32 only)",
    )
    export_parser.set_defaults(run=export)
    add_bench_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, ImportError) as error:
        # Bad options, files, backends or a missing optional package: say what was wrong,
        # without a traceback.
        parser.exit(2, f"xplstm {args.command}: error: {error}\n")
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        print(f"xplstm {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
