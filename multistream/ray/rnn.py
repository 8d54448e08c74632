"""The recurrent head of each stream on Ray Train, then every video's embedding on Ray Data (paper §III.E, §V.D).

Per stream (spatial: `features.spatial`, audio: `features.audio`, temporal: `motion.temporal`), separately:

1. classes = the sorted labels of the ok train-split videos; a `SequenceClassifier` from `cfg.rnn` is trained
   on the train split and validated on the test split, as in the paper, which uses UCF101's test split for
   the validation loss that drives the learning-rate schedule and early stopping. Ray Data reads the Parquet
   parts into the cluster's object store and shards them over the workers (`get_dataset_shard`): no process
   holds a whole table. Every epoch is checkpointed (`EpochLoop`): a re-run or a restarted worker continues
   from the last epoch (checkpoints of a different architecture or class list are dropped instead).
2. the best weights → `models/rnn_<stream>/model.safetensors` + `model.json` (input_dim, classes,
   hyperparameters, history).
3. every ok video (all splits, anomaly included) → `model.embed` on an actor pool →
   `models/rnn_<stream>/embeddings.parquet` (video_id, embedding); test top-1/top-5 from the same pass.

Then `embeddings/` is rebuilt from every stream embedded so far: one row per ok video, null where a stream is
missing. A stream already trained and embedded is skipped, so `--stream audio` can follow `--stream spatial`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from multistream import runinfo, schema, storage
from multistream.config import Config, RNNConfig
from multistream.ray.session import actor_device, init_ray, map_stage, read_parquet, worker_setup
from multistream.ray.train import EpochLoop, load_final_state, mean_over_workers, run_training
from multistream.rnn import SequenceClassifier, pad_sequences
from multistream.training import (
    evaluate,
    resolve_device,
    rnn_optimizer,
    seed_everything,
    topk_accuracy,
    train_epoch,
)

log = logging.getLogger(__name__)

SOURCES = {"spatial": (schema.FEATURES, "spatial"), "temporal": (schema.MOTION, "temporal"),
           "audio": (schema.FEATURES, "audio")}
PRODUCER = {schema.FEATURES: "jobs/extract.py", schema.MOTION: "jobs/train_motion.py"}
MODEL_FILE, META_FILE, EMBEDDINGS_PART = "model.safetensors", "model.json", "embeddings"
SPEC_FILE = "multistream_model.json"  # beside a stream's Ray Train checkpoints: the model they belong to
ARCHITECTURE = ("cell", "bidirectional", "layers", "hidden", "attention", "dropout")


class MissingStreamError(FileNotFoundError):
    """The table a stream is read from does not exist yet; the message names the job that writes it."""


@dataclass
class StreamData:
    """Where one stream's sequences live and which videos train, validate and get embedded."""

    stream: str
    table: str  # table URI
    column: str
    input_dim: int
    classes: list[str]
    targets: dict[str, int]  # video_id → class index, for the train and test ids
    train_ids: list[str]
    test_ids: list[str]
    all_ids: list[str]  # every ok video with this stream


def absolute_root(uri: str) -> str:
    """Local run roots become absolute: Ray workers and Ray Train storage must not depend on the cwd."""
    return uri if "://" in uri else os.path.abspath(uri)


def model_dir(root: str, stream: str) -> str:
    return storage.join(root, "models", f"rnn_{stream}")


def ok_videos(root: str) -> pa.Table:
    """video_id, label, split of the ok videos, sorted by video_id."""
    videos = storage.read_table(storage.join(root, schema.VIDEOS), columns=["video_id", "label", "split", "status"],
                                schema=schema.VIDEOS_SCHEMA)
    if videos.num_rows == 0:
        raise MissingStreamError(f"{storage.join(root, schema.VIDEOS)} has no videos: run jobs/extract.py first")
    ok = videos.filter(pc.equal(videos["status"], "ok")).drop_columns(["status"])
    return ok.sort_by("video_id")


def stream_data(root: str, stream: str, videos: pa.Table) -> StreamData:
    """The ids, classes and input size of `stream`; raises MissingStreamError when its table is absent."""
    table_name, column = SOURCES[stream]
    table = storage.join(root, table_name)
    parts = storage.list_parts(table)
    if not parts:
        raise MissingStreamError(f"stream {stream!r} reads {table}, which does not exist: "
                                 f"run {PRODUCER[table_name]} first")
    with storage.open_input(storage.join(table, parts[0] + storage.PART_SUFFIX)) as f:
        input_dim = pq.read_schema(f).field(column).type.value_type.list_size
    present = set(storage.read_table(table, columns=["video_id"])["video_id"].to_pylist())
    rows = [r for r in videos.to_pylist() if r["video_id"] in present]
    classes = sorted({r["label"] for r in videos.to_pylist() if r["split"] == "train" and r["label"]})
    index = {label: i for i, label in enumerate(classes)}
    train = [r["video_id"] for r in rows if r["split"] == "train" and r["label"] in index]
    test = [r["video_id"] for r in rows if r["split"] == "test" and r["label"] in index]
    unknown = sum(r["split"] == "test" and r["label"] not in index for r in rows)
    if unknown:
        log.warning("%s: %d test videos have a label absent from the train split; not scored", stream, unknown)
    if not train or not test:
        raise ValueError(f"stream {stream!r} needs labelled ok videos in both the train and the test split "
                         f"(the test split validates), found {len(train)} train and {len(test)} test")
    scored = set(train) | set(test)
    targets = {r["video_id"]: index[r["label"]] for r in rows if r["video_id"] in scored}
    return StreamData(stream, table, column, input_dim, classes, targets, train, test, [r["video_id"] for r in rows])


def sequences(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """(T_i, D) float32 arrays of a `vectors()` column; a null cell is an empty sequence."""
    dim = column.type.value_type.list_size
    return [np.zeros((0, dim), np.float32) if s is None else s for s in schema.column_to_sequences(column)]


def _batches(iterator, column: str, targets: dict[str, int], batch_size: int, shuffle: bool):
    """((x (B, T, D) float32, lengths (B,) int64), targets (B,) int64) from a Ray Data iterator."""
    for table in iterator.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                       local_shuffle_buffer_size=8 * batch_size if shuffle else None):
        x, lengths = pad_sequences(sequences(table[column]))
        yield (x, lengths), torch.tensor([targets[v] for v in table["video_id"].to_pylist()])


def train_loop(config: dict) -> None:
    """Ray Train worker: SGD Nesterov with a plateau schedule and early stopping on the validation loss."""
    worker_setup(config["torch_threads"])
    rnn: RNNConfig = config["rnn"]
    seed_everything(rnn.seed)
    device = ray.train.torch.get_device()
    model = SequenceClassifier.from_config(rnn, config["input_dim"], config["num_classes"])
    model.set_input_statistics(*config["input_statistics"])
    model = ray.train.torch.prepare_model(model)
    optimizer, scheduler = rnn_optimizer(model, rnn)
    loop = EpochLoop(model, optimizer, scheduler, patience=rnn.patience)
    loop.resume()
    loss_fn = torch.nn.CrossEntropyLoss()
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    column, targets, batch = config["column"], config["targets"], rnn.batch_size
    while loop.epoch < rnn.epochs and not loop.done:
        fit = train_epoch(model, _batches(train_shard, column, targets, batch, True), optimizer, loss_fn, device)
        val = evaluate(model, _batches(val_shard, column, targets, batch, False), loss_fn, device)
        fit, val = mean_over_workers(fit, device), mean_over_workers(val, device)
        scheduler.step(val["loss"])
        loop.end_epoch({"train_loss": fit["loss"], "train_accuracy": fit["accuracy"], "val_loss": val["loss"],
                        "val_accuracy": val["accuracy"], "val_top5": val["top5"]})


def _drop_stale_checkpoints(cfg: Config, data: StreamData) -> None:
    """Checkpoints of another architecture, input or class list cannot be resumed: remove them, start over."""
    run = storage.join(cfg.paths.output, "checkpoints", f"rnn_{data.stream}")
    spec_uri = storage.join(run, SPEC_FILE)
    spec = json.dumps({"input_dim": data.input_dim, "classes": data.classes,
                       **{name: getattr(cfg.rnn, name) for name in ARCHITECTURE}}, sort_keys=True)
    if storage.exists(run) and not (storage.exists(spec_uri) and storage.read_text(spec_uri) == spec):
        log.warning("%s: the checkpoints in %s are of another model; training starts over", data.stream, run)
        fs, path = storage.filesystem(run)
        fs.rm(path, recursive=True)
    storage.write_text(spec_uri, spec)


def input_statistics(ds: ray.data.Dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (D,), of every timestep of the training sequences, streamed in one pass."""
    total = total_sq = None
    count = 0
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=256):
        frames = np.concatenate([s.astype(np.float64) for s in sequences(table[column])])
        if total is None:
            total, total_sq = np.zeros(frames.shape[1]), np.zeros(frames.shape[1])
        total += frames.sum(0)
        total_sq += (frames ** 2).sum(0)
        count += len(frames)
    mean = total / max(count, 1)
    return mean, np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))


def train_stream(cfg: Config, data: StreamData) -> dict:
    """Train on Ray Train (resuming from `checkpoints/rnn_<stream>`), save the best weights; returns model.json."""
    loop_config = {"rnn": cfg.rnn, "input_dim": data.input_dim, "num_classes": len(data.classes),
                   "column": data.column, "targets": data.targets, "torch_threads": cfg.ray.torch_threads}
    _drop_stale_checkpoints(cfg, data)
    # Materialized once in the object store: re-reading the Parquet parts every epoch costs seconds of task
    # start-up per epoch, more than a whole epoch of a small dataset.
    columns = ["video_id", data.column]
    datasets = {"train": read_parquet(data.table, data.train_ids, columns).materialize(),
                "val": read_parquet(data.table, data.test_ids, columns).materialize()}
    loop_config["input_statistics"] = input_statistics(datasets["train"], data.column)
    result = run_training(train_loop, loop_config, cfg, f"rnn_{data.stream}", datasets=datasets)
    state = load_final_state(result)
    meta = {"stream": data.stream, "input_dim": data.input_dim, "classes": data.classes,
            "embedding_dim": cfg.rnn.hidden * (2 if cfg.rnn.bidirectional else 1),
            "rnn": {name: getattr(cfg.rnn, name) for name in ARCHITECTURE}, "config": asdict(cfg.rnn),
            "epochs": state["epoch"], "best_val_loss": state["best_loss"], "history": state["history"]}
    directory = model_dir(cfg.paths.output, data.stream)
    runinfo.write_json(directory, META_FILE, meta)
    storage.write_bytes(storage.join(directory, MODEL_FILE), save_safetensors(state["best"]))  # marks it done
    return meta


def load_model(directory: str) -> tuple[SequenceClassifier, dict]:
    """(model in eval mode on cpu, model.json) from `models/rnn_<stream>` (local or s3://)."""
    meta = runinfo.read_json(directory, META_FILE)
    model = SequenceClassifier(meta["input_dim"], len(meta["classes"]), **meta["rnn"])
    model.load_state_dict(load_safetensors(storage.read_bytes(storage.join(directory, MODEL_FILE))))
    return model.eval(), meta


class EmbedStage:
    """Ray Data actor: rows (video_id, <column>) → video_id, embedding (B, E) float32, logits (B, C) float32."""

    def __init__(self, directory: str, column: str, torch_threads: int):
        worker_setup(torch_threads)
        self.device = resolve_device(actor_device("auto"))
        model, _ = load_model(directory)
        self.model, self.column = model.to(self.device), column

    @torch.no_grad()
    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        x, lengths = pad_sequences(sequences(table[self.column]))
        embedding = self.model.embed(x.to(self.device), lengths)
        logits = self.model.dense(embedding)  # eval mode: forward() without its dropout
        return {"video_id": np.array(table["video_id"].to_pylist(), dtype=object),
                "embedding": embedding.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}


def embed_stream(cfg: Config, data: StreamData, directory: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every ok video of the stream → (ids, embeddings (N, E) float32, logits (N, C) float32), id-sorted."""
    ds = map_stage(read_parquet(data.table, data.all_ids, ["video_id", data.column]), EmbedStage, cfg.ray.embed,
                   batch_size=cfg.rnn.batch_size, batch_format="pyarrow", directory=directory, column=data.column,
                   torch_threads=cfg.ray.torch_threads)
    ids, embeddings, logits = [], [], []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        ids += list(batch["video_id"])
        embeddings.append(batch["embedding"])
        logits.append(batch["logits"])
    order = np.argsort(ids)
    return [ids[i] for i in order], np.concatenate(embeddings)[order], np.concatenate(logits)[order]


def run_stream(cfg: Config, data: StreamData) -> dict:
    """Train (or reuse the saved model), embed every video and record the stream's metrics."""
    root, stream = cfg.paths.output, data.stream
    directory = model_dir(root, stream)
    if storage.exists(storage.join(directory, MODEL_FILE)):
        log.info("%s: reusing the saved model in %s", stream, directory)
        meta = runinfo.read_json(directory, META_FILE)
    else:
        meta = train_stream(cfg, data)
    ids, embeddings, logits = embed_stream(cfg, data, directory)
    storage.write_part(pa.table({"video_id": ids, "embedding": _fixed_list(embeddings)}), directory,
                       EMBEDDINGS_PART)
    test = np.isin(ids, data.test_ids)
    model_index = {label: i for i, label in enumerate(meta["classes"])}  # a reused model keeps its classes
    labels = np.array([model_index.get(data.classes[data.targets[v]], -1) for v in np.asarray(ids)[test]])
    metrics = {"top1": topk_accuracy(logits[test], labels, 1), "top5": topk_accuracy(logits[test], labels, 5),
               "epochs": meta["epochs"], "history": meta["history"], "classes": meta["classes"],
               "n_train": len(data.train_ids), "n_test": len(data.test_ids)}
    runinfo.update_metrics(root, f"rnn_{stream}", metrics)
    return metrics


def _fixed_list(rows: np.ndarray, mask: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(N, E) float32 → `fixed_size_list<float32, E>`; rows where `mask` is True are null."""
    flat = pa.array(np.ascontiguousarray(rows, np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, rows.shape[1], mask=None if mask is None else pa.array(mask))


def _read_file(uri: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_input(uri) as f:
        return pq.read_table(f, columns=columns)


def write_embeddings(root: str) -> int:
    """Rebuild `embeddings/` from every stream's `embeddings.parquet`; returns its row count (0: none yet)."""
    videos = ok_videos(root)
    ids = videos["video_id"].to_pylist()
    found: dict[str, tuple[dict[str, int], np.ndarray]] = {}  # stream → (row of each id, (N, E) float32)
    for stream in schema.STREAMS:
        part = storage.join(model_dir(root, stream), EMBEDDINGS_PART + storage.PART_SUFFIX)
        if storage.exists(part):
            table = _read_file(part)
            column = table["embedding"].combine_chunks()
            matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
            found[stream] = ({v: i for i, v in enumerate(table["video_id"].to_pylist())}, matrix)
    if not found:
        return 0
    dims = {stream: matrix.shape[1] for stream, (_, matrix) in found.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"streams have different embedding sizes {dims}: retrain them with one rnn config")
    dim = next(iter(dims.values()))
    arrays = {}
    for stream in schema.STREAMS:
        rows, matrix = found.get(stream, ({}, np.zeros((1, dim), np.float32)))
        index = np.array([rows.get(v, -1) for v in ids], np.int64)
        arrays[stream] = _fixed_list(matrix[np.maximum(index, 0)].reshape(-1, dim), index < 0)
    table = pa.table({"video_id": ids, "label": videos["label"], "split": videos["split"], **arrays},
                     schema=schema.embeddings_schema(dim))
    target = storage.join(root, schema.EMBEDDINGS)
    old = storage.list_parts(target)
    storage.write_part(table, target, f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    for name in old:  # after the new part is complete: a reader never finds the table empty
        storage.delete_part(target, name)
    return table.num_rows


def run_train_rnn(cfg: Config, streams: list[str], skip_missing: bool = False) -> dict[str, dict]:
    """Train and embed each stream, then rebuild `embeddings/`; returns per-stream metrics.

    A stream already done (model saved, every ok video of its table embedded) is skipped (`"skipped": True`,
    metrics from reports/metrics.json); with a saved model but videos added since, it is only re-embedded.
    A stream whose table is missing raises MissingStreamError, or with `skip_missing` is reported as
    `{"missing": message}`.
    """
    root = absolute_root(cfg.paths.output)
    cfg = cfg.replace(**{"paths.output": root})
    videos = ok_videos(root)
    results: dict[str, dict] = {}
    for stream in streams:
        try:
            data = stream_data(root, stream, videos)
        except MissingStreamError as error:
            if not skip_missing:
                raise
            log.warning("%s", error)
            results[stream] = {"missing": str(error)}
            continue
        directory = model_dir(root, stream)
        embedded = storage.join(directory, EMBEDDINGS_PART + storage.PART_SUFFIX)
        if storage.exists(storage.join(directory, MODEL_FILE)) and storage.exists(embedded) and set(
                data.all_ids) <= set(_read_file(embedded, ["video_id"])["video_id"].to_pylist()):
            log.info("%s: already trained and embedded in %s, skipping", stream, directory)
            results[stream] = {**runinfo.read_json(root, runinfo.METRICS).get(f"rnn_{stream}", {}), "skipped": True}
            continue
        init_ray(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = False  # one bar per split per epoch is noise
        log.info("%s: %d classes, %d train / %d test videos, input %d-d", stream, len(data.classes),
                 len(data.train_ids), len(data.test_ids), data.input_dim)
        results[stream] = run_stream(cfg, data)
    write_embeddings(root)
    return results
