"""Late fusion (paper §IV.G, §V.D): a linear SVM on the concatenated, standardized video embeddings.

Regularisation: the paper gives "L2 regularization parameter 1e-2" and no objective. Read as mean hinge loss +
l2 * ||w||^2 (what a softmax-free dense layer with an L2 kernel penalty of 1e-2 minimises), and with
scikit-learn's LinearSVC minimising 0.5 ||w||^2 + C * sum(hinge), dividing by N * C shows the two agree for
C = 1 / (2 * N * l2), N the training videos (`fusion.l2`, the default). Other readings give other C
(docs/paper.md#fusion): `fusion.C` sets it directly, and `fusion.C: auto` chooses it from `fusion.C_grid` by the
val top-1 of SVMs fitted on train (`choose_c`; never on test). Classes are fitted one-vs-rest, on features
standardized with the training mean and std.

A stream a video has no embedding of arrives as a NaN row and is imputed with the training mean, which is 0
after standardization: the stream then does not move the scores. (A clip without an audio track is not such a
video: it has an audio embedding, that of VGGish on silence.) The model is saved through
`multistream.store.modelio`: coef/intercept/mean/scale as tensors, streams, dims, classes, l2 and C as
metadata; scoring is plain NumPy.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.svm import LinearSVC

from multistream.config import FusionConfig
from multistream.store import modelio
from multistream.streams import STREAMS
from multistream.train.steps import top_ks, topk_accuracy

KIND, FORMAT = "linear_svm", 2


def _stack(features: dict[str, np.ndarray], streams: tuple[str, ...]) -> np.ndarray:
    missing = [s for s in streams if s not in features]
    if missing:
        raise KeyError(f"features lack the stream(s) {missing}")
    blocks = [np.asarray(features[s], dtype=np.float64) for s in streams]
    if any(b.ndim != 2 or len(b) != len(blocks[0]) for b in blocks):
        raise ValueError(f"each stream must be (N, D_s) with one N, got {[b.shape for b in blocks]}")
    return np.concatenate(blocks, axis=1)


class FusionModel:
    """Linear SVM over `streams`' embeddings; `decision_scores` is (N, C) in the order of `classes`."""

    def __init__(self, streams: tuple[str, ...], classes: list[str], dims: list[int], mean: np.ndarray,
                 scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray, l2: float, c: float | None = None):
        self.streams = tuple(streams)
        self.classes = list(classes)
        self.dims = list(dims)
        self.mean, self.scale = mean, scale  # (D,) training mean (also the imputed value) and std
        self.coef, self.intercept = coef, intercept  # (C', D), (C',); C' = 1 for two classes
        self.l2, self.c = l2, c  # c: LinearSVC's C it was fitted with

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], labels: list[str], cfg: FusionConfig,
            streams: tuple[str, ...] = STREAMS, c: float | None = None) -> FusionModel:
        """features[stream]: (N, D_s) float, NaN rows where a stream is missing; labels: N class names. `c`:
        LinearSVC's C (None: `svm_c(cfg, N)`; `fusion.C: auto` is chosen by `choose_c` first)."""
        streams = tuple(streams)
        x = _stack(features, streams)
        labels = np.asarray([str(v) for v in labels])
        if len(labels) != len(x):
            raise ValueError(f"{len(labels)} labels for {len(x)} rows")
        if len(np.unique(labels)) < 2:
            raise ValueError("the fusion SVM needs at least two classes")
        mean = np.nanmean(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)  # an all-NaN column → 0
        x = np.where(np.isnan(x), mean, x)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0
        c = svm_c(cfg, len(x)) if c is None else float(c)
        svm = LinearSVC(loss="hinge", C=c, dual=True, max_iter=cfg.max_iter, random_state=0)
        svm.fit((x - mean) / scale, labels)
        return cls(streams, [str(v) for v in svm.classes_], [np.shape(features[s])[1] for s in streams],
                   mean, scale, svm.coef_.copy(), svm.intercept_.copy(), cfg.l2, c)

    def decision_scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """features[stream] (N, D_s) → (N, C) float64 SVM margins (higher: more likely)."""
        x = _stack(features, self.streams)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} features ({self.dims} per stream), got {x.shape[1]}")
        x = (np.where(np.isnan(x), self.mean, x) - self.mean) / self.scale
        scores = x @ self.coef.T + self.intercept
        return np.concatenate([-scores, scores], axis=1) if len(self.classes) == 2 else scores

    def predict(self, features: dict[str, np.ndarray]) -> list[str]:
        return self.labels_of(self.decision_scores(features))

    def labels_of(self, scores: np.ndarray) -> list[str]:
        """The predicted class of each row of decision scores (N, C)."""
        return [self.classes[i] for i in np.asarray(scores).argmax(axis=1)]

    def save(self, directory: str) -> None:
        """One model folder (`multistream.store.modelio`) under a local path or URI."""
        modelio.save_model(str(directory), {"mean": self.mean, "scale": self.scale, "coef": self.coef,
                                            "intercept": self.intercept},
                           {"kind": KIND, "format": FORMAT, "streams": list(self.streams), "dims": self.dims,
                            "classes": self.classes, "l2": self.l2, "C": self.c})

    @classmethod
    def load(cls, directory: str) -> FusionModel:
        tensors, meta = modelio.load_model(str(directory))
        if meta.get("kind") != KIND or meta.get("format") != FORMAT:
            raise ValueError(f"{directory} holds no {KIND} model of format {FORMAT} "
                             f"(kind {meta.get('kind')!r}, format {meta.get('format')!r})")
        arrays = {name: tensors[name].numpy() for name in ("mean", "scale", "coef", "intercept")}
        return cls(tuple(meta["streams"]), meta["classes"], meta["dims"], arrays["mean"], arrays["scale"],
                   arrays["coef"], arrays["intercept"], meta["l2"], meta.get("C"))


def svm_c(cfg: FusionConfig, n: int) -> float:
    """LinearSVC's C for `n` training videos: `fusion.C` where it is a number, else 1 / (2 n l2) (the module)."""
    if cfg.C == "auto":
        raise ValueError("fusion.C: auto is chosen on the val split (choose_c) before fitting")
    return float(cfg.C) if cfg.C is not None else 1.0 / (2.0 * n * cfg.l2)


def choose_c(train: dict[str, np.ndarray], y_train: list[str], val: dict[str, np.ndarray], y_val: list[str],
             cfg: FusionConfig, streams: tuple[str, ...] = STREAMS) -> tuple[float, dict[str, float]]:
    """`fusion.C: auto`: an SVM per C of `cfg.C_grid` fitted on `train`, scored on `val` (nothing else is read)
    → (the C of the best val top-1, the smallest of equals; {C: its val top-1})."""
    if not len(y_val):
        raise ValueError("fusion.C: auto chooses C on the val split, and there are no val videos "
                         "(validation.fraction is 0?): set fusion.C or fusion.l2")
    top1 = {}
    for c in sorted(cfg.C_grid):
        model = FusionModel.fit(train, y_train, cfg, streams, c=c)
        top1[c] = evaluate_predictions(model.decision_scores(val), y_val, model.classes).top1
    best = max(top1.values())
    return min(c for c, t in top1.items() if t == best), {f"{c:g}": t for c, t in top1.items()}


@dataclass
class Accuracy:
    """Top-1 (and top-5, None with 5 classes or fewer: `multistream.train.steps.top_ks`) of N scored videos.

    `confusion[i][j]` counts videos of classes[i] predicted as classes[j]; labels outside `classes` count as
    errors in top1/top5 and are left out of per_class and confusion (`n_unknown` counts them).
    """

    n: int
    top1: float
    top5: float | None
    per_class: dict[str, float]
    confusion: list[list[int]]
    classes: list[str]
    n_unknown: int


def evaluate_predictions(scores: np.ndarray, labels: list[str], classes: list[str]) -> Accuracy:
    """scores (N, C) over `classes` and N true labels → their `Accuracy`."""
    scores = np.asarray(scores)
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index.get(str(v), -1) for v in labels], dtype=np.int64)
    pred = scores.argmax(axis=1)
    top5 = topk_accuracy(scores, y, 5) if 5 in top_ks(len(classes)) and len(y) else None
    known = y >= 0
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (y[known], pred[known]), 1)
    per_class = {c: float(confusion[i, i] / confusion[i].sum()) for i, c in enumerate(classes)
                 if confusion[i].sum()}
    return Accuracy(int(len(y)), float((pred == y).mean()) if len(y) else float("nan"), top5, per_class,
                    confusion.tolist(), list(classes), int((~known).sum()))


@dataclass
class AblationRow:
    """The SVM on one subset of streams ("spatial+audio"), fitted and scored on its own."""

    streams: str
    top1: float
    top5: float | None
    ceiling: float | None = None  # the best top-1 the subset's cues allow, where the dataset documents it
    cue_accuracy: float | None = None  # the share predicted as a class with their cues (its ceiling: 1.0)


def stream_ablation(train: dict[str, np.ndarray], test: dict[str, np.ndarray], y_train: list[str],
                    y_test: list[str], cfg: FusionConfig, streams: tuple[str, ...] = STREAMS,
                    cues: Callable[[tuple[str, ...], list[str]], dict] | None = None,
                    c: float | None = None) -> list[AblationRow]:
    """Fits and scores the SVM on every non-empty subset of `streams` present in `train`: each stream alone,
    then pairs, then all three, each with C `c` (None: `svm_c`). `cues(subset, predicted test labels)` gives a
    row's `ceiling` and `cue_accuracy` where the dataset documents its cues."""
    streams = tuple(s for s in streams if s in train)
    rows = []
    for size in range(1, len(streams) + 1):
        for subset in itertools.combinations(streams, size):
            model = FusionModel.fit(train, y_train, cfg, streams=subset, c=c)
            scores = model.decision_scores(test)
            accuracy = evaluate_predictions(scores, y_test, model.classes)
            row = AblationRow("+".join(subset), accuracy.top1, accuracy.top5)
            if cues is not None:
                row = dataclasses.replace(row, **cues(subset, model.labels_of(scores)))
            rows.append(row)
    return rows
