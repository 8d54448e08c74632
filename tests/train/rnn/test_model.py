import itertools

import numpy as np
import pytest
import torch

from multistream.config import RNNConfig
from multistream.train.rnn.model import SequenceClassifier, pad_sequences

D, C, H = 12, 5, 8
VARIANTS = list(itertools.product(("lstm", "gru"), (False, True), (1, 2), (False, True)))


def _model(cell, bidirectional, layers, attention):
    torch.manual_seed(0)
    return SequenceClassifier(D, C, cell=cell, bidirectional=bidirectional, layers=layers, hidden=H,
                              attention=attention, dropout=0.5).eval()


@pytest.mark.parametrize("cell,bidirectional,layers,attention", VARIANTS)
def test_shapes(cell, bidirectional, layers, attention):
    model = _model(cell, bidirectional, layers, attention)
    x, lengths = torch.randn(3, 7, D), torch.tensor([7, 2, 5])
    assert model.embedding_dim == H * (2 if bidirectional else 1)
    assert model(x, lengths).shape == (3, C)
    assert model.embed(x, lengths).shape == (3, model.embedding_dim)


@pytest.mark.parametrize("cell,bidirectional,layers,attention", VARIANTS)
def test_padding_does_not_change_the_output(cell, bidirectional, layers, attention):
    model = _model(cell, bidirectional, layers, attention)
    rng = np.random.default_rng(1)
    seqs = [rng.normal(size=(n, D)).astype(np.float32) for n in (5, 3, 7)]
    x, lengths = pad_sequences(seqs)
    garbage = x.clone()
    for i, n in enumerate(lengths.tolist()):
        garbage[i, n:] = torch.from_numpy(rng.normal(scale=100, size=(x.shape[1] - n, D)).astype(np.float32))
    longer = torch.cat([garbage, 50 * torch.randn(3, 4, D)], dim=1)  # more padded steps than any length
    with torch.no_grad():
        reference = model(x, lengths)
        torch.testing.assert_close(model(garbage, lengths), reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(longer, lengths), reference, rtol=0, atol=1e-5)
        alone = model(torch.from_numpy(seqs[1])[None], torch.tensor([3]))
        torch.testing.assert_close(alone[0], reference[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell,layers", [("gru", 2), ("lstm", 1)])
def test_embedding_is_last_forward_and_first_backward_state(cell, layers):
    model = _model(cell, True, layers, False)
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        outputs, _ = model.rnn(x)  # top layer outputs (B, T, 2H): forward then backward halves
        emb = model.embed(x, torch.tensor([6, 6]))
    torch.testing.assert_close(emb[:, :H], outputs[:, -1, :H])
    torch.testing.assert_close(emb[:, H:], outputs[:, 0, H:])


def test_dropout_is_active_in_train_mode_only():
    model = _model("gru", True, 2, False)
    x, lengths = torch.randn(4, 6, D), torch.tensor([6, 6, 3, 1])
    with torch.no_grad():
        assert torch.equal(model(x, lengths), model(x, lengths))
        model.train()
        assert not torch.equal(model(x, lengths), model(x, lengths))


def test_from_config_paper_model():
    model = SequenceClassifier.from_config(RNNConfig(), input_dim=1536, num_classes=101)
    assert model.embedding_dim == 1024
    assert isinstance(model.rnn, torch.nn.GRU) and model.rnn.num_layers == 2 and model.rnn.bidirectional
    assert model.rnn.dropout == 0.5 and model.input_dropout.p == 0.5 and model.output_dropout.p == 0.5
    assert model.dense.out_features == 101 and model.attention is None
    small = SequenceClassifier.from_config(RNNConfig(cell="lstm", bidirectional=False, layers=1, hidden=16,
                                                     attention=True), input_dim=D, num_classes=C)
    assert isinstance(small.rnn, torch.nn.LSTM) and small.embedding_dim == 16 and small.attention is not None


def test_invalid_arguments():
    with pytest.raises(ValueError, match="cell"):
        SequenceClassifier(D, C, cell="rnn")
    model = _model("gru", False, 1, False)
    with pytest.raises(ValueError, match="lengths"):
        model(torch.randn(2, 4, D), torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.randn(2, 4, D), torch.tensor([5, 1]))


def test_pad_sequences():
    seqs = [np.ones((3, 4), np.float16), np.zeros((0, 4), np.float32), 2 * np.ones((5, 4))]
    x, lengths = pad_sequences(seqs)
    assert x.shape == (3, 5, 4) and x.dtype == torch.float32
    assert lengths.dtype == torch.int64 and lengths.tolist() == [3, 1, 5]
    assert (x[0, :3] == 1).all() and (x[0, 3:] == 0).all()
    assert (x[1] == 0).all()
    assert (x[2] == 2).all()
    with pytest.raises(ValueError):
        pad_sequences([np.ones((3, 4)), np.ones((3, 5))])
    with pytest.raises(ValueError):
        pad_sequences([])
