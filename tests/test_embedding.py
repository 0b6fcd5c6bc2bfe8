"""Embedding and Linear from and to torch, and a whole torch tagger (Embedding -> LSTM ->
Linear, trained in torch over packed sequences) moved to xplstm: logits and every gradient
equal torch's with autograd, on every backend; the moved tagger saves, loads and exports."""

from __future__ import annotations

import numpy as np
import pytest

import xplstm
from tests.support import assert_close
from xplstm import checkpoint, interop

torch = pytest.importorskip("torch", reason="torch is the reference; pip install '.[test]'")
nn = torch.nn

VOCAB, EMBED, HIDDEN, TAGS = 20, 6, 5, 4


@pytest.mark.reference
def test_embedding_looks_up_and_adds_gradients_as_torch(target):
    torch.manual_seed(0)
    module = nn.Embedding(VOCAB, EMBED, padding_idx=0, dtype=torch.float64)
    layer = xplstm.Embedding.from_torch(module, backend=target.backend, device=target.device)
    assert layer.padding_idx == 0
    tokens = np.array([[3, 3, 0, 7], [19, 3, 0, 0], [5, 5, 5, 1]])  # repeats and padding
    expected = module(torch.from_numpy(tokens))
    ids = target.asarray(tokens.astype("int32" if target.backend == "jax" else "int64"))
    y = layer(ids)
    assert_close(y, expected.detach(), like=layer, level="ulps")
    dy = np.random.default_rng(1).standard_normal(y.shape)
    expected.backward(torch.from_numpy(dy))
    assert layer.backward(target.asarray(dy)) is None
    assert_close(layer.weights.deltas, module.weight.grad, like=layer, level="reference")
    assert np.all(xplstm.to_numpy(layer.weights.deltas)[[0, 2, 4]] == 0.0)  # padding, unread


def test_embedding_refuses_what_it_cannot_read():
    layer = xplstm.Embedding(5, 2, backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"tokens must be ids in 0\.\.4 \(num_embeddings=5\)"):
        layer(np.array([[1, 5]]))
    with pytest.raises(TypeError, match="tokens has dtype float32 but must hold integer"):
        layer(np.zeros((1, 2), dtype="float32"))
    with pytest.raises(ValueError, match=r"padding_idx must be None or an id in 0\.\.4"):
        xplstm.Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match=r"max_norm=1\.0, which xplstm\.Embedding does not have"):
        xplstm.Embedding.from_torch(nn.Embedding(5, 2, max_norm=1.0))
    with pytest.raises(TypeError, match=r"from_torch takes a torch\.nn\.Embedding"):
        xplstm.Embedding.from_torch(nn.Linear(5, 2))


@pytest.mark.reference
def test_linear_from_and_to_torch(target):
    torch.manual_seed(1)
    module = nn.Linear(3, 2, dtype=torch.float64)
    layer = xplstm.Linear.from_torch(module, backend=target.backend, device=target.device)
    x = np.random.default_rng(0).standard_normal((4, 3))
    assert_close(layer(target.asarray(x)), module(torch.from_numpy(x)).detach(), like=layer)
    back = nn.Linear(3, 2, dtype=torch.float64)
    back.load_state_dict(layer.to_torch_state_dict())
    for name, value in module.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    no_bias = xplstm.Linear.from_torch(nn.Linear(3, 2, bias=False))
    assert not np.any(xplstm.to_numpy(no_bias.bias.values))


class Tagger(nn.Module):
    """A part-of-speech style tagger: token ids -> embeddings -> 2-layer bidirectional LSTM
    over packed sequences -> a tag score per step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED, padding_idx=0)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * HIDDEN, TAGS)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(tokens), lengths, batch_first=True, enforce_sorted=False
        )
        y, _ = self.lstm(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=tokens.shape[1])
        return self.out(y)


def sentences(rows: int = 6, seq: int = 7, seed: int = 0):
    """Token ids (0 is padding, right-padded), lengths, and a tag per token."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq + 1, size=rows)
    lengths[0] = seq
    tokens = rng.integers(1, VOCAB, size=(rows, seq))
    tokens[np.arange(seq) >= lengths[:, None]] = 0
    return tokens, lengths, rng.integers(0, TAGS, size=(rows, seq))


@pytest.fixture(scope="module")
def trained() -> Tagger:
    """A tagger trained in torch for 30 Adam steps (float64), then put in eval mode."""
    torch.manual_seed(0)
    model = Tagger().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    tokens, lengths, tags = (torch.from_numpy(a) for a in sentences())
    valid = torch.arange(tokens.shape[1]) < lengths[:, None]
    for _ in range(30):
        optimizer.zero_grad()
        logits = model(tokens, lengths)
        nn.functional.cross_entropy(logits[valid], tags[valid]).backward()
        optimizer.step()
    return model.eval()


def moved(model: Tagger, **where) -> xplstm.Sequential:
    return xplstm.Sequential(
        xplstm.Embedding.from_torch(model.embed, **where),
        xplstm.LSTM.from_torch(model.lstm, **where),
        xplstm.Linear.from_torch(model.out, **where),
    )


@pytest.mark.reference
def test_a_torch_tagger_moves_whole_with_its_logits_and_gradients(target, trained):
    tagger = moved(trained, backend=target.backend, device=target.device)
    assert [layer.training for layer in tagger.layers if hasattr(layer, "training")] == [False]
    tokens, lengths, _ = sentences(seed=1)
    ids = torch.from_numpy(tokens)
    expected = trained(ids, torch.from_numpy(lengths))
    given = target.asarray(tokens.astype("int32" if target.backend == "jax" else "int64"))
    logits = tagger(given, lengths=lengths)
    assert_close(logits, expected.detach(), like=tagger.layers[-1], name="logits")
    d_logits = np.random.default_rng(2).standard_normal(expected.shape)
    trained.zero_grad()
    expected.backward(torch.from_numpy(d_logits))
    assert tagger.backward(target.asarray(d_logits)) is None  # token ids have no gradient
    embed, lstm, out = tagger.layers
    grads = {name: p.grad.numpy() for name, p in trained.named_parameters()}
    assert_close(embed.weights.deltas, grads["embed.weight"], like=embed, name="embedding")
    assert_close(out.weights.deltas, grads["out.weight"].T, like=out, name="linear weights")
    assert_close(out.bias.deltas, grads["out.bias"], like=out, name="linear bias")
    deltas = [
        interop.Host(*(None if p is None else xplstm.to_numpy(p.deltas) for p in vars(r).values()))
        for r in lstm.recurrences
    ]
    for name, value in interop.to_torch(deltas, bidirectional=True).items():
        if not name.startswith("bias_hh"):  # both torch biases get the one bias's gradient
            assert_close(value, grads[f"lstm.{name}"], like=value, name=name)


def test_the_moved_tagger_saves_loads_and_goes_back_to_torch(trained, tmp_path):
    tagger = moved(trained, backend="numpy")
    checkpoint.save(tmp_path / "tagger.npz", tagger)
    loaded = checkpoint.load(tmp_path / "tagger.npz", backend="numpy")
    tokens, lengths, _ = sentences(seed=3)
    assert_close(
        loaded(tokens, lengths=lengths),
        tagger(tokens, lengths=lengths),
        like=tokens.astype(float),
        level="exact",
    )
    assert loaded.layers[0].padding_idx == 0 and loaded.layers[1].training is False
    back = Tagger().double()
    embed, lstm, out = loaded.layers
    back.embed.load_state_dict(embed.to_torch_state_dict())
    back.lstm.load_state_dict(lstm.to_torch_state_dict())
    back.out.load_state_dict(out.to_torch_state_dict())
    expected = trained(torch.from_numpy(tokens), torch.from_numpy(lengths)).detach()
    assert_close(
        back.eval()(torch.from_numpy(tokens), torch.from_numpy(lengths)).detach().numpy(),
        expected,
        like=expected.numpy(),
    )


def test_the_moved_tagger_runs_in_onnx_runtime(trained, tmp_path):
    xplstm_onnx = pytest.importorskip("xplstm.onnx", reason="pip install '.[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    tagger = moved(trained, backend="numpy", dtype="float32")
    xplstm_onnx.export(tagger, tmp_path / "tagger.onnx")
    session = ort.InferenceSession(tmp_path / "tagger.onnx")
    tokens, lengths, _ = sentences(seed=4)
    feed = {"x": tokens.astype("int64"), "sequence_lens": lengths.astype("int32")}
    logits = session.run(["y"], feed)[0]
    expected = tagger(tokens, lengths=lengths)
    assert_close(logits, expected, like=expected, rtol=1e-5, atol=1e-5)
