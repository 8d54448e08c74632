"""The RNN architecture sweep on Ray Tune (paper Table I by default), in one run of three phases:

1. the plain variants (`sweep.variants`), pruned by ASHA on the validation loss (`tune.scheduler: asha`), or
   each trained until its early stop or `tune.epochs` (`none`, as the paper trained Table I);
2. the best of them (val top-1, `sweep.best_row`) with an attention layer after the input;
3. the best with a linear SVM on its video embeddings in place of the softmax (fitted here, no trial).

Every trial trains with `rnn_training.Head`, the recipe of `train_rnn` (standardization, schedule, early
stopping, batch), on the train split; trials never see the test split. Each reports every epoch and
checkpoints its weights whenever the validation loss improves; the test split is scored once per row, here,
with those best weights. Trials ask for `tune.cpus_per_trial` / `tune.gpus_per_trial` (fractions pack
several on a core or a GPU). Re-running the same sweep restores its experiments from `checkpoints/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from safetensors.torch import load_file, save_file

from multistream.config import Config, RNNConfig, TrackingConfig
from multistream.device import actor_device, check_gpu_given
from multistream.ray.session import init_ray, worker_setup
from multistream.store import layout, storage
from multistream.store.layout import TRIAL_WEIGHTS, RunRoot
from multistream.train import run_spec
from multistream.train.progress import epoch_log
from multistream.train.rnn.data import ok_videos, read_sequences, stream_data
from multistream.train.rnn.recipe import Head, frame_moments, input_statistics
from multistream.train.sweep import (
    GRID,
    SweepResult,
    attention_variant,
    best_row,
    svm_row,
    sweep_table,
    trial_metrics,
    trial_row,
    variant_model,
    variants,
    write_sweep,
)

log = logging.getLogger(__name__)

NAME = "tune_rnn"


def trial(config: dict, train, val, statistics, rnn: RNNConfig, input_dim: int, num_classes: int,
          torch_threads: int, progress: tuple[str, TrackingConfig]) -> None:
    """One variant: per epoch `tune.report` of the head's metrics; a checkpoint of its weights when improved;
    its epoch log (`train.progress`) under `logs/tune_rnn/<trial>/`."""
    worker_setup(torch_threads)
    variant = config["variant"]
    head = Head(dataclasses.replace(rnn, seed=config["seed"], **{name: variant[name] for name in GRID}), input_dim,
                num_classes, statistics, actor_device(rnn.device))
    loop = head.loop
    loop.on_epoch = epoch_log(*progress, f"{NAME}/{tune.get_context().get_trial_name()}")
    while not loop.done:
        report = trial_metrics(loop, head.run_epoch(train, val))
        if loop.best_epoch != loop.epoch:
            tune.report(report)
            continue
        with tempfile.TemporaryDirectory() as directory:
            save_file({k: v.contiguous() for k, v in loop.best_state.items()}, str(Path(directory) / TRIAL_WEIGHTS))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))
    loop.on_epoch.close()


def _fit(cfg: Config, run: RunRoot, name: str, space: list[dict], trainable, spec: dict) -> tune.ResultGrid:
    """One Tuner over the variants of `space` (restored where the same experiment exists)."""
    storage_path, filesystem = storage.arrow_location(run.checkpoints)
    spec_text = json.dumps({**spec, "space": space}, sort_keys=True, default=str)
    if (tune.Tuner.can_restore(storage.join(storage_path, name), storage_filesystem=filesystem)
            and run_spec.matches(run.checkpoint(name), spec_text)):
        log.info("restoring the sweep in %s", run.checkpoint(name))
        tuner = tune.Tuner.restore(storage.join(storage_path, name), trainable, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        seed = cfg.rnn.seed if cfg.tune.num_samples == 1 else tune.randint(0, 2**31 - 1)
        scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=cfg.tune.grace_period,
                                   reduction_factor=cfg.tune.reduction_factor, max_t=cfg.tune.epochs)
                     if cfg.tune.scheduler == "asha" else None)
        tuner = tune.Tuner(trainable, param_space={"variant": tune.grid_search(space), "seed": seed},
                           tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=cfg.tune.num_samples, scheduler=scheduler,
            max_concurrent_trials=cfg.tune.max_concurrent or None),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1))
        run_spec.record(run.checkpoint(name), spec_text)
    return tuner.fit()


def _rows(results: tune.ResultGrid, splits: dict, cfg: Config, input_dim: int, num_classes: int) -> list[dict]:
    """One row per trial in the order of the space (`sweep.trial_row`), scored with the trial's best weights."""
    rows = []
    for result in sorted(results, key=lambda r: (r.config["variant"]["index"], r.config["seed"])):
        variant = result.config["variant"]
        if result.checkpoint is None:
            log.warning("trial %s left no weights: %s", result.path, result.error)
        model = None
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as directory:
                weights = load_file(str(Path(directory) / TRIAL_WEIGHTS))
            model = variant_model(weights, variant, cfg.rnn, input_dim, num_classes)
        rows.append(trial_row(variant, result.config["seed"], result.metrics or {}, result.error is not None, model,
                              splits, cfg.rnn.batch_size, cfg.tune.epochs))
    return rows


def run_tune_rnn(cfg: Config, stream: str | None = None) -> SweepResult:
    """The sweep on `stream` (default `cfg.tune.stream`) → reports/sweep.{csv,md} and the "sweep" metrics."""
    started = time.perf_counter()
    check_gpu_given(cfg, "rnn", "tune.gpus_per_trial")
    stream = stream or cfg.tune.stream
    run = RunRoot(layout.absolute(cfg.paths.output))
    data = stream_data(run, stream, ok_videos(run))
    if not data.val_ids:
        raise ValueError(f"the sweep trains, prunes and chooses on the val split, and stream {stream!r} has no val "
                         "videos (validation.fraction is 0?)")
    splits = {split: read_sequences(data, data.ids(split)) for split in ("train", "val", "test")}
    statistics = input_statistics(frame_moments(splits["train"].seqs))
    counts = {split: len(s) for split, s in splits.items()}
    log.info("sweep on %s: %s videos, %d classes, input %d-d", stream, counts, len(data.classes), data.input_dim)
    rnn = dataclasses.replace(cfg.rnn, epochs=cfg.tune.epochs)
    trainable = tune.with_resources(tune.with_parameters(
        trial, train=splits["train"], val=splits["val"], statistics=statistics, rnn=rnn,
        input_dim=data.input_dim, num_classes=len(data.classes), torch_threads=cfg.ray.torch_threads,
        progress=(run.uri, cfg.tracking)),
        {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial})
    spec = {"stream": stream, "tune": dataclasses.asdict(cfg.tune), "rnn": dataclasses.asdict(rnn),
            "classes": data.classes, "counts": counts}
    init_ray(cfg)
    space = [{**v, "index": i} for i, v in enumerate(variants(cfg.tune))]
    rows = _rows(_fit(cfg, run, NAME, space, trainable, spec), splits, cfg, data.input_dim, len(data.classes))
    best = best_row(rows)
    rows += _rows(_fit(cfg, run, f"{NAME}_attention", [attention_variant(best, len(space))], trainable, spec), splits, cfg, data.input_dim,
                  len(data.classes))
    rows.append(svm_row(best, splits, cfg, len(data.classes)))
    for row in rows:
        row["best"] = row is best
    table = sweep_table(rows)
    wall = time.perf_counter() - started
    write_sweep(run, table, stream, counts, wall, cfg.tune, best)
    return SweepResult(table, best["model"], wall)

