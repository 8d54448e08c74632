"""The training baselines: the same model, data, epochs and threads as Ray Train, in the library's plain
one-process loops (`motion_training.fit_motion_cnn`, `rnn_training.train_head`), run in a fresh interpreter
by `training` with the Ray workers' environment; no Ray is imported.

Data is read into memory once (`load_s`, apart from the epochs); every epoch then trains on the train split
and validates on val, as the Ray Train loops do; `epoch_s` are the epochs' seconds as the loops record them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from multistream.config import Config
from multistream.ray.worker_env import train_worker_threads


@dataclass
class PlainRun:
    threads: int
    load_s: float  # reading the run root's table into memory
    train_samples_per_epoch: int
    epoch_s: list[float]

    @property
    def samples_per_s(self) -> float:
        return self.train_samples_per_epoch * len(self.epoch_s) / sum(self.epoch_s)

    def to_dict(self) -> dict:
        return asdict(self) | {"samples_per_s": self.samples_per_s}


def _worker_threads(cfg: Config) -> int:
    return train_worker_threads(cfg.ray.torch_threads, cfg.ray.train.cpus_per_worker)


def _threads(cfg: Config, per_worker: int) -> int:
    """The Ray Train run's torch threads in all (`per_worker` on each of its workers), set in this process."""
    import torch

    threads = max(1, per_worker) * cfg.ray.train.num_workers
    torch.set_num_threads(threads)
    return threads


def _device(cfg: Config) -> str:
    """Where Ray Train puts the model: the GPU only where its workers are given one."""
    return "cuda" if cfg.ray.train.use_gpu else "cpu"


def motion_cnn(cfg: Config, root: str) -> dict:
    """The motion CNN's plain loop (`fit_motion_cnn`) for `motion_cnn.epochs` epochs on `root` → PlainRun dict."""
    from multistream.store.layout import RunRoot
    from multistream.train.motion.data import read_flows, read_plan
    from multistream.train.motion.recipe import fit_motion_cnn

    threads, run = _threads(cfg, _worker_threads(cfg)), RunRoot(root)
    started = time.perf_counter()
    plan = read_plan(run)
    flows = read_flows(run.flow, plan.train + plan.val + plan.test)
    load_s = time.perf_counter() - started
    fit = fit_motion_cnn(flows, plan, cfg, _device(cfg))
    return PlainRun(threads, load_s, len(plan.train) * cfg.motion_cnn.stacks_per_video,
                    [epoch["seconds"] for epoch in fit.training.history]).to_dict()


def rnn(cfg: Config, root: str, stream: str) -> dict:
    """`stream`'s recurrent head in its plain loop (`train_head`) for `rnn.epochs` epochs → PlainRun dict."""
    from multistream.store.layout import RunRoot
    from multistream.train.rnn.data import ok_videos, read_sequences, stream_data
    from multistream.train.rnn.recipe import train_head

    threads, run = _threads(cfg, _worker_threads(cfg)), RunRoot(root)
    started = time.perf_counter()
    data = stream_data(run, stream, ok_videos(run))
    train, val = read_sequences(data, data.train_ids), read_sequences(data, data.val_ids)
    load_s = time.perf_counter() - started
    head = train_head(train, val, cfg.rnn, len(data.classes), _device(cfg))
    return PlainRun(threads, load_s, len(train), [epoch["seconds"] for epoch in head.loop.history]).to_dict()
