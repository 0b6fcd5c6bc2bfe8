"""Dropout between layers (torch's) and recurrent dropout (variational, Keras's): off in eval
mode as torch's; in training mode drawn on the host from a seed, so reproducible on every
backend; gradients with the masks fixed pass finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.numerics import directional_derivative
from tests.support import assert_close
from xplstm import dropout, interop

torch = pytest.importorskip("torch", reason="torch.nn.LSTM is the reference; pip install '.[test]'")

BATCH, SEQ, INPUTS, HIDDEN = 3, 4, 3, 4
KWARGS = {"num_layers": 2, "bidirectional": True, "dropout": 0.4, "recurrent_dropout": 0.3}


def host_problem(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((BATCH, SEQ, INPUTS)),
        "dy": rng.standard_normal((BATCH, SEQ, 2 * HIDDEN)),
        "dh_n": rng.standard_normal((4, BATCH, HIDDEN)),
    }


def test_eval_mode_equals_torch_eval(target):
    torch.manual_seed(0)
    module = torch.nn.LSTM(
        INPUTS, HIDDEN, num_layers=3, dropout=0.5, batch_first=True, dtype=torch.float64
    ).eval()
    layer = xplstm.LSTM.from_torch(module, backend=target.backend, device=target.device)
    assert layer.dropout == 0.5 and not layer.training, "dropout and the module's mode come along"
    x = host_problem()["x"]
    with torch.no_grad():
        expected = module(torch.from_numpy(x))[0].numpy()
    assert_close(layer(target.asarray(x))[0], expected, like=layer, name="y")
    trained = layer.train()(target.asarray(x))[0]
    assert not np.allclose(xplstm.to_numpy(trained), expected), "dropout acts in training"
    assert layer.eval() is layer and not layer.training
    assert_close(layer(target.asarray(x))[0], expected, like=layer, name="y")


def run(layer, target, p: dict, seed: int) -> dict[str, np.ndarray]:
    layer.dropout_seed(seed)
    y, h_n, _ = layer(target.asarray(p["x"]))
    dx, dh0, _ = layer.backward(target.asarray(p["dy"]), target.asarray(p["dh_n"]))
    found = {"y": y, "h_n": h_n, "dx": dx, "dh0": dh0}
    found |= {f"d{k}": w.deltas for k, w in enumerate(layer.parameters())}
    return {k: xplstm.to_numpy(v) for k, v in found.items()}


def test_a_seed_gives_the_same_results_on_every_backend(target):
    """The masks come from the host: the same seed, the same numbers as on NumPy (in float32,
    the training dtype; the finite-difference test below runs float64)."""
    dtype = "float32"
    p = {k: v.astype(dtype) for k, v in host_problem(1).items()}
    reference = xplstm.LSTM(INPUTS, HIDDEN, backend="numpy", dtype=dtype, seed=3, **KWARGS)
    expected = run(reference, _NumPy(), p, seed=9)
    layer = target.lstm(INPUTS, HIDDEN, dtype=dtype, seed=3, **KWARGS)
    actual = run(layer, target, p, seed=9)
    for name, value in actual.items():
        assert_close(value, expected[name], like=value, name=name)
    again = run(layer, target, p, seed=10)
    assert not np.allclose(again["y"], actual["y"]), "another seed draws other masks"
    layer.eval()
    assert not np.allclose(run(layer, target, p, seed=9)["y"], actual["y"])


class _NumPy:
    """The NumPy target, for a reference run."""

    @staticmethod
    def asarray(host: np.ndarray) -> np.ndarray:
        return host


def test_masks_are_drawn_as_documented():
    """Between layers: fresh per element and step, zero or 1 / (1 - p); recurrent: one mask per
    sequence and recurrence (batch, out)."""
    layer = xplstm.LSTM(
        3,
        8,
        num_layers=3,
        backend="numpy",
        seed=0,
        dropout=0.25,
        recurrent_dropout=0.5,
        bidirectional=True,
        proj_size=5,
    )
    masks = dropout.draw(layer, 200, 30)
    assert len(masks.between) == 2 and len(masks.recurrent) == 6
    for mask in masks.between:
        assert mask.shape == (200, 30, 10)
        assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
        assert abs((mask == 0).mean() - 0.25) < 0.01
    for mask in masks.recurrent:
        assert mask.shape == (200, 5) and abs((mask == 0).mean() - 0.5) < 0.05
    none = dropout.draw(layer.eval(), 2, 3)
    assert all(mask is None for mask in (*none.recurrent, *none.between))


def test_sequential_switches_its_layers():
    model = xplstm.Sequential(
        xplstm.LSTM(2, 4, num_layers=2, dropout=0.5, backend="numpy"),
        xplstm.LastStep(),
        xplstm.Linear(4, 1, backend="numpy"),
    )
    assert model.eval() is model and not model.layers[0].training
    assert model.train().layers[0].training


def test_finite_differences_with_the_masks_fixed(target):
    """Re-seeding before every forward fixes the masks: the gradient is that of the function
    with those masks, checked along two random directions."""
    p = host_problem(2)
    layer = target.lstm(INPUTS, HIDDEN, dtype="float64", seed=4, **KWARGS)
    params = [xplstm.to_numpy(w.values) for w in layer.parameters()]

    def loss(x: np.ndarray, values: list) -> float:
        for weights, v in zip(layer.parameters(), values, strict=True):
            weights.values = target.asarray(v)
        layer.dropout_seed(5)
        y, h_n, _ = layer(target.asarray(x))
        return float(
            np.sum(xplstm.to_numpy(y) * p["dy"]) + np.sum(xplstm.to_numpy(h_n) * p["dh_n"])
        )

    loss(p["x"], params)
    dx, _, _ = layer.backward(target.asarray(p["dy"]), target.asarray(p["dh_n"]))
    deltas = [xplstm.to_numpy(w.deltas) for w in layer.parameters()]
    rng = np.random.default_rng(0)
    for _ in range(2):
        direction = rng.standard_normal(p["x"].shape)
        along = [rng.standard_normal(v.shape) for v in params]
        analytic = float(np.sum(xplstm.to_numpy(dx) * direction))
        analytic += sum(float(np.sum(d * a)) for d, a in zip(deltas, along, strict=True))
        numeric = directional_derivative(
            lambda t, direction=direction, along=along: loss(
                p["x"] + t * direction, [v + t * a for v, a in zip(params, along, strict=True)]
            )
        )
        analytic = np.asarray(analytic)
        assert_close(analytic, np.asarray(numeric), like=analytic, level="finite-difference")


def _torch_stack_with_masks(module: torch.nn.LSTM, x: torch.Tensor, masks) -> tuple:
    """torch's LSTM equations written out, step by step, with each recurrence's recurrent
    mask on h_{t-1} before the recurrent product (recurrence ``k = layer * 2 + direction``, the
    order of ``layer.recurrences``) and each between-layer mask on that layer's output."""
    recurrent = [torch.from_numpy(m) for m in masks.recurrent]
    between = [torch.from_numpy(m) for m in masks.between]
    inputs, h_n = x, []
    for layer in range(module.num_layers):
        outputs = []
        for direction, suffix in enumerate(("", "_reverse")):
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            w_ih, w_hh, b_ih, b_hh = (getattr(module, f"{n}_l{layer}{suffix}") for n in names)
            h = c = torch.zeros(x.shape[0], HIDDEN, dtype=x.dtype)
            steps = range(x.shape[1]) if direction == 0 else reversed(range(x.shape[1]))
            ys = {}
            for t in steps:
                z = inputs[:, t] @ w_ih.T + b_ih + (h * recurrent[layer * 2 + direction]) @ w_hh.T
                i, f, g, o = (z + b_hh).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = ys[t] = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(torch.stack([ys[t] for t in range(x.shape[1])], dim=1))
            h_n.append(h)
        inputs = torch.cat(outputs, dim=-1)
        if layer < module.num_layers - 1:
            inputs = inputs * between[layer]
    return inputs, torch.stack(h_n)


@pytest.mark.reference
def test_each_recurrence_uses_its_own_recurrent_mask():
    """Against torch's equations written out with the masks of the documented draw: recurrence
    ``layer * num_directions + direction`` multiplies its h_{t-1} by recurrent mask number
    ``layer * num_directions + direction``, and layer ``l``'s output by between-layer mask
    ``l``; outputs, states and every gradient agree (3 layers, bidirectional)."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(INPUTS, HIDDEN, num_layers=3, bidirectional=True, dtype=torch.float64)
    layer = xplstm.LSTM.from_torch(
        module, backend="numpy", dropout=0.4, recurrent_dropout=0.3, seed=0
    )
    p = host_problem(3)
    layer.dropout_seed(8)
    masks = dropout.draw(layer, BATCH, SEQ)
    assert len({m.tobytes() for m in masks.recurrent}) == 6, "six distinct masks"
    x = torch.tensor(p["x"], requires_grad=True)
    y, h_n = _torch_stack_with_masks(module, x, masks)
    dh_n = np.random.default_rng(4).standard_normal((6, BATCH, HIDDEN))
    (y * torch.from_numpy(p["dy"])).sum().add((h_n * torch.from_numpy(dh_n)).sum()).backward()
    layer.dropout_seed(8)
    ours_y, ours_h_n, _ = layer(p["x"])
    dx, _, _ = layer.backward(p["dy"], dh_n)
    assert_close(ours_y, y.detach().numpy(), like=ours_y, name="y")
    assert_close(ours_h_n, h_n.detach().numpy(), like=ours_h_n, name="h_n")
    assert_close(dx, x.grad.numpy(), like=dx, name="dx")
    for k, recurrence in enumerate(layer.recurrences):
        suffix = f"_l{k // 2}" + ("_reverse" if k % 2 else "")
        grads = {n: getattr(module, n + suffix).grad for n in ("weight_ih", "weight_hh", "bias_ih")}
        grads["bias_hh"] = torch.zeros_like(grads["bias_ih"])  # the same gradient, summed once
        expected = interop.from_torch(grads).recurrences[0]  # into xplstm's layout
        for name in ("weights", "bias"):
            ours = getattr(recurrence, name).deltas
            assert_close(ours, getattr(expected, name), like=ours, name=f"d {name} {k}")
