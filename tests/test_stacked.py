"""Stacked, bidirectional, projected and bias-free LSTMs, with and without lengths, equal
torch.nn.LSTM + autograd (outputs, states and every gradient) on every backend, and pass
finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.numerics import directional_derivative
from tests.support import assert_close, assert_route, on_path
from xplstm import interop

torch = pytest.importorskip("torch", reason="torch.nn.LSTM is the reference; pip install '.[test]'")

#: (num_layers, bidirectional, proj_size, bias): every option on and off, layers 1 to 3.
CONFIGS = {
    "2-layers": (2, False, 0, True),
    "bidirectional": (1, True, 0, True),
    "3-layers-bi-proj": (3, True, 2, True),
    "2-layers-proj-no-bias": (2, False, 2, False),
    "proj": (1, False, 3, True),
    "2-layers-bi-no-bias": (2, True, 0, False),
}
BATCH, SEQ, INPUTS, HIDDEN = 4, 5, 3, 4
#: Unsorted, with a full-length and a length-1 row.
LENGTHS = [3, 5, 1, 4]


def torch_module(config: tuple, seed: int = 0) -> torch.nn.LSTM:
    """A float64 torch.nn.LSTM with random parameters, the two biases distinct."""
    layers, bidirectional, proj, bias = config
    torch.manual_seed(seed)
    module = torch.nn.LSTM(
        INPUTS,
        HIDDEN,
        num_layers=layers,
        bidirectional=bidirectional,
        proj_size=proj,
        bias=bias,
        batch_first=True,
        dtype=torch.float64,
    )
    with torch.no_grad():
        for param in module.parameters():
            param.uniform_(-0.6, 0.6)
    return module


def problem(config: tuple, seed: int = 1) -> dict[str, np.ndarray]:
    """Float64 inputs, initial states and output gradients shaped as torch's."""
    layers, bidirectional, proj, _ = config
    states, out = layers * (2 if bidirectional else 1), proj or HIDDEN
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((BATCH, SEQ, INPUTS)),
        "h0": rng.standard_normal((states, BATCH, out)) * 0.5,
        "c0": rng.standard_normal((states, BATCH, HIDDEN)) * 0.5,
        "dy": rng.standard_normal((BATCH, SEQ, states // layers * out)),
        "dh_n": rng.standard_normal((states, BATCH, out)),
        "dc_n": rng.standard_normal((states, BATCH, HIDDEN)),
    }


def torch_reference(module: torch.nn.LSTM, p: dict, lengths: list[int] | None) -> dict:
    """Outputs, input gradients and parameter gradients (by name) from torch + autograd."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    module.zero_grad()
    x, h0, c0 = (torch.tensor(p[k], requires_grad=True) for k in ("x", "h0", "c0"))
    if lengths is None:
        y, (h_n, c_n) = module(x, (h0, c0))
    else:
        packed = pack_padded_sequence(
            x, torch.tensor(lengths), batch_first=True, enforce_sorted=False
        )
        y, (h_n, c_n) = module(packed, (h0, c0))
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=SEQ)
    loss = sum(
        (out * torch.from_numpy(p[grad])).sum()
        for out, grad in ((y, "dy"), (h_n, "dh_n"), (c_n, "dc_n"))
    )
    loss.backward()
    found = {"y": y, "h_n": h_n, "c_n": c_n, "dx": x.grad, "dh0": h0.grad, "dc0": c0.grad}
    found = {k: v.detach().numpy() for k, v in found.items()}
    return found | {name: param.grad.numpy() for name, param in module.named_parameters()}


STATES = ("h0", "c0", "dh_n", "dc_n", "h_n", "c_n", "dh0", "dc0")


def as_layer_takes(layer: xplstm.LSTM, name: str, a: np.ndarray) -> np.ndarray:
    """A torch-shaped array as the layer takes or gives it: a state of one recurrence is
    (batch, size), without torch's leading axis of 1."""
    return a[0] if name in STATES and len(layer.recurrences) == 1 else a


def run_ours(target, module, p: dict, dtype: str, lengths=None, path=None, **kwargs) -> tuple:
    """Forward and backward through the layer converted from ``module``, on ``target`` (by
    ``path``, one of ``support.paths_of``, when given)."""
    layer = xplstm.LSTM.from_torch(
        module, backend=target.backend, device=target.device, dtype=dtype, **kwargs
    )
    if path is not None:
        on_path(layer, path)
    cast = {k: target.asarray(as_layer_takes(layer, k, v).astype(dtype)) for k, v in p.items()}
    y, h_n, c_n = layer.forward(cast["x"], cast["h0"], cast["c0"], lengths=lengths)
    dx, dh0, dc0 = layer.backward(cast["dy"], cast["dh_n"], cast["dc_n"])
    return layer, {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}


def torch_named_deltas(layer: xplstm.LSTM) -> dict[str, np.ndarray]:
    """The layer's parameter gradients under torch's names and layouts; a summed bias's
    gradient is that of each of torch's two biases."""
    hosts = [
        interop.Host(*(None if w is None else xplstm.to_numpy(w.deltas) for w in vars(r).values()))
        for r in layer.recurrences
    ]
    named = interop.to_torch(hosts, layer.bidirectional)
    return {k: named[k.replace("bias_hh", "bias_ih")] for k in named}


#: float32 for the configurations that together use every option (the suite stays fast).
IN_FLOAT32 = ("3-layers-bi-proj", "2-layers-proj-no-bias")
CASES = [(c, "float64") for c in CONFIGS] + [(c, "float32") for c in IN_FLOAT32]


def too_slow_on_dask(target, config: tuple) -> None:
    """Dask builds and computes a graph per step, and array_api_strict's second device repeats
    its first: both run the configurations of at most two recurrences (which still cover
    stacking, a reverse direction, projections and no bias); the other targets run them all."""
    layers, bidirectional = config[:2]
    if target.id in ("dask", "array_api_strict-device1") and layers * (1 + bidirectional) > 2:
        pytest.skip(f"{target.id}: more than two recurrences take too long for the suite")


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=[f"{c}-{d}" for c, d in CASES])
def test_matches_torch(target, name, dtype):
    config = CONFIGS[name]
    too_slow_on_dask(target, config)
    module = torch_module(config)
    p = problem(config)
    expected = torch_reference(module, p, None)
    layer, actual = run_ours(target, module, p, dtype)
    for name, value in actual.items():
        assert_close(value, as_layer_takes(layer, name, expected[name]), like=layer, name=name)
    deltas = torch_named_deltas(layer)
    assert sorted(deltas) == sorted(name for name, _ in module.named_parameters())
    for name, delta in deltas.items():
        assert_close(delta, expected[name], like=delta, name=name)


LENGTH_CONFIGS = {k: CONFIGS[k] for k in ("bidirectional", "3-layers-bi-proj")}
LENGTH_CONFIGS["one-layer"] = (1, False, 0, True)


LENGTH_CASES = [(c, "float64") for c in LENGTH_CONFIGS] + [("3-layers-bi-proj", "float32")]


@pytest.mark.parametrize(("name", "dtype"), LENGTH_CASES, ids=[f"{c}-{d}" for c, d in LENGTH_CASES])
def test_lengths_match_pack_padded_sequence(target, path, name, dtype):
    """Every route of every target (NumPy's packed stack and its loops, JAX's compiled stack
    and scans, the written-once stack) equals torch's packed sequences."""
    config = LENGTH_CONFIGS[name]
    too_slow_on_dask(target, config)
    module = torch_module(config, seed=2)
    p = problem(config, seed=3)
    expected = torch_reference(module, p, LENGTHS)
    lengths = target.asarray(np.array(LENGTHS)) if config[0] == 3 else LENGTHS
    layer, actual = run_ours(target, module, p, dtype, lengths=lengths, path=path)
    assert_route(layer, path)
    for name, value in actual.items():
        assert_close(value, as_layer_takes(layer, name, expected[name]), like=layer, name=name)
    for name, delta in torch_named_deltas(layer).items():
        assert_close(delta, expected[name], like=delta, name=name)
    padded = np.arange(SEQ)[None, :] >= np.array(LENGTHS)[:, None]
    assert not np.any(xplstm.to_numpy(actual["y"])[padded]), "y is zero past each length"
    assert not np.any(xplstm.to_numpy(actual["dx"])[padded]), "dx is zero at padded steps"


def test_the_comparison_sees_a_swapped_direction(target):
    """The test has teeth: a layer whose two directions are swapped is caught."""
    config = CONFIGS["bidirectional"]
    module = torch_module(config)
    p = problem(config)
    expected = torch_reference(module, p, None)
    state = module.state_dict()
    swapped = {k.replace("_reverse", "_X"): v for k, v in state.items()}
    swapped = {k if k.endswith("_X") else k + "_reverse": v for k, v in swapped.items()}
    swapped = {k.replace("_X_reverse", "").replace("_X", ""): v for k, v in swapped.items()}
    layer = xplstm.LSTM.from_torch(swapped, backend=target.backend, device=target.device)
    y, _, _ = layer(target.asarray(p["x"]), target.asarray(p["h0"]), target.asarray(p["c0"]))
    with pytest.raises(AssertionError):
        assert_close(y, expected["y"], like=layer, name="y")


# -- finite differences ------------------------------------------------------------------
FD_CONFIGS = dict(CONFIGS) | {"one-layer": (1, False, 0, True)}


@pytest.mark.parametrize(
    ("config", "steps"),
    [(c, None) for c in FD_CONFIGS.values()]
    + [(CONFIGS["3-layers-bi-proj"], "lengths"), (CONFIGS["bidirectional"], "mask")],
    ids=[*FD_CONFIGS, "3-layers-bi-proj-lengths", "bidirectional-mask"],
)
def test_finite_differences(target, config, steps):
    """The whole gradient (inputs, states, every parameter) along two random directions
    against central differences of sum(y * dy) + sum(h_n * dh_n) + sum(c_n * dc_n)."""
    too_slow_on_dask(target, config)
    layers, bidirectional, proj, bias = config
    p = problem(config, seed=5)
    kwargs = {
        "num_layers": layers,
        "bidirectional": bidirectional,
        "proj_size": proj,
        "use_bias": bias,
    }
    layer = target.lstm(INPUTS, HIDDEN, dtype="float64", seed=3, **kwargs)
    p = {k: as_layer_takes(layer, k, v) for k, v in p.items()}
    rng = np.random.default_rng(11)
    where = {}
    if steps == "lengths":
        where["lengths"] = LENGTHS
    elif steps == "mask":
        where["mask"] = target.asarray(rng.random((BATCH, SEQ)) < 0.6)
    params = [xplstm.to_numpy(w.values) for w in layer.parameters()]

    def loss(inputs: dict, values: list) -> float:
        for weights, v in zip(layer.parameters(), values, strict=True):
            weights.values = target.asarray(v)
        y, h_n, c_n = layer(*(target.asarray(inputs[k]) for k in ("x", "h0", "c0")), **where)
        return sum(
            float(np.sum(xplstm.to_numpy(out) * inputs[grad]))
            for out, grad in ((y, "dy"), (h_n, "dh_n"), (c_n, "dc_n"))
        )

    loss(p, params)
    dx, dh0, dc0 = layer.backward(*(target.asarray(p[k]) for k in ("dy", "dh_n", "dc_n")))
    grads = {"x": dx, "h0": dh0, "c0": dc0}
    deltas = [xplstm.to_numpy(w.deltas) for w in layer.parameters()]
    for _ in range(2):
        direction = {k: rng.standard_normal(p[k].shape) for k in grads}
        along = [rng.standard_normal(v.shape) for v in params]
        analytic = sum(float(np.sum(xplstm.to_numpy(grads[k]) * direction[k])) for k in grads)
        analytic += sum(float(np.sum(d * a)) for d, a in zip(deltas, along, strict=True))
        numeric = directional_derivative(
            lambda t, direction=direction, along=along: loss(
                p | {k: p[k] + t * direction[k] for k in direction},
                [v + t * a for v, a in zip(params, along, strict=True)],
            )
        )
        analytic = np.asarray(analytic)
        assert_close(analytic, np.asarray(numeric), like=analytic, level="finite-difference")


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_torch_state_dict_round_trip(config):
    """Every configuration converts exactly both ways, with torch's key order; each pair of
    biases arrives summed in bias_ih, bias_hh is zero."""
    module = torch_module(config, seed=4)
    state = module.state_dict()
    back = xplstm.LSTM.from_torch(module).to_torch_state_dict()
    assert list(back) == list(state)
    for name, tensor in back.items():
        if name.startswith("bias_ih"):
            expected = state[name] + state[name.replace("bias_ih", "bias_hh")]
        elif name.startswith("bias_hh"):
            expected = torch.zeros_like(state[name])
        else:
            expected = state[name]
        assert torch.equal(tensor, expected), name
