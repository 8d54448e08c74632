"""A trained tiny run applied to new videos: the batch job (local and S3), its refusals, resume, --embed-only,
and one-file mode giving the batch job's class and scores."""

import csv
import hashlib
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from multistream.config import FusionConfig, load_config
from multistream.demo.dataset import generate_demo
from multistream.fuse.svm import FusionModel
from multistream.jobs.pipeline import run_pipeline
from multistream.predict.batch import (
    anomaly_table,
    embeddings_table,
    pending,
    predictions_table,
)
from multistream.predict.bundle import Bundle, open_bundle
from multistream.predict.models import Classifier
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


def test_pending_skips_committed_videos_and_drops_an_interrupted_commit(tmp_path):
    run = RunRoot(str(tmp_path / "out"))
    done, todo = videos_part(run, ["a", "b"]), videos_part(run, ["c", "d"])
    videos_part(run, ["e"], status="error")
    vectors = {s: np.ones((2, 3), np.float32) for s in schema.STREAMS}
    for table in (run.embeddings, run.predictions, run.anomaly):
        rows = embeddings_table(["a", "b"], ["a", "a"], [None, None], vectors)
        storage.write_part(rows if table == run.embeddings else anomaly_table(["a", "b"], [None, None],
                                                                               np.zeros(2), np.zeros(2, bool)),
                           table, done)
    storage.write_part(embeddings_table(["c", "d"], ["a", "a"], [None, None], vectors), run.embeddings, todo)
    items = pending(run)
    assert [(i["part"], i["video_id"]) for i in items] == [(todo, ["c", "d"])]
    assert storage.list_parts(run.embeddings) == [done]  # the part without its anomaly/ twin is gone
    assert pending(run, embed_only=True) == [{"part": todo, "video_id": ["c", "d"], "label": ["a", "a"],
                                              "split": [None, None]}]


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


@pytest.mark.slow
@end_to_end
def test_embed_only_writes_no_classifier_output(trained, new_videos, tmp_path):
    out = tmp_path / "out"
    assert predict_job("--models", str(trained), "--input", str(new_videos), "--output", str(out), "--embed-only",
                       "--set", "ray.embed.batch_size=2") == 0
    assert table(out, "embeddings").num_rows == 6
    assert not (out / "predictions").exists() and not (out / "anomaly").exists()


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
