"""``xplstm bench``: xplstm on each backend against torch.nn.LSTM and Keras on JAX, side by side
in one process.

One job a module: :mod:`.contenders` (the rows: xplstm per backend and path, torch.nn.LSTM with
autograd, cuDNN on a GPU, and a naive baseline that concatenates [x, h] at every step as the
original layer did), :mod:`.keras_peer` (Keras's LSTM on JAX, compiled whole), :mod:`.timing`
(alternating timed runs, matrix-product ceilings, peak memory), :mod:`.report` (environment
and table) and :mod:`.command` (the command line).
The medians and the ratios to the best peer are what to read.
"""

from xplstm.bench.command import add_bench_command, bench

__all__ = ["add_bench_command", "bench"]
