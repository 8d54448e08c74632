import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from multistream.store import schema


def test_sequence_round_trip(tmp_path):
    seqs = [np.arange(12, dtype=np.float32).reshape(3, 4), None, np.zeros((0, 4), np.float32),
            np.ones((1, 4), np.float32)]
    table = pa.table({"video_id": list("abcd"), "x": schema.sequence_array(seqs, 4)})
    assert table.schema.field("x").type == schema.vectors(4)
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    out = schema.column_to_sequences(back["x"])
    assert out[1] is None and out[2].shape == (0, 4)
    np.testing.assert_array_equal(out[0], seqs[0])
    sliced = schema.column_to_sequences(back["x"].combine_chunks().slice(3, 1))
    np.testing.assert_array_equal(sliced[0], seqs[3])


def test_table_schemas_have_the_contract_columns():
    assert schema.VIDEOS_SCHEMA.names[:6] == ["video_id", "uri", "label", "split", "status", "error"]
    for name in ("duration_s", "fps", "width", "height", "n_frames", "has_audio", "n_samples"):
        assert name in schema.VIDEOS_SCHEMA.names
    assert schema.features_schema(1280).names == ["video_id", "frame_index", "timestamp_s", "flow_magnitude",
                                                  "spatial", "audio"]
    assert schema.FLOW_SCHEMA.names[:3] == ["video_id", "shape", "data"]
    assert schema.motion_schema().field("temporal").type == schema.vectors(2048)
    assert schema.embeddings_schema().names == ["video_id", "label", "split", "spatial", "temporal", "audio"]
    assert schema.PREDICTIONS_SCHEMA.names == ["video_id", "label", "split", "predicted", "scores"]
    assert schema.ANOMALY_SCHEMA.names == ["video_id", "split", "score", "is_anomaly"]
