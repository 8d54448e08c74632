"""Anomaly detection on video embeddings (paper §VII): an autoencoder's reconstruction error is the score.

The autoencoder learns to reconstruct the (standardized) embeddings of a mostly normal archive through a
narrow bottleneck; videos unlike the majority reconstruct worse. The threshold is set at a target
false-positive rate on scores of normal videos the scoring autoencoder was not fitted on: an autoencoder
reproduces the videos it was fitted on far better than new normal ones (to ~1e-6 on the demo), so a
threshold from those would flag most new videos. Two ways (`anomaly.calibrate`):
- "cross_fit" (`cross_fit`): the detector is fitted on every normal video given; each of them is scored by
  an autoencoder fitted on the other folds (folds of whole groups), and those out-of-fold scores set the
  threshold: every normal video is used for fitting and for calibrating, none for both at once;
- "val": `fit` on one set of normal videos, `calibrate` on ANOTHER. NaN entries (a missing stream) are
imputed with the training mean, i.e. 0 after standardization. Saved through `multistream.modelio`: the
weights and the scaler as tensors, the architecture, the threshold and how it was calibrated as metadata.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from multistream import modelio
from multistream.config import AnomalyConfig
from multistream.device import resolve_device

KIND, FORMAT = "autoencoder", 2


class Autoencoder(nn.Module):
    """input_dim → hidden → bottleneck (linear code) → hidden → input_dim, ReLU after each hidden layer."""

    def __init__(self, input_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        if not bottleneck < input_dim:
            raise ValueError(f"bottleneck ({bottleneck}) must be smaller than the input ({input_dim})")
        self.encoder = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck))
        self.decoder = nn.Sequential(nn.Linear(bottleneck, hidden), nn.ReLU(), nn.Linear(hidden, input_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) float32 → (B, input_dim) reconstruction."""
        return self.decoder(self.encoder(x))


def calibrate_threshold(scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold that flags at most `target_fpr` of `scores` (N,) (normal videos): the
    (N - floor(target_fpr * N))-th smallest score. With N < 1 / target_fpr that is the largest one."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if scores.ndim != 1 or not len(scores):
        raise ValueError(f"calibration needs normal videos' scores (N >= 1,), got shape {scores.shape}")
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    return float(scores[len(scores) - 1 - int(np.floor(target_fpr * len(scores) + 1e-9))])


class AnomalyDetector:
    """A trained autoencoder with its scaler and threshold; `score` → per-video reconstruction error.

    `calibration` records how the threshold was set: {"split", "n", "target_fpr"} (empty until calibrated).
    """

    def __init__(self, model: Autoencoder, mean: np.ndarray, scale: np.ndarray, threshold: float,
                 history: list[float], device: str | torch.device = "cpu", calibration: dict | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.mean, self.scale = mean.astype(np.float32), scale.astype(np.float32)  # (D,)
        self.threshold = float(threshold)
        self.history = list(history)
        self.calibration = dict(calibration or {})

    @classmethod
    def fit(cls, embeddings: np.ndarray, cfg: AnomalyConfig, device: str | torch.device | None = None
            ) -> AnomalyDetector:
        """embeddings (N, D) float (NaN allowed) → a detector trained with Adam, MSE, seeded by cfg.seed, on
        `device` (default cfg.device); its threshold is NaN until `calibrate`."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"embeddings must be (N >= 2, D), got {x.shape}")
        mean = np.nanmean(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)
        x = np.where(np.isnan(x), mean, x)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0
        device = resolve_device(cfg.device if device is None else device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = Autoencoder(x.shape[1], cfg.hidden, cfg.bottleneck).to(device)
        data = torch.from_numpy(((x - mean) / scale).astype(np.float32)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        history = []
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(data), generator=generator).to(device)
            total = 0.0
            for start in range(0, len(data), cfg.batch_size):
                batch = data[order[start:start + cfg.batch_size]]
                loss = nn.functional.mse_loss(model(batch), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            history.append(total / len(data))
        return cls(model, mean, scale, float("nan"), history, device)

    def calibrate(self, normal: np.ndarray, target_fpr: float, split: str) -> float:
        """Set the threshold from the embeddings (N, D) of normal videos this detector was not fitted on
        (`split` names where they come from), flagging at most `target_fpr` of them; → the threshold."""
        return self.calibrate_scores(self.score(normal), target_fpr, split)

    def calibrate_scores(self, scores: np.ndarray, target_fpr: float, split: str) -> float:
        """`calibrate` from the scores (N,) of normal videos, each given by an autoencoder not fitted on it."""
        self.threshold = calibrate_threshold(scores, target_fpr)
        self.calibration = {"split": split, "n": int(len(scores)), "target_fpr": float(target_fpr)}
        return self.threshold

    @torch.no_grad()
    def score(self, embeddings: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """embeddings (N, D) → (N,) float64 mean squared reconstruction error in standardized space."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"embeddings must be (N, {len(self.mean)}), got {x.shape}")
        x = (np.where(np.isnan(x), self.mean, x) - self.mean) / self.scale
        self.model.eval()
        scores = []
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(self.device)
            scores.append(((self.model(batch) - batch) ** 2).mean(dim=1).double().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        """(N,) scores → (N,) bool, True above the threshold."""
        if np.isnan(self.threshold):
            raise RuntimeError("the detector has no threshold yet: calibrate it on held-out normal videos")
        return np.asarray(scores) > self.threshold

    def save(self, directory: str) -> None:
        """One model folder (`multistream.modelio`) under a local path or URI."""
        tensors = dict(self.model.state_dict())
        tensors["scaler.mean"], tensors["scaler.scale"] = self.mean, self.scale
        first, last = self.model.encoder[0], self.model.encoder[-1]
        modelio.save_model(str(directory), tensors, {
            "kind": KIND, "format": FORMAT, "input_dim": first.in_features, "hidden": first.out_features,
            "bottleneck": last.out_features, "threshold": self.threshold, "calibration": self.calibration,
            "history": self.history})

    @classmethod
    def load(cls, directory: str, device: str | torch.device = "cpu") -> AnomalyDetector:
        tensors, meta = modelio.load_model(str(directory))
        if meta.get("kind") != KIND or meta.get("format") != FORMAT:
            raise ValueError(f"{directory} holds no {KIND} model of format {FORMAT} "
                             f"(kind {meta.get('kind')!r}, format {meta.get('format')!r})")
        mean, scale = tensors.pop("scaler.mean").numpy(), tensors.pop("scaler.scale").numpy()
        model = Autoencoder(meta["input_dim"], meta["hidden"], meta["bottleneck"])
        model.load_state_dict(tensors)
        return cls(model, mean, scale, meta["threshold"], meta["history"], device, meta["calibration"])


def cross_fit(embeddings: np.ndarray, folds: np.ndarray, cfg: AnomalyConfig, device: str | torch.device | None = None
              ) -> tuple[AnomalyDetector, np.ndarray]:
    """(a detector fitted on every row of embeddings (N, D), out-of-fold scores (N,) float64): row i scored by
    an autoencoder fitted on the rows whose fold (N,) int differs from its own. Fold by group, so that a video
    is never scored by a model fitted on its near-duplicates. The detector's threshold is still NaN."""
    x, folds = np.asarray(embeddings), np.asarray(folds)
    if len(set(folds.tolist())) < 2:
        raise ValueError(f"cross-fitting needs two folds or more, got {sorted(set(folds.tolist()))}")
    scores = np.full(len(x), np.nan)
    for fold in sorted(set(folds.tolist())):
        held = folds == fold
        scores[held] = AnomalyDetector.fit(x[~held], cfg, device).score(x[held])
    return AnomalyDetector.fit(x, cfg, device), scores


def roc_auc(scores: np.ndarray, is_anomalous: np.ndarray) -> float:
    """Area under the ROC curve of scores (N,) against bool labels (N,); NaN when only one class occurs."""
    labels = np.asarray(is_anomalous, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))
