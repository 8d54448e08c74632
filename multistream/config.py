"""One frozen config tree for every job, loaded from YAML and validated with messages that name the key.

    cfg = load_config("configs/demo.yaml", overrides=["flow.backend=farneback", "rnn.hidden=256"])
    cfg.flow.size      # (width, height)

Unknown keys, wrong types and out-of-range values raise `ConfigError("flow.backend: ...")`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


class ConfigError(ValueError):
    """A config file or override is invalid; the message starts with the dotted key."""


@dataclass(frozen=True)
class VideoConfig:
    max_seconds: float = 36.0  # only the first seconds of each video are used (paper §V.C)
    audio_rate: int = 16000  # audio is decoded to mono float32 at this rate


@dataclass(frozen=True)
class FlowConfig:
    backend: str = "dis"  # dis | farneback | raft_small | raft_large
    size: tuple[int, int] = (320, 240)  # (width, height) flow is computed at; larger videos are resized down
    clip_px: float = 20.0  # stored flow is quantized to uint8 over [-clip_px, +clip_px]
    weights: str | None = None  # RAFT weights file (local path or URI); required for raft_*
    batch_size: int = 16  # frame pairs per RAFT forward pass
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class SamplingConfig:
    method: str = "adaptive"  # adaptive (paper §IV.F) | uniform
    max_seq_len: int = 180
    segments: int = 12  # adaptive sampling allots positions per segment by its mean flow magnitude


@dataclass(frozen=True)
class SpatialConfig:
    model: str = "inception_resnet_v2"  # any timm model name
    weights: str | None = None  # file/URI (.safetensors / .pth state dict) or "package:efficientnet_lite0"
    image_size: int = 299
    batch_size: int = 64
    device: str = "auto"
    amp: bool = True  # autocast on CUDA


@dataclass(frozen=True)
class AudioConfig:
    weights: str | None = None  # VGGish AudioSet weights (state dict); random init is announced
    example_seconds: float = 0.96  # non-overlapping examples, each one 96x64 log-mel patch
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0  # seeds the random init when no weights are given, so runs are reproducible


@dataclass(frozen=True)
class MotionCNNConfig:
    stack_length: int = 10  # L: flow fields per stack, 2L input channels
    epochs: int = 30
    lr: float = 1e-3  # Adam with the defaults of its paper
    batch_size: int = 32
    stacks_per_video: int = 4  # random stacks drawn per video per epoch
    patience: int = 10  # early stop after this many epochs without a better validation loss
    dropout: float = 0.5
    width: float = 1.0  # scales every layer's channels; 1.0 is the paper's network
    embed_batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class RNNConfig:
    cell: str = "gru"  # gru | lstm
    bidirectional: bool = True
    layers: int = 2
    hidden: int = 512
    attention: bool = False
    dropout: float = 0.5
    lr: float = 1e-2  # SGD with Nesterov momentum
    momentum: float = 0.9
    lr_factor: float = 0.1  # on a plateau of `lr_patience` epochs, down to `min_lr`
    lr_patience: int = 5
    min_lr: float = 1e-6
    patience: int = 10  # early stop
    epochs: int = 200
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class TuneConfig:
    stream: str = "spatial"
    num_samples: int = 1  # samples per grid point
    epochs: int = 100
    grace_period: int = 10  # ASHA
    cells: tuple[str, ...] = ("lstm", "gru")
    bidirectional: tuple[bool, ...] = (False, True)
    layers: tuple[int, ...] = (1, 2)
    hidden: tuple[int, ...] = (256, 512, 1024, 2048)
    attention: tuple[bool, ...] = (False,)
    max_concurrent: int = 0  # 0: as many as the cluster fits


@dataclass(frozen=True)
class FusionConfig:
    l2: float = 1e-2  # L2 regularisation of the linear SVM (paper §V.D)
    max_iter: int = 10000


@dataclass(frozen=True)
class AnomalyConfig:
    hidden: int = 512
    bottleneck: int = 64
    epochs: int = 200
    lr: float = 1e-3
    batch_size: int = 64
    threshold_percentile: float = 95.0  # of the reconstruction errors of held-out normal videos
    calibration: float = 0.25  # share of the normal training videos held out to set the threshold
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda: the autoencoder trains where the fuse job runs


@dataclass(frozen=True)
class StageResources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1
    batch_size: int = 1  # videos per map_batches call


@dataclass(frozen=True)
class TrainResources:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: join a running cluster if there is one, else start a local one
    num_cpus: int | None = None  # for a local cluster only
    torch_threads: int = 1  # per actor / worker
    decode: StageResources = field(default_factory=StageResources)
    spatial: StageResources = field(default_factory=StageResources)
    audio: StageResources = field(default_factory=StageResources)
    write: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.1, batch_size=4))
    embed: StageResources = field(default_factory=StageResources)  # the trained models' embedding passes
    # Extraction as ONE pool whose actors run decode → spatial → audio → write on each video in turn, instead
    # of a pool per stage (the four entries above). For machines without GPUs: no frames cross the object
    # store and there is one busy process per core. None keeps the stages apart (GPU clusters).
    fused: StageResources | None = None
    train: TrainResources = field(default_factory=TrainResources)


@dataclass(frozen=True)
class PathsConfig:
    input: str = "runs/demo-data"  # folder or s3:// prefix of videos
    output: str = "runs/demo"  # run root: every table and model lives under it
    labels: str | None = None  # CSV manifest (uri,label[,split]) or a UCF101 split folder
    split: int = 1  # which UCF101 split (trainlist0N/testlist0N)
    demo: bool = True  # generate the demo dataset at `input` when it is missing


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

    def replace(self, **dotted: object) -> Config:
        """A copy with dotted keys replaced: `cfg.replace(**{"paths.output": "runs/x"})`."""
        return _apply(self, dotted)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    "flow.backend": ("dis", "farneback", "raft_small", "raft_large"),
    "flow.device": ("auto", "cpu", "cuda"),
    "spatial.device": ("auto", "cpu", "cuda"),
    "audio.device": ("auto", "cpu", "cuda"),
    "anomaly.device": ("auto", "cpu", "cuda"),
    "sampling.method": ("adaptive", "uniform"),
    "rnn.cell": ("gru", "lstm"),
    "tune.stream": ("spatial", "temporal", "audio"),
}
_POSITIVE = ("num_cpus", "min_actors", "max_actors", "num_workers", "cpus_per_worker",
             "max_seconds", "audio_rate", "max_seq_len", "segments", "image_size", "batch_size", "epochs",
             "stack_length", "layers", "hidden", "bottleneck", "lr", "clip_px", "example_seconds")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Config from a YAML file (default: configs/demo.yaml) with `key.sub=value` overrides applied."""
    path = Path(path) if path else DEMO_CONFIG
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    cfg = _build(Config, raw, "")
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        pairs[key.strip()] = yaml.safe_load(value)
    return _apply(cfg, pairs)


def _apply(cfg: Config, pairs: dict) -> Config:
    data = cfg.to_dict()
    for key, value in pairs.items():
        node = data
        *parts, leaf = key.split(".")
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{key}: unknown key")
            node = node[part]
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"{key}: unknown key")
        node[leaf] = value
    return _build(Config, data, "")


def _build(cls: type, raw: object, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name in names & set(raw):
        key = prefix + name
        hint = hints[name]
        section = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)  # X | None
        if raw[name] is None and section is not hint:
            values[name] = None
        elif dataclasses.is_dataclass(section):
            values[name] = _build(section, raw[name], key + ".")
        else:
            values[name] = _coerce(hint, raw[name], key)
            _check_value(key, values[name])
    return cls(**values)


def _coerce(hint, value, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")


def _check_value(key: str, value) -> None:
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
    if key.rsplit(".", 1)[-1] in _POSITIVE and isinstance(value, int | float) and value <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    if key == "flow.size" and min(value) < 16:
        raise ConfigError(f"flow.size: each side must be at least 16 pixels, got {value!r}")
    if key == "anomaly.calibration" and not 0 <= value < 1:
        raise ConfigError(f"{key}: must be in [0, 1), got {value!r}")
    if key == "anomaly.threshold_percentile" and not 0 < value < 100:
        raise ConfigError(f"{key}: must be between 0 and 100, got {value!r}")
