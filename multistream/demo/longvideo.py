"""Long videos made of clips laid end to end, with one clip (e.g. an anomaly) placed at a chosen time: inputs for
windows over long videos, whose intervals are known exactly.

    segments = make_long_video("long.mp4", [(uri, label), ...], insert=(anomaly_uri, "anomaly"), insert_at_s=40)
    [(s.label, s.start_s, s.end_s) for s in segments]

Every clip is decoded (`multistream.extract.video`), brought to one frame size, frame rate and audio sample rate
(frames by the last one shown at each output time; a clip without audio adds silence), and written clip after
clip, so memory holds one clip at a time whatever the length. The inserted clip goes at the first clip
boundary at or after `insert_at_s`.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Segment:
    """One clip of a long video: where it came from and the interval it fills, in seconds of the long video."""

    uri: str
    label: str
    start_s: float
    end_s: float


def decode_clip(uri: str, size: tuple[int, int], fps: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """A clip at `size` (width, height) and `fps` → ((T, H, W, 3) uint8 frames, (round(T / fps * rate),) float32
    mono audio at `rate`, silence where the clip has none)."""
    from multistream.extract.video import open_video

    with open_video(uri, max_seconds=3600.0, audio_rate=rate) as reader:
        shown = [(frame.time_s, frame.images["out"]) for frame in reader.frames({"out": size})]
        wave = reader.audio()
    duration = shown[-1][0] + 1.0 / max(reader.kept_fps, 1e-6)
    times = np.array([t for t, _ in shown])
    count = max(1, round(duration * fps))
    picks = np.searchsorted(times, np.arange(count) / fps, side="right") - 1
    frames = np.stack([shown[max(0, i)][1] for i in picks])
    samples = round(count / fps * rate)
    wave = np.pad(wave[:samples], (0, max(0, samples - len(wave))))
    return frames, wave.astype(np.float32)


def make_long_video(path: str | Path, clips: Sequence[tuple[str, str]], insert: tuple[str, str] | None = None,
                    insert_at_s: float = 0.0, size: tuple[int, int] = (160, 120), fps: int = 15,
                    rate: int = 16_000, max_seconds: float | None = None) -> list[Segment]:
    """Write `clips` ((uri, label) each, in order) as one H.264 + AAC mp4 at `path`, with `insert` placed at the
    first clip boundary at or after `insert_at_s`; returns the segments in order. `max_seconds`: the video is
    cut there (round(max_seconds x fps) frames), the clip it falls in cut short and the clips after it left out."""
    queue, pending = list(clips), insert
    segments, written, samples = [], 0, 0  # frames and audio samples written so far
    limit = None if max_seconds is None else round(max_seconds * fps)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "20"})
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = out.add_stream("aac", rate=rate, layout="mono")
        while (queue or pending is not None) and (limit is None or written < limit):
            if pending is not None and (written / fps >= insert_at_s or not queue):
                (uri, label), pending = pending, None
            else:
                uri, label = queue.pop(0)
            frames, wave = decode_clip(uri, size, fps, rate)
            if limit is not None and written + len(frames) > limit:
                frames = frames[:limit - written]
                wave = wave[:round(len(frames) / fps * rate)]
            segments.append(Segment(uri, label, written / fps, (written + len(frames)) / fps))
            for image in frames:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = written
                out.mux(video.encode(frame))
                written += 1
            chunk = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = rate, samples, Fraction(1, rate)
            out.mux(audio.encode(chunk))
            samples += len(wave)
        out.mux(video.encode())
        out.mux(audio.encode())
    return segments


def main(argv: list[str] | None = None) -> None:
    """`python -m multistream.demo.longvideo OUT.mp4 --labels DIR/labels.csv [--insert-split anomaly --at 40]`:
    the clips of a labels CSV (uri,label,split) in order, one clip of `--insert-split` placed at `--at` s."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output")
    parser.add_argument("--labels", required=True, help="a labels.csv (uri,label,split), uris relative to it")
    parser.add_argument("--split", default="test", help="the split whose clips are laid end to end")
    parser.add_argument("--insert-split", default=None, help="the split of the one clip placed inside (anomaly)")
    parser.add_argument("--at", type=float, default=0.0, help="seconds at which the inserted clip goes")
    args = parser.parse_args(argv)
    root = Path(args.labels).parent
    rows = list(csv.DictReader(open(args.labels)))
    clips = [(str(root / r["uri"]), r["label"]) for r in rows if r["split"] == args.split]
    inserted = next(((str(root / r["uri"]), r["label"]) for r in rows if r["split"] == args.insert_split), None)
    for segment in make_long_video(args.output, clips, inserted, args.at):
        print(f"{segment.start_s:8.2f} {segment.end_s:8.2f}  {segment.label:16} {segment.uri}")


if __name__ == "__main__":
    main()
