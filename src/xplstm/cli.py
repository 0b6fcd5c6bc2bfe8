"""The ``xplstm`` command: ``xplstm info`` and ``xplstm demo``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

import xplstm
from xplstm import backends


def info(args: argparse.Namespace) -> int:
    """Print the version and the backends found here, with why missing ones are missing."""
    print(f"xplstm {xplstm.__version__}")
    for name, backend in backends.known().items():
        reason = backends.unavailable().get(name)
        if reason:
            print(f"  {name:17s} -- {reason}")
        else:
            devices = ", ".join(str(d) for d in backend.devices())
            print(f"  {name:17s} {backend.version() or '':12s} devices: {devices}")
    return 0


def demo(args: argparse.Namespace) -> int:
    """A short forward and backward on the backend found, saying which it is."""
    layer = xplstm.LSTM(args.input, args.hidden, backend=args.backend, seed=0)
    print(f"backend chosen: {layer.backend} on {layer.device} ({backends.summary()})")
    print(layer)
    rng = np.random.default_rng(0)
    host = rng.standard_normal((args.batch, args.seq_len, args.input)).astype("float32")
    x = layer.xp.asarray(host, device=layer.device)
    y, h_n, _ = layer.forward(x)
    dx, _, _ = layer.backward(layer.xp.ones_like(y))
    print(f"forward:  x {tuple(x.shape)} -> y {tuple(y.shape)}, h_n {tuple(h_n.shape)}")
    print(
        f"backward: dx {tuple(dx.shape)}, |dW| = "
        f"{float(np.linalg.norm(xplstm.to_numpy(layer.weights.deltas))):.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xplstm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help=info.__doc__).set_defaults(run=info)
    demo_parser = commands.add_parser("demo", help=demo.__doc__)
    demo_parser.add_argument("--backend", default=None, help="numpy, cupy, torch, ... or auto")
    demo_parser.add_argument("--batch", type=int, default=8)
    demo_parser.add_argument("--seq-len", type=int, default=50)
    demo_parser.add_argument("--input", type=int, default=4)
    demo_parser.add_argument("--hidden", type=int, default=16)
    demo_parser.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
