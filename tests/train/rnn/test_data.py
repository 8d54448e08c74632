"""Splits, sequences and the embeddings table of the recurrent heads, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from multistream.store import embeddings, schema, storage
from multistream.store.layout import RunRoot
from multistream.train.rnn.data import MissingStreamError, ok_videos, read_sequences, shard, stream_data
from tests.support.rnn import AUDIO_DIM, CLASSES, DIM, make_run_root, write_videos


def test_splits_follow_videos_table(tmp_path):
    splits = make_run_root(str(tmp_path))
    run = RunRoot(str(tmp_path))
    data = stream_data(run, "spatial", ok_videos(run))
    assert data.classes == list(CLASSES) and data.input_dim == DIM and data.column == "spatial"
    for split in ("train", "val", "test"):  # exactly the rows of videos/ that carry the split
        assert data.ids(split) == sorted(v for v, s in splits.items() if s == split)
    assert not set(data.val_ids) & (set(data.train_ids) | set(data.test_ids))
    assert data.all_ids == sorted(splits)  # anomaly videos are embedded, the error video is not
    assert {data.targets[v] for v in data.val_ids} == {0, 1, 2} and "odd_0" not in data.targets
    assert stream_data(run, "audio", ok_videos(run)).input_dim == AUDIO_DIM


def test_stream_errors_name_what_is_missing(tmp_path):
    run = RunRoot(str(tmp_path))
    with pytest.raises(MissingStreamError, match="jobs/extract.py"):
        ok_videos(run)
    make_run_root(str(tmp_path))
    with pytest.raises(MissingStreamError, match="jobs/train_motion.py"):
        stream_data(run, "temporal", ok_videos(run))
    no_val = ok_videos(run).to_pylist()
    for row in no_val:
        row["split"] = "train" if row["split"] == "val" else row["split"]
    assert stream_data(run, "spatial", pa.Table.from_pylist(no_val)).val_ids == []  # validation.fraction 0
    no_test = [dict(row, split="train" if row["split"] == "test" else row["split"]) for row in no_val]
    with pytest.raises(ValueError, match="0 test"):
        stream_data(run, "spatial", pa.Table.from_pylist(no_test))


def test_read_sequences_keeps_the_order_asked(tmp_path):
    make_run_root(str(tmp_path))
    run = RunRoot(str(tmp_path))
    data = stream_data(run, "audio", ok_videos(run))
    ids = ["wave_3", "jump_9", "odd_1", "jump_0"]
    part = read_sequences(data, ids)
    assert part.ids == ids and list(part.targets) == [2, 0, -1, 0]
    assert part.seqs[1].shape == (0, AUDIO_DIM) and part.seqs[0].shape == (2, AUDIO_DIM)  # jump_9: no audio
    assert all(s.dtype == np.float16 for s in part.seqs)
    with pytest.raises(ValueError, match="nope"):
        read_sequences(data, ["nope"])


def test_shards_cover_every_video_and_pad_to_one_size():
    ids = [f"v{i}" for i in range(7)]
    shards = [shard(ids, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == ids
    padded = [shard(ids, r, 3, pad=True) for r in range(3)]
    assert [len(s) for s in padded] == [3, 3, 3] and padded[0] == shards[0]
    assert padded[2] == ["v2", "v5", "v0"]


def test_embeddings_table_has_a_row_per_ok_video(tmp_path):
    splits = make_run_root(str(tmp_path))
    run = RunRoot(str(tmp_path))
    assert embeddings.write_embeddings(run) == 0
    ids = sorted(splits)[:-3]  # three videos not embedded by this stream
    matrix = np.arange(len(ids) * 4, dtype=np.float32).reshape(-1, 4)
    embeddings.write_stream(run, "audio", ids, matrix)
    assert embeddings.embedded_ids(run, "audio") == set(ids) and embeddings.embedded_ids(run, "spatial") == set()
    assert embeddings.write_embeddings(run) == len(splits)
    embeddings.write_embeddings(run)
    assert len(storage.list_parts(run.embeddings)) == 1  # the previous part is replaced
    table = storage.read_table(run.embeddings).sort_by("video_id")
    assert table.schema.equals(schema.embeddings_schema(4)) and table["video_id"].to_pylist() == sorted(splits)
    assert table["split"].to_pylist() == [splits[v] for v in sorted(splits)]
    assert table["audio"].null_count == 3 and table["spatial"].null_count == len(splits)
    rows = np.array(table.filter(table["audio"].is_valid())["audio"].to_pylist(), np.float32)
    np.testing.assert_array_equal(rows, matrix)
    embeddings.write_stream(run, "spatial", ids, np.zeros((len(ids), 8), np.float32))
    with pytest.raises(ValueError, match="different embedding sizes"):
        embeddings.write_embeddings(run)


def test_late_videos_join(tmp_path):
    make_run_root(str(tmp_path))
    late = {"video_id": "late", "label": None, "split": None, "status": "ok", "has_audio": True}
    write_videos(str(tmp_path), [late], "c", with_motion=False, seed=2)
    run = RunRoot(str(tmp_path))
    data = stream_data(run, "spatial", ok_videos(run))
    assert "late" in data.all_ids and "late" not in data.targets
