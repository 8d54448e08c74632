"""The trained models of a bundle applied to new videos, without Ray: one class per stage of `jobs/predict.py`.

    temporal = TemporalEmbedder(bundle)(flow, positions)      # motion CNN: (K, 2048) float16
    vectors = VideoEmbedder(bundle)({"spatial": [...], ...})  # RNN heads: {stream: (N, E) float32}
    scores = Classifier(bundle)(vectors)                      # fusion SVM: (N, C) float64 margins
    score, flagged = Detector(bundle)(vectors)                # autoencoder: (N,) float64, (N,) bool

Each loads its models once (local path or s3://), every file checked against the bundle's sha256 as it is read
(`Bundle.verified`: a file listed nowhere or altered since is refused), and runs the very pass that embedded the
training videos:
the temporal sequence is float16 as `motion/` stores it, each RNN head standardizes its input with the
statistics it carries, and a video without audio has the one silent example extraction gives it.
"""

from __future__ import annotations

import numpy as np

from multistream.device import resolve_device
from multistream.fuse.anomaly import AnomalyDetector
from multistream.fuse.svm import FusionModel
from multistream.predict.bundle import Bundle
from multistream.store import layout
from multistream.train.motion.data import embed_video
from multistream.train.motion.model import load_motion_cnn
from multistream.train.rnn.data import Sequences
from multistream.train.rnn.heads import load_head
from multistream.train.rnn.recipe import embed

TOP_K = 5


class TemporalEmbedder:
    """(P, H, W, 2) uint8 quantized flow and K sampled positions → (K, 2048) float16 full7 embeddings of the
    flow stacks centred on them (`multistream.train.motion.data.embed_video`, the training's own embedding pass)."""

    def __init__(self, bundle: Bundle, device: str = "auto", batch_size: int = 32):
        self.device = resolve_device(device)
        with bundle.verified():
            model, self.meta = load_motion_cnn(bundle.model(layout.MOTION_CNN))
        self.model, self.batch_size = model.to(self.device), batch_size

    def __call__(self, flow: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return embed_video(self.model, flow, positions, self.meta, self.batch_size, self.device)


class VideoEmbedder:
    """{stream: N sequences (T_i, D_s)} → {stream: (N, E) float32} video embeddings of each stream's RNN head
    (`multistream.train.rnn.recipe.embed`, the training's own embedding pass)."""

    def __init__(self, bundle: Bundle, device: str = "auto", batch_size: int = 32):
        self.device, self.batch_size = resolve_device(device), batch_size
        with bundle.verified():
            self.heads = {stream: load_head(bundle.model(layout.rnn_name(stream)))[0].to(self.device)
                          for stream in bundle.streams}

    def __call__(self, sequences: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        out = {}
        for stream, model in self.heads.items():
            seqs = sequences[stream]
            data = Sequences([str(i) for i in range(len(seqs))], seqs, np.full(len(seqs), -1, np.int64))
            out[stream] = embed(model, data, self.batch_size, self.device)[0]
        return out


class Classifier:
    """{stream: (N, E)} → (N, C) fusion SVM margins over `classes`; `top_k` turns them into ranked labels."""

    def __init__(self, bundle: Bundle):
        with bundle.verified():
            self.model = FusionModel.load(bundle.model(layout.SVM))
        self.classes = self.model.classes

    def __call__(self, vectors: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.decision_scores(vectors)

    def top_k(self, scores: np.ndarray, k: int = TOP_K) -> tuple[list[list[str]], np.ndarray]:
        """(N, C) → (N lists of the min(k, C) best labels, (N, min(k, C)) their scores), best first."""
        order = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, scores.shape[1])]
        return [[self.classes[i] for i in row] for row in order], np.take_along_axis(scores, order, axis=1)


class Detector:
    """{stream: (N, E)} → ((N,) reconstruction error, (N,) bool above the calibrated threshold)."""

    def __init__(self, bundle: Bundle, device: str = "auto"):
        with bundle.verified():
            self.model = AnomalyDetector.load(bundle.model(layout.AUTOENCODER), resolve_device(device))
        self.streams = bundle.streams
        self.threshold = self.model.threshold

    def __call__(self, vectors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scores = self.model.score(np.concatenate([vectors[s] for s in self.streams], axis=1))
        return scores, self.model.is_anomaly(scores)
