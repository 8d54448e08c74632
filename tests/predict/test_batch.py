"""A trained tiny run applied to new videos: the batch job (local and S3), its refusals, resume, --embed-only,
and one-file mode giving the batch job's class and scores."""

import csv
import hashlib
import math
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multistream.config import FusionConfig, WindowsConfig, load_config
from multistream.dataset.manifest import VideoEntry
from multistream.demo.dataset import generate_demo
from multistream.extract.rows import EMBEDDINGS, embeddings_table, read_flow, video_row
from multistream.fuse.svm import FusionModel
from multistream.fuse.windows import anomaly_table, window_rows, windowed_anomaly_table
from multistream.jobs.pipeline import run_pipeline
from multistream.predict.batch import (
    HeadsStep,
    TemporalStep,
    check_run_root,
    predictions_table,
    unscored,
)
from multistream.predict.bundle import Bundle, open_bundle
from multistream.predict.models import Classifier, TemporalEmbedder, VideoEmbedder
from multistream.predict.single import main as one_file_main
from multistream.predict.single import predict_video
from multistream.store import layout, modelio, schema, storage
from multistream.store.commit import part_name
from multistream.store.layout import RunRoot
from tests.support.helpers import write_test_video

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["flow.size=[64, 60]", "spatial.image_size=32", "sampling.max_seq_len=8", "sampling.segments=4",
         "motion_cnn.epochs=2", "motion_cnn.stacks_per_video=2", "motion_cnn.patience=2", "rnn.hidden=8",
         "rnn.layers=1", "rnn.epochs=3", "rnn.batch_size=4", "anomaly.hidden=16", "anomaly.bottleneck=4",
         "anomaly.epochs=20", "ray.spatial.num_cpus=0.5"]
TABLES = ("videos", "embeddings", "predictions", "anomaly")
# the tests that use the trained run: its pipeline runs in the setup of the first one
end_to_end = pytest.mark.timeout(1800)


def predict_job(*args: str) -> int:
    from multistream.jobs import predict as job

    return job.main(list(args))


def table(root, name: str):
    return storage.read_table(storage.join(str(root), name)).sort_by("video_id")


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory) -> Path:
    """A run root trained by the pipeline on a tiny demo archive (4 classes x 3 clips, 2 anomalies)."""
    base = tmp_path_factory.mktemp("trained")
    data = generate_demo(base / "data", clips_per_class=3, n_anomalies=2)
    run_pipeline(load_config(None, [f"paths.input={data}", f"paths.output={base / 'run'}", *TRAIN]))
    return base / "run"


@pytest.fixture(scope="module")
def new_videos(tmp_path_factory) -> Path:
    """Unseen clips: one per demo class and an anomaly (seed 7), a clip without audio, an unreadable file."""
    root = generate_demo(tmp_path_factory.mktemp("new") / "input", seed=7, clips_per_class=1, n_anomalies=1)
    with open(root / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    write_test_video(root / "silent.mp4", frames=30, size=(96, 72))
    (root / "broken.mp4").write_bytes(b"not a video" * 50)
    rows += [{"uri": "silent.mp4", "label": rows[0]["label"], "split": "test"},
             {"uri": "broken.mp4", "label": rows[0]["label"], "split": "test"}]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["uri", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def predicted(trained, new_videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predicted") / "out"
    assert predict_job("--models", str(trained), "--input", str(new_videos), "--output", str(out)) == 0
    return out


def videos_part(run: RunRoot, ids: list[str], status: str = "ok") -> str:
    rows = [{name: None for name in schema.VIDEOS_SCHEMA.names} | {"video_id": v, "status": status, "label": "a"}
            for v in ids]
    name = part_name(ids)
    storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA), run.videos, name)
    return name


def test_unscored_parts_drop_an_interrupted_scoring_and_a_root_without_embeddings_is_refused(tmp_path):
    run = RunRoot(str(tmp_path / "out"))
    done, todo = videos_part(run, ["a", "b"]), videos_part(run, ["c", "d"])
    videos_part(run, ["e"], status="error")  # no embeddings/ twin: nothing to embed
    vectors = {s: np.ones((2, 3), np.float32) for s in schema.STREAMS}
    for name, ids in ((done, ["a", "b"]), (todo, ["c", "d"])):
        storage.write_part(embeddings_table(ids, ["a", "a"], [None, None], vectors), run.embeddings, name)
    scores = anomaly_table(["a", "b"], [None, None], np.zeros(2), np.zeros(2, bool))
    storage.write_part(scores, run.anomaly, done)
    storage.write_part(scores, run.predictions, todo, staged=True)  # a scoring killed before its anomaly/ marker
    check_run_root(run)
    assert unscored(run) == {todo: ["c", "d"]} and storage.list_staged(run.predictions) == []
    storage.delete_part(run.embeddings, todo)
    storage.write_part(embeddings_table(["c", "d"], ["a", "a"], [None, None], vectors), run.embeddings, todo,
                       staged=True)  # committed, not yet published: resume publishes it
    check_run_root(run)
    videos_part(run, ["f", "g"])  # ok videos extracted without embeddings (jobs/extract.py)
    with pytest.raises(ValueError, match="without their embeddings"):
        check_run_root(run)


def test_window_rows_put_each_video_s_aggregated_row_before_its_windows_with_or_without_class_scores():
    spans = pa.table({"video_id": ["b", "a", "b", "a"], "label": ["x", "y", "x", "y"], "split": ["test"] * 4,
                      "window": [1, 0, 0, 1], "start_s": [1.0, 0.0, 0.0, 1.0], "end_s": [3.0, 2.0, 2.0, 2.5]})
    anomaly = np.array([0.9, 0.1, 0.2, 0.3])
    classes = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])

    def threshold_for(windows: int) -> float:  # higher for a video of more windows, as the detector's
        return 0.5 if windows == 1 else 0.85

    rows = window_rows(spans, classes, anomaly, WindowsConfig(anomaly_score="mean"), threshold_for)
    assert [(r["video_id"], r["window"]) for r in rows] == [("b", None), ("b", 0), ("b", 1), ("a", None), ("a", 0),
                                                             ("a", 1)]
    b, a = rows[0], rows[3]
    # a mean is a window's score: against the one-window threshold; each window against its video's 2 windows'
    assert b["score"] == pytest.approx(0.55) and b["is_anomaly"] and b["threshold"] == 0.5 and b["peak_window"] == 1
    assert b["end_s"] == 3.0 and a["score"] == pytest.approx(0.2) and not a["is_anomaly"] and a["peak_window"] == 1
    np.testing.assert_allclose(b["scores"], [1.0, 1.0])
    assert [(r["is_anomaly"], r["threshold"]) for r in rows[1:3]] == [(False, 0.85), (True, 0.85)]
    plain = window_rows(spans, None, anomaly, WindowsConfig(), threshold_for)
    assert "scores" not in plain[0] and plain[0]["score"] == pytest.approx(0.9) and plain[0]["threshold"] == 0.85
    per_window = window_rows(spans, None, anomaly, WindowsConfig(false_alarms="window"), threshold_for)
    assert [r["threshold"] for r in per_window] == [0.5] * 6 and [r["is_anomaly"] for r in per_window] == [
        True, False, True, False, False, False]
    table = windowed_anomaly_table(plain)
    assert table.schema.equals(schema.windowed(schema.ANOMALY_SCHEMA))
    assert table["peak_window"].to_pylist() == [1, None, None, 1, None, None]


def test_the_step_after_decode_embeds_the_flow_in_memory_and_drops_it():
    def embed(flow, positions):
        assert flow.shape == (4, 6, 8, 2) and list(positions) == [0, 2]
        return np.ones((len(positions), schema.MOTION_DIM), np.float32)

    def row():
        return {"video": video_row(VideoEntry("a.mp4", "/in/a.mp4", None, None)), "positions": np.array([0, 2]),
                "flow": np.zeros((4, 6, 8, 2), np.uint8)}

    out = TemporalStep(embed)(row())
    assert "flow" not in out and out["temporal"].dtype == np.float16 and out["temporal"].shape == (2, 2048)
    assert "flow" in TemporalStep(embed, keep_flow=True)(row())  # --keep-flow: committed to flow/
    error = {"video": video_row(VideoEntry("b.mp4", "/in/b.mp4", None, None), "error", "unreadable")}
    assert TemporalStep(embed)(error) == error

    def out_of_memory(flow, positions):
        raise RuntimeError("CUDA out of memory")

    failed = TemporalStep(out_of_memory)(row())
    assert set(failed) == {"video"} and failed["video"]["status"] == "error"
    assert failed["video"]["error"].startswith("temporal: ") and failed["video"]["error_kind"] == "model"


def test_the_heads_embed_the_ok_rows_of_a_call_together_and_drop_their_sequences():
    calls = []

    def embed(sequences):
        calls.append({s: [x.dtype for x in seqs] for s, seqs in sequences.items()})
        return {s: np.arange(2 * 4, dtype=np.float32).reshape(2, 4) for s in ("spatial", "temporal")}

    def row(video_id):
        return {"video": video_row(VideoEntry(video_id, f"/in/{video_id}", None, None)),
                "positions": np.array([0, 2]), "timestamps": np.zeros(2, np.float32), "magnitudes": np.ones(2),
                "spatial": np.ones((2, 5), np.float16), "audio": np.ones((1, 128), np.float16),
                "temporal": np.ones((2, 2048), np.float16), "flow": np.zeros((4, 6, 8, 2), np.uint8)}

    error = {"video": video_row(VideoEntry("b.mp4", "/in/b.mp4", None, None), "error", "unreadable")}
    out = HeadsStep(embed)([row("a.mp4"), error, row("c.mp4")])
    assert len(calls) == 1 and all(d == [np.float32] * 2 for d in calls[0].values())  # one call, as features/ read
    assert out[1] == error and set(out[0]) == {"video", "flow", EMBEDDINGS["spatial"], EMBEDDINGS["temporal"]}
    np.testing.assert_array_equal(out[2][EMBEDDINGS["temporal"]], [4, 5, 6, 7])
    kept = HeadsStep(embed, keep_features=True)([row("a.mp4")])[0]  # --keep-flow: features/ as extraction's
    assert {"spatial", "audio", "positions", "flow"} <= set(kept) and "temporal" not in kept

    def out_of_memory(sequences):
        raise RuntimeError("CUDA out of memory")

    failed = HeadsStep(out_of_memory)([row("a.mp4"), error])
    assert set(failed[0]) == {"video"} and failed[0]["video"]["error"].startswith("rnn: ") and failed[1] == error


def test_tables_rank_classes_and_null_the_streams_a_bundle_lacks(tmp_path):
    rng = np.random.default_rng(0)
    x = {"spatial": np.concatenate([rng.normal(c, 0.1, (5, 3)) for c in range(3)])}
    FusionModel.fit(x, [c for c in "xyz" for _ in range(5)], FusionConfig(), streams=("spatial",)).save(
        str(tmp_path / "models" / layout.SVM))
    files = {f"{layout.SVM}/{name}": hashlib.sha256((tmp_path / "models" / layout.SVM / name).read_bytes()).hexdigest()
             for name in (modelio.WEIGHTS_FILE, modelio.META_FILE)}  # what loading checks the files against
    classifier = Classifier(Bundle(str(tmp_path / "models"), {"classes": list("xyz"), "streams": ["spatial"],
                                                              "files": files}))
    vectors = {"spatial": np.array([[2.0] * 3, [0.0] * 3], np.float32)}
    scores = classifier(vectors)
    rows = predictions_table(["p", "q"], ["z", None], ["test", None], scores, classifier).to_pylist()
    assert [r["predicted"] for r in rows] == ["z", "x"] and rows[0]["top_labels"][0] == "z"
    assert all(r["top_scores"] == sorted(r["top_scores"], reverse=True) and len(r["top_labels"]) == 3 for r in rows)
    embeddings = embeddings_table(["p", "q"], ["z", None], ["test", None], vectors)
    assert embeddings["temporal"].null_count == 2 and embeddings["spatial"].null_count == 0


@pytest.mark.slow
@end_to_end
def test_pipeline_writes_a_verified_bundle(trained):
    bundle = open_bundle(str(trained))
    assert bundle.settings["flow"]["size"] == [64, 60] and bundle.settings["spatial"]["image_size"] == 32
    assert bundle.streams == ("spatial", "temporal", "audio") and len(bundle.classes) == 4
    assert "rnn_spatial/model.safetensors" in bundle.manifest["files"]


@pytest.mark.slow
@end_to_end
def test_predict_writes_every_table(predicted, new_videos, trained):
    videos = table(predicted, "videos")
    assert videos.num_rows == 7
    status = dict(zip(videos["video_id"].to_pylist(), videos["status"].to_pylist(), strict=True))
    assert status.pop("broken.mp4") == "error" and set(status.values()) == {"ok"}
    predictions, anomaly = table(predicted, "predictions"), table(predicted, "anomaly")
    assert predictions.schema.equals(schema.TOP_K_PREDICTIONS_SCHEMA)
    assert predictions["video_id"].to_pylist() == sorted(status) == anomaly["video_id"].to_pylist()
    assert "silent.mp4" in predictions["video_id"].to_pylist()  # no audio track, still classified
    labels = {row["uri"]: row["label"] for row in csv.DictReader(open(new_videos / "labels.csv"))}
    assert predictions["label"].to_pylist() == [labels[v] for v in predictions["video_id"].to_pylist()]
    classes = open_bundle(str(trained)).classes
    for row in predictions.to_pylist():
        assert len(row["scores"]) == 4 and row["top_labels"][0] == row["predicted"] in classes
        assert sorted(row["top_labels"]) == classes and row["top_scores"] == sorted(row["top_scores"], reverse=True)
        assert row["top_scores"][0] == pytest.approx(max(row["scores"]))
    threshold = modelio.read_meta(str(trained / "models" / "autoencoder"))["threshold"]
    assert anomaly["is_anomaly"].to_pylist() == [s > threshold for s in anomaly["score"].to_pylist()]
    embeddings = table(predicted, "embeddings")
    assert embeddings["video_id"].to_pylist() == predictions["video_id"].to_pylist()
    assert all(embeddings[s].null_count == 0 for s in schema.STREAMS)
    # the motion CNN and the heads ran in the extraction: neither flow/ nor features/ written
    assert not (predicted / "flow").exists() and not (predicted / "features").exists()


@pytest.mark.slow
@end_to_end
def test_rerun_does_nothing(predicted, new_videos, trained, capsys):
    files = sorted(p for name in TABLES for p in (predicted / name).glob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in files]
    assert predict_job("--models", str(trained), "--input", str(new_videos), "--output", str(predicted)) == 0
    assert sorted(p for name in TABLES for p in (predicted / name).glob("*.parquet")) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert "predict: 0 videos" in capsys.readouterr().out


@pytest.mark.slow
@end_to_end
def test_one_file_mode_gives_the_batch_result(predicted, new_videos, trained, capsys):
    bundle = open_bundle(str(trained))
    predictions = {r["video_id"]: r for r in table(predicted, "predictions").to_pylist()}
    anomaly = {r["video_id"]: r for r in table(predicted, "anomaly").to_pylist()}
    for video_id in ("silent.mp4", sorted(predictions)[0]):
        result = predict_video(str(new_videos / video_id), bundle, bundle.config(load_config()))
        batch = predictions[video_id]
        assert result["classes"][0][0] == batch["predicted"]
        np.testing.assert_allclose(result["scores"], batch["scores"], rtol=1e-4, atol=1e-4)
        assert result["anomaly_score"] == pytest.approx(anomaly[video_id]["score"], rel=1e-4, abs=1e-5)
        assert result["is_anomaly"] == anomaly[video_id]["is_anomaly"]
    assert one_file_main([str(new_videos / "silent.mp4"), "--models", str(trained)]) == 0
    out = capsys.readouterr().out
    assert f"1. {predictions['silent.mp4']['predicted']}" in out and "anomaly score" in out and "4. " in out


@pytest.mark.slow
@end_to_end
def test_contradicting_set_and_altered_bundle_are_refused_before_any_video(trained, new_videos, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        predict_job("--models", str(trained), "--input", str(new_videos), "--output", str(out),
                    "--set", "flow.size=[112, 84]")
    assert exit_.value.code == 2
    assert "flow.size=[112, 84] contradicts the model bundle" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(trained / "models", copy / "models")
    weights = copy / "models" / "svm" / modelio.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(SystemExit):
        predict_job("--models", str(copy), "--input", str(new_videos), "--output", str(out))
    assert "svm/model.safetensors was altered" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@end_to_end
def test_a_model_rewritten_after_the_bundle_was_opened_is_refused_in_the_actors(trained, new_videos, tmp_path):
    from multistream.ray.predict import run_predict

    copy = tmp_path / "copy"
    shutil.copytree(trained / "models", copy / "models")
    bundle = open_bundle(str(copy))
    svm = str(copy / "models" / layout.SVM)
    tensors, meta = modelio.load_model(svm)
    modelio.save_model(svm, tensors | {"coef": tensors["coef"] * 2}, meta)  # a fuse writing the same run meanwhile
    out = tmp_path / "out"
    cfg = bundle.config(load_config()).replace(**{"paths.input": str(new_videos), "paths.output": str(out),
                                                  "paths.demo": False, "validation.fraction": 0.0})
    with pytest.raises(Exception, match="svm/model.safetensors changed after the bundle was sealed"):
        run_predict(cfg, bundle)
    assert not (out / "predictions").exists() and not (out / "anomaly").exists()
    # the motion CNN, loaded by each actor that computes flow: refused before any video is committed
    shutil.rmtree(copy)
    shutil.copytree(trained / "models", copy / "models")
    bundle = open_bundle(str(copy))
    motion = str(copy / "models" / layout.MOTION_CNN)
    tensors, meta = modelio.load_model(motion)
    first = sorted(tensors)[0]
    modelio.save_model(motion, tensors | {first: tensors[first] + 1}, meta)
    with pytest.raises(Exception, match="motion_cnn/model.safetensors changed after the bundle was sealed"):
        run_predict(cfg.replace(**{"paths.output": str(tmp_path / "out2")}), bundle)
    assert storage.list_parts(str(tmp_path / "out2" / "videos")) == []


def run_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def data_bytes(where) -> int:
    """Compressed bytes of the column chunks of every Parquet file under a folder (or of one file): its size less
    the footer."""
    files = [where] if isinstance(where, pq.ParquetFile) else [pq.ParquetFile(p) for p in where.rglob("*.parquet")]
    return sum(f.metadata.row_group(g).column(c).total_compressed_size for f in files
               for g in range(f.metadata.num_row_groups) for c in range(f.metadata.num_columns))


@pytest.mark.slow
@end_to_end
def test_embed_only_writes_under_5_percent_of_the_bytes_and_the_embeddings_of_flow_read_back(
        trained, new_videos, predicted, tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    one_part = ("--set", "commit.every_s=600")  # one commit of the 7 videos in both runs: as many files
    assert predict_job("--models", str(trained), "--input", str(new_videos), "--output", str(out), "--embed-only",
                       "--set", "ray.embed.batch_size=2", *one_part) == 0
    assert table(out, "embeddings").num_rows == 6
    written = sorted(p.relative_to(out).parts[0] for p in out.rglob("*.parquet"))
    assert sorted(set(written)) == ["embeddings", "videos"], written  # no features/, flow/, predictions/, anomaly/
    assert predict_job("--models", str(trained), "--input", str(new_videos), "--output", str(kept), "--embed-only",
                       "--keep-flow", *one_part, "--set", "ray.fused=null") == 0  # the motion CNN in decode actors
    # --keep-flow: flow/ and features/ as jobs/extract.py writes them (one row per ok video, flow at flow.size)
    ok = sorted(v["video_id"] for v in table(kept, "videos").to_pylist() if v["status"] == "ok")
    flows = {row["video_id"]: read_flow(row) for row in table(kept, "flow").to_pylist()}
    assert sorted(flows) == ok and all(f.shape[1:] == (60, 64, 2) and len(f) > 10 for f in flows.values())
    features = table(kept, "features")
    assert features["video_id"].to_pylist() == ok and "temporal" not in features.column_names
    # the path before: the flow written, read back, then the motion CNN at the sampled positions and the heads
    bundle = open_bundle(str(trained))
    motion = TemporalEmbedder(bundle, "cpu")
    temporal = [motion(flows[v], np.asarray(p)) for v, p in zip(ok, features["frame_index"].to_pylist(), strict=True)]
    sequences = {s: schema.column_to_sequences(features[s]) for s in ("spatial", "audio")}
    before = VideoEmbedder(bundle, "cpu")(sequences | {"temporal": [t.astype(np.float32) for t in temporal]})
    for root in (out, kept, predicted):
        embeddings = table(root, "embeddings")
        assert embeddings["video_id"].to_pylist() == ok
        for stream in schema.STREAMS:
            got = np.array(embeddings[stream].to_pylist(), np.float32)
            np.testing.assert_allclose(got, before[stream], rtol=1e-3, atol=1e-3)
    # bytes written per video: the --keep-flow run root is what a run wrote before flow stayed in memory (flow/,
    # features/, embeddings/, videos/). The 5 % holds for the data (the Parquet column chunks); whole files are
    # printed and kept under 10 %: a file's footer is a fixed cost (~1 kB a video here, 6 videos a part, at a
    # flow.size of 64 x 60; ~0.05 kB at ~100 videos a commit, against ~1.4 MB of a UCF101 clip's flow)
    files, data, files_before, data_before = run_bytes(out), data_bytes(out), run_bytes(kept), data_bytes(kept)
    print(f"embed-only run root, bytes a video: {files / len(ok):.0f} in files, {data / len(ok):.0f} of data; with "
          f"flow {files_before / len(ok):.0f}, {data_before / len(ok):.0f} (flow/ {run_bytes(kept / 'flow') / len(ok):.0f}"
          f"): {files / files_before:.4f}, {data / data_before:.4f}")
    assert data <= 0.05 * data_before and files <= 0.10 * files_before
    # the same run root classified later: its embeddings are scored, not embedded again
    stamps = {p: p.stat().st_mtime_ns for p in (out / "embeddings").glob("*.parquet")}
    assert predict_job("--models", str(trained), "--input", str(new_videos), "--output", str(out)) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "embeddings").glob("*.parquet")} == stamps
    want = {r["video_id"]: r for r in table(predicted, "predictions").to_pylist()}
    for row in table(out, "predictions").to_pylist():
        np.testing.assert_allclose(row["scores"], want[row["video_id"]]["scores"], rtol=1e-3, atol=1e-3)
    assert table(out, "anomaly")["video_id"].to_pylist() == ok


@pytest.mark.slow
@end_to_end
def test_predict_from_and_to_s3(trained, new_videos, predicted, s3_bucket):
    fs = fsspec.filesystem("s3")
    bucket = s3_bucket.removeprefix("s3://")
    fs.put(str(trained / layout.MODELS), f"{bucket}/run/", recursive=True)
    clips = [r["uri"] for r in csv.DictReader(open(new_videos / "labels.csv"))][:2]  # the others are skipped
    for name in ("labels.csv", *clips):
        fs.put(str(new_videos / name), f"{bucket}/input/{name}")
    out = f"{s3_bucket}/out"
    assert predict_job("--models", f"{s3_bucket}/run", "--input", f"{s3_bucket}/input", "--output", out) == 0
    remote = {r["video_id"]: r for r in table(out, "predictions").to_pylist()}
    local = {r["video_id"]: r for r in table(predicted, "predictions").to_pylist()}
    assert len(remote) == 2 and set(remote) <= set(local)
    for video_id, row in remote.items():
        assert row["predicted"] == local[video_id]["predicted"]
        np.testing.assert_allclose(row["scores"], local[video_id]["scores"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@end_to_end
def test_predict_in_windows_scores_each_window_and_each_video(trained, new_videos, tmp_path, capsys):
    """A long video of the new clips with the anomaly inside, and one short clip: windows per shot, each video's own
    row aggregated from its windows, the timeline figure; a re-run does nothing; one-file mode agrees."""
    from multistream.demo.longvideo import make_long_video
    from multistream.fuse.windows import videos_only
    from multistream.predict.batch import evaluate

    rows = list(csv.DictReader(open(new_videos / "labels.csv")))
    clips = [(str(new_videos / r["uri"]), r["label"]) for r in rows if r["label"] != "anomaly"
             and r["uri"] not in ("silent.mp4", "broken.mp4")]
    anomaly = next(str(new_videos / r["uri"]) for r in rows if r["label"] == "anomaly")
    source = tmp_path / "long"
    source.mkdir()
    segments = make_long_video(source / "camera.mp4", clips, (anomaly, "anomaly"), insert_at_s=3.0)
    shutil.copy(clips[0][0], source / "short.mp4")
    out, windows = tmp_path / "out", "video.windows={length_s: 2, stride_s: 1}"
    assert predict_job("--models", str(trained), "--input", str(source), "--output", str(out), "--set", windows) == 0
    printed = capsys.readouterr().out
    assert "anomaly score over time of the 2 highest-scoring videos" in printed and "camera.mp4: peak" in printed
    assert (out / "reports" / "figures" / "anomaly_timelines.png").stat().st_size > 1000
    assert table(out, "videos").num_rows == 2
    embeddings = table(out, "embeddings")
    dim = embeddings.schema.field("spatial").type.list_size
    assert embeddings.schema.equals(schema.windowed(schema.embeddings_schema(dim)))
    anomaly_rows = storage.read_table(str(out / "anomaly")).to_pylist()
    threshold = modelio.read_meta(str(trained / "models" / "autoencoder"))["threshold"]
    for video in ("camera.mp4", "short.mp4"):
        own = [r for r in anomaly_rows if r["video_id"] == video and r["window"] is None]
        mine = [r for r in anomaly_rows if r["video_id"] == video and r["window"] is not None]
        assert len(own) == 1 and [r["window"] for r in mine] == list(range(len(mine)))
        assert own[0]["score"] == pytest.approx(max(r["score"] for r in mine))
        assert mine[own[0]["peak_window"]]["score"] == own[0]["score"]
        assert [r["is_anomaly"] for r in mine] == [r["score"] > threshold for r in mine]
        assert all(r["end_s"] - r["start_s"] <= 2.0 + 1e-6 for r in mine)
    camera = [r for r in anomaly_rows if r["video_id"] == "camera.mp4" and r["window"] is not None]
    assert camera[-1]["end_s"] == pytest.approx(segments[-1].end_s, abs=0.1)
    short = [r for r in anomaly_rows if r["video_id"] == "short.mp4"]
    assert len(short) == 2 + math.ceil(short[0]["end_s"] - 2 - 1e-6)  # own row + windows of 2 s every 1 s to its end
    predictions = videos_only(table(out, "predictions"))
    assert predictions["video_id"].to_pylist() == ["camera.mp4", "short.mp4"]
    assert evaluate(str(out), open_bundle(str(trained)).classes)["n_predicted"] == 2

    files = sorted(p for name in TABLES for p in (out / name).glob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in files]
    assert predict_job("--models", str(trained), "--input", str(source), "--output", str(out), "--set", windows) == 0
    assert [p.stat().st_mtime_ns for p in files] == stamps and "predict: 0 videos" in capsys.readouterr().out

    bundle = open_bundle(str(trained))
    result = predict_video(str(source / "camera.mp4"), bundle, bundle.config(load_config(None, [windows]), [windows]))
    np.testing.assert_allclose([w["score"] for w in result["windows"]], [r["score"] for r in camera], rtol=1e-4,
                               atol=1e-5)
    assert one_file_main([str(source / "camera.mp4"), "--models", str(trained), "--set", windows]) == 0
    assert "peak: window" in capsys.readouterr().out
