"""The fusion and anomaly job: a linear SVM over the video embeddings, an autoencoder on the same vectors.

Reads `embeddings/`; writes `models/svm/`, `models/autoencoder/`, `predictions/`, `anomaly/` and the
"fusion" and "anomaly" sections of `reports/metrics.json`.

Both models train in-process, as one worker: the inputs are one (D_s,) vector per video and stream
(UCF101: 13k videos x 3 x 1024 float32 = 160 MB), a linear SVM fits them in seconds and the small
autoencoder in a minute (on a GPU with `anomaly.device: auto` where there is one). No Ray is needed.

Which split does what (recorded in each result's `splits`):
- the SVM is fitted on `fusion.fit` ('train' by default); with `fusion.C: auto` its C is the best val top-1 of
  SVMs fitted on 'train' (`svm.choose_c`);
- the autoencoder is cross-fitted on 'train' + 'val' (one per fold, `multistream.fuse.anomaly.cross_fit`) and its
  threshold set at `anomaly.target_fpr` on the 'val' videos' out-of-fold scores (`anomaly.calibrate:
  cross_fit`; without 'val', on the train videos', and it says so); or, with `anomaly.calibrate: val`, fitted
  on 'train' and calibrated on the normal 'val' videos (a run without 'val' holds out `anomaly.calibration`
  of 'train' instead, and says so);
- 'test' is scored once: top-1 for the SVM, false-positive rate for the detector; 'anomaly' gives the
  detection rate and, against 'test', the ROC AUC.
Every video with an embedding gets a prediction and an anomaly score: a cross-fitted train or val video its
out-of-fold one (its own fold's autoencoder), any other video the folds' mean. Each output table is
rewritten as one part.

With `anomaly.fit_on: windows` the autoencoder's rows are windows, not videos: the window embeddings of
`windows/` (the pipeline's windows step), folded by whole videos (a video's windows share its group), its
threshold calibrated on the val windows' out-of-fold scores; every window is scored as above and each video's
score is its windows' aggregated by video.windows.anomaly_score (max by default). The detection figures are of
those per-video scores, and `anomaly/` is windowed: each video's own row, then its window rows
(`multistream.fuse.windows.window_rows`, as jobs/predict.py writes it).

Why: the RNNs memorise their train videos and the autoencoder whatever it is fitted on, so a threshold from
scores of fitted videos flags every new video; out of fold, the train videos still score low, their
embeddings coming from RNNs fitted on them. The rule and the demo's figures: docs/design.md#anomaly-threshold.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import torch

from multistream.config import Config, WindowsConfig
from multistream.dataset.splits import group_folds
from multistream.fuse.anomaly import AnomalyDetector, cross_fit, detection_figures
from multistream.fuse.data import (
    Embeddings,
    embeddings_fingerprint,
    has_audio,
    load_embeddings,
    load_window_embeddings,
)
from multistream.fuse.results import AnomalyResult, FuseResult, FusionResult
from multistream.fuse.svm import FusionModel, choose_c, evaluate_predictions, stream_ablation
from multistream.fuse.windows import window_rows, windowed_anomaly_table
from multistream.store import layout, modelio, runinfo, schema
from multistream.store.commit import replace_table
from multistream.store.layout import RunRoot
from multistream.train.progress import epoch_log

log = logging.getLogger(__name__)

PART = "fuse"  # the single part each output table is written as
FIT, CALIBRATE, TEST, ANOMALY = "train", "val", "test", "anomaly"
# (an ablation row's streams, the test videos' labels (N,), their predicted labels (N,), {stream: (N,) bool, the
# videos that have it}) → {"ceiling", "cue_accuracy"} where the dataset documents its classes' cues (None
# elsewhere): given by the caller that knows the dataset (`multistream.demo.dataset.cue_figures`)
CueFigures = Callable[[tuple[str, ...], list[str], list[str], dict[str, np.ndarray]], dict]


def is_current(root: str, fit_on: str = "videos") -> bool:
    """True when the fusion outputs exist and were fitted on the embeddings now under `root` (and, with `fit_on`
    windows, the autoencoder on the window embeddings now under `windows/`)."""
    run = RunRoot(root)
    metrics = runinfo.read_json(root, runinfo.METRICS)
    fingerprint = metrics.get("fusion", {}).get("embeddings_fingerprint")
    anomaly = metrics.get("anomaly", {})
    if anomaly.get("fit_on", "videos") != fit_on or fit_on == "windows" and (
            anomaly.get("windows", {}).get("embeddings_fingerprint") != embeddings_fingerprint(run.windows.uri)):
        return False
    return (bool(fingerprint) and "anomaly" in metrics and fingerprint == embeddings_fingerprint(root)
            and modelio.has_model(run.model(layout.SVM)) and modelio.has_model(run.model(layout.AUTOENCODER)))


def _labelled(data: Embeddings, splits: str) -> np.ndarray:
    """(N,) bool: the labelled videos of `splits` ("train", "train+val", ...)."""
    mask = np.any([data.split_mask(split) for split in splits.split("+")], axis=0)
    return mask & np.asarray([v is not None for v in data.label])


def _fit_fusion(cfg: Config, data: Embeddings, streams: tuple[str, ...], run: RunRoot, cue_figures: CueFigures | None
                ) -> tuple[FusionModel, FusionResult]:
    started = time.perf_counter()
    train, test = _labelled(data, cfg.fusion.fit), data.split_mask(TEST)
    y_train, y_test = data.labels(train), data.labels(test)
    c, c_val_top1 = None, {}
    if cfg.fusion.C == "auto":  # SVMs fitted on train, scored on val: nothing else is read
        fit, val = _labelled(data, FIT), _labelled(data, CALIBRATE)
        c, c_val_top1 = choose_c(data.rows(fit, streams), data.labels(fit), data.rows(val, streams),
                                 data.labels(val), cfg.fusion, streams)
        log.info("fusion.C: auto chose C = %g on %d val videos (val top-1 per C: %s)", c, int(val.sum()), c_val_top1)
    model = FusionModel.fit(data.rows(train, streams), y_train, cfg.fusion, streams=streams, c=c)
    model.save(run.model(layout.SVM))
    accuracy = evaluate_predictions(model.decision_scores(data.rows(test, streams)), y_test, model.classes)
    cues = None
    if cue_figures is not None:
        present = {s: data.present(s)[test] for s in streams}  # a clip without an audio track has no audio cue
        tracks = has_audio(run.uri, [data.video_id[i] for i in np.flatnonzero(test)])
        if "audio" in present and tracks is not None:
            present["audio"] &= tracks

        def cues(subset: tuple[str, ...], predicted: list[str]) -> dict:
            return cue_figures(subset, y_test, predicted, present)

    ablation = stream_ablation(data.rows(train, streams), data.rows(test, streams), y_train, y_test,
                               cfg.fusion, streams, cues, c=model.c)
    result = FusionResult(
        streams=list(streams), classes=model.classes, dims=model.dims, top1=accuracy.top1, top5=accuracy.top5,
        per_class=accuracy.per_class, confusion=accuracy.confusion, n_train=int(train.sum()),
        n_val=int(data.split_mask(CALIBRATE).sum()), n_test=int(test.sum()), ablation=ablation,
        splits={"fit": cfg.fusion.fit, "score": TEST}, seconds=time.perf_counter() - started, C=model.c,
        C_rule="auto" if c is not None else "fusion.C" if cfg.fusion.C is not None else "fusion.l2",
        C_val_top1=c_val_top1)
    return model, result


def _calibration_rows(cfg: Config, data: Embeddings) -> tuple[np.ndarray, np.ndarray, str]:
    """→ (fit mask, calibration mask, calibration split name): 'val' where the run has it, else a seeded
    `anomaly.calibration` share of 'train' held out of fitting."""
    fit, val = data.split_mask(FIT), data.split_mask(CALIBRATE)
    if val.any():
        return fit, val, CALIBRATE
    videos = list(dict.fromkeys(data.video_id[i] for i in np.flatnonzero(fit)))  # a video's windows go together
    chosen = np.random.default_rng(cfg.anomaly.seed).permutation(len(videos))
    held = {videos[i] for i in chosen[:max(1, round(cfg.anomaly.calibration * len(videos)))]}
    calibration = fit & np.asarray([v in held for v in data.video_id], dtype=bool)
    log.warning("no 'val' videos: the anomaly threshold is calibrated on %d held-out train videos, which the "
                "RNNs were fitted on (expect too many false alarms on new videos)", len(held))
    return fit & ~calibration, calibration, f"{FIT} (held out of the autoencoder only)"


def _calibrated_detector(cfg: Config, data: Embeddings, x: np.ndarray
                         ) -> tuple[AnomalyDetector, np.ndarray, np.ndarray, np.ndarray, str]:
    """→ (the detector with its threshold, fit mask (N,), calibration mask (N,), held-out scores (N,): each
    cross-fitted video's out-of-fold score and each calibration video's score, both from an autoencoder not
    fitted on it, NaN elsewhere; the name of the fit split)."""
    held_out = np.full(len(x), np.nan)
    with ExitStack() as logs:
        def progress(name: str):  # the autoencoder's epoch log (`train.progress`), closed at the end
            hook = epoch_log(cfg.paths.output, cfg.tracking, name)
            logs.callback(hook.close)
            return hook

        return _fit_calibrated(cfg, data, x, held_out, progress)


def _fit_calibrated(cfg: Config, data: Embeddings, x: np.ndarray, held_out: np.ndarray, progress: Callable
                    ) -> tuple[AnomalyDetector, np.ndarray, np.ndarray, np.ndarray, str]:
    ac = cfg.anomaly
    if ac.calibrate == "cross_fit":
        val = data.split_mask(CALIBRATE)
        pool = data.split_mask(FIT) | val
        ids = [data.video_id[i] for i in np.flatnonzero(pool)]
        detector, scores = cross_fit(x[pool], group_folds(ids, ac.folds, ac.seed), ac,
                                     on_epoch=lambda fold: progress(f"{layout.AUTOENCODER}/fold{fold}"))
        # the RNNs were fitted on train, whose embeddings are tighter than new videos': its scores run low
        if val.any():
            calibration, calibration_split, fit_split = val, CALIBRATE, f"{FIT}+{CALIBRATE}"
        else:
            log.warning("no 'val' videos: the anomaly threshold is calibrated on out-of-fold scores of train "
                        "videos, which the RNNs were fitted on (expect too many false alarms on new videos)")
            calibration, calibration_split, fit_split = pool, FIT, FIT
        held_out[pool] = scores
        detector.calibrate_scores(held_out[calibration], ac.target_fpr,
                                  f"{calibration_split}, out-of-fold ({ac.folds} folds)", ac.quantile)
        return detector, pool, calibration, held_out, fit_split
    fit, calibration, calibration_split = _calibration_rows(cfg, data)
    detector = AnomalyDetector.fit(x[fit], ac, on_epoch=progress(layout.AUTOENCODER))
    held_out[calibration] = detector.score(x[calibration])
    detector.calibrate_scores(held_out[calibration], ac.target_fpr, calibration_split, ac.quantile)
    return detector, fit, calibration, held_out, FIT


def _scored_rows(cfg: Config, data: Embeddings, streams: tuple[str, ...], run: RunRoot
                 ) -> tuple[AnomalyDetector, np.ndarray, np.ndarray, np.ndarray, str, np.ndarray]:
    """The autoencoder fitted and calibrated on the N rows of `data` (videos or windows) and saved → (it, fit
    mask (N,), calibration mask (N,), the name of the fit split, each row's score (N,) float64)."""
    x = np.concatenate([data.features[s] for s in streams], axis=1)  # (N, sum D_s)
    detector, fit, calibration, held_out, fit_split = _calibrated_detector(cfg, data, x)
    detector.save(run.model(layout.AUTOENCODER))
    # the cross-fitted rows keep their out-of-fold scores: the folds' mean, 4 of 5 fitted on each, would hide
    # an anomaly among them; only the others are scored by the whole detector
    scores, rest = held_out.copy(), np.isnan(held_out)
    scores[rest] = detector.score(x[rest])
    return detector, fit, calibration, fit_split, scores


def _fit_anomaly(cfg: Config, data: Embeddings, streams: tuple[str, ...], run: RunRoot
                 ) -> tuple[pa.Table, AnomalyResult]:
    """→ the `anomaly/` table (a row per video, or windowed with `anomaly.fit_on: windows`) and the result."""
    if cfg.anomaly.fit_on == "windows":
        return _fit_anomaly_on_windows(cfg, streams, run)
    started = time.perf_counter()
    detector, fit, calibration, fit_split, scores = _scored_rows(cfg, data, streams, run)
    test, anomalous = data.split_mask(TEST), data.split_mask(ANOMALY)
    flagged = detector.is_anomaly(scores)
    result = AnomalyResult(
        streams=list(streams), input_dim=sum(data.features[s].shape[1] for s in streams), n_fit=int(fit.sum()),
        n_calibration=int(calibration.sum()), n_test_normal=int(test.sum()), n_anomaly=int(anomalous.sum()),
        threshold=detector.threshold, target_fpr=cfg.anomaly.target_fpr, quantile=detector.calibration["quantile"],
        calibration_fpr=float(flagged[calibration].mean()),
        **detection_figures(scores, flagged, anomalous, test),
        flagged={split: int(flagged[data.split_mask(split)].sum()) for split in sorted({str(s) for s in data.split})},
        splits={"fit": fit_split, "calibrate": detector.calibration["split"], "score": f"{TEST} + {ANOMALY}"},
        history=detector.history, device=str(detector.device), seconds=time.perf_counter() - started)
    table = pa.table({"video_id": data.video_id, "split": data.split, "score": scores.astype(np.float32),
                      "is_anomaly": flagged}, schema=schema.ANOMALY_SCHEMA)
    return table, result


def _fit_anomaly_on_windows(cfg: Config, streams: tuple[str, ...], run: RunRoot) -> tuple[pa.Table, AnomalyResult]:
    """The autoencoder fitted and calibrated on the window embeddings under `windows/`, every window scored,
    each video's score its windows' aggregated → (the windowed `anomaly/` table, the result)."""
    started = time.perf_counter()
    data, spans, fingerprint = load_window_embeddings(run.windows.uri)
    missing = [s for s in streams if s not in data.features]
    if missing:
        raise RuntimeError(f"{run.windows.embeddings} has no {', '.join(missing)} embeddings, which the fusion uses")
    detector, fit, calibration, fit_split, scores = _scored_rows(cfg, data, streams, run)
    rules = cfg.video.windows or WindowsConfig()
    rows = window_rows(spans, None, scores, rules, detector.threshold_for)
    videos = [row for row in rows if row["window"] is None]
    video_split = np.asarray([str(row["split"]) for row in videos])
    video_scores = np.asarray([row["score"] for row in videos])
    video_flagged = np.asarray([row["is_anomaly"] for row in videos], dtype=bool)
    test, anomalous = video_split == TEST, video_split == ANOMALY
    window_flagged = detector.is_anomaly(scores)
    result = AnomalyResult(
        streams=list(streams), input_dim=sum(data.features[s].shape[1] for s in streams), n_fit=int(fit.sum()),
        n_calibration=int(calibration.sum()), n_test_normal=int(test.sum()), n_anomaly=int(anomalous.sum()),
        threshold=detector.threshold, target_fpr=cfg.anomaly.target_fpr, quantile=detector.calibration["quantile"],
        calibration_fpr=float(window_flagged[calibration].mean()),
        **detection_figures(video_scores, video_flagged, anomalous, test),
        flagged={split: int(video_flagged[video_split == split].sum()) for split in sorted(set(video_split))},
        splits={"fit": f"{fit_split} windows", "calibrate": f"{detector.calibration['split']} windows",
                "score": f"{TEST} + {ANOMALY}, each video its windows' {rules.anomaly_score}"},
        history=detector.history, device=str(detector.device), seconds=time.perf_counter() - started,
        fit_on="windows", windows={
            "fit_videos": len({data.video_id[i] for i in np.flatnonzero(fit)}),
            "calibration_videos": len({data.video_id[i] for i in np.flatnonzero(calibration)}),
            "windows": {split: int(count) for split, count in zip(*np.unique(np.asarray(data.split, dtype=str),
                                                                              return_counts=True), strict=True)},
            "anomaly_score": rules.anomaly_score, "length_s": rules.length_s, "stride_s": rules.stride_s,
            "embeddings_fingerprint": fingerprint})
    log.info("anomaly: fitted on %d windows of %d videos, threshold from %d calibration windows", result.n_fit,
             result.windows["fit_videos"], result.n_calibration)
    return windowed_anomaly_table(rows), result


def run_fuse(cfg: Config, cue_figures: CueFigures | None = None) -> FuseResult:
    """Fit the fusion SVM and the anomaly autoencoder on `embeddings/`, score every video; `cue_figures` gives
    each ablation row's cue ceiling and accuracy where the dataset documents its cues (None: not given).

    Runs as one worker with `ray.torch_threads` torch threads (more threads than work only spin).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.ray.torch_threads))
    try:
        return _run_fuse(cfg, cue_figures)
    finally:
        torch.set_num_threads(threads)


def _run_fuse(cfg: Config, cue_figures: CueFigures | None) -> FuseResult:
    root = cfg.paths.output
    run = RunRoot(root)
    fingerprint = embeddings_fingerprint(root)
    data = load_embeddings(root)
    train = data.split_mask(FIT)
    streams = tuple(s for s in schema.STREAMS if s in data.features and data.present(s)[train].any())
    if not streams:
        raise RuntimeError("no training video has any embedding: check the splits in videos/ and embeddings/")
    log.info("fusing %s over %d videos (%d train)", "+".join(streams), len(data.video_id), int(train.sum()))
    data = data.select(np.any([data.present(s) for s in streams], axis=0), streams)

    model, fusion = _fit_fusion(cfg, data, streams, run, cue_figures)
    fusion.embeddings_fingerprint = fingerprint
    scores = model.decision_scores(data.rows(np.ones(len(data.video_id), bool), streams))
    replace_table(pa.table({
        "video_id": data.video_id, "label": data.label, "split": data.split,
        "predicted": [model.classes[i] for i in scores.argmax(axis=1)],
        "scores": pa.array(list(scores.astype(np.float32)), pa.list_(pa.float32())),
    }, schema=schema.PREDICTIONS_SCHEMA), run.predictions, PART)
    runinfo.update_metrics(root, "fusion", dataclasses.asdict(fusion))
    log.info("fusion top-1 %.4f on %d test videos", fusion.top1, fusion.n_test)

    table, anomaly = _fit_anomaly(cfg, data, streams, run)
    replace_table(table, run.anomaly, PART)
    runinfo.update_metrics(root, "anomaly", dataclasses.asdict(anomaly))
    log.info("anomaly: ROC AUC %s, false-positive rate %s at a %.2f target, detection rate %s", anomaly.roc_auc,
             anomaly.false_positive_rate, anomaly.target_fpr, anomaly.detection_rate)
    return FuseResult(fusion, anomaly)
