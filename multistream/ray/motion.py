"""The motion CNN on Ray Train, then the temporal stream's embeddings on Ray Data.

Training (paper §IV.C, from scratch with Adam): each epoch Ray Data re-reads `flow/` and draws
`stacks_per_video` stacks of L flow fields at random positions of every train video (fixed, evenly spaced
positions for the test split, which validates). The best epoch's weights go to `models/motion_cnn/`.
Embedding: the stacks centred on each video's sampled positions (`features/`.frame_index, the spatial
stream's positions) → full7 → `motion/` (K, 2048) float16 per ok video, written part by part (resumable).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
from ray.data.expressions import col
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from multistream import runinfo, schema, storage
from multistream.config import Config
from multistream.extract import part_name, read_flow
from multistream.motion_cnn import EMBEDDING_DIM, MotionCNN, flow_stacks
from multistream.ray.session import actor_device, init_ray, map_stage, read_parquet, worker_setup
from multistream.ray.train import EpochLoop, load_final_state, mean_over_workers, run_training
from multistream.training import evaluate, motion_optimizer, seed_everything, train_epoch

log = logging.getLogger(__name__)

MODEL_DIR = "models/motion_cnn"


def labelled_videos(root: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """({video_id: label}, {video_id: split}, classes) of the ok videos; classes from the train split."""
    videos = storage.read_table(storage.join(root, schema.VIDEOS), schema=schema.VIDEOS_SCHEMA,
                                columns=["video_id", "label", "split", "status"]).to_pylist()
    ok = [v for v in videos if v["status"] == "ok"]
    classes = sorted({v["label"] for v in ok if v["split"] == "train" and v["label"]})
    return ({v["video_id"]: v["label"] for v in ok}, {v["video_id"]: v["split"] for v in ok}, classes)


def sample_stacks(batch: dict, labels: dict[str, int], stack_length: int, count: int, random: bool) -> dict:
    """`flow/` rows → {"stack": (N, 2L, H, W) float16, "label": (N,) int64}, `count` stacks per video."""
    rng = np.random.default_rng()
    stacks, targets = [], []
    for video_id, shape, data, clip_px in zip(batch["video_id"], batch["shape"], batch["data"],
                                              batch["clip_px"], strict=True):
        flow = read_flow({"shape": shape, "data": data})
        if len(flow) == 0:
            continue
        centers = (rng.integers(0, len(flow) + 1, count) if random
                   else np.linspace(0, len(flow), count + 2)[1:-1].round().astype(int))
        stacks.append(flow_stacks(flow, centers, stack_length, float(clip_px)).astype(np.float16))
        targets.append(np.full(count, labels[video_id], np.int64))
    if not stacks:
        return {"stack": np.zeros((0, 2 * stack_length, 1, 1), np.float16), "label": np.zeros(0, np.int64)}
    return {"stack": np.concatenate(stacks), "label": np.concatenate(targets)}


def _batches(shard, batch_size: int, shuffle: bool):
    for batch in shard.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=4 * batch_size
                                          if shuffle else None, dtypes={"stack": torch.float32, "label": torch.int64}):
        yield batch["stack"], batch["label"]


def train_loop(config: dict) -> None:
    """Per Ray Train worker: Adam on random flow stacks, validation on the test split, per-epoch checkpoints."""
    cfg: Config = config["cfg"]
    mc = cfg.motion_cnn
    worker_setup(cfg.ray.torch_threads)
    seed_everything(mc.seed + ray.train.get_context().get_world_rank())
    model = ray.train.torch.prepare_model(MotionCNN.from_config(mc, config["num_classes"], cfg.flow.size))
    optimizer = motion_optimizer(model, mc)
    loop = EpochLoop(model, optimizer, patience=mc.patience)
    loop.resume()
    device = ray.train.torch.get_device()
    amp = device.type == "cuda"
    loss_fn = torch.nn.CrossEntropyLoss()
    while loop.epoch < mc.epochs and not loop.done:
        train = train_epoch(model, _batches(ray.train.get_dataset_shard("train"), mc.batch_size, True),
                            optimizer, loss_fn, device, amp=amp)
        val = evaluate(model, _batches(ray.train.get_dataset_shard("val"), mc.batch_size, False), loss_fn,
                       device, top_k=(1,))
        loop.end_epoch(mean_over_workers({"loss": train["loss"], "accuracy": train["accuracy"],
                                          "val_loss": val["loss"], "val_accuracy": val["accuracy"]}, device))


def _fits_in_object_store(flow_uri: str, video_ids: set[str], share: float = 0.25) -> bool:
    """Whether these videos' flow fits in `share` of the object store: then it is read once and kept there
    for every epoch; otherwise each epoch streams it from Parquet again (which costs seconds per epoch)."""
    shapes = storage.read_table(flow_uri, columns=["video_id", "shape"]).to_pylist()
    size = sum(int(np.prod(row["shape"])) for row in shapes if row["video_id"] in video_ids)
    capacity = ray.cluster_resources().get("object_store_memory", 0)
    log.info("flow of the training videos: %.0f MB (%s)", size / 2**20,
             "kept in the object store" if size < share * capacity else "streamed from Parquet every epoch")
    return size < share * capacity


def train_motion_cnn(cfg: Config) -> dict:
    """Fit the motion CNN on Ray Train; save the best weights; return {classes, history, val metrics}."""
    root = cfg.paths.output
    labels, splits, classes = labelled_videos(root)
    if len(classes) < 2:
        raise ValueError(f"{root}: need at least 2 labelled classes in the train split, found {classes}")
    index = {label: i for i, label in enumerate(classes)}
    train_ids = {v for v, s in splits.items() if s == "train" and labels[v] in index}
    val_ids = {v for v, s in splits.items() if s == "test" and labels[v] in index}
    if not val_ids:
        raise ValueError(f"{root}: no labelled test-split videos to validate the motion CNN on")
    flow_uri = storage.join(root, schema.FLOW)
    targets = {v: index[labels[v]] for v in train_ids | val_ids}
    mc = cfg.motion_cnn

    flow = read_parquet(flow_uri, train_ids | val_ids)
    if _fits_in_object_store(flow_uri, train_ids | val_ids):
        flow = flow.materialize()

    def stacks(ids, random: bool):
        return flow.filter(expr=col("video_id").is_in(sorted(ids))).map_batches(
            sample_stacks, batch_size=4, batch_format="numpy", num_cpus=0.25,
            fn_kwargs={"labels": targets, "stack_length": mc.stack_length, "count": mc.stacks_per_video,
                       "random": random})

    log.info("motion CNN: %d classes, %d train and %d test videos", len(classes), len(train_ids), len(val_ids))
    result = run_training(train_loop, {"cfg": cfg, "num_classes": len(classes)}, cfg, "motion_cnn",
                          datasets={"train": stacks(train_ids, True), "val": stacks(val_ids, False)})
    final = load_final_state(result)
    best = min(final["history"], key=lambda m: m["val_loss"])
    meta = {"classes": classes, "flow_size": list(cfg.flow.size), "stack_length": mc.stack_length,
            "width": mc.width, "dropout": mc.dropout, "clip_px": cfg.flow.clip_px}
    storage.write_bytes(storage.join(root, MODEL_DIR, "model.safetensors"), save_safetensors(final["best"]))
    storage.write_text(storage.join(root, MODEL_DIR, "model.json"), json.dumps(meta, indent=2))
    summary = {"classes": classes, "history": final["history"], "epochs": final["epoch"],
               "best_epoch": best["epoch"], "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"],
               "n_train": len(train_ids), "n_test": len(val_ids), "chance": 1 / len(classes)}
    runinfo.update_metrics(root, "motion_cnn", summary)
    return summary


def load_motion_cnn(root: str) -> tuple[MotionCNN, dict]:
    """The trained motion CNN of a run root (eval mode, CPU) and its model.json."""
    meta = json.loads(storage.read_text(storage.join(root, MODEL_DIR, "model.json")))
    model = MotionCNN(len(meta["classes"]), stack_length=meta["stack_length"], width=meta["width"],
                      dropout=meta["dropout"], flow_size=tuple(meta["flow_size"]))
    model.load_state_dict(load_safetensors(storage.read_bytes(storage.join(root, MODEL_DIR, "model.safetensors"))))
    return model.eval(), meta


class EmbedStage:
    """`flow/` rows → the full7 embedding of the stack at each sampled position, written as a `motion/` part."""

    def __init__(self, cfg: Config, positions: dict[str, list[int]]):
        from multistream.training import resolve_device

        worker_setup(cfg.ray.torch_threads)
        self.cfg, self.positions = cfg, positions
        self.device = resolve_device(actor_device(cfg.spatial.device))
        self.model, self.meta = load_motion_cnn(cfg.paths.output)
        self.model.to(self.device)

    @torch.no_grad()
    def embed(self, flow: np.ndarray, positions: list[int]) -> np.ndarray:
        """(P, H, W, 2) uint8 flow, K positions → (K, 2048) float16; a video with no flow pair has zero motion."""
        L, batch = self.meta["stack_length"], self.cfg.motion_cnn.embed_batch_size
        height, width = flow.shape[1:3] if flow.ndim == 4 else self.cfg.flow.size[::-1]
        out = []
        for start in range(0, len(positions), batch):
            centers = positions[start:start + batch]
            stacks = (flow_stacks(flow, centers, L, self.meta["clip_px"]) if len(flow)
                      else np.zeros((len(centers), 2 * L, height, width), np.float32))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out.append(self.model.embed(torch.from_numpy(stacks).to(self.device)).float().cpu().numpy())
        return np.concatenate(out).astype(np.float16) if out else np.zeros((0, EMBEDDING_DIM), np.float16)

    def __call__(self, batch: dict) -> dict:
        ids = [str(v) for v in batch["video_id"]]
        sequences = [self.embed(read_flow({"shape": shape, "data": data}), self.positions[video_id])
                     for video_id, shape, data in zip(ids, batch["shape"], batch["data"], strict=True)]
        table = pa.table({"video_id": ids, "temporal": schema.sequence_array(sequences, EMBEDDING_DIM)},
                         schema=schema.motion_schema())
        storage.write_part(table, storage.join(self.cfg.paths.output, schema.MOTION), part_name(ids))
        return {"video_id": np.array(ids, dtype=object)}


def embed_motion(cfg: Config) -> int:
    """Write `motion/` rows for every extracted video that has none yet; returns how many were added."""
    root = cfg.paths.output
    features = storage.read_table(storage.join(root, schema.FEATURES), columns=["video_id", "frame_index"])
    done = set(storage.read_table(storage.join(root, schema.MOTION), columns=["video_id"],
                                  schema=schema.motion_schema())["video_id"].to_pylist())
    positions = {v: p for v, p in zip(features["video_id"].to_pylist(), features["frame_index"].to_pylist(),
                                      strict=True) if v not in done}
    if not positions:
        return 0
    init_ray(cfg)
    ds = read_parquet(storage.join(root, schema.FLOW), set(positions), columns=["video_id", "shape", "data"])
    ds = map_stage(ds, EmbedStage, cfg.ray.embed, cfg=cfg, positions=positions)
    return sum(1 for _ in ds.iter_rows())


def run_train_motion(cfg: Config) -> dict:
    """Train (unless a model exists) and embed (videos not yet in `motion/`); resumable at both steps."""
    root = cfg.paths.output
    if storage.exists(storage.join(root, MODEL_DIR, "model.safetensors")):
        log.info("motion CNN already trained under %s: skipping training", root)
        summary = runinfo.read_json(root, runinfo.METRICS).get("motion_cnn", {})
    else:
        init_ray(cfg)
        summary = train_motion_cnn(cfg)
    added = embed_motion(cfg)
    log.info("motion/: %d videos embedded", added)
    return summary | {"embedded": added}
