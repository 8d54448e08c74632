"""Long videos laid end to end from clips (multistream.demo.longvideo)."""

import av
import numpy as np
import pytest

from multistream.demo.longvideo import make_long_video
from tests.support.helpers import write_test_video


@pytest.mark.fast
def test_clips_of_other_sizes_and_rates_become_one_video_with_the_insert_at_its_time(tmp_path):
    clips = [(str(write_test_video(tmp_path / "a.mp4", frames=30, fps=15, audio_tone_hz=440)), "a"),
             (str(write_test_video(tmp_path / "b.avi", frames=50, size=(96, 72), fps=25, codec="mpeg4")), "b"),
             (str(write_test_video(tmp_path / "c.mkv", frames=24, fps=12, audio_tone_hz=880, seed=1)), "c")]
    odd = str(write_test_video(tmp_path / "odd.mp4", frames=20, fps=10, seed=2))
    segments = make_long_video(tmp_path / "long.mp4", clips, insert=(odd, "anomaly"), insert_at_s=3.0,
                               size=(80, 60), fps=10, rate=16000)
    assert [s.label for s in segments] == ["a", "b", "anomaly", "c"]  # at the first boundary at or past 3 s
    assert [t for s in segments for t in (s.start_s, s.end_s)] == pytest.approx([0, 2, 2, 4, 4, 6, 6, 8])
    with av.open(str(tmp_path / "long.mp4")) as container:
        video = container.streams.video[0]
        assert (video.width, video.height, video.average_rate) == (80, 60, 10)
        assert sum(1 for _ in container.decode(video=0)) == 80
    with av.open(str(tmp_path / "long.mp4")) as container:
        wave = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert abs(len(wave) / 16000 - 8.0) < 0.15  # the audio runs the whole length, silence where a clip has none
    loud = [np.abs(wave[int(s.start_s * 16000) + 800:int(s.end_s * 16000) - 800]).mean() for s in segments]
    assert loud[0] > 0.01 and loud[3] > 0.01 and loud[1] < 0.002 and loud[2] < 0.002


@pytest.mark.fast
def test_max_seconds_cuts_the_clip_it_falls_in_and_leaves_the_rest_out(tmp_path):
    clip = (str(write_test_video(tmp_path / "a.mp4", frames=30, fps=15, audio_tone_hz=440)), "a")  # 2 s
    segments = make_long_video(tmp_path / "long.mp4", [clip] * 5, size=(80, 60), fps=10, max_seconds=5.0)
    assert [t for s in segments for t in (s.start_s, s.end_s)] == pytest.approx([0, 2, 2, 4, 4, 5])
    with av.open(str(tmp_path / "long.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 50
    with av.open(str(tmp_path / "long.mp4")) as container:
        wave = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert abs(len(wave) / 16000 - 5.0) < 0.15
