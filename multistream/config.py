"""One frozen config tree for every job, loaded from YAML and validated with messages that name the key.

    cfg = load_config("configs/demo.yaml", overrides=["flow.backend=farneback", "rnn.hidden=256"])
    cfg.flow.size      # (width, height)

Unknown keys, wrong types and out-of-range values raise `ConfigError("flow.backend: ...")`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml

from multistream.config_loader import (
    ConfigError,
    Device,
    Fraction,
    NonNegFloat,
    PosFloat,
    PosInt,
    apply,
    build,
    in_range,
    min_side,
    positive,
)
from multistream.dataset.entry import VIDEO_EXTENSIONS
from multistream.extract.flow.registry import known_backend
from multistream.streams import STREAMS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


@dataclass(frozen=True)
class WindowsConfig:
    """Time windows over each whole video (docs/design.md#windows): in each shot, window k covers [shot start + k x
    stride_s, ... + length_s), one after another until every frame of the shot is in one; a shot (or video)
    shorter than one window is one window."""

    length_s: PosFloat = 36.0
    stride_s: PosFloat = 18.0
    # a video's own row in predictions/ and anomaly/, from its windows' rows: their class scores' mean (or max),
    # their anomaly scores' max (or mean) and the window of the highest one
    class_scores: Literal["mean", "max"] = "mean"
    anomaly_score: Literal["max", "mean"] = "max"
    # what anomaly.target_fpr bounds: "video": the share of normal videos with any window flagged (each window of a
    # video of W windows against a threshold that grows with W: AnomalyDetector.threshold_for); "window": the
    # share of normal windows flagged (the calibrated threshold for every window, whatever the video's length)
    false_alarms: Literal["video", "window"] = "video"
    # a cut between shots: consecutive frames whose colour histograms (16 bins a channel) differ by more than
    # this (half their L1 distance, 0..1; a cut in an edited video is ~0.1-0.7, motion within a shot ~0.03) and
    # by 2.5x more than any two frames of the second before (a flicker is no cut). Windows restart at each shot,
    # so that none spans a cut, as no clip the models learned from does; None: the video is one shot
    shot_cut: Fraction | None = 0.1

    def check(self) -> dict[str, str]:
        if self.stride_s > self.length_s:
            return {"stride_s": f"must be at most length_s ({self.length_s:g}): every frame lies in a window, "
                                f"got {self.stride_s:g}"}
        return {}


@dataclass(frozen=True)
class VideoConfig:
    max_seconds: PosFloat = 36.0  # only the first seconds of each video are used (paper §V.C)
    audio_rate: PosInt = 16000  # audio is decoded to mono float32 at this rate
    # per-video budgets (docs/design.md#per-video-budgets): at most max_fps frames are kept a second of video
    # time (a faster video is decimated; its flow pairs then span several source frames); a frame of more than
    # max_pixels, or decoding past deadline_s seconds (flow not counted), makes the video an error row
    max_fps: PosFloat = 60.0
    max_pixels: PosInt = 40_000_000  # 8K (7680x4320, 8192x4320) passes
    deadline_s: PosFloat = 300.0
    # None: each video is cut at max_seconds and becomes one embedding per stream. Set ({length_s, stride_s}):
    # the whole video is decoded as a stream and each window gets its own sampling, flow stacks, audio examples
    # and embeddings (tables gain window, start_s, end_s); deadline_s then holds per max_seconds of video
    windows: WindowsConfig | None = None


@dataclass(frozen=True)
class PrecomputedFlowConfig:  # flow.backend precomputed: flow images under `root` (multistream.extract.flow.precomputed)
    root: str | None = None  # a folder or s3:// prefix
    layout: Literal["mmaction", "uv"] = "mmaction"  # VIDEO/flow_x_00001.jpg | u/VIDEO/frame000001.jpg (+ y | v)
    video_dir: str | None = None  # VIDEO from the video id: "{path}" | "{stem}" (None: the layout's)
    bound_px: PosFloat = 20.0  # pixel value 0..255 ↔ displacement -bound_px..+bound_px (linear)
    first_index: int = 1  # the number in the first pair's file name
    missing_pairs: int = 1  # pairs a folder may lack at the end (the decoder saw more frames): its last repeats


@dataclass(frozen=True)
class FlowConfig:
    backend: Annotated[str, known_backend] = "dis"  # a name in multistream.extract.flow.registry.BACKENDS
    size: Annotated[tuple[int, int], min_side(16)] = (320, 240)  # (width, height) flow is computed at; larger videos are resized down
    clip_px: PosFloat = 20.0  # stored flow is quantized to uint8 over [-clip_px, +clip_px]
    weights: str | None = None  # weights of a backend that reads them (multistream.weights spec, e.g. torchvision); required for raft_*
    batch_size: PosInt = 16  # frame pairs per RAFT forward pass
    # RAFT's encoders and update block in bf16 (its correlation in fp32): measured within 0.16 px of fp32
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Device = "auto"
    precomputed: PrecomputedFlowConfig = field(default_factory=PrecomputedFlowConfig)

    def check(self) -> dict[str, str]:
        missing = self.backend == "precomputed" and not self.precomputed.root
        return {"precomputed.root": "flow.backend precomputed reads its flow images from here"} if missing else {}


@dataclass(frozen=True)
class SamplingConfig:
    method: Literal["adaptive", "uniform"] = "adaptive"  # adaptive: paper §IV.F
    max_seq_len: PosInt = 180
    segments: PosInt = 12  # adaptive sampling allots positions per segment by its mean flow magnitude
    # positions per video: min(max_seq_len, max_fraction x frames): below 1 short clips are sampled too
    max_fraction: Annotated[float, in_range(0.0, 1.0, low_open=True, high_open=False)] = 1.0


@dataclass(frozen=True)
class SpatialConfig:
    model: str = "inception_resnet_v2"  # any timm model name
    weights: str | None = None  # multistream.weights spec: timm, hf-hub:..., URL, file/URI or package:...
    image_size: PosInt = 299
    batch_size: PosInt = 64
    device: Device = "auto"
    amp: bool = True  # autocast on CUDA


@dataclass(frozen=True)
class AudioConfig:
    weights: str | None = None  # VGGish weights (multistream.weights spec, e.g. torchvggish); None: random init
    example_seconds: PosFloat = 0.96  # non-overlapping examples, each one 96x64 log-mel patch
    batch_size: PosInt = 64
    device: Device = "auto"
    seed: int = 0  # seeds the random init when no weights are given, so runs are reproducible
    # raw: the network's output; pca: AudioSet's PCA (with whitening); pca_quantized: then clipped to [-2, 2]
    # and quantized to 0..255 as AudioSet's released features are. pca*: need pca_params.
    postprocess: Literal["raw", "pca", "pca_quantized"] = "raw"
    pca_params: str | None = None  # weights spec of the PCA (torchvggish: the release's), see multistream.weights


@dataclass(frozen=True)
class MotionCNNConfig:
    stack_length: PosInt = 10  # L: flow fields per stack, 2L input channels
    epochs: PosInt | None = 30  # None: no cap, `patience` stops training (it needs a val split)
    lr: PosFloat = 1e-3  # Adam with the defaults of its paper
    batch_size: PosInt = 32  # stacks per optimizer step across all Train workers (each takes its share)
    # an epoch: `stacks_per_video` random stacks of each train video, or every flow pair once (val, test: evenly)
    epoch: Literal["stacks_per_video", "whole_flow"] = "stacks_per_video"
    stacks_per_video: PosInt = 4
    patience: int = 10  # early stop after this many epochs without a better validation loss
    norm: Literal["cnn_m", "paper"] = "cnn_m"  # BatchNorm after conv1 and conv2 (cnn_m) or conv1 only (paper)
    sync_bn: bool = False  # BatchNorm statistics of the whole batch across the Train workers
    # autocast on CUDA: true bf16 (fp16 + a GradScaler where bf16 is unsupported), "auto" bf16 only, false fp32
    amp: bool | Literal["auto"] = True
    dropout: Fraction = 0.5
    width: PosFloat = 1.0  # scales every layer's channels; 1.0 is the paper's network
    embed_batch_size: PosInt = 32
    seed: int = 0  # the initial weights and every epoch's random stacks
    device: Device = "auto"  # training and embedding; "auto" is the GPU in Ray workers given one
    # flow stored once per node on local disk (uint8 .npy files every Train worker of the node maps), read from
    # flow/ once per node and run, removed at the end of the run; "" is the node's temp dir/multistream-flow
    flow_cache_dir: str = ""
    flow_cache_disk_gb: NonNegFloat = 64.0  # the node cache's budget for a run (0: no node cache)
    # flow beyond the node cache kept in each Train worker's memory (read once); beyond it, each epoch re-reads
    # the rest of flow/
    flow_cache_gb: NonNegFloat = 8.0


@dataclass(frozen=True)
class RNNConfig:
    cell: Literal["gru", "lstm"] = "gru"
    bidirectional: bool = True
    layers: PosInt = 2
    hidden: PosInt = 512
    attention: bool = False
    dropout: Fraction = 0.5
    lr: PosFloat = 1e-2  # SGD with Nesterov momentum
    momentum: float = 0.9
    lr_factor: float = 0.1  # on a plateau of `lr_patience` epochs, down to `min_lr`
    lr_patience: PosInt = 5
    min_lr: float = 1e-6
    patience: int = 10  # early stop
    epochs: PosInt | None = 200  # None: no cap, `patience` stops training (it needs a val split)
    batch_size: PosInt = 32  # videos per optimizer step in total, divided among the Train workers
    seed: int = 0
    device: Device = "auto"  # where the heads train and embed (auto: the GPU where Ray gave one)


@dataclass(frozen=True)
class TuneConfig:
    stream: Literal[STREAMS] = "spatial"
    num_samples: int = 1  # samples per grid point
    epochs: PosInt | None = 100  # None: each trial until its early stop (scheduler none only)
    scheduler: Literal["asha", "none"] = "asha"  # asha prunes trials on the val loss; none trains every one
    grace_period: PosInt = 10  # ASHA
    reduction_factor: Annotated[int, in_range(2, math.inf)] = 4  # ASHA
    cells: tuple[Literal["gru", "lstm"], ...] = ("lstm", "gru")
    bidirectional: tuple[bool, ...] = (False, True)
    layers: tuple[PosInt, ...] = (1, 2)
    hidden: tuple[PosInt, ...] = (256, 512, 1024, 2048)
    attention: tuple[bool, ...] = (False,)
    max_concurrent: int = 0  # 0: as many as the cluster fits
    # "table1": the paper's Table I (its 17 plain variants, then the best with attention, then the best with
    # the SVM in place of softmax); "product": every combination of cells x bidirectional x layers x hidden
    # x attention above
    grid: Literal["table1", "product"] = "table1"
    hidden_scale: PosFloat = 1.0  # Table I's hidden units x this (small demos)
    cpus_per_trial: PosFloat = 1.0  # fractions pack several trials on a core / a GPU
    gpus_per_trial: NonNegFloat = 0.0

    def check(self) -> dict[str, str]:
        short = self.scheduler == "asha" and (self.epochs or 0) < self.grace_period
        return {"epochs": f"ASHA needs an epoch budget of at least grace_period ({self.grace_period}), got "
                          f"{self.epochs} (or tune.scheduler: none)"} if short else {}


@dataclass(frozen=True)
class FusionConfig:
    l2: PosFloat = 1e-2  # L2 regularisation of the linear SVM (paper §V.D): C = 1 / (2 N l2), see fuse/svm.py
    # the SVM's C directly: a number, "auto" (the best val top-1 of C_grid, SVMs fitted on train), None: from l2
    C: Annotated[float, positive] | Literal["auto"] | None = None
    C_grid: tuple[PosFloat, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    max_iter: PosInt = 10000
    # the videos the SVM is fitted on: their RNN embeddings; "train+val" adds embeddings the RNNs were not
    # fitted on (and so look like the test split's)
    fit: Literal["train", "val", "train+val"] = "train"


@dataclass(frozen=True)
class AnomalyConfig:
    hidden: PosInt = 512
    bottleneck: PosInt = 64
    epochs: PosInt = 200
    lr: PosFloat = 1e-3
    batch_size: PosInt = 64
    target_fpr: Fraction = 0.05  # false-positive rate the threshold is calibrated to
    # "cross_fit": one autoencoder per fold (`folds` folds of whole groups) fitted on the other folds' normal
    # train and val videos, the threshold from the val videos' out-of-fold scores; "val": fitted on train,
    # the threshold from the val videos' scores
    calibrate: Literal["cross_fit", "val"] = "cross_fit"
    # how the (1 - target_fpr) quantile of the calibration scores is read: "empirical" (the lowest threshold
    # that flags at most target_fpr of them), "lognormal" (of a log-normal fitted to them), "auto": empirical
    # once target_fpr x the calibration videos >= 10, else lognormal
    quantile: Literal["auto", "empirical", "lognormal"] = "auto"
    folds: Annotated[int, in_range(2, math.inf)] = 5
    calibration: Fraction = 0.25  # "val" without a val split only: share of train held out to calibrate on
    seed: int = 0
    device: Device = "auto"  # the autoencoder trains where the fuse job runs
    # "videos": fitted on, calibrated on and scoring one embedding per clip; "windows": fitted on the window
    # embeddings of the normal train+val videos (the pipeline embeds every video in windows with the trained
    # models: `<run>/windows/`), calibrated on the val windows, each video scored by its windows' scores
    # aggregated as video.windows.anomaly_score. The windows are video.windows, or WindowsConfig()'s where unset
    fit_on: Literal["videos", "windows"] = "videos"


def actors_form(value: str) -> str | None:
    """max_actors that grows with the cluster (multistream.ray.pools): auto, N/gpu or N/node."""
    if value == "auto" or re.fullmatch(r"\d+(\.\d+)?/(gpu|node)", value) and float(value.split("/")[0]) > 0:
        return None
    return f"expected a positive number of actors, auto, N/gpu or N/node (e.g. 4/gpu), got {value!r}"


@dataclass(frozen=True)
class StageResources:
    num_cpus: PosFloat = 1.0
    num_gpus: NonNegFloat = 0.0  # a share of ONE GPU below 1, else whole GPUs
    min_actors: PosInt = 1
    # a number, or (extraction pools only) grown with the cluster the job runs on: auto (as many as fit beside
    # the other pools), N/gpu, N/node; every pool's actors must fit at once (multistream.ray.pools)
    max_actors: PosInt | Annotated[str, actors_form] = 1
    batch_size: PosInt = 1  # videos per map_batches call

    def check(self) -> dict[str, str]:
        if isinstance(self.max_actors, int) and self.max_actors < self.min_actors:
            return {"max_actors": f"must be at least min_actors ({self.min_actors}), got {self.max_actors}"}
        if self.num_gpus > 1 and not float(self.num_gpus).is_integer():
            return {"num_gpus": f"a share above 1 GPU must be whole GPUs (Ray), got {self.num_gpus:g}"}
        return {}


@dataclass(frozen=True)
class TrainResources:
    num_workers: PosInt = 1
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1.0
    max_failures: int = 2
    # a training run checkpoints its epochs at most this often (0: every epoch), and always its final one; a
    # restarted worker repeats the epochs since the last checkpoint
    checkpoint_every_s: NonNegFloat = 0.0
    # the pipeline on a fresh run root fits the motion CNN and the RNN heads in one Ray Train run
    # (`multistream.ray.chain`): one worker-group start-up instead of two
    chain: bool = True


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: join a running cluster if there is one, else start a local one
    num_cpus: PosInt | None = None  # for a local cluster only
    torch_threads: PosInt = 1  # per actor / worker
    decode: StageResources = field(default_factory=StageResources)
    spatial: StageResources = field(default_factory=StageResources)
    audio: StageResources = field(default_factory=StageResources)
    write: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.1, batch_size=4))
    embed: StageResources = field(default_factory=StageResources)  # the trained models' embedding passes
    # Extraction as ONE pool whose actors run decode → spatial → audio on each video, instead of a pool per
    # stage (the entries above): no frames cross the object store. On CPUs one busy process per core; given a
    # GPU (num_gpus) with RAFT, the frames stay on it from RAFT to the spatial CNN, which embeds a call's videos
    # (batch_size) together. None keeps the stages apart.
    fused: StageResources | None = None
    train: TrainResources = field(default_factory=TrainResources)
    # The cluster file (a `ray up` YAML, a KubeRay RayCluster or RayJob) the job's cluster was made from: the
    # extraction's pools are judged against the largest cluster it can grow to. None: the cluster the job joins,
    # grown as its autoscaler says where Ray tells (multistream.ray.session.job_cluster).
    cluster: str | None = None

    def check(self) -> dict[str, str]:
        for name in ("write", "embed"):
            if not isinstance(getattr(self, name).max_actors, int):
                return {f"{name}.max_actors": "only the extraction pools (decode, spatial, audio, fused) grow "
                                              f"with the cluster: give a number, got {getattr(self, name).max_actors!r}"}
        return {}


@dataclass(frozen=True)
class PathsConfig:
    input: str = "runs/demo-data"  # folder or s3:// prefix of videos
    output: str = "runs/demo"  # run root: every table and model lives under it
    labels: str | None = None  # CSV manifest (uri,label[,split]) or a UCF101 split folder
    split: int = 1  # which UCF101 split (trainlist0N/testlist0N)
    demo: bool = True  # generate the demo dataset at `input` when it is missing
    # a labels.csv found inside the input may name videos outside it (another folder, bucket or host); off: it
    # is the archive's own file, not the user's declaration, and is confined to the input
    allow_outside_input: bool = False
    # local input/output paths that every node of a multi-node cluster sees (NFS, EFS); without it a job on
    # such a cluster refuses local paths, which each node would resolve on its own disk
    shared_filesystem: bool = False


@dataclass(frozen=True)
class StorageConfig:
    # S3 clients (botocore + s3fs), in the driver and every worker: retries of a request and back-off mode
    retries: PosInt = 10
    retry_mode: Literal["legacy", "standard", "adaptive"] = "adaptive"
    connect_timeout: PosFloat = 10.0  # seconds
    read_timeout: PosFloat = 60.0
    # the run root's lease (one job at a time per --output): a holder silent for `lease_ttl_s` is dead;
    # a second job waits up to `lease_wait_s` for it (0: refuses at once, naming the holder)
    lease_ttl_s: PosFloat = 60.0
    lease_wait_s: NonNegFloat = 0.0


@dataclass(frozen=True)
class DatasetConfig:
    # a manifest past these is refused before any work: each class is a head output, a row and a column of the
    # confusion matrix (classes: the distinct labels outside the anomaly split)
    max_classes: PosInt = 1000
    max_label_chars: PosInt = 200
    # the extensions of a video file or shard member (lowercase, with the dot); other files are counted in the
    # job's summary as skipped, by extension
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS

    def check(self) -> dict[str, str]:
        bad = [e for e in self.extensions if not e.startswith(".") or e != e.lower() or e == ".tar"]
        return {"extensions": f"each must be lowercase and start with '.', and .tar is a shard: {bad}"} if bad else {}


@dataclass(frozen=True)
class ValidationConfig:
    # share of each class's train groups carved into `val` (UCF101 groups / a CSV `group` column stay whole);
    # 0 carves nothing: epoch budgets alone stop training, fusion.C: auto and the sweep are refused
    # (docs/paper.md#validation). A CSV manifest that names its own `val` videos is used as it is.
    fraction: Fraction = 0.15
    seed: int = 0


@dataclass(frozen=True)
class WeightsConfig:
    # every download of pretrained weights (multistream.weights.fetch), on the driver and in every worker: at most
    # max_mb megabytes, the whole download within timeout_s seconds (a process holding the node's lock lets go)
    max_mb: PosFloat = 2048.0
    timeout_s: PosFloat = 1800.0


@dataclass(frozen=True)
class CommitConfig:
    # Extraction commits by time and size (one part per table, docs/design.md#commit-protocol): the finished
    # videos gathered until the first is `every_s` old (0: each block of videos as it comes), or until their
    # features + flow pass `max_mb`. A kill -9 loses at most `every_s` of work plus the commits in flight.
    every_s: NonNegFloat = 10.0
    max_mb: PosFloat = 512.0
    progress_s: PosFloat = 10.0  # the driver's progress line, every this many seconds
    error_examples: PosInt = 3  # videos named per kind of error in the job's summary


@dataclass(frozen=True)
class TrackingConfig:
    # Training as it happens (`multistream.train.progress`): a log line per epoch always; TensorBoard event
    # files under RUN/logs/<model>/; with `mlflow_uri` (e.g. "file:./mlruns" or an MLflow server's http URL;
    # needs the `mlflow` extra) one MLflow run per job in `mlflow_experiment`.
    tensorboard: bool = True
    mlflow_uri: str | None = None
    mlflow_experiment: str = "multistream"
    mlflow_run_id: str | None = None  # set by the job for its workers; set it to log into a run of your own


@dataclass(frozen=True)
class Config:
    video: VideoConfig = field(default_factory=VideoConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    motion_cnn: MotionCNNConfig = field(default_factory=MotionCNNConfig)
    rnn: RNNConfig = field(default_factory=RNNConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    commit: CommitConfig = field(default_factory=CommitConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)

    def replace(self, **dotted: object) -> Config:
        """A copy with dotted keys replaced: `cfg.replace(**{"paths.output": "runs/x"})`."""
        return apply(self, dotted)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Config from a YAML file (default: configs/demo.yaml) with `key.sub=value` overrides applied."""
    path = Path(path) if path else DEMO_CONFIG
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    cfg = build(Config, raw)
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        pairs[key.strip()] = yaml.safe_load(value)
    return apply(cfg, pairs)


if __name__ == "__main__":  # python -m multistream.config --explain FILE: the config against the paper
    from multistream.report.paper import main

    raise SystemExit(main())
