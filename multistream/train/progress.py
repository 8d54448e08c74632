"""Training as it happens: one log line per epoch, TensorBoard event files under the run root, and, with
`tracking.mlflow_uri` set, the same figures in one MLflow run per job.

    with job_run(cfg, "train_motion") as cfg:       # the driver: an MLflow run (or nothing), its id in cfg
        ...
    loop.on_epoch = epoch_log(cfg.paths.output, cfg.tracking, "motion_cnn", rank)   # rank 0 logs

An epoch's line: `motion_cnn: epoch 3/12  train loss 1.2034  val loss 1.1002  val top-1 0.583  lr 1.0e-03
2.1 s  ETA 19 s` (the ETA assumes the whole budget, and is left out without one; early stopping ends sooner). Event files go to
`RUN/logs/<model>/` (`tensorboard --logdir RUN/logs`); on an object store they are written in a local folder
and copied to the run root after every epoch. MLflow is an optional dependency (`pip install
"multistream[mlflow]"`): its run gets the config as parameters, every epoch's figures as `<model>/<figure>` at
step = epoch, and the models' paths as tags.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

from multistream.config import Config, TrackingConfig
from multistream.store import storage
from multistream.store.layout import RunRoot
from multistream.store.preflight import is_local
from multistream.store.uris import redact, scrub
from multistream.train.loop import EpochRecord

log = logging.getLogger(__name__)

FIGURES = ("train_loss", "val_loss", "val_top1", "lr", "seconds")


def format_line(model: str, record: EpochRecord, eta_s: float | None) -> str:
    parts = [f"{model}: epoch {record.epoch}" + (f"/{record.of}" if record.of is not None else "")]
    for name, value, spec in (("train loss", record.train_loss, ".4f"), ("val loss", record.val_loss, ".4f"),
                              ("val top-1", record.val_top1, ".3f")):
        if value is not None:
            parts.append(f"{name} {value:{spec}}")
    parts += [f"lr {record.lr:.1e}", f"{record.seconds:.1f} s"] + ([f"ETA {eta_s:.0f} s"] if eta_s is not None else [])
    return "  ".join(parts)


class EpochLog:
    """The `on_epoch` hook of one model's loop (rank 0's): the line, TensorBoard, MLflow."""

    def __init__(self, root: str, tracking: TrackingConfig, model: str):
        self.model = model
        self.seconds: list[float] = []
        self.target = RunRoot(root).logs(model)
        self._writer, self._local, self._mlflow = None, None, None
        if tracking.tensorboard:
            from tensorboardX import SummaryWriter

            self._local = self.target if is_local(self.target) else tempfile.mkdtemp(prefix="multistream-tb-")
            Path(self._local).mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(self._local, flush_secs=3600)
        if tracking.mlflow_uri and tracking.mlflow_run_id:
            self._mlflow = _mlflow_client(tracking.mlflow_uri), tracking.mlflow_run_id

    def __call__(self, record: EpochRecord) -> None:
        self.seconds.append(record.seconds)
        eta = None if record.of is None else (sum(self.seconds) / len(self.seconds)) * max(0, record.of - record.epoch)
        log.info(format_line(self.model, record, eta))
        values = {name: getattr(record, name) for name in FIGURES if getattr(record, name) is not None}
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{self.model}/{name}", value, record.epoch)
            self._writer.flush()
            if self._local != self.target:
                for path in Path(self._local).iterdir():
                    storage.write_bytes(storage.join(self.target, path.name), path.read_bytes())
        if self._mlflow is not None:
            from mlflow.entities import Metric

            client, run_id = self._mlflow
            stamp = _now_ms()
            client.log_batch(run_id, metrics=[Metric(f"{self.model}/{name}", float(value), stamp, record.epoch)
                                              for name, value in values.items()])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _Silent:
    """A non-zero rank's hook: the figures are summed over the workers already, rank 0 reports them."""

    def __call__(self, record: EpochRecord) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_log(root: str, tracking: TrackingConfig, model: str, rank: int = 0) -> EpochLog | _Silent:
    """The `on_epoch` hook of `model`'s loop on this worker, for the run root `root` (`close()` it when
    training ends); `model` names its `logs/` folder and its figures (e.g. "rnn_spatial", "sweep/<trial>")."""
    return EpochLog(root, tracking, model) if rank == 0 else _Silent()


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _mlflow_client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ImportError("tracking.mlflow_uri is set but MLflow is not installed: "
                          'pip install "multistream[mlflow]" (mlflow-skinny)') from error
    return MlflowClient(tracking_uri=uri)


def _flat(value, prefix: str = "") -> dict[str, str]:
    if is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out |= _flat(item, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: scrub(str(value))[:500]}  # no URL's credentials or query string (a token)


@contextmanager
def job_run(cfg: Config, job: str) -> Iterator[Config]:
    """The job's MLflow run around the block (yields `cfg` with `tracking.mlflow_run_id` set), or `cfg` as it is
    where `tracking.mlflow_uri` is unset. The run gets the config, the block's models as tags at the end, and
    ends FINISHED, or FAILED if the block raised."""
    tracking = cfg.tracking
    if not tracking.mlflow_uri:
        yield cfg
        return
    client = _mlflow_client(tracking.mlflow_uri)
    experiment = client.get_experiment_by_name(tracking.mlflow_experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.mlflow_experiment)
    run = client.create_run(experiment_id, run_name=job, tags={"multistream.job": job,
                                                               "multistream.output": redact(cfg.paths.output)})
    run_id = run.info.run_id
    from mlflow.entities import Param

    params = [Param(key, value) for key, value in _flat(asdict(cfg)).items() if key != "tracking.mlflow_run_id"]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
        client.log_batch(run_id, params=params[start:start + 100])
    log.info("MLflow run %s of experiment %r at %s", run_id, tracking.mlflow_experiment, tracking.mlflow_uri)
    status = "FAILED"
    try:
        yield cfg.replace(**{"tracking.mlflow_run_id": run_id})
        status = "FINISHED"
    finally:
        run_root = RunRoot(cfg.paths.output)
        for name in _models(run_root):
            client.set_tag(run_id, f"model.{name}", run_root.model(name))
        client.set_terminated(run_id, status)


def _models(run_root: RunRoot) -> list[str]:
    """The models saved under `models/` (a folder each)."""
    try:
        fs, path = storage.filesystem(run_root.models)
        return sorted(Path(p.rstrip("/")).name for p in fs.ls(path, detail=False) if fs.isdir(p))
    except FileNotFoundError:
        return []
