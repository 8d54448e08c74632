"""Training inside Ray Train against a plain torch loop: the motion CNN and one stream's recurrent head.

For each model, on the same run root, config and epochs (early stopping off, so both run every epoch):
- ray: the training job itself (`run_train_motion`, `run_train_rnn`); its throughput comes from the epoch
  seconds the training loop records in its history (the epoch's work: training and validation), the job's
  wall minus those epochs is its fixed cost (trainer start, data read into memory, the scheduled checkpoints
  and reports, final save, embedding pass);
- probe: a Ray Train run of the same model that only checkpoints and reports (`EpochLoop.end_epoch`) a few
  times: the trainer's start-up and teardown, and one epoch's checkpoint + report, measured apart;
- plain (`plain`, a fresh process with the workers' environment and threads): the same model and data in
  one process, data read into memory first.
Runs alternate, plain first (`bracketed_runs`): each Ray run is set against the plain runs just before and
just after it, each epoch's seconds averaged over the two.
efficiency = ray samples/s ÷ plain samples/s (train samples per epoch x epochs ÷ Σ epoch seconds);
efficiency_with_checkpoints charges every Ray epoch one probed checkpoint + report on top (the cost at
`ray.train.checkpoint_every_s: 0`; the job itself checkpoints on that schedule).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from multistream.bench.fresh import in_fresh_process
from multistream.bench.plain import PlainRun
from multistream.config import Config
from multistream.store import layout, modelio, storage
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)

PROBE_REPORTS = 3


@dataclass
class TrainingFigures:
    efficiency: float  # ray_samples_per_s / plain_samples_per_s
    ray_samples_per_s: float
    plain_samples_per_s: float
    efficiency_after_first_epoch: float  # the same ratio without either side's first epoch (warm-up)
    efficiency_with_checkpoints: float  # every Ray epoch charged one checkpoint + report on top
    fixed_cost_s: float  # job wall - Σ epoch seconds
    epochs: int
    train_samples_per_epoch: int
    ray_epoch_s: list[float]
    plain_epoch_s: list[float]
    job_s: float  # the training job's wall: Ray Train run, embedding pass, saves
    trainer_start_s: float  # a Ray Train run that does no epoch: start-up and teardown
    checkpoint_report_s: float  # one epoch's checkpoint + report of this model's state (between epochs)
    plain_load_s: float  # the plain loop reading its data into memory
    threads: int


def _probe_loop(config: dict) -> None:
    """Ray Train worker: the model's state checkpointed and reported as every epoch does, nothing trained."""
    import ray.train
    import torch

    from multistream.ray.session import worker_setup
    from multistream.ray.train import reporter
    from multistream.train.loop import EpochLoop

    worker_setup(config["torch_threads"])
    model = config["build"]()
    optimizer = config["optimizer"](model)
    for p in model.parameters():  # one step on zero gradients: the optimizer's state has its real size
        p.grad = torch.zeros_like(p)
    optimizer.step()
    loop, seconds = EpochLoop(model, optimizer, reporter(0.0), patience=PROBE_REPORTS + 1), 0.0
    for _ in range(PROBE_REPORTS):
        started = time.perf_counter()
        loop.end_epoch({"val_loss": 1.0})
        seconds += time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:  # the result's metrics are those of its last checkpoint
        ray.train.report({"checkpoint_report_s": seconds / PROBE_REPORTS},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def probe(cfg: Config, name: str, build, optimizer) -> tuple[float, float]:
    """(trainer_start_s, checkpoint_report_s) of a Ray Train run on `build()`'s model (see `_probe_loop`)."""
    from multistream.ray.train import run_training

    started = time.perf_counter()
    result = run_training(_probe_loop, {"build": build, "optimizer": optimizer, "torch_threads": cfg.ray.torch_threads},
                          cfg, f"benchmark_probe_{name}")
    wall = time.perf_counter() - started
    per_report = result.metrics["checkpoint_report_s"]
    return wall - PROBE_REPORTS * per_report, per_report


def figures(ray_history: list[dict], ray_samples: int, job_s: float, probed: tuple[float, float],
            plain: dict) -> TrainingFigures:
    """The section's figures from the job's history, its wall, the probe and the plain run's dict."""
    if "seconds" not in ray_history[0]:
        raise KeyError("the training history records no epoch 'seconds': Ray Train's throughput cannot be read")
    epoch_s = [epoch["seconds"] for epoch in ray_history]
    if ray_samples != plain["train_samples_per_epoch"]:
        log.warning("Ray Train counts %d train samples per epoch, the plain loop %d", ray_samples,
                    plain["train_samples_per_epoch"])
    ray_rate = ray_samples * len(epoch_s) / sum(epoch_s)
    later = (sum(plain["epoch_s"][1:]) / sum(epoch_s[1:]) * ray_samples / plain["train_samples_per_epoch"]
             if len(epoch_s) > 1 and len(plain["epoch_s"]) > 1 else float("nan"))
    charged = ray_samples * len(epoch_s) / (sum(epoch_s) + len(epoch_s) * probed[1]) / plain["samples_per_s"]
    return TrainingFigures(ray_rate / plain["samples_per_s"], ray_rate, plain["samples_per_s"], later, charged,
                           job_s - sum(epoch_s), len(epoch_s), ray_samples, epoch_s, plain["epoch_s"], job_s,
                           *probed, plain["load_s"], plain["threads"])


def _fixed_epochs(cfg: Config, section: str, epochs: int) -> tuple[Config, list[str]]:
    """`cfg` with `section` training exactly `epochs` epochs (no early stop), and the same as overrides."""
    values = {f"{section}.epochs": epochs, f"{section}.patience": epochs + 1}
    return cfg.replace(**values), [f"{key}={value}" for key, value in values.items()]


def motion_cnn(cfg: Config, config_path: str | None, overrides: list[str], env: dict, epochs: int,
               repeats: int) -> list[TrainingFigures]:
    """The motion CNN job vs the plain loop on `cfg.paths.output` (videos/ and flow/ extracted, no model yet)."""
    from multistream.ray.motion import run_train_motion
    from multistream.train.motion.model import MotionCNN
    from multistream.train.steps import motion_optimizer

    cfg, extra = _fixed_epochs(cfg, "motion_cnn", epochs)

    def on_ray(run_cfg: Config) -> tuple:
        log.info("training benchmark: motion CNN on Ray Train, %d epochs", epochs)
        started = time.perf_counter()
        record = run_train_motion(run_cfg).training
        job_s = time.perf_counter() - started
        mc, classes = run_cfg.motion_cnn, len(record.classes)
        probed = probe(run_cfg, layout.MOTION_CNN, lambda: MotionCNN.from_config(mc, classes, run_cfg.flow.size),
                       lambda model: motion_optimizer(model, mc))
        return record.history, record.n_train * mc.stacks_per_video, job_s, probed

    def on_plain() -> dict:
        log.info("training benchmark: motion CNN in a plain loop")
        return in_fresh_process("multistream.bench.plain:motion_cnn", config_path, overrides + extra,
                                {"root": cfg.paths.output}, env)

    return bracketed_runs(cfg, repeats, on_ray, on_plain)


def rnn(cfg: Config, config_path: str | None, overrides: list[str], env: dict, epochs: int, repeats: int,
        stream: str = "spatial") -> list[TrainingFigures]:
    """One stream's recurrent head: its job vs the plain loop on `cfg.paths.output` (its table extracted)."""
    from multistream.ray.rnn import run_train_rnn
    from multistream.train.rnn.model import SequenceClassifier
    from multistream.train.steps import rnn_optimizer

    cfg, extra = _fixed_epochs(cfg, "rnn", epochs)
    name = layout.rnn_name(stream)

    def on_ray(run_cfg: Config) -> tuple:
        log.info("training benchmark: %s head on Ray Train, %d epochs", stream, epochs)
        started = time.perf_counter()
        head = run_train_rnn(run_cfg, [stream]).streams[stream]
        job_s = time.perf_counter() - started
        rc, classes = run_cfg.rnn, len(head.classes)
        dim = modelio.read_meta(RunRoot(layout.absolute(run_cfg.paths.output)).model(name))["input_dim"]
        probed = probe(run_cfg, name, lambda: SequenceClassifier.from_config(rc, dim, classes),
                       lambda model: rnn_optimizer(model, rc)[0])
        return head.history, head.n_train, job_s, probed

    def on_plain() -> dict:
        log.info("training benchmark: %s head in a plain loop", stream)
        return in_fresh_process("multistream.bench.plain:rnn", config_path, overrides + extra,
                                {"root": cfg.paths.output, "stream": stream}, env)

    return bracketed_runs(cfg, repeats, on_ray, on_plain)


def bracketed_runs(cfg: Config, repeats: int, on_ray: Callable[[Config], tuple],
                   on_plain: Callable[[], dict]) -> list[TrainingFigures]:
    """A plain run, then `repeats` times a Ray run and a plain run: each Ray run (`on_ray(cfg)` → its history,
    train samples per epoch, job seconds and probe) is set against the mean of the plain runs on either side
    of it, which cancels the machine's drift between runs a minute apart. The first Ray run trains on
    `cfg.paths.output`, each other one on a fresh copy of its tables; the plain runs only read them."""
    plain, runs = [on_plain()], []
    for repeat in range(repeats):
        root = cfg.paths.output
        if repeat:
            root = tempfile.mkdtemp(prefix="benchmark-training-")
            copy_tables(cfg.paths.output, root)
        try:
            history, samples, job_s, probed = on_ray(cfg.replace(**{"paths.output": root}))
        finally:
            if repeat:  # a copy of the tables, as large as flow/
                shutil.rmtree(root, ignore_errors=True)
        plain.append(on_plain())
        runs.append(figures(history, samples, job_s, probed, around(plain[-2], plain[-1])))
    return runs


def around(before: dict, after: dict) -> dict:
    """Two plain runs' dicts (`PlainRun.to_dict`) as one: each epoch's seconds and the load averaged."""
    epoch_s = [(a + b) / 2 for a, b in zip(before["epoch_s"], after["epoch_s"], strict=True)]
    return PlainRun(after["threads"], (before["load_s"] + after["load_s"]) / 2, after["train_samples_per_epoch"],
                    epoch_s).to_dict()


def copy_tables(source: str, target: str) -> None:
    """The extracted tables (videos/, flow/, features/) of the local run root `source` into `target`, so that
    the section trains from scratch without touching `source`'s models or checkpoints."""
    from multistream.store import schema

    if "://" in source:
        raise ValueError(f"--training-root must be a local run root, got {source}")
    tables = (schema.VIDEOS, schema.FLOW, schema.FEATURES)
    for name in tables:
        if not storage.exists(RunRoot(source).table(name)):
            raise ValueError(f"{source} has no {name}/ table: run jobs/extract.py on it first")
    for name in tables:
        shutil.copytree(RunRoot(source).table(name), RunRoot(target).table(name))


def measure(cfg: Config, config_path: str | None, overrides: list[str], motion_epochs: int,
            rnn_epochs: int, repeats: int = 1) -> dict:
    """{motion_cnn: TrainingFigures, rnn: TrainingFigures} as dicts, on the run root `cfg.paths.output`: each the
    run of median efficiency among `repeats` (`bracketed_runs`), with every run's efficiency as
    `efficiency_runs`."""
    from multistream.ray.worker_env import worker_env

    env = worker_env(cfg.ray.torch_threads)
    return {"motion_cnn": median_run(motion_cnn(cfg, config_path, overrides, env, motion_epochs, repeats)),
            "rnn": median_run(rnn(cfg, config_path, overrides, env, rnn_epochs, repeats))}


def median_run(runs: list[TrainingFigures]) -> dict:
    """The figures of the run of median efficiency (the lower of the middle two), every run's efficiency
    beside them."""
    middle = sorted(runs, key=lambda f: f.efficiency)[(len(runs) - 1) // 2]
    return asdict(middle) | {"efficiency_runs": [f.efficiency for f in runs]}


def format_lines(training: dict) -> list[str]:
    """The printed table of a report's `training` section."""
    lines = ["training: Ray Train vs a plain loop (same model, data, epochs, threads); efficiency = ray/plain "
             "samples/s over all epochs (after the first), the median run; fixed = job wall - epochs",
             f"{'model':12}{'ray smp/s':>11}{'plain smp/s':>13}{'efficiency':>18}{'epochs':>8}{'fixed s':>9}"
             f"{'start s':>9}{'ckpt s/ep':>11}  every run"]
    for name, row in training.items():
        both = f"{row['efficiency']:.2f} ({row['efficiency_after_first_epoch']:.2f})"
        every = " ".join(f"{value:.2f}" for value in row.get("efficiency_runs", [row["efficiency"]]))
        lines.append(f"{name:12}{row['ray_samples_per_s']:>11.1f}{row['plain_samples_per_s']:>13.1f}"
                     f"{both:>18}{row['epochs']:>8}{row['fixed_cost_s']:>9.1f}"
                     f"{row['trainer_start_s']:>9.1f}{row['checkpoint_report_s']:>11.3f}  {every}")
    return lines
