"""Run the whole pipeline in one command: extract → train_motion → train_rnn (all streams) → [windows] → fuse → report.

Writes every table and model of the separate jobs under --output, plus reports/report.html. With no
arguments it generates the embedded demo dataset (runs/demo-data) and runs on it (runs/demo). Re-running
with the same --output resumes: finished steps and videos are skipped, the report is rewritten.

  python jobs/pipeline.py                                  # the embedded demo, a few minutes on a laptop CPU
  python jobs/pipeline.py --input ../videos --output runs/mine
  ray job submit --working-dir . -- python jobs/pipeline.py --config configs/ucf101.yaml \\
      --input s3://bucket/UCF-101/ --set paths.labels=s3://bucket/ucfTrainTestlist/ --output s3://bucket/runs/ucf101

Every step resumes, or skips itself, when its outputs are complete: extraction skips committed videos; the
motion CNN and each stream's RNN reuse a saved model and embed only what is missing; fusion refits only
when `embeddings/` changed since it last ran; the report is always rewritten. A run interrupted anywhere
continues where it stopped when started again with the same output. Per-step and total seconds are logged
and kept in the "pipeline" section of `reports/metrics.json`. On a fresh run root the motion CNN and the RNN
heads are fitted in one Ray Train run (`ray.train.chain`, `multistream.ray.chain`): the train_motion step
then holds both, and train_rnn shows "chained".

With `anomaly.fit_on: windows` a windows step runs before fuse: every video of the manifest is embedded in time
windows (video.windows, or WindowsConfig()'s where unset) by the trained motion CNN and RNN heads into the run
root `windows/` (its `videos/` and windowed `embeddings/`, as jobs/predict.py extracts), which the anomaly
autoencoder is then fitted and calibrated on. It resumes like extract and skips itself when every video is in;
`windows/models.json` records the sha256 of the models that embedded them, and windows/ embedded by other models
than `models/` now holds is refused (remove it to embed again).
Everything the models train on is extracted from whole clips: video.windows applies to that step only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from multistream.cli import add_retry_errors, job_parser, parse_job_args
from multistream.config import Config, WindowsConfig
from multistream.dataset.inputs import prepare_input
from multistream.fuse.results import FuseResult, summary_table
from multistream.ray.guard import start_job
from multistream.store import runinfo, storage
from multistream.store.layout import RunRoot
from multistream.store.uris import redact
from multistream.streams import STREAMS
from multistream.train.progress import job_run

log = logging.getLogger(__name__)

RNN_STREAMS = list(STREAMS)


@dataclass
class StepResult:
    step: str
    status: Literal["ran", "skipped", "chained"]  # chained: done in the previous step's Ray Train run
    seconds: float
    figures: dict = field(default_factory=dict)  # the step's headline figures (counts, accuracies)


@dataclass
class PipelineResult:
    steps: list[StepResult]
    total_s: float
    report: str  # URI of reports/report.html


def _extract(cfg: Config, retry_errors: bool = False) -> dict:
    from multistream.ray.extract import run_extract

    summary = run_extract(cfg, retry_errors=retry_errors)
    if summary.skipped_line():
        log.warning("%s", summary.skipped_line())
    return {"status": "skipped" if summary.skipped == summary.total else "ran", "videos": summary.total,
            "already_done": summary.skipped, "ok": summary.ok, "errors": len(summary.errors),
            "skipped_files": sum(summary.skipped_files.values())}


def _train_motion(cfg: Config) -> dict:
    from multistream.ray.chain import run_train_chain
    from multistream.ray.motion import run_train_motion

    chained = run_train_chain(cfg, RNN_STREAMS) if cfg.ray.train.chain else None
    if chained is not None:
        result, heads = chained.motion, _rnn_figures(chained.rnn)
        heads["status"] = "chained"  # train_rnn's work, done in this step's Ray Train run
    else:
        result, heads = run_train_motion(cfg), None
    return {"status": "ran" if result.trained or result.embedded else "skipped", "embedded": result.embedded,
            "val_accuracy": result.training.val_accuracy, "test_accuracy": result.training.test_accuracy,
            "rnn": heads}


def _train_rnn(cfg: Config, chained: dict | None = None) -> dict:
    from multistream.ray.rnn import run_train_rnn

    return chained or _rnn_figures(run_train_rnn(cfg, RNN_STREAMS))


def _rnn_figures(result) -> dict:
    return {"status": "skipped" if all(r.status == "reused" for r in result.streams.values()) else "ran",
            "top1": {stream: r.top1 for stream, r in result.streams.items()}}


WINDOW_MODELS = "models.json"  # windows/models.json: {model file: sha256} of the models that embedded windows/


def windows_config(cfg: Config) -> Config:
    """The config of the windows step: `cfg` writing into the run root's `windows/`, in video.windows (or
    WindowsConfig()'s)."""
    rules = cfg.video.windows or WindowsConfig()
    return cfg.replace(**{"paths.output": RunRoot(cfg.paths.output).windows.uri,
                          "video.windows": dataclasses.asdict(rules)})


def _windows(cfg: Config, retry_errors: bool = False) -> dict:
    from multistream.predict.batch import check_predict_devices
    from multistream.predict.bundle import embedding_bundle
    from multistream.ray.extract import Finish, run_extract
    from multistream.ray.predict import HeadsStage, temporal_step

    windowed = windows_config(cfg)
    check_predict_devices(windowed)
    bundle = embedding_bundle(cfg.paths.output)
    # the models' sha256 the windows were embedded with: windows of other models never mix in
    record = storage.join(windowed.paths.output, WINDOW_MODELS)
    if storage.exists(record) and json.loads(storage.read_text(record)) != bundle.manifest["files"]:
        raise RuntimeError(f"{windowed.paths.output} was embedded by other models than {bundle.uri} holds now: "
                           "remove it to embed every video again with these")
    storage.write_text(record, json.dumps(bundle.manifest["files"], indent=2, sort_keys=True))
    summary = run_extract(windowed, retry_errors=retry_errors,
                          after_decode=functools.partial(temporal_step, windowed, bundle, False),
                          finish=Finish(HeadsStage, "embed", {"bundle": bundle, "keep_flow": False}))
    if summary.skipped_line():
        log.warning("%s", summary.skipped_line())
    return {"status": "skipped" if summary.skipped == summary.total else "ran", "videos": summary.total,
            "already_done": summary.skipped, "ok": summary.ok, "errors": len(summary.errors)}


def _fuse(cfg: Config) -> dict:
    from multistream.demo.dataset import cue_figures
    from multistream.fuse.results import FuseResult
    from multistream.fuse.run import is_current, run_fuse
    from multistream.predict.bundle import write_bundle

    if is_current(cfg.paths.output, cfg.anomaly.fit_on):
        log.info("fusion and anomaly models are up to date with embeddings/: skipping")
        result, status = FuseResult.from_metrics(runinfo.read_json(cfg.paths.output, runinfo.METRICS)), "skipped"
    else:
        result, status = run_fuse(cfg, cue_figures), "ran"
    write_bundle(cfg.paths.output, cfg)  # models/bundle.json: what jobs/predict.py needs, sealed
    return {"status": status, "top1": result.fusion.top1, "roc_auc": result.anomaly.roc_auc,
            "false_positive_rate": result.anomaly.false_positive_rate}


def _report(cfg: Config) -> dict:
    from multistream.report.page import write_report

    return {"status": "ran", "report": write_report(cfg.paths.output)}


STEPS: list[tuple[str, Callable[[Config], dict]]] = [
    ("extract", _extract), ("train_motion", _train_motion), ("train_rnn", _train_rnn), ("windows", _windows),
    ("fuse", _fuse), ("report", _report),
]
CLIP_STEPS = ("extract", "train_motion", "train_rnn")  # run on whole clips, whatever video.windows says


def run_pipeline(cfg: Config, retry_errors: bool = False) -> PipelineResult:
    """Run every step on `cfg.paths.input` → `cfg.paths.output` (which the caller has prepared and leased);
    `retry_errors` extracts every error row again.

    The timings are stored before the report is rendered (so that it shows them) and again after it.
    """
    started = time.perf_counter()
    steps: list[StepResult] = []
    report, chained = "", None
    clips = cfg.replace(**{"video.windows": None})
    for name, step in STEPS:
        if name == "windows" and cfg.anomaly.fit_on != "windows":
            continue
        if name == "report":
            _record(cfg, steps, time.perf_counter() - started)
        log.info("pipeline: %s ...", name)
        step_started = time.perf_counter()
        step_cfg = clips if name in CLIP_STEPS else cfg
        figures = step(step_cfg, chained) if name == "train_rnn" else step(step_cfg, retry_errors) \
            if name in ("extract", "windows") else step(step_cfg)
        chained = figures.pop("rnn", None)
        status = figures.pop("status")
        report = figures.get("report", report)
        steps.append(StepResult(name, status, time.perf_counter() - step_started, figures))
        log.info("pipeline: %s %s in %.1f s", name, status, steps[-1].seconds)
    total = time.perf_counter() - started
    _record(cfg, steps, total)
    log.info("pipeline: done in %.1f s → %s", total, report)
    return PipelineResult(steps, total, report)


def _record(cfg: Config, steps: list[StepResult], total: float) -> None:
    runinfo.update_metrics(cfg.paths.output, "pipeline", {
        "input": redact(cfg.paths.input), "output": redact(cfg.paths.output), "total_s": total,
        "steps": [{"step": s.step, "status": s.status, "seconds": s.seconds, **s.figures} for s in steps],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Run extract, train_motion, train_rnn, (windows,) fuse and the report", __doc__)
    add_retry_errors(parser)
    cfg, args = parse_job_args(parser, argv)
    prepare_input(cfg)
    # one lease for every step; the job's MLflow run where tracking.mlflow_uri is set
    with start_job(cfg, "pipeline", reads_input=True), job_run(cfg, "pipeline") as cfg:
        result = run_pipeline(cfg, args.retry_errors)
    print(f"{'step':<14} {'status':<8} {'seconds':>9}")
    for step in result.steps:
        print(f"{step.step:<14} {step.status:<8} {step.seconds:>9.1f}")
    print(f"{'total':<23} {result.total_s:>9.1f}")
    metrics = runinfo.read_json(cfg.paths.output, runinfo.METRICS)
    print(summary_table(FuseResult.from_metrics(metrics)))
    print(f"report: {result.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
