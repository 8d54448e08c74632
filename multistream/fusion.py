"""Late fusion (paper §IV.G, §V.D): a linear SVM on the concatenated, standardized video embeddings.

Regularisation: the paper's objective is mean hinge loss + l2 * ||w||^2 with l2 = 1e-2. scikit-learn's
LinearSVC minimises 0.5 ||w||^2 + C * sum(hinge); dividing by N * C shows the two agree for
C = 1 / (2 * N * l2), N the number of training videos. Classes are fitted one-vs-rest.

Missing streams (a video without audio, say) arrive as NaN rows and are imputed with the training mean,
which is 0 after standardization: the stream then does not move the scores. The saved model is an .npz of
plain arrays (`np.load(allow_pickle=False)`) plus JSON metadata; scoring is plain NumPy.
"""

from __future__ import annotations

import itertools
import json

import fsspec
import numpy as np
from sklearn.svm import LinearSVC

from multistream.config import FusionConfig

STREAMS = ("spatial", "temporal", "audio")
_ARRAYS = "svm.npz"
_META = "svm.json"


def _stack(features: dict[str, np.ndarray], streams: tuple[str, ...]) -> np.ndarray:
    missing = [s for s in streams if s not in features]
    if missing:
        raise KeyError(f"features lack the stream(s) {missing}")
    blocks = [np.asarray(features[s], dtype=np.float64) for s in streams]
    if any(b.ndim != 2 or len(b) != len(blocks[0]) for b in blocks):
        raise ValueError(f"each stream must be (N, D_s) with one N, got {[b.shape for b in blocks]}")
    return np.concatenate(blocks, axis=1)


def _open(directory: str, name: str, mode: str):
    return fsspec.open(f"{str(directory).rstrip('/')}/{name}", mode)


class FusionModel:
    """Linear SVM over `streams`' embeddings; `decision_scores` is (N, C) in the order of `classes`."""

    def __init__(self, streams: tuple[str, ...], classes: list[str], dims: list[int], mean: np.ndarray,
                 scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray, l2: float):
        self.streams = tuple(streams)
        self.classes = list(classes)
        self.dims = list(dims)
        self.mean, self.scale = mean, scale  # (D,) training mean (also the imputed value) and std
        self.coef, self.intercept = coef, intercept  # (C', D), (C',); C' = 1 for two classes
        self.l2 = l2

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], labels: list[str], cfg: FusionConfig,
            streams: tuple[str, ...] = STREAMS) -> FusionModel:
        """features[stream]: (N, D_s) float, NaN rows where a stream is missing; labels: N class names."""
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
        c = 1.0 / (2.0 * len(x) * cfg.l2)
        svm = LinearSVC(loss="hinge", C=c, dual=True, max_iter=cfg.max_iter, random_state=0)
        svm.fit((x - mean) / scale, labels)
        return cls(streams, [str(v) for v in svm.classes_], [np.shape(features[s])[1] for s in streams],
                   mean, scale, svm.coef_.copy(), svm.intercept_.copy(), cfg.l2)

    def decision_scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """features[stream] (N, D_s) → (N, C) float64 SVM margins (higher: more likely)."""
        x = _stack(features, self.streams)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} features ({self.dims} per stream), got {x.shape[1]}")
        x = (np.where(np.isnan(x), self.mean, x) - self.mean) / self.scale
        scores = x @ self.coef.T + self.intercept
        return np.concatenate([-scores, scores], axis=1) if len(self.classes) == 2 else scores

    def predict(self, features: dict[str, np.ndarray]) -> list[str]:
        return [self.classes[i] for i in self.decision_scores(features).argmax(axis=1)]

    def save(self, directory: str) -> None:
        """Writes svm.npz (arrays) and svm.json (metadata) under a local path or fsspec URI."""
        fs, path = fsspec.core.url_to_fs(str(directory))
        fs.makedirs(path, exist_ok=True)
        with _open(directory, _ARRAYS, "wb") as f:
            np.savez(f, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept,
                     classes=np.asarray(self.classes, dtype=str), dims=np.asarray(self.dims, dtype=np.int64))
        meta = {"format": 1, "kind": "linear_svm", "streams": list(self.streams), "dims": self.dims,
                "classes": self.classes, "l2": self.l2}
        with _open(directory, _META, "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> FusionModel:
        with _open(directory, _META, "r") as f:
            meta = json.load(f)
        with _open(directory, _ARRAYS, "rb") as f, np.load(f, allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
        return cls(tuple(meta["streams"]), meta["classes"], meta["dims"], data["mean"], data["scale"],
                   data["coef"], data["intercept"], meta["l2"])


def evaluate_predictions(scores: np.ndarray, labels: list[str], classes: list[str]) -> dict:
    """scores (N, C) over `classes` and N true labels → top1, top5, per-class top-1 and confusion matrix.

    `confusion[i][j]` counts videos of classes[i] predicted as classes[j]. Labels outside `classes` count
    as errors in top1/top5 and are left out of per_class and confusion (`n_unknown` counts them).
    """
    scores = np.asarray(scores)
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index.get(str(v), -1) for v in labels], dtype=np.int64)
    pred = scores.argmax(axis=1)
    k = min(5, len(classes))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    known = y >= 0
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (y[known], pred[known]), 1)
    per_class = {c: float(confusion[i, i] / confusion[i].sum()) for i, c in enumerate(classes)
                 if confusion[i].sum()}
    return {"n": int(len(y)), "top1": float((pred == y).mean()) if len(y) else float("nan"),
            "top5": float((top == y[:, None]).any(axis=1).mean()) if len(y) else float("nan"),
            "per_class": per_class, "confusion": confusion.tolist(), "classes": list(classes),
            "n_unknown": int((~known).sum())}


def stream_ablation(train: dict[str, np.ndarray], test: dict[str, np.ndarray], y_train: list[str],
                    y_test: list[str], cfg: FusionConfig, streams: tuple[str, ...] = STREAMS) -> list[dict]:
    """Fits and scores the SVM on every non-empty subset of `streams` present in `train`.

    → rows {"streams": "spatial+audio", "top1", "top5"}: each stream alone, then pairs, then all three.
    """
    streams = tuple(s for s in streams if s in train)
    rows = []
    for size in range(1, len(streams) + 1):
        for subset in itertools.combinations(streams, size):
            model = FusionModel.fit(train, y_train, cfg, streams=subset)
            metrics = evaluate_predictions(model.decision_scores(test), y_test, model.classes)
            rows.append({"streams": "+".join(subset), "top1": metrics["top1"], "top5": metrics["top5"]})
    return rows
