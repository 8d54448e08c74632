"""The synthetic demo dataset: layout, labels, containers/codecs, determinism and that its cues are learnable."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from multistream.demo.dataset import (
    ANOMALY,
    CUES,
    DEMO_CLASSES,
    cue_accuracy,
    cue_ceiling,
    describe,
    generate_demo,
    plan_demo,
)

CONTAINERS = {"mp4": "mp4", "avi": "avi", "mkv": "matroska"}  # extension -> part of av's format name


def decode(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(T, H, W, 3) uint8 RGB frames, (S,) float32 mono 16 kHz audio or None, (T,) float frame times in s."""
    with av.open(str(path)) as c:
        frames, times = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
    audio = None
    with av.open(str(path)) as c:
        if c.streams.audio:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
            chunks = [g.to_ndarray()[0] for f in c.decode(audio=0) for g in resampler.resample(f)]
            chunks += [g.to_ndarray()[0] for g in resampler.resample(None)]
            audio = np.concatenate(chunks)
    return np.stack(frames), audio, np.array(times)


def read_labels(root: Path) -> list[list[str]]:
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert generate_demo(root, seed=0) == root
    return root


def test_layout_and_labels(demo_root):
    rows = read_labels(demo_root)
    assert rows[0] == ["uri", "label", "split"]
    rows = rows[1:]
    assert len(rows) == 4 * 18 + 12 and len(DEMO_CLASSES) >= 4
    for uri, label, split in rows:
        folder, stem = ("anomaly", "anomaly") if label == ANOMALY else (label, label.lower())
        assert re.fullmatch(rf"{folder}/{stem}_\d\d\.(mp4|avi|mkv)", uri), uri
        assert (split == ANOMALY) == (label == ANOMALY)
        assert (demo_root / uri).is_file()
    on_disk = {p.relative_to(demo_root).as_posix() for p in demo_root.rglob("*") if p.is_file()}
    assert on_disk == {uri for uri, _, _ in rows} | {"labels.csv"}
    splits = Counter((label, split) for _, label, split in rows)
    for name in DEMO_CLASSES:
        assert (splits[name, "train"], splits[name, "val"], splits[name, "test"]) == (6, 6, 6)
    assert splits[ANOMALY, ANOMALY] == 12
    assert {uri.rsplit(".", 1)[1] for uri, _, _ in rows} == {"mp4", "avi", "mkv"}


def test_every_clip_decodes_with_its_container_codecs_and_streams(demo_root):
    specs = plan_demo(seed=0)
    audio_codecs, video_codecs = set(), set()
    for spec in specs:
        with av.open(str(demo_root / spec.uri)) as c:
            assert CONTAINERS[spec.ext] in c.format.name
            (video,) = c.streams.video
            assert video.codec_context.codec.canonical_name == av.Codec(spec.video_codec, "w").canonical_name
            video_codecs.add(video.codec_context.codec.canonical_name)
            if spec.audio_codec is None:
                assert not c.streams.audio, spec.uri
            else:
                (audio,) = c.streams.audio
                assert audio.codec_context.codec.canonical_name == av.Codec(spec.audio_codec, "w").canonical_name
                assert audio.sample_rate == spec.audio_rate
                audio_codecs.add(audio.codec_context.codec.canonical_name)
        frames, sound, times = decode(demo_root / spec.uri)
        assert frames.shape == (spec.n_frames, spec.height, spec.width, 3)
        assert (sound is None) == (spec.audio_codec is None)
        fps = 1 / np.median(np.diff(times))
        assert 11.9 <= fps <= 18.1 and 1.9 <= len(times) / fps <= 4.1
        if sound is not None:
            assert abs(len(sound) / 16000 - len(times) / fps) < 0.15 and np.abs(sound).max() > 0.05
    assert video_codecs == {"h264", "mpeg4"}
    assert {"aac", "opus", "flac"} <= audio_codecs and audio_codecs & {"mp3", "pcm_s16le"}
    silent = [s for s in specs if s.audio_codec is None]
    assert 0.1 <= len(silent) / len(specs) <= 0.3
    assert {s.split for s in silent} == {"train", "val", "test", ANOMALY}
    assert len({s.ext for s in silent}) >= 2


def test_same_seed_same_content_other_seed_differs(demo_root, tmp_path):
    small = generate_demo(tmp_path / "a", seed=0, clips_per_class=1, n_anomalies=1)
    other = generate_demo(tmp_path / "b", seed=1, clips_per_class=1, n_anomalies=1)
    uris = [s.uri for s in plan_demo(seed=0, clips_per_class=1, n_anomalies=1)]
    assert [s.uri for s in plan_demo(seed=1, clips_per_class=1, n_anomalies=1)] == uris
    for uri in uris:
        frames, sound, _ = decode(demo_root / uri)
        frames2, sound2, _ = decode(small / uri)
        frames3, sound3, _ = decode(other / uri)
        np.testing.assert_array_equal(frames, frames2)
        if sound is not None:
            np.testing.assert_array_equal(sound, sound2)
        if frames3.shape == frames.shape:
            assert np.abs(frames3.astype(int) - frames).mean() > 5, uri
        else:
            assert frames3.shape != frames.shape


def shape_roundness(frames: np.ndarray) -> float | None:
    """Median over the moving shapes seen in some of the (T, H, W, 3) frames of 4 pi area / perimeter^2 of
    their convex hull: ~0.98 for a circle, ~0.85 for a square, ~0.69 for a triangle; None if none is seen
    whole. A shape is where a frame differs from the clip's temporal median (the background)."""
    background = np.median(frames, axis=0)
    roundness = []
    for frame in frames[:: max(1, len(frames) // 8)]:
        mask = (np.abs(frame.astype(np.float32) - background).sum(-1) > 40).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        for contour in cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]:
            hull = cv2.convexHull(contour)
            area = cv2.contourArea(hull)
            if area >= 80 and cv2.contourArea(contour) >= 0.9 * area:  # neither a sliver nor two shapes in one
                roundness.append(4 * np.pi * area / cv2.arcLength(hull, True) ** 2)
    return float(np.median(roundness)) if roundness else None


def clip_cues(path: Path) -> tuple[float | None, float, float | None, np.ndarray, float]:
    """Per clip: its shapes' roundness (`shape_roundness`), share of horizontal optical flow at 112x84,
    dominant audio frequency (Hz, None without audio), the (T-1,) mean flow magnitude per frame pair and the
    mean absolute difference between consecutive frames."""
    frames, sound, _ = decode(path)
    grey = [cv2.cvtColor(cv2.resize(f, (112, 84), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = np.stack([dis.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:], strict=True)])
    fx, fy = np.abs(flow[..., 0]).mean(), np.abs(flow[..., 1]).mean()
    dominant = None
    if sound is not None:
        spectrum = np.abs(np.fft.rfft(sound * np.hanning(len(sound))))
        dominant = float(np.fft.rfftfreq(len(sound), 1 / 16000)[spectrum.argmax()])
    change = float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean())
    return (shape_roundness(frames), float(fx / (fx + fy)), dominant, np.linalg.norm(flow, axis=-1).mean((1, 2)),
            change)


ROUNDNESS = {"circle": 0.98, "square": 0.85, "triangle": 0.69}
HORIZONTAL_SHARE = {"horizontal": (0.65, 1.0), "vertical": (0.0, 0.35), "diagonal": (0.35, 0.65)}
DOMINANT_HZ = {"low": (200, 500), "high": (1200, 2500), "hiss": (2600, 4800)}


def test_each_cue_value_shows_in_its_clips(demo_root):
    anomaly_change, class_change, shapes = [], [], []
    for spec in plan_demo(seed=0)[::2]:  # every other clip of each class keeps the test quick
        roundness, horizontal_share, dominant, magnitude, change = clip_cues(demo_root / spec.uri)
        if spec.label == ANOMALY:
            anomaly_change.append(change)
            continue
        class_change.append(change)
        appearance, motion, audio = CUES[spec.label]
        if roundness is not None:  # the shape it looks most like; segmenting by the median background can fail
            shapes.append(min(ROUNDNESS, key=lambda kind: abs(ROUNDNESS[kind] - roundness)) == appearance)
        low, high = HORIZONTAL_SHARE[motion]
        assert low < horizontal_share < high, spec.uri
        if dominant is not None:
            low, high = DOMINANT_HZ[audio]
            assert low < dominant < high, spec.uri
        # motion comes in bursts: the fastest frame pairs move several times more than the typical one
        assert magnitude.max() > 3 * np.median(magnitude), spec.uri
    assert len(shapes) >= 0.8 * len(class_change) and np.mean(shapes) >= 0.85
    assert min(anomaly_change) > max(class_change)


def test_each_cue_value_but_one_names_a_class_and_each_stream_confuses_another_pair():
    confused = []
    for cue in range(3):
        values = Counter(CUES[name][cue] for name in DEMO_CLASSES)
        assert sorted(values.values()) == [1, 1, 2]
        confused.append(frozenset(name for name in DEMO_CLASSES if values[CUES[name][cue]] == 2))
    assert len(set(confused)) == 3


def test_cli_writes_the_set_and_prints_the_cue_table(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "multistream.demo.dataset", "--output", str(out), "--seed", "3",
           "--clips-per-class", "1", "--anomalies", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    rows = read_labels(out)[1:]
    assert [label for _, label, _ in rows] == [*DEMO_CLASSES, ANOMALY]
    assert all((out / uri).is_file() for uri, _, _ in rows)
    assert describe() in result.stdout
    for name, cues in CUES.items():
        assert all(cue in describe().split(name)[1].split("\n")[0] for cue in cues)


def test_cue_ceilings_follow_the_cue_table():
    labels = [*DEMO_CLASSES, *DEMO_CLASSES]
    everything = {s: np.ones(8, bool) for s in ("spatial", "temporal", "audio")}
    for stream in everything:
        assert cue_ceiling((stream,), labels, everything) == 0.75  # each cue tells 3 of the 4 classes apart
    for pair in (("spatial", "temporal"), ("spatial", "audio"), ("temporal", "audio")):
        assert cue_ceiling(pair, labels, everything) == 1.0  # any two name the class
    silent = dict(everything, audio=np.r_[np.zeros(2, bool), np.ones(6, bool)])  # CircleSlide, CircleBob silent
    assert cue_ceiling(("audio",), labels, silent) == (2 * 0.25 + 6 * 0.75) / 8
    assert cue_ceiling(("spatial", "audio"), labels, silent) == (2 * 0.5 + 6 * 1.0) / 8  # both circles
    assert cue_ceiling(("spatial",), ["Archery", "CircleBob"], everything) is None  # not the demo's classes


def test_cue_accuracy_forgives_only_what_the_cues_cannot_tell():
    everything = {s: np.ones(2, bool) for s in ("spatial", "temporal", "audio")}
    circles, swapped = ["CircleSlide", "CircleBob"], ["CircleBob", "CircleSlide"]  # right shape, wrong motion
    assert cue_accuracy(("spatial",), circles, swapped, everything) == 1.0
    assert cue_accuracy(("temporal",), circles, swapped, everything) == 0.0
    assert cue_accuracy(("spatial", "temporal"), circles, swapped, everything) == 0.0
    assert cue_accuracy(("spatial", "temporal"), circles, circles, everything) == 1.0
    zigzags = ["SquareZigzag", "TriangleZigzag"]
    assert cue_accuracy(("temporal",), zigzags, zigzags[::-1], everything) == 1.0
    low = ["CircleSlide", "SquareZigzag"]
    assert cue_accuracy(("audio",), low, low[::-1], everything) == 1.0
    labels = list(DEMO_CLASSES)
    silent = {s: np.ones(4, bool) for s in ("spatial", "temporal")} | {"audio": np.array([False, True, True, True])}
    # low (silent: nothing to miss), high → high, low → low, hiss → low
    sounds = ["TriangleZigzag", "CircleBob", "CircleSlide", "SquareZigzag"]
    assert cue_accuracy(("audio",), labels, sounds, silent) == 0.75
    assert cue_accuracy(("spatial",), ["Archery"], ["Archery"], everything) is None
