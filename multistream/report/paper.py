"""The paper against a config: every detail of the paper's Sections III-V and VII, the config key that sets it,
and why a value departs from it or what the project chose where the paper states none.

    python -m multistream.config --explain configs/ucf101.yaml    # what departs from the paper, and why
    python -m multistream.config --explain FILE --markdown         # the table of docs/paper.md

`PAPER` is the one registry: a `Detail` per row, `key` None where the detail is code, not a setting. `explain`
lists the keys whose value departs from the paper's (with the paper's beside it) and then every key whose value
the paper does not state (the project's choice); docs/paper.md holds `markdown(configs/ucf101.yaml)`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from dataclasses import dataclass

UNSTATED = object()  # the paper gives no value: the config's is the project's choice


@dataclass(frozen=True)
class Detail:
    where: str  # the paper's section
    says: str  # what the paper says
    key: str | None  # the config key that sets it (None: fixed in code, `code` says where)
    paper: object = UNSTATED  # the paper's value in the config's terms
    why: str = ""  # why another value departs from the paper's, or what the project chose where it states none
    reading: str = ""  # how the project reads a detail the paper states ambiguously
    code: str = ""  # where the code does it
    # (value, config) → whether the value is the paper's (default: equal to `paper`)
    matches: Callable[[object, object], bool] | None = None

    def value(self, cfg) -> object:
        return functools.reduce(getattr, self.key.split("."), cfg)

    def departs(self, cfg) -> bool:
        """Whether `cfg` departs from a value the paper states."""
        if self.key is None or self.paper is UNSTATED:
            return False
        value = self.value(cfg)
        return not (self.matches(value, cfg) if self.matches else value == self.paper)


def _one_worker_or(key: str):
    return lambda value, cfg: bool(value) or functools.reduce(getattr, key.split("."), cfg) == 1


NO_CAP = "a cap can end training before the patience rule does"
SMALL = "smaller, for a CPU (configs/demo.yaml shrinks the paper to minutes)"
OWN = "a setting of this config's own (the paper's value beside it)"
VARIANT = "another of Table I's variants (jobs/tune_rnn.py compares them)"
PAPER: list[Detail] = [
    # III. Methodology
    Detail("§III.A", "spatial stream: RGB frames → CNN embedding (the layer before the classifier)", None,
           code="extract/spatial.py: timm with num_classes=0, the global pool"),
    Detail("§III.B", "flow between consecutive frames, stacked as in [1]: W x H x 2L", "motion_cnn.stack_length", 10, why=OWN,
           reading="L = 10, the stack of [1]; this paper names none"),
    Detail("§III.C", "audio: non-overlapping examples → log-mel → VGGish (as [3]), 128-d", "audio.example_seconds",
           0.96, why=OWN),
    Detail("§III.C", "a video without an audio track (not said)", None,
           reading="its audio stream is VGGish on silence (has_audio false): a constant sequence, never missing",
           code="extract/video.py audio(), extract/vggish.py"),
    Detail("§III.D", "fusion on the concatenated video embeddings", None, code="fuse/run.py"),
    Detail("§III.E", "2 stacked bidirectional GRU layers of 512 units → 1024-d video embedding", "rnn.cell", "gru", why=VARIANT),
    Detail("§III.E", "bidirectional", "rnn.bidirectional", True, why=VARIANT),
    Detail("§III.E", "two stacked layers", "rnn.layers", 2, why=VARIANT),
    Detail("§III.E", "512 hidden units", "rnn.hidden", 512, why=f"{VARIANT}, or {SMALL}"),
    Detail("§III.E", "no attention in the final model", "rnn.attention", False, why=VARIANT),
    Detail("§III.E", "streams trained separately: CNNs, then RNNs, then the fusion", None,
           code="jobs/pipeline.py: extract → train_motion → train_rnn → fuse"),
    # IV. Implementation details
    Detail("§IV.A", "InceptionResNetV2, 1536-d global-average-pool output", "spatial.model", "inception_resnet_v2",
           why=f"any timm model: {SMALL}"),
    Detail("§IV.B", "FlowNet 2.0 optical flow", "flow.backend", "flownet2",
           why="FlowNet 2.0 has no maintained package: raft_small/raft_large are torchvision's RAFT, a different and "
               "later model (not FlowNet 2.0's successor); precomputed reads flow images computed elsewhere "
               "(FlowNet 2.0, UCF101's shared TV-L1); dis/farneback are CPU stand-ins",
           matches=lambda value, cfg: False),
    Detail("§IV.C", "motion CNN conv1-5, full6 4096, full7 2048 (the embedding), softmax", "motion_cnn.width", 1.0,
           why="below 1, every conv and full6 narrower (the demo); full7 stays 2048-d"),
    Detail("§IV.C", "batch normalization replaces LRN; the layer list shows one norm, after conv1",
           "motion_cnn.norm", "paper", why="cnn_m also normalizes after conv2, where CNN-M-2048 had its second LRN"),
    Detail("§IV.C", "dropout after full6 and full7 (rate not given)", "motion_cnn.dropout",
           why="the rate the paper gives for its RNNs, 0.5"),
    Detail("§IV.F", "adaptive sampling: samples per segment in proportion to its mean flow magnitude",
           "sampling.method", "adaptive",
           why="uniform: the constant step the paper's adaptive sampling replaces"),
    Detail("§IV.F", "how many segments (not given)", "sampling.segments",
           why="equal segments of a video, each given positions in proportion to its mean flow magnitude"),
    Detail("§IV.G", "linear SVM: hinge loss, L2 regularization", None, code="fuse/svm.py: LinearSVC, one-vs-rest"),
    # V. Experiments
    Detail("§V.A", "UCF101, split 1", "paths.split", 1, why="another of UCF101's three splits"),
    Detail("§V.B", "spatial CNN: ImageNet weights, not fine-tuned", "spatial.weights", "timm",
           why="another source of the model's weights", reading="timm's ImageNet weights of the model named"),
    Detail("§V.B", "VGGish with AudioSet weights", "audio.weights", "torchvggish",
           why="without AudioSet weights VGGish is randomly initialised (the demo)"),
    Detail("§V.B", "VGGish's 128-d output: raw or AudioSet's PCA (not said)", "audio.postprocess",
           why="pca_quantized gives the features as AudioSet releases them; raw the network's output"),
    Detail("§V.B", "motion CNN and RNNs trained from scratch", None, code="train/motion/recipe.py, train/rnn/recipe.py"),
    Detail("§V.C", "frames resized to 299x299", "spatial.image_size", 299, why=f"the input size of another model, {SMALL}"),
    Detail("§V.C", "the first 36 s of a video", "video.max_seconds", 36.0, why="longer videos (docs/design.md#per-video-budgets)"),
    Detail("§V.C", "sequence length limited to 180", "sampling.max_seq_len", 180, why=SMALL),
    Detail("§V.C", "whether a clip of fewer frames is sampled too (not said)", "sampling.max_fraction",
           why="1.0: a clip of at most max_seq_len frames keeps every frame (about half of UCF101), the limit read "
               "as a cap; below 1 a clip keeps that share of its frames, sampled adaptively"),
    Detail("§V.C", "motion CNN at the native 320x240", "flow.size", (320, 240), why=SMALL),
    Detail("§V.C", "flow's value range (not said)", "flow.clip_px",
           why="±20 px in 8 bits, as two-stream practice and the TV-L1/denseflow tools store flow"),
    Detail("§V.D", "RNNs: SGD with Nesterov momentum", None, code="train/steps.py rnn_optimizer"),
    Detail("§V.D", "the momentum (not given)", "rnn.momentum", why="the usual 0.9"),
    Detail("§V.D", "initial learning rate 1e-2", "rnn.lr", 0.01, why=OWN),
    Detail("§V.D", "x0.1 when the val loss has not decreased for 5 epochs", "rnn.lr_factor", 0.1, why=OWN),
    Detail("§V.D", "… for 5 epochs", "rnn.lr_patience", 5, why=OWN),
    Detail("§V.D", "down to 1e-6", "rnn.min_lr", 1e-6, why=OWN),
    Detail("§V.D", "motion CNN: Adam with its paper's default parameters", None, code="train/steps.py motion_optimizer"),
    Detail("§V.D", "Adam's default learning rate", "motion_cnn.lr", 0.001, why=OWN),
    Detail("§V.D", "batch size 32 (motion CNN)", "motion_cnn.batch_size", 32, why=OWN,
           reading="the global batch: each of ray.train.num_workers Train workers takes its share"),
    Detail("§V.D", "batch size 32 (RNNs)", "rnn.batch_size", 32, why=SMALL,
           reading="the global batch, as for the motion CNN"),
    Detail("§V.D", "stop after 10 epochs without a lower val loss (motion CNN)", "motion_cnn.patience", 10, why=SMALL),
    Detail("§V.D", "stop after 10 epochs without a lower val loss (RNNs)", "rnn.patience", 10, why=SMALL),
    Detail("§V.D", "trained until the val loss stops improving: no epoch cap (motion CNN)", "motion_cnn.epochs", None,
           why=NO_CAP),
    Detail("§V.D", "trained until the val loss stops improving: no epoch cap (RNNs)", "rnn.epochs", None, why=NO_CAP),
    Detail("§V.D", "BatchNorm statistics of the whole batch of 32 (one process)", "motion_cnn.sync_bn", True,
           matches=_one_worker_or("ray.train.num_workers"),
           why="without it each of W Train workers normalizes its batch_size / W stacks alone"),
    Detail("§V.D", "what a motion-CNN epoch is (not said)", "motion_cnn.epoch",
           why="whole_flow: every flow pair once, one pass over the data; stacks_per_video: that many random stacks "
               "of each video (shorter epochs, so patience counts fewer stacks)"),
    Detail("§V.D", "the stacks a video is validated and tested on (not said)", "motion_cnn.stacks_per_video",
           why="evenly spaced stacks of each val/test video, the same every epoch"),
    Detail("§V.D", "numeric precision (not said)", "motion_cnn.amp",
           why="false: float32; auto: bfloat16 where the GPU has it; true: also fp16 (with a GradScaler) elsewhere"),
    Detail("§V.D", "dropout 0.5 on the input, between RNN layers and before the dense layer", "rnn.dropout", 0.5, why=OWN),
    Detail("§V.D", "where the val split comes from (not said)", "validation.fraction",
           why="a share of each class's train groups (UCF101: of trainlist01); 0 carves none: epoch budgets then "
               "stop training, the last weights are kept"),
    Detail("§V.D", "linear SVM L2 regularization parameter 1e-2", "fusion.l2", 0.01, why=OWN,
           reading="mean hinge loss + λ‖w‖²: LinearSVC's C = 1 / (2 N λ) on standardized features "
                   "(docs/paper.md#fusion)"),
    Detail("§V.D", "the SVM's C follows from λ", "fusion.C", None,
           why="a number sets C; auto takes the best val top-1 of fusion.C_grid, SVMs fitted on train"),
    Detail("§V.D", "what the SVM is fitted on (not said)", "fusion.fit", why="train: the videos the RNNs fitted"),
    Detail("§V.E", "Table I: LSTM/GRU variants on the spatial stream", "tune.stream", "spatial", why="the sweep on another stream"),
    Detail("§V.E", "Table I's 17 variants, then the best + attention, + SVM", "tune.grid", "table1", why="product: a grid of your own (tune.cells, ...)"),
    Detail("§V.E", "Table I's hidden units (256-2048)", "tune.hidden_scale", 1.0, why="scaled down (the demo)"),
    Detail("§V.E", "every Table I row trained to its early stop", "tune.scheduler", "none",
           why="asha prunes trials on the val loss (tune.grace_period, tune.reduction_factor)"),
    Detail("§V.E", "… with no epoch cap", "tune.epochs", None, why=NO_CAP),
    Detail("§V.E", "attention layer [20] after the input layer", None,
           reading="one-head scaled dot-product self-attention over time with a residual, one reading of [20]",
           code="train/rnn/model.py"),
    Detail("§V.E", "cross-entropy loss, softmax top layer", None, code="train/steps.py train_epoch"),
    # VII. Anomaly detection
    Detail("§VII", "autoencoder on the video embeddings, MSE reconstruction error as the score", None,
           code="fuse/anomaly.py"),
    Detail("§VII", "its layers (not given)", "anomaly.hidden", why="one hidden layer each side of the bottleneck"),
    Detail("§VII", "a bottleneck below the embedding's size (not given)", "anomaly.bottleneck",
           why="well below the 3072-d input"),
    Detail("§VII", "a threshold on the score (not given)", "anomaly.target_fpr",
           why="the (1 - target_fpr) quantile of val videos' out-of-fold scores (anomaly.calibrate)"),
]


def _show(value) -> str:
    if value is UNSTATED:
        return "not stated"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return {"flownet2": "FlowNet 2.0"}.get(value, str(value)) if isinstance(value, str) else str(value)


def explain(cfg) -> str:
    """The keys of `cfg` that depart from the paper (value, the paper's, why), the project's choices where the
    paper states no value, and its readings of what the paper states ambiguously."""
    departs = [d for d in PAPER if d.departs(cfg)]
    chosen = [d for d in PAPER if d.key is not None and d.paper is UNSTATED]
    read = [d for d in PAPER if d.reading and not d.departs(cfg)]
    lines = [f"Departs from the paper ({len(departs)}):"]
    lines += [f"  {d.key} = {_show(d.value(cfg))}   paper ({d.where}): {_show(d.paper)}   {d.why}".rstrip()
              for d in departs] or ["  nothing"]
    lines.append(f"Not stated by the paper, the project's choice ({len(chosen)}):")
    lines += [f"  {d.key} = {_show(d.value(cfg))}   ({d.where}: {d.says}) {d.why}".rstrip() for d in chosen]
    lines.append(f"Read from the paper ({len(read)}):")
    lines += [f"  {d.key or d.code} ({d.where}: {d.says}): {d.reading}" for d in read]
    return "\n".join(lines)


def markdown(cfg) -> str:
    """Every row of `PAPER` as a table: paper detail → config key → value in `cfg` → why."""
    lines = ["| § | the paper | config key | value here | paper's | why |", "|---|---|---|---|---|---|"]
    for d in PAPER:
        key = f"`{d.key}`" if d.key else f"code: {d.code}"
        value = _show(d.value(cfg)) if d.key else "–"
        paper = _show(d.paper) if d.key else "–"
        mark = " **(departs)**" if d.departs(cfg) else ""
        # where the value is the paper's, only what says more than "another value is possible"
        shown = d.why if d.departs(cfg) or d.paper is UNSTATED or not any(
            generic in d.why for generic in (OWN, SMALL, VARIANT)) else ""
        why = "; ".join(text for text in (d.reading, shown) if text)
        lines.append(f"| {d.where} | {d.says} | {key} | {value}{mark} | {paper} | {why} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from multistream.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m multistream.config",
                                     description="Check a config against the paper: each key that departs from "
                                                 "it, with the paper's value and why, and the project's choices.")
    parser.add_argument("--explain", metavar="FILE", required=True, help="a config YAML (e.g. configs/ucf101.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override")
    parser.add_argument("--markdown", action="store_true",
                        help="print the whole paper-vs-config table (docs/paper.md) instead")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.explain, args.set)
    except ConfigError as error:
        parser.exit(2, f"{error}\n")
    print(markdown(cfg) if args.markdown else explain(cfg))
    return 0
