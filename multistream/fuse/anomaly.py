"""Anomaly detection on video embeddings (paper §VII): an autoencoder's reconstruction error is the score.

The autoencoder learns to reconstruct the (standardized) embeddings of a mostly normal archive through a
narrow bottleneck; videos unlike the majority reconstruct worse. The threshold is set at a target
false-positive rate on scores of normal videos the scoring autoencoder was not fitted on: an autoencoder
reproduces the videos it was fitted on far better than new normal ones (docs/design.md#anomaly-threshold), so a
threshold from those would flag most new videos. Two ways (`anomaly.calibrate`):
- "cross_fit" (`cross_fit`): one autoencoder per fold (folds of whole groups), each fitted on the normal
  videos outside its fold; each video is scored by its own fold's autoencoder, the one not fitted on it, and
  (some of) those out-of-fold scores set the threshold. New videos get the mean score of the folds'
  autoencoders. Every normal video is used for fitting and for calibrating, none for both at once;
- "val": `fit` on one set of normal videos, `calibrate_scores` on the scores of ANOTHER.
The threshold is the (1 - target_fpr) quantile of those scores (`anomaly.quantile`): read off the sorted
scores ("empirical") where enough of them lie beyond it, else from a log-normal fitted to them
("lognormal"): with 24 calibration videos at a 0.05 target the empirical one is their 2nd-largest score, an
order statistic that moves with every video. NaN entries (a missing stream) are
imputed with the training mean, i.e. 0 after standardization. Saved through `multistream.store.modelio`: the
weights and the scalers as tensors, the architecture, the threshold and how it was calibrated as metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from scipy.stats import t as student_t
from sklearn.metrics import roc_auc_score
from torch import nn

from multistream.config import AnomalyConfig
from multistream.device import resolve_device
from multistream.store import modelio
from multistream.train.loop import EpochLoop, EpochRecord

KIND, FORMAT = "autoencoder", 3
READABLE_FORMATS = (2, 3)  # 2: one autoencoder, its tensors unprefixed
MIN_TAIL = 10  # quantile "auto": empirical once the target share of the calibration scores is this many


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


def lognormal_threshold(scores: np.ndarray, target_fpr: float) -> float:
    """A threshold from a log-normal fitted to `scores` (N >= 3,) of normal videos, which a NEW normal video's
    score exceeds with probability `target_fpr`: exp(mean + t * sd * sqrt(1 + 1/N)) of their logs, t the
    (1 - target_fpr) quantile of Student's t with N - 1 degrees of freedom (the one-sided prediction bound,
    which counts the error of the fitted mean and sd). Every score counts, not one order statistic;
    reconstruction errors are positive and right-skewed."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 3:
        raise ValueError(f"a log-normal threshold needs 3 normal videos' scores or more, got shape {scores.shape}")
    if not 0 < target_fpr < 1:
        raise ValueError(f"a log-normal threshold needs target_fpr in (0, 1), got {target_fpr}")
    logs = np.log(np.maximum(scores, np.finfo(np.float64).tiny))
    n = len(logs)
    bound = student_t.ppf(1 - target_fpr, n - 1) * logs.std(ddof=1) * np.sqrt(1 + 1 / n)
    return float(np.exp(logs.mean() + bound))


def quantile_rule(n: int, target_fpr: float, quantile: str) -> str:
    """"empirical" or "lognormal": `quantile` itself, or for "auto" empirical where n * target_fpr >= MIN_TAIL
    scores lie beyond the threshold (or a log-normal cannot be fitted: n < 3, target 0), else lognormal."""
    if quantile != "auto":
        return quantile
    return "empirical" if n * target_fpr >= MIN_TAIL or n < 3 or target_fpr == 0 else "lognormal"


THRESHOLDS = {"empirical": calibrate_threshold, "lognormal": lognormal_threshold}


@dataclass
class Member:
    """One autoencoder and the standardization of the embeddings it was fitted on."""

    model: Autoencoder
    mean: np.ndarray  # (D,) float32
    scale: np.ndarray  # (D,) float32


class AnomalyDetector:
    """Trained autoencoders (`members`) with their scalers and a threshold; `score` → per-video reconstruction
    error, the mean over the members: one autoencoder (`fit`) or those of the folds (`cross_fit`).

    `calibration` records how the threshold was set: {"split", "n", "target_fpr", "quantile", "log_sd" (the
    spread of the calibration scores' logs, `threshold_for`)} (empty until calibrated).
    `history`: the training loss per epoch, averaged over the members.
    """

    def __init__(self, members: list[Member], threshold: float, history: list[float],
                 device: str | torch.device = "cpu", calibration: dict | None = None):
        self.device = resolve_device(device)
        self.members = [Member(m.model.to(self.device).eval(), m.mean.astype(np.float32), m.scale.astype(np.float32))
                        for m in members]
        self.threshold = float(threshold)
        self.history = list(history)
        self.calibration = dict(calibration or {})

    @classmethod
    def fit(cls, embeddings: np.ndarray, cfg: AnomalyConfig, device: str | torch.device | None = None,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> AnomalyDetector:
        """embeddings (N, D) float (NaN allowed) → a detector of one autoencoder trained with Adam, MSE, seeded
        by cfg.seed, on `device` (default cfg.device); its threshold is NaN until `calibrate_scores`.
        `on_epoch` gets each epoch's `EpochRecord`."""
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
        generator = torch.Generator().manual_seed(cfg.seed)  # the batches' order: torch's global seed untouched

        def step(epoch: int, rng: None) -> dict[str, float]:
            model.train()
            order = torch.randperm(len(data), generator=generator).to(device)
            total = 0.0
            for start in range(0, len(data), cfg.batch_size):
                batch = data[order[start:start + cfg.batch_size]]
                loss = nn.functional.mse_loss(model(batch), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            return {"loss": total / len(data)}

        # no validation: every epoch runs and the last weights are kept
        loop = EpochLoop(model, optimizer, epochs=cfg.epochs, train_key="loss", on_epoch=on_epoch).fit(step)
        return cls([Member(model, mean, scale)], float("nan"), [h["loss"] for h in loop.history], device)

    def calibrate_scores(self, scores: np.ndarray, target_fpr: float, split: str, quantile: str = "auto") -> float:
        """Set the threshold from the scores (N,) of normal videos, each given by an autoencoder not fitted on it
        (`split` names where they come from), at their (1 - target_fpr) quantile (`quantile_rule`); → it."""
        rule = quantile_rule(len(scores), target_fpr, quantile)
        self.threshold = THRESHOLDS[rule](scores, target_fpr)
        logs = np.log(np.maximum(np.asarray(scores, np.float64), np.finfo(np.float64).tiny))
        self.calibration = {"split": split, "n": int(len(scores)), "target_fpr": float(target_fpr), "quantile": rule,
                            "log_sd": float(logs.std(ddof=1)) if len(logs) >= 2 else None}
        return self.threshold

    def threshold_for(self, windows: int) -> float:
        """The threshold each window of a video of `windows` windows is flagged above, so that a normal video
        (windows scoring as the calibration's normal scores, independently) has any flagged with probability
        target_fpr: the threshold moved up a log-normal of the calibration scores' spread (`log_sd`), from its
        (1 - target_fpr) quantile to its (1 - target_fpr)^(1/windows) one. One window, or a detector without a
        recorded spread: the threshold."""
        sd, fpr = self.calibration.get("log_sd"), self.calibration.get("target_fpr")
        if windows <= 1 or not sd or not fpr:
            return self.threshold
        z = NormalDist().inv_cdf
        return float(self.threshold * np.exp(sd * (z((1 - fpr) ** (1 / windows)) - z(1 - fpr))))

    @torch.no_grad()
    def score(self, embeddings: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """embeddings (N, D) → (N,) float64 mean squared reconstruction error in standardized space, averaged
        over the members."""
        x = np.asarray(embeddings, dtype=np.float32)
        dim = len(self.members[0].mean)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"embeddings must be (N, {dim}), got {x.shape}")
        return np.mean([self._member_score(m, x, batch_size) for m in self.members], axis=0)

    def _member_score(self, member: Member, x: np.ndarray, batch_size: int) -> np.ndarray:
        x = (np.where(np.isnan(x), member.mean, x) - member.mean) / member.scale
        scores = []
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(self.device)
            scores.append(((member.model(batch) - batch) ** 2).mean(dim=1).double().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        """(N,) scores → (N,) bool, True above the threshold."""
        if np.isnan(self.threshold):
            raise RuntimeError("the detector has no threshold yet: calibrate it on held-out normal videos")
        return np.asarray(scores) > self.threshold

    def save(self, directory: str) -> None:
        """One model folder (`multistream.store.modelio`) under a local path or URI: member i's tensors are named
        `i.<name>` (`<name>` alone for a single member, as in format 2)."""
        tensors = {}
        for i, member in enumerate(self.members):
            prefix = f"{i}." if len(self.members) > 1 else ""
            tensors |= {f"{prefix}{k}": v for k, v in member.model.state_dict().items()}
            tensors[f"{prefix}scaler.mean"], tensors[f"{prefix}scaler.scale"] = member.mean, member.scale
        first, last = self.members[0].model.encoder[0], self.members[0].model.encoder[-1]
        modelio.save_model(str(directory), tensors, {
            "kind": KIND, "format": FORMAT, "members": len(self.members), "input_dim": first.in_features,
            "hidden": first.out_features, "bottleneck": last.out_features, "threshold": self.threshold,
            "calibration": self.calibration, "history": self.history})

    @classmethod
    def load(cls, directory: str, device: str | torch.device = "cpu") -> AnomalyDetector:
        tensors, meta = modelio.load_model(str(directory))
        if meta.get("kind") != KIND or meta.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{directory} holds no {KIND} model of format {' or '.join(map(str, READABLE_FORMATS))} "
                             f"(kind {meta.get('kind')!r}, format {meta.get('format')!r})")
        n = meta.get("members", 1)
        members = []
        for i in range(n):
            prefix = f"{i}." if n > 1 else ""
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            mean, scale = own.pop("scaler.mean").numpy(), own.pop("scaler.scale").numpy()
            model = Autoencoder(meta["input_dim"], meta["hidden"], meta["bottleneck"])
            model.load_state_dict(own)
            members.append(Member(model, mean, scale))
        return cls(members, meta["threshold"], meta["history"], device, meta["calibration"])


def cross_fit(embeddings: np.ndarray, folds: np.ndarray, cfg: AnomalyConfig, device: str | torch.device | None = None,
              on_epoch: Callable[[int], Callable[[EpochRecord], None] | None] | None = None
              ) -> tuple[AnomalyDetector, np.ndarray]:
    """(a detector of one autoencoder per fold, each fitted on the rows of embeddings (N, D) outside its fold;
    out-of-fold scores (N,) float64: row i scored by the autoencoder of its own fold (N,) int, the one not
    fitted on it). Fold by group, so that a video is never scored by a model fitted on its near-duplicates.
    The detector's threshold is still NaN; it scores new videos by the mean over the folds' autoencoders.
    on_epoch: fold → the `on_epoch` hook of its autoencoder (or None)."""
    x, folds = np.asarray(embeddings), np.asarray(folds)
    if len(set(folds.tolist())) < 2:
        raise ValueError(f"cross-fitting needs two folds or more, got {sorted(set(folds.tolist()))}")
    scores = np.full(len(x), np.nan)
    fitted = []
    for fold in sorted(set(folds.tolist())):
        held = folds == fold
        fitted.append(AnomalyDetector.fit(x[~held], cfg, device, on_epoch(fold) if on_epoch else None))
        scores[held] = fitted[-1].score(x[held])
    history = np.mean([d.history for d in fitted], axis=0).tolist()
    return AnomalyDetector([m for d in fitted for m in d.members], float("nan"), history, fitted[0].device), scores


def roc_auc(scores: np.ndarray, is_anomalous: np.ndarray) -> float:
    """Area under the ROC curve of scores (N,) against bool labels (N,); NaN when only one class occurs."""
    labels = np.asarray(is_anomalous, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def detection_figures(scores: np.ndarray, flagged: np.ndarray, anomalous: np.ndarray, normal: np.ndarray) -> dict:
    """What a detector's scores (N,) and flags (N,) bool do on known videos: `anomalous` (N,) bool marks the
    anomalies, `normal` (N,) bool the normal videos they are set against (other rows are left out) →
    {"roc_auc" (anomalous against normal), "false_positive_rate" (flagged share of normal), "detection_rate"
    (flagged share of anomalous)}, each None where its videos are missing."""
    scores, flagged = np.asarray(scores), np.asarray(flagged, dtype=bool)
    anomalous, normal = np.asarray(anomalous, dtype=bool), np.asarray(normal, dtype=bool)
    known = anomalous | normal
    auc = roc_auc(scores[known], anomalous[known])
    return {"roc_auc": None if np.isnan(auc) else auc,
            "false_positive_rate": float(flagged[normal].mean()) if normal.any() else None,
            "detection_rate": float(flagged[anomalous].mean()) if anomalous.any() else None}
