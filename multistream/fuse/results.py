"""What the fuse job measured: typed results (stored as the "fusion" and "anomaly" sections of
`reports/metrics.json`) and their Table II-style text summary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from multistream.fuse.svm import AblationRow
from multistream.streams import STREAMS

STREAM_NAMES = {stream: stream.title() for stream in STREAMS}  # Spatial, Temporal, Audio
QUANTILE_WORDS = {  # anomaly.quantile → how the threshold was read off the calibration videos' scores
    "empirical": "the lowest score that flags at most that share of them",
    "lognormal": "the quantile of a log-normal fitted to their scores",
}


@dataclass
class FusionResult:
    """The SVM over all streams scored on the test split, and every subset of streams on its own
    (`ablation`, each row with the top-1 its cues allow where the dataset documents one)."""

    streams: list[str]
    classes: list[str]
    dims: list[int]
    top1: float
    top5: float | None  # None with 5 classes or fewer
    per_class: dict[str, float]
    confusion: list[list[int]]  # (C, C): confusion[i][j] test videos of classes[i] predicted as classes[j]
    n_train: int
    n_val: int
    n_test: int
    ablation: list[AblationRow]
    splits: dict[str, str]  # {"fit": "train", "score": "test"}
    seconds: float
    embeddings_fingerprint: str = ""
    C: float | None = None  # the SVM's C (LinearSVC's)
    C_rule: str = "fusion.l2"  # where C came from: "fusion.l2" (1 / (2 N l2)), "fusion.C", "auto" (chosen on val)
    C_val_top1: dict[str, float] = field(default_factory=dict)  # auto: each C of fusion.C_grid → its val top-1


@dataclass
class AnomalyResult:
    """The autoencoder's threshold, how it was calibrated, and what it flags on unseen videos."""

    streams: list[str]
    input_dim: int
    n_fit: int
    n_calibration: int
    n_test_normal: int
    n_anomaly: int
    threshold: float
    target_fpr: float
    calibration_fpr: float  # flagged share of the calibration videos (at most target_fpr where "empirical")
    false_positive_rate: float | None  # flagged share of the normal test videos
    detection_rate: float | None  # flagged share of the anomalous videos
    roc_auc: float | None  # test (normal) against anomaly
    flagged: dict[str, int]  # per split
    splits: dict[str, str]  # {"fit": "train", "calibrate": "val", "score": "test + anomaly"}
    quantile: str = "empirical"  # how the threshold was read off the calibration scores (anomaly.quantile)
    # "videos": n_fit and n_calibration count videos; "windows" (anomaly.fit_on): they count windows, and the
    # video figures (n_test_normal, n_anomaly, the rates, ROC AUC, flagged) are of each video's aggregated score
    fit_on: str = "videos"
    # fit_on windows: {"fit_videos", "calibration_videos"}, the windows per split ({split: count}) under "windows",
    # the rule of a video's score ("anomaly_score": max | mean) and the window length_s and stride_s
    windows: dict | None = None
    history: list[float] = field(default_factory=list)  # autoencoder training loss per epoch
    device: str = "cpu"
    seconds: float = 0.0


@dataclass
class FuseResult:
    fusion: FusionResult
    anomaly: AnomalyResult

    @classmethod
    def from_metrics(cls, metrics: dict) -> FuseResult:
        """The result a finished fuse job stored in `reports/metrics.json` (read as a dict)."""
        fusion = dict(metrics["fusion"])
        fusion["ablation"] = [AblationRow(**row) for row in fusion["ablation"]]
        return cls(_build(FusionResult, fusion), _build(AnomalyResult, metrics["anomaly"]))


def _build(kind: type, values: dict):
    names = {f.name for f in dataclasses.fields(kind)}
    missing = sorted(f.name for f in dataclasses.fields(kind) if f.name not in values
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"{kind.__name__} in metrics.json lacks {missing}: run jobs/fuse.py again")
    return kind(**{k: v for k, v in values.items() if k in names})


def stream_title(streams: str) -> str:
    """"spatial+audio" → "Spatial+Audio"."""
    return "+".join(STREAM_NAMES.get(s, s) for s in streams.split("+"))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def summary_table(result: FuseResult) -> str:
    """Streams, top-1 % (top-5 % with more than 5 classes), the cue ceiling where known, then the anomaly
    detector's calibration and what it flags."""
    fusion, anomaly = result.fusion, result.anomaly
    top5 = fusion.top5 is not None
    ceilings = any(row.ceiling is not None for row in fusion.ablation)
    header = f"{'streams (linear SVM on the RNN embeddings)':<44} {'top-1 %':>8}"
    header += f" {'top-5 %':>8}" * top5 + f" {'ceiling %':>10} {'cue acc. %':>11}" * ceilings
    lines = [header]
    for row in fusion.ablation:
        line = f"{stream_title(row.streams):<44} {_pct(row.top1):>8}"
        line += f" {_pct(row.top5):>8}" * top5 + f" {_pct(row.ceiling):>10} {_pct(row.cue_accuracy):>11}" * ceilings
        lines.append(line)
    lines.append(f"fitted on {fusion.n_train} {fusion.splits['fit']} videos, scored on {fusion.n_test} "
                 f"{fusion.splits['score']} videos; classes: {', '.join(fusion.classes)}")
    if fusion.C is not None:
        rule = {"fusion.l2": f"C = 1 / (2 N l2), N = {fusion.n_train}", "fusion.C": "fusion.C",
                "auto": f"the best val top-1 of fusion.C_grid ({fusion.n_val} val videos)"}.get(fusion.C_rule, fusion.C_rule)
        lines.append(f"linear SVM: C {fusion.C:.4g} ({rule})")
    if ceilings:
        lines.append("ceiling: the top-1 the streams' cues allow (multistream.demo.dataset.CUES; a missing stream is chance); "
                     "cue acc.: predicted as a class with the video's cues (100 % where the streams learned them)")
    auc = "n/a" if anomaly.roc_auc is None else f"{anomaly.roc_auc:.3f}"
    lines.append(f"anomaly: threshold {anomaly.threshold:.4g} calibrated on {anomaly.n_calibration} "
                 f"{anomaly.splits['calibrate']} videos at a {anomaly.target_fpr:.2f} target false-positive rate, "
                 f"{QUANTILE_WORDS[anomaly.quantile]} (autoencoder fitted on {anomaly.n_fit} {anomaly.splits['fit']} videos)")
    lines.append(f"anomaly: false-positive rate {_pct(anomaly.false_positive_rate)} % on {anomaly.n_test_normal} "
                 f"normal test videos, detection rate {_pct(anomaly.detection_rate)} % on {anomaly.n_anomaly} "
                 f"anomalous videos, ROC AUC {auc}; flagged per split: {anomaly.flagged}")
    return "\n".join(lines)
