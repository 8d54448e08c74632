"""The run root: every table, model, checkpoint and report a job reads or writes is a name on `RunRoot`.

    run = RunRoot("s3://bucket/runs/ucf101")
    run.table("features")        # s3://bucket/runs/ucf101/features
    run.model("rnn_spatial")     # .../models/rnn_spatial
    run.metrics                  # .../reports/metrics.json

Table names (and their schemas) live in `multistream.store.schema`; this module owns where everything sits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from multistream.store import schema, storage

MODELS, CHECKPOINTS, REPORTS = "models", "checkpoints", "reports"
METRICS_FILE = "metrics.json"
LEASE, LOGS = "lease", "logs"
WINDOWS = "windows"  # the run root's videos in time windows, its own run root (anomaly.fit_on: windows)
MOTION_CNN, SVM, AUTOENCODER = "motion_cnn", "svm", "autoencoder"
MODEL_WEIGHTS, MODEL_META = "model.safetensors", "model.json"  # models/<name>/: `multistream.store.modelio`
EMBEDDINGS_PART = "embeddings"  # models/<name>/embeddings.parquet: the video embeddings a model wrote
BUNDLE_FILE = "bundle.json"
CHECKPOINT_SPEC = "multistream_spec.json"  # checkpoints/<name>/: the models those checkpoints belong to
CHECKPOINT_STATE = "state.pt"  # in each Ray Train checkpoint: the training state (tensors and JSON strings)
TRIAL_WEIGHTS = "best.safetensors"  # in each Ray Tune trial checkpoint: the trial's best weights so far


def rnn_name(stream: str) -> str:
    """The name of a stream's recurrent head: its model folder and Ray Train run."""
    return f"rnn_{stream}"


def absolute(uri: str) -> str:
    """Local run roots become absolute: Ray workers and Ray Train storage must not depend on the cwd."""
    return uri if "://" in uri else os.path.abspath(uri)


@dataclass(frozen=True)
class RunRoot:
    uri: str

    def join(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    # tables
    def table(self, name: str) -> str:
        """A Parquet dataset directory (`schema.VIDEOS`, `schema.FEATURES`, ...)."""
        return self.join(name)

    @property
    def videos(self) -> str:
        return self.table(schema.VIDEOS)

    @property
    def features(self) -> str:
        return self.table(schema.FEATURES)

    @property
    def flow(self) -> str:
        return self.table(schema.FLOW)

    @property
    def motion(self) -> str:
        return self.table(schema.MOTION)

    @property
    def embeddings(self) -> str:
        return self.table(schema.EMBEDDINGS)

    @property
    def predictions(self) -> str:
        return self.table(schema.PREDICTIONS)

    @property
    def anomaly(self) -> str:
        return self.table(schema.ANOMALY)

    @property
    def windows(self) -> RunRoot:
        """`windows/`: a run root of its own, every video of the manifest embedded in time windows by this run's
        trained models (its `videos/` and windowed `embeddings/`), which anomaly.fit_on: windows fits on."""
        return RunRoot(self.join(WINDOWS))

    # models: one folder each, written by `multistream.store.modelio`
    @property
    def models(self) -> str:
        return self.join(MODELS)

    def model(self, name: str) -> str:
        """`models/<name>`: `motion_cnn`, `rnn_<stream>`, `svm`, `autoencoder`."""
        return self.join(MODELS, name)

    def model_embeddings(self, name: str) -> str:
        """`models/<name>/embeddings.parquet` (a part written with `storage.write_part(.., EMBEDDINGS_PART)`)."""
        return self.join(MODELS, name, EMBEDDINGS_PART + storage.PART_SUFFIX)

    @property
    def bundle(self) -> str:
        """`models/bundle.json`: what inference needs and every model file's sha256 (`multistream.predict.bundle`)."""
        return self.join(MODELS, BUNDLE_FILE)

    # Ray Train / Tune runs
    @property
    def checkpoints(self) -> str:
        return self.join(CHECKPOINTS)

    def checkpoint(self, name: str) -> str:
        return self.join(CHECKPOINTS, name)

    # the lease of the job writing under this run root (`multistream.store.lease`): one generation file per holder
    @property
    def lease(self) -> str:
        return self.join(LEASE)

    def logs(self, model: str) -> str:
        """`logs/<model>/`: the model's TensorBoard event files (`tensorboard --logdir RUN/logs`)."""
        return self.join(LOGS, model)

    # reports
    def report(self, name: str) -> str:
        """`reports/<name>`: metrics.json, sweep.csv, sweep.md, report.html, benchmark.json, figures/ ..."""
        return self.join(REPORTS, name)

    @property
    def metrics(self) -> str:
        return self.report(METRICS_FILE)

    @property
    def benchmark(self) -> str:
        return self.report("benchmark.json")

    @property
    def scale(self) -> str:
        return self.report("scale.json")

    @property
    def sweep_csv(self) -> str:
        return self.report("sweep.csv")

    @property
    def sweep_md(self) -> str:
        return self.report("sweep.md")

    @property
    def report_html(self) -> str:
        return self.report("report.html")

    def figure(self, name: str) -> str:
        """`reports/figures/<name>.png`: the report's figures as files beside report.html."""
        return self.join(REPORTS, "figures", f"{name}.png")
