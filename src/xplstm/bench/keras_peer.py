"""Keras 3 on JAX as a peer: ``keras.layers.LSTM`` compiled whole by XLA.

Every run is one ``jax.jit`` call over the layers' ``stateless_call``: the forward; the forward
and backward as ``jax.grad`` of ``sum(y * dy)`` with respect to the weights and the input (so
the backward computes what xplstm's and torch's compute: dx and the weight gradients); and the
demo's training step (the stack, its last valid step, ``Dense(1)``, MSE, Adam at lr 1e-2 with
the global gradient norm clipped at 1, ``optimizer.stateless_apply``). A stack is a list of
layers run one after the other, a reverse direction ``keras.layers.Bidirectional``, and rows of
their own lengths a mask (Keras's way: a masked step keeps the state).

Keras picks its backend when first imported: ``$KERAS_BACKEND`` is set to ``jax`` here unless
it names another, and a Keras already imported on another backend is reported, not used.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xplstm.bench.contenders import CLIP, LR, Runs, Structure

#: The row's name, next to torch.nn.LSTM's.
KERAS = "keras.layers.LSTM (jax)"


def unavailable_reason() -> str | None:
    """Why Keras on JAX cannot run here, or ``None``."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import jax  # noqa: F401
        import keras
    except ImportError as error:
        return f"not installed ({error.name}): pip install 'xplstm[test]'"
    if keras.backend.backend() != "jax":
        return f"Keras runs on {keras.backend.backend()!r} in this process (KERAS_BACKEND=jax)"
    return None


def keras_runs(
    hidden: int, x: Any, dy: Any, target: Any, structure: Structure, lengths: Any = None
) -> Runs:
    """Keras's LSTM stack on the JAX arrays ``x`` (batch, seq, input), ``dy`` and ``target``
    (batch, 1), with a mask from the host ``lengths`` when given."""
    import jax
    import jax.numpy as jnp
    import keras

    batch, seq, inputs = x.shape
    dtype = str(x.dtype)
    keras.utils.set_random_seed(0)
    layers, width = [], inputs
    for _ in range(structure.num_layers):
        layer = keras.layers.LSTM(hidden, return_sequences=True, dtype=dtype)
        if structure.bidirectional:
            layer = keras.layers.Bidirectional(layer, dtype=dtype)
        layer.build((batch, seq, width))
        layers.append(layer)
        width = structure.directions * hidden
    head = keras.layers.Dense(1, dtype=dtype)
    head.build((batch, width))
    constants = [[v.value for v in layer.non_trainable_variables] for layer in layers]
    counts = [len(layer.trainable_variables) for layer in layers]
    mask, last = None, jnp.full((batch,), seq - 1)
    if lengths is not None:
        host = np.asarray(lengths)
        mask = jnp.asarray(np.arange(seq)[None, :] < host[:, None])
        last = jnp.asarray(host - 1)

    def stack(weights: list, given: Any) -> Any:
        start = 0
        for layer, count, fixed in zip(layers, counts, constants, strict=True):
            given, _ = layer.stateless_call(weights[start : start + count], fixed, given, mask=mask)
            start += count
        return given

    def loss(weights: list, given: Any) -> Any:
        y = stack(weights[: sum(counts)], given)
        prediction, _ = head.stateless_call(weights[sum(counts) :], [], y[jnp.arange(batch), last])
        return jnp.mean((prediction - target) ** 2)

    parameters = [v for layer in layers for v in layer.trainable_variables]
    parameters += head.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate=LR, global_clipnorm=CLIP)
    optimizer.build(parameters)
    state = {"weights": [v.value for v in parameters], "slots": optimizer.variables}
    state["slots"] = [v.value for v in state["slots"]]
    lstm_weights = state["weights"][: sum(counts)]

    forward = jax.jit(stack)
    gradients = jax.jit(jax.grad(lambda w, given: jnp.sum(stack(w, given) * dy), argnums=(0, 1)))

    @jax.jit
    def step(weights: list, slots: list, given: Any) -> tuple:
        value, grads = jax.value_and_grad(loss)(weights, given)
        weights, slots = optimizer.stateless_apply(slots, grads, weights)
        return value, weights, slots

    def forward_backward() -> tuple:
        d_weights, dx = gradients(lstm_weights, x)
        return dx, d_weights[0]

    def train_step() -> Any:
        value, state["weights"], state["slots"] = step(state["weights"], state["slots"], x)
        return value

    return {
        "forward": lambda: forward(lstm_weights, x),
        "forward+backward": forward_backward,
        "train-step": train_step,
    }
