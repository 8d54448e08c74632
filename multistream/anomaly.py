"""Anomaly detection on video embeddings (paper §VII): an autoencoder's reconstruction error is the score.

The autoencoder learns to reconstruct the (standardized) embeddings of a mostly normal archive through a
narrow bottleneck; videos unlike the majority reconstruct worse. A video is flagged when its score exceeds
the `threshold_percentile`-th percentile of the scores of held-out normal videos (`calibration` of them are
kept out of fitting: an autoencoder reconstructs the videos it was fitted on far better than new normal
ones, so a threshold from its own training scores would flag most new videos). NaN entries (a missing stream) are imputed
with the training mean, i.e. 0 after standardization. Saved as safetensors (weights + scaler) and JSON.
"""

from __future__ import annotations

import json

import fsspec
import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from sklearn.metrics import roc_auc_score
from torch import nn

from multistream.config import AnomalyConfig
from multistream.training import resolve_device

_WEIGHTS = "autoencoder.safetensors"
_META = "autoencoder.json"


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


class AnomalyDetector:
    """A trained autoencoder with its scaler and threshold; `score` → per-video reconstruction error."""

    def __init__(self, model: Autoencoder, mean: np.ndarray, scale: np.ndarray, threshold: float,
                 history: list[float], device: str | torch.device = "cpu"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.mean, self.scale = mean.astype(np.float32), scale.astype(np.float32)  # (D,)
        self.threshold = float(threshold)
        self.history = list(history)

    @classmethod
    def fit(cls, embeddings: np.ndarray, cfg: AnomalyConfig, device: str | torch.device = "cpu"
            ) -> AnomalyDetector:
        """embeddings (N, D) float (NaN allowed) → a detector trained with Adam, MSE, seeded by cfg.seed."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"embeddings must be (N >= 2, D), got {x.shape}")
        order = np.random.default_rng(cfg.seed).permutation(len(x))
        held = order[:int(round(cfg.calibration * len(x)))] if len(x) >= 5 else order[:0]
        calibration, x = x[held], np.delete(x, held, axis=0)
        mean = np.nanmean(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)
        x = np.where(np.isnan(x), mean, x)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0
        device = resolve_device(device)
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
        detector = cls(model, mean, scale, 0.0, history, device)
        reference = calibration if len(calibration) else x
        detector.threshold = float(np.percentile(detector.score(reference), cfg.threshold_percentile))
        return detector

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
        return np.asarray(scores) > self.threshold

    def save(self, directory: str) -> None:
        """Writes autoencoder.safetensors (weights, scaler) and autoencoder.json under a path or URI."""
        fs, path = fsspec.core.url_to_fs(str(directory))
        fs.makedirs(path, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors["scaler.mean"] = torch.from_numpy(self.mean.copy())
        tensors["scaler.scale"] = torch.from_numpy(self.scale.copy())
        first, last = self.model.encoder[0], self.model.encoder[-1]
        meta = {"format": 1, "input_dim": first.in_features, "hidden": first.out_features,
                "bottleneck": last.out_features, "threshold": self.threshold, "history": self.history}
        base = str(directory).rstrip("/")
        with fsspec.open(f"{base}/{_WEIGHTS}", "wb") as f:
            f.write(save_tensors(tensors))
        with fsspec.open(f"{base}/{_META}", "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, directory: str, device: str | torch.device = "cpu") -> AnomalyDetector:
        base = str(directory).rstrip("/")
        with fsspec.open(f"{base}/{_META}", "r") as f:
            meta = json.load(f)
        with fsspec.open(f"{base}/{_WEIGHTS}", "rb") as f:
            tensors = load_tensors(f.read())
        mean, scale = tensors.pop("scaler.mean").numpy(), tensors.pop("scaler.scale").numpy()
        model = Autoencoder(meta["input_dim"], meta["hidden"], meta["bottleneck"])
        model.load_state_dict(tensors)
        return cls(model, mean, scale, meta["threshold"], meta["history"], device)


def roc_auc(scores: np.ndarray, is_anomalous: np.ndarray) -> float:
    """Area under the ROC curve of scores (N,) against bool labels (N,); NaN when only one class occurs."""
    labels = np.asarray(is_anomalous, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))
