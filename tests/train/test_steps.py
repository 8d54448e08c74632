import numpy as np
import pytest
import torch

from multistream.config import MotionCNNConfig, RNNConfig
from multistream.device import resolve_device
from multistream.train.motion.model import MotionCNN
from multistream.train.rnn.model import SequenceClassifier, pad_sequences
from multistream.train.steps import (
    EarlyStopping,
    evaluate,
    motion_optimizer,
    rnn_optimizer,
    seed_everything,
    top_ks,
    topk_accuracy,
    train_epoch,
)

LOSS = torch.nn.CrossEntropyLoss()


def _sequence_batches():
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    seqs = [rng.normal(size=(rng.integers(2, 9), 6)) + labels[i] for i in range(12)]
    batches = []
    for start in range(0, 12, 4):
        x, lengths = pad_sequences(seqs[start:start + 4])
        batches.append(((x, lengths), torch.from_numpy(labels[start:start + 4])))
    return batches


def test_rnn_training_lowers_the_loss():
    seed_everything(0)
    batches = _sequence_batches()
    model = SequenceClassifier(6, 3, hidden=16, dropout=0.1)
    optimizer, _ = rnn_optimizer(model, RNNConfig(lr=0.05))
    before = evaluate(model, batches, LOSS, "cpu")
    for _ in range(20):
        stats = train_epoch(model, batches, optimizer, LOSS, "cpu", max_grad_norm=5.0)
    after = evaluate(model, batches, LOSS, "cpu")
    assert set(stats) == {"loss", "accuracy"} and set(after) == {"loss", "accuracy", "top5"}
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] == 1.0 and after["top5"] == 1.0  # 3 classes: top-5 is capped at top-3


def test_motion_cnn_training_lowers_the_loss():
    seed_everything(0)
    x, y = torch.randn(6, 4, 84, 112), torch.tensor([0, 1, 2, 0, 1, 2])
    model = MotionCNN(3, stack_length=2, width=0.125, flow_size=(112, 84))
    optimizer = motion_optimizer(model, MotionCNNConfig())
    before = evaluate(model, [(x, y)], LOSS, "cpu", top_k=(1,))
    for _ in range(12):
        train_epoch(model, [(x, y)], optimizer, LOSS, "cpu")
    after = evaluate(model, [(x, y)], LOSS, "cpu", top_k=(1,))
    assert after["loss"] < 0.5 * before["loss"] and "top5" not in after


def test_topk_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.3, 0.35, 0.4]])
    labels = np.array([1, 1, 0, 0])
    assert topk_accuracy(scores, labels, 1) == 0.25
    assert topk_accuracy(scores, labels, 2) == 0.5
    assert topk_accuracy(scores, labels, 5) == 1.0


def test_top5_only_with_more_than_five_classes():
    assert top_ks(4) == (1,) and top_ks(5) == (1,) and top_ks(6) == (1, 5)


def test_early_stopping():
    stopper = EarlyStopping(patience=3)
    improved = []
    for value in [1.0, 0.9, 0.95, 0.92, 0.85, 0.9, 0.9]:
        improved.append(stopper.step(value))
        assert not stopper.should_stop
    assert improved == [True, True, False, False, True, False, False]
    assert stopper.best == 0.85
    assert stopper.step(0.86) is False and stopper.should_stop
    restored = EarlyStopping(patience=3)
    restored.load_state_dict(stopper.state_dict())
    assert restored.should_stop and restored.best == 0.85
    maximizer = EarlyStopping(patience=1, mode="max")
    assert maximizer.step(0.5) and maximizer.step(0.6) and not maximizer.step(0.55) and maximizer.should_stop


def test_rnn_optimizer_and_plateau_schedule():
    model = torch.nn.Linear(2, 2)
    cfg = RNNConfig(lr=1e-2, momentum=0.9, lr_factor=0.1, lr_patience=2, min_lr=1e-4)
    optimizer, scheduler = rnn_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["lr"] == 1e-2
    rates = []
    for loss in [1.0, 0.9] + [0.95] * 12:
        scheduler.step(loss)
        rates.append(optimizer.param_groups[0]["lr"])
    # best at epoch 2; the 2nd epoch in a row without improvement (lr_patience) cuts the rate, then every 2
    assert rates[:3] == pytest.approx([1e-2] * 3)
    assert rates[3] == pytest.approx(1e-3) and rates[4] == pytest.approx(1e-3) and rates[5] == pytest.approx(1e-4)
    assert rates[-1] == pytest.approx(1e-4)  # never below min_lr


@pytest.mark.parametrize("patience", [1, 5])
def test_plateau_patience_is_exactly_the_configured_one(patience):
    """The paper's schedule: x0.1 once the loss has not decreased for `lr_patience` epochs; a tiny gain counts."""
    optimizer, scheduler = rnn_optimizer(torch.nn.Linear(2, 2), RNNConfig(lr=1.0, lr_patience=patience))
    losses = [1.0, 1.0 - 1e-7] + [2.0] * (patience - 1)  # a gain below torch's default 1e-4 threshold
    for loss in losses:
        scheduler.step(loss)
    assert optimizer.param_groups[0]["lr"] == 1.0  # patience - 1 bad epochs after the best
    scheduler.step(2.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_patience"):
        rnn_optimizer(torch.nn.Linear(2, 2), RNNConfig(lr_patience=0))


def test_motion_optimizer_is_adam_with_paper_defaults():
    optimizer = motion_optimizer(torch.nn.Linear(2, 2), MotionCNNConfig())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam)
    assert group["lr"] == 1e-3 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8


def test_seed_everything_and_devices():
    seed_everything(7)
    a = (torch.randn(3), np.random.rand(3))
    seed_everything(7)
    b = (torch.randn(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_training_and_cpu_matching_embeddings():
    seed_everything(0)
    batches = _sequence_batches()
    model = SequenceClassifier(6, 3, hidden=16, dropout=0.1, attention=True).to("cuda")
    optimizer, _ = rnn_optimizer(model, RNNConfig(lr=0.05))
    before = evaluate(model, batches, LOSS, "cuda", amp=True)
    for _ in range(20):
        train_epoch(model, batches, optimizer, LOSS, "cuda", amp=True)
    assert evaluate(model, batches, LOSS, "cuda", amp=True)["loss"] < 0.5 * before["loss"]
    model.eval()
    with torch.no_grad():
        on_gpu = torch.cat([model.embed(x.cuda(), lengths) for (x, lengths), _ in batches]).cpu()
        model.cpu()
        on_cpu = torch.cat([model.embed(x, lengths) for (x, lengths), _ in batches])
    np.testing.assert_allclose(on_gpu.numpy(), on_cpu.numpy(), atol=1e-3)
