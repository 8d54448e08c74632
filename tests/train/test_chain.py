"""The chained training run's preconditions: a fresh run root, the streams it reads, its checkpoint spec."""

import numpy as np

from multistream.config import load_config
from multistream.store import modelio, schema
from multistream.store.layout import MOTION_CNN, RunRoot, rnn_name
from multistream.train.chain import chain_spec, fresh_inputs
from multistream.train.motion.data import MotionPlan
from tests.support.rnn import AUDIO_DIM, CLASSES, DIM, make_run_root

STREAMS = ["spatial", "temporal", "audio"]


def test_a_fresh_run_root_gives_the_extracted_streams(tmp_path):
    make_run_root(str(tmp_path))
    inputs = fresh_inputs(RunRoot(str(tmp_path)), STREAMS)
    assert sorted(inputs) == ["audio", "spatial"]  # the temporal stream is the chain's own output
    assert (inputs["spatial"].input_dim, inputs["audio"].input_dim) == (DIM, AUDIO_DIM)
    assert list(inputs["spatial"].classes) == list(CLASSES)


def test_a_saved_model_or_missing_stream_leaves_the_run_root_to_the_separate_steps(tmp_path):
    assert fresh_inputs(RunRoot(str(tmp_path / "empty")), STREAMS) is None
    for name in (MOTION_CNN, rnn_name("audio")):
        root = tmp_path / name
        make_run_root(str(root))
        run = RunRoot(str(root))
        modelio.save_model(run.model(name), {"w": np.zeros(1, np.float32)}, {})
        assert fresh_inputs(run, STREAMS) is None


def test_the_spec_names_every_head_with_the_motion_embedding_as_temporal_input(tmp_path):
    make_run_root(str(tmp_path))
    cfg = load_config()
    plan = MotionPlan(("a", "b"), ("a1", "b1"), ("a2",), ("b2",), {"a1": 0, "b1": 1, "a2": 0, "b2": 1})
    extracted = fresh_inputs(RunRoot(str(tmp_path)), STREAMS)
    spec = chain_spec(cfg, plan, extracted, STREAMS)
    assert spec["motion"]["classes"] == ["a", "b"]
    streams = spec["rnn"]["streams"]
    assert streams["temporal"] == {"input_dim": schema.MOTION_DIM, "classes": ["a", "b"]}
    assert streams["spatial"]["input_dim"] == DIM and sorted(streams) == sorted(STREAMS)
    assert "temporal" not in chain_spec(cfg, plan, extracted, ["spatial", "audio"])["rnn"]["streams"]
