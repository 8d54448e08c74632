"""The motion CNN's training without Ray: seeded, model choice on val only, device placement, model I/O."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from multistream.config import ConfigError
from multistream.device import actor_device
from multistream.train.motion.data import make_plan
from multistream.train.motion.model import MotionCNN, load_motion_cnn, save_motion_cnn
from multistream.train.motion.recipe import (
    check_motion_resources,
    fit_motion_cnn,
    motion_device,
    training_meta,
)
from multistream.train.sync_bn import SyncBatchNorm2d
from tests.support.motion import config as run_config
from tests.support.motion import synthetic_flow, toy_videos

EPOCHS = 4


def config(epochs: int = EPOCHS, *overrides: str):
    return run_config("unused", epochs, "motion_cnn.stacks_per_video=6", *overrides)


@pytest.fixture(scope="module")
def toy():
    rows, flows = toy_videos(6)
    return make_plan(rows, {v: len(f) for v, f in flows.items()}), flows


@pytest.fixture(scope="module")
def fitted(toy):
    plan, flows = toy
    return fit_motion_cnn(flows, plan, config(), "cpu")


def test_the_same_seed_gives_the_same_model(toy, fitted):
    plan, flows = toy
    again = fit_motion_cnn(flows, plan, config(), "cpu")
    assert fitted.state.keys() == again.state.keys()
    assert all(torch.equal(fitted.state[k], again.state[k]) for k in fitted.state)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in fitted.training.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in again.training.history]
    other = fit_motion_cnn(flows, plan, config(1, "motion_cnn.seed=1"), "cpu")
    assert other.training.history[0]["loss"] != fitted.training.history[0]["loss"]


def test_training_learns_and_reports_val_and_test(toy, fitted):
    plan, _ = toy
    t = fitted.training
    assert [h["epoch"] for h in t.history] == list(range(1, EPOCHS + 1))
    assert (t.n_train, t.n_val, t.n_test, t.chance) == (4, 4, 4, 0.5)
    best = min(t.history, key=lambda h: h["val_loss"])
    assert (t.best_epoch, t.val_loss, t.val_accuracy) == (best["epoch"], best["val_loss"], best["val_accuracy"])
    assert t.val_accuracy > 0.75 and t.test_accuracy > 0.75 and math.isfinite(t.test_loss)
    assert not any(key.startswith("test") for h in t.history for key in h)


def test_model_choice_never_reads_the_test_split(toy, fitted):
    """Test videos replaced by others of the opposite motion: the history, the chosen epoch and the weights
    stay the same; only the test figures change."""
    plan, flows = toy
    rng = np.random.default_rng(5)
    swapped = dict(flows) | {v: synthetic_flow(1 - plan.targets[v], len(flows[v]), rng) for v in plan.test}
    other = fit_motion_cnn(swapped, plan, config(), "cpu")
    assert other.training.history == [h | {"seconds": o["seconds"]} for h, o in
                                      zip(fitted.training.history, other.training.history, strict=True)]
    assert other.training.best_epoch == fitted.training.best_epoch
    assert all(torch.equal(fitted.state[k], other.state[k]) for k in fitted.state)
    assert other.training.test_accuracy < 0.25 < fitted.training.test_accuracy


def test_early_stopping_reads_val(toy):
    plan, flows = toy
    fit = fit_motion_cnn(flows, plan, config(30, "motion_cnn.patience=1", "motion_cnn.lr=0.05"), "cpu")
    history = fit.training.history
    assert len(history) < 30, "a learning rate this high never keeps lowering the val loss"
    assert history[-1]["val_loss"] >= min(h["val_loss"] for h in history[:-1])
    assert history[-1]["epoch"] == fit.training.best_epoch + 1


def test_saved_model_loads_back(tmp_path, toy, fitted):
    plan, flows = toy
    cfg = config()
    save_motion_cnn(str(tmp_path / "m"), fitted.state, training_meta(plan, cfg, fitted.training))
    model, meta = load_motion_cnn(str(tmp_path / "m"))
    assert meta["classes"] == ["class0", "class1"] and meta["flow_size"] == [72, 64]
    assert meta["training"]["best_epoch"] == fitted.training.best_epoch
    assert all(torch.equal(model.state_dict()[k], fitted.state[k]) for k in fitted.state)
    with pytest.raises(ValueError, match="clip_px"):
        save_motion_cnn(str(tmp_path / "x"), fitted.state, {"classes": []})


def test_the_motion_cnn_follows_its_own_device_key():
    # spatial.device never moves the motion CNN ("auto" resolves the same way whatever the spatial stream says)
    assert motion_device(config(1, "spatial.device=cpu", "motion_cnn.device=cuda")) == "cuda"
    assert motion_device(config(1, "spatial.device=cuda", "motion_cnn.device=cpu")) == "cpu"
    assert (motion_device(config(1, "spatial.device=cpu")) == motion_device(config(1, "spatial.device=cuda"))
            == actor_device("auto"))


def test_cuda_without_gpus_and_odd_batches_are_refused_before_work():
    gpus = ["motion_cnn.device=cuda", "ray.train.use_gpu=true"]
    check_motion_resources(config(1, *gpus, "ray.embed.num_gpus=1"))
    check_motion_resources(config(1, "ray.embed.num_gpus=0"))  # auto: the CPU where no GPU is given
    with pytest.raises(ConfigError, match="motion_cnn.device: cuda, but ray.embed.num_gpus is 0"):
        check_motion_resources(config(1, *gpus, "ray.embed.num_gpus=0"))
    with pytest.raises(ConfigError, match="ray.train.use_gpu is false"):
        check_motion_resources(config(1, "motion_cnn.device=cuda", "ray.embed.num_gpus=1"))
    with pytest.raises(ConfigError, match="motion_cnn.batch_size: 16 stacks a step cannot be divided"):
        check_motion_resources(config(1, "ray.train.num_workers=3"))


def test_without_val_videos_the_epoch_budget_stops_training_and_the_last_weights_are_kept(toy):
    """validation.fraction 0: no val figures, no early stop, the last epoch's weights; no budget is refused."""
    plan, flows = toy
    no_val = dataclasses.replace(plan, val=())
    fit = fit_motion_cnn(flows, no_val, config(3, "motion_cnn.patience=1"), "cpu")
    t = fit.training
    assert [h["epoch"] for h in t.history] == [1, 2, 3] and not any("val_loss" in h for h in t.history)
    assert (t.best_epoch, t.val_loss, t.val_accuracy, t.n_val) == (3, None, None, 0)
    assert t.test_accuracy is not None
    assert all(torch.equal(fit.state[k], v.cpu()) for k, v in fit.model.state_dict().items())
    with pytest.raises(ValueError, match="motion_cnn.epochs"):
        fit_motion_cnn(flows, no_val, config(1, "motion_cnn.epochs=null"), "cpu")


def test_the_paper_switches_train_in_one_process(toy):
    """norm: paper, sync_bn (BatchNorm in one process), a whole-flow epoch and amp off train and save as the
    plain network; the record says no statistic differs between workers."""
    plan, flows = toy
    cfg = config(2, "motion_cnn.norm=paper", "motion_cnn.sync_bn=true", "motion_cnn.epoch=whole_flow",
                 "motion_cnn.amp=false", "motion_cnn.epochs=null", "motion_cnn.patience=1")
    fit = fit_motion_cnn(flows, plan, cfg, "cpu")
    assert any(isinstance(m, SyncBatchNorm2d) for m in fit.model.modules())
    assert fit.training.bn_spread == 0.0 and fit.training.history[-1]["epoch"] == fit.training.best_epoch + 1
    meta = training_meta(plan, cfg, fit.training)
    assert (meta["norm"], meta["amp"]) == ("paper", False)
    plain = MotionCNN.from_config(dataclasses.replace(cfg.motion_cnn, sync_bn=False), 2, cfg.flow.size)
    plain.load_state_dict(fit.state)
