"""`jobs/benchmark.py --gpu-paper` (multistream.bench.paper_gpu): its archive, and the whole run on the CPU at a
tiny size (the figures themselves are for a GPU)."""

import csv
import json
import math

import av
import pytest

from multistream.bench import paper_gpu
from multistream.jobs import benchmark


@pytest.mark.fast
def test_the_archive_is_ucf101_shaped_and_labelled(tmp_path):
    root = paper_gpu.make_archive(tmp_path / "archive", clips=4, seconds=7.0, workers=1)
    rows = list(csv.DictReader(open(root / "labels.csv")))
    assert [row["label"] for row in rows] == ["CircleSlide", "CircleBob", "SquareZigzag", "TriangleZigzag"]
    with av.open(str(root / rows[0]["uri"])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert (video.width, video.height, video.average_rate, frames) == (320, 240, 25, 175)
        assert audio.sample_rate == paper_gpu.AUDIO_RATE


@pytest.mark.slow
def test_the_gpu_paper_benchmark_runs_end_to_end_on_the_cpu(ray_session, tmp_path):
    # 12 clips: three rounds over the four classes give train, val and test; shrunk models and DIS flow
    assert benchmark.main(["--gpu-paper", "--paper-device", "cpu", "--paper-clips", "12",
                           "--paper-seconds", "1", "--output", str(tmp_path / "out"), "--set", "flow.backend=dis",
                           "--set", "flow.size=[96, 72]", "--set", "spatial.model=resnet18", "--set",
                           "spatial.image_size=64", "--set", "motion_cnn.width=0.25", "--set", "motion_cnn.batch_size=4",
                           "--set", "rnn.hidden=16", "--set", "sampling.max_seq_len=8"]) == 0
    figures = json.loads((tmp_path / "out" / "reports" / "benchmark.json").read_text())["gpu_paper"]
    assert figures["clips"] == 12 and figures["extraction"]["ok"] == 12
    rates = [figures["extraction"]["videos_per_s"], figures["motion_cnn_training"]["stacks_per_s"],
             figures["motion_cnn_embedding"]["stacks_per_s"], *(head["sequences_per_s"]
                                                                 for head in figures["rnn_heads"].values())]
    shares = [figures[stage]["gpu_busy_share"] for stage in ("extraction", "motion_cnn_training",
                                                             "motion_cnn_embedding")]
    assert all(math.isfinite(x) and x > 0 for x in rates + shares), figures
    assert figures["motion_cnn_embedding"]["stacks"] > 0 and figures["motion_cnn_training"]["stacks"] > 0
