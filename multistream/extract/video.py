"""Streaming video decoding with PyAV: frames resized on the fly, mono audio, one demux pass, `max_seconds` cap,
per-video budgets (`multistream.extract.budgets`: frames kept per second, pixels per frame, decoding time).

    with open_video("clip.avi", max_seconds=36) as reader:   # or an open binary file (storage.open_input)
        for frame in reader.frames({"flow": (320, 240), "spatial": None}):
            frame.images["flow"]                             # (240, 320, 3) uint8 RGB
        wave = reader.audio()                                # (N,) float32 mono at audio_rate

Video and audio packets are demultiplexed together: while `frames()` runs, audio packets are decoded into a
small buffer (at most `max_seconds` of mono float32), so the file is read once and never held whole in memory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from multistream.extract.audio_track import MAX_AUDIO_RATE, AudioTrack
from multistream.extract.budgets import Budget, FrameGate
from multistream.extract.errors import VideoError
from multistream.extract.timestamps import BestEffortPts

log = logging.getLogger(__name__)

# what PyAV/FFmpeg raise on damaged or foreign input (an empty file object gives a bare OSError)
_DECODE_ERRORS = (av.FFmpegError, OSError, EOFError)
# PyAV < 19 raises on undecodable metadata unless told to ignore it; PyAV 19 has no such option (and no error)
_OPEN_OPTIONS = {"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {}


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts from the container header (before decoding)."""

    width: int
    height: int
    fps: float  # nominal frame rate of the stream
    duration_s: float  # stream duration, else container duration, else 0.0 when unknown
    has_audio: bool
    video_codec: str
    audio_codec: str | None


@dataclass
class Frame:
    """One decoded frame; `images[name]` is (H, W, 3) uint8 RGB at the size requested under that name."""

    index: int  # decoded frames counted from 0
    time_s: float  # presentation time relative to the start of the video stream
    images: dict[str, np.ndarray]


def _source_name(source: str | os.PathLike | BinaryIO) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    for attr in ("full_name", "name", "path"):  # fsspec files know their URI as full_name
        value = getattr(source, attr, None)
        if isinstance(value, str):
            return value
    return repr(source)


def _size_of(source: str | os.PathLike | BinaryIO) -> int | None:
    """Bytes left to read in `source`, or None when that cannot be told cheaply."""
    try:
        if isinstance(source, str | os.PathLike):
            return os.path.getsize(source)
        position = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(position)
        return end - position
    except (OSError, AttributeError, ValueError):
        return None


class VideoReader:
    """An open video. Iterate `frames()` once, then (optionally) call `audio()`; or call `audio()` alone.

    After `frames()` is exhausted: `n_frames` (frames kept within max_seconds: every decoded one unless the
    video is faster than `budget.max_fps`), `n_decoded`, `measured_fps` (the source's, from timestamps),
    `kept_fps` and `duration_s`; after `audio()`, `audio_dropped` (why a present audio stream gave silence).
    Over a budget (pixels, deadline) the reader raises `budgets.BudgetError`, a VideoError.
    """

    def __init__(self, source: str | os.PathLike | BinaryIO, *, max_seconds: float = 36.0, audio_rate: int = 16000,
                 threads: int = 1, budget: Budget | None = None, deadline_per_s: float | None = None):
        if max_seconds <= 0 or audio_rate <= 0:
            raise ValueError(f"max_seconds and audio_rate must be positive, got {max_seconds}, {audio_rate}")
        self.name = _source_name(source)
        self.max_seconds = float(max_seconds)
        self.audio_rate = int(audio_rate)
        self.threads = threads
        self._gate = FrameGate(budget or Budget(), self.max_seconds, self.name, deadline_per_s)
        # one reformatter per output size keeps its scaler from frame to frame (a new one per frame set up
        # swscale, and its thread pool, again for every frame: half of decode's CPU time)
        self._reformatters: dict[tuple[int, int] | None, av.video.reformatter.VideoReformatter] = {}
        if _size_of(source) == 0:
            raise VideoError(f"{self.name}: empty file")
        try:
            self._container = av.open(source if not isinstance(source, os.PathLike) else os.fspath(source),
                                      mode="r", **_OPEN_OPTIONS)
        except _DECODE_ERRORS as exc:
            raise VideoError(f"{self.name}: not a readable video ({exc})") from exc
        try:
            self.info = self._open_streams()
            self._gate.check_size(self.info.width, self.info.height)
        except BaseException:
            self._container.close()
            raise
        self.n_frames = self.n_decoded = 0
        self._first_time: float | None = None  # of the decoded frames
        self._last_time: float | None = None
        self._kept_times: tuple[float, float] | None = None  # first and last kept frame
        self._frames_started = False
        self._audio_called = False
        self._audio, self._audio_dropped = None, None
        source_rate = self._audio_stream.codec_context.sample_rate if self._audio_stream is not None else 0
        if source_rate and source_rate > MAX_AUDIO_RATE:
            self._audio_dropped = f"audio at {source_rate} Hz exceeds {MAX_AUDIO_RATE} Hz"
            log.warning("%s: %s: treated as no audio", self.name, self._audio_dropped)
        elif self._audio_stream is not None:
            self._audio = AudioTrack(self._audio_stream, self.audio_rate, (self.max_seconds + 1.0) * self.audio_rate,
                                     self._decode)
        streams = [self._video_stream] + ([self._audio_stream] if self._audio is not None else [])
        self._demuxer = self._container.demux(*streams)

    def _open_streams(self) -> VideoInfo:
        videos = [s for s in self._container.streams.video
                  if not s.disposition & av.stream.Disposition.attached_pic]  # cover art is not a video
        if not videos:
            raise VideoError(f"{self.name}: no video stream")
        video = self._video_stream = videos[0]
        self._audio_stream = self._container.streams.audio[0] if self._container.streams.audio else None
        ctx = video.codec_context
        ctx.thread_count = self.threads
        if not ctx.width or not ctx.height:
            raise VideoError(f"{self.name}: video stream without a frame size")
        rate = video.average_rate or video.base_rate or video.guessed_rate
        if video.duration and video.time_base:
            duration = float(video.duration * video.time_base)
        elif self._container.duration:
            duration = self._container.duration / av.time_base
        else:
            duration = 0.0
        # timestamps count from the stream's start so that video and audio share one clock
        self._t0 = float(video.start_time * video.time_base) if video.start_time is not None else None
        return VideoInfo(
            width=ctx.width, height=ctx.height, fps=float(rate) if rate else 0.0, duration_s=duration,
            has_audio=self._audio_stream is not None, video_codec=ctx.name,
            audio_codec=self._audio_stream.codec_context.name if self._audio_stream is not None else None,
        )

    # -- demultiplexing -------------------------------------------------------------------------------------

    def _packets(self) -> Iterator[av.Packet]:
        """Packets of the video and audio streams, in file order; a damaged tail ends the stream quietly."""
        while True:  # not `yield from`: closing this generator must not close the shared demuxer
            try:
                packet = next(self._demuxer)
            except StopIteration:
                return
            except _DECODE_ERRORS as exc:
                log.warning("%s: stopped reading at damaged data: %s", self.name, exc)
                return
            yield packet

    def _decode(self, stream: av.stream.Stream, packet: av.Packet) -> list:
        """The frames of `packet`; an undecodable packet is skipped (logged) and gives none."""
        try:
            return stream.decode(packet)
        except _DECODE_ERRORS as exc:
            log.debug("%s: skipped an undecodable %s packet: %s", self.name, stream.type, exc)
            return []

    # -- public API -----------------------------------------------------------------------------------------

    def frames(self, sizes: Mapping[str, tuple[int, int] | None]) -> Iterator[Frame]:
        """Decoded frames within `max_seconds`, each converted to RGB at every requested (width, height).

        `sizes` maps a name to (width, height), or None for the native size. Raises VideoError when the
        stream ends without a single decodable frame. Frames faster than `budget.max_fps` are decoded and
        dropped (`budgets.FrameGate.keep`): `Frame.index` counts the frames kept.
        """
        if self._frames_started or self._audio_called:
            raise RuntimeError(f"{self.name}: frames() can be iterated only once, and before audio()")
        self._frames_started = True
        sizes = {name: (None if size is None else (int(size[0]), int(size[1]))) for name, size in sizes.items()}
        step = 1.0 / self.info.fps if self.info.fps > 0 else 0.0
        time_base = self._video_stream.time_base
        best_effort = BestEffortPts(prefer_dts=self._container.format.name == "avi")
        gate = self._gate
        gate.start()  # decoding time: stopped while the consumer has a frame
        try:
            for packet in self._packets():
                gate.check_deadline()
                if packet.stream.type == "audio":
                    self._audio.feed(packet)
                    continue
                for vframe in self._decode(self._video_stream, packet):
                    gate.check_size(vframe.width, vframe.height)
                    gate.check_deadline()
                    pts = best_effort(vframe.pts, vframe.dts)
                    if pts is None:  # no timestamp at all: continue the nominal cadence
                        time_s = 0.0 if self._last_time is None else self._last_time + step
                    else:
                        if self._t0 is None:
                            self._t0 = float(pts * time_base)
                        time_s = float(pts * time_base) - self._t0
                    if time_s >= self.max_seconds:
                        return
                    if gate.full:
                        log.warning("%s: stopped at %d frames kept (max_seconds x video.max_fps)", self.name, gate.kept)
                        return
                    if self._first_time is None:
                        self._first_time = time_s
                    self._last_time = gate.video_s = time_s
                    self.n_decoded += 1
                    if not gate.keep(time_s):
                        continue
                    frame = Frame(self.n_frames, time_s, self._convert(vframe, sizes))
                    self._kept_times = (time_s if self._kept_times is None else self._kept_times[0], time_s)
                    self.n_frames += 1
                    gate.stop()
                    yield frame
                    gate.start()
        finally:
            gate.stop()
        if self.n_frames == 0:
            raise VideoError(f"{self.name}: no decodable video frames (truncated or damaged file)")

    def _convert(self, vframe: av.VideoFrame, sizes: dict[str, tuple[int, int] | None]) -> dict[str, np.ndarray]:
        by_size: dict[tuple[int, int] | None, np.ndarray] = {}
        for size in sizes.values():
            if size not in by_size:
                width, height = size if size is not None else (vframe.width, vframe.height)
                # swscale converts and resizes in one pass from the decoder's pixel format; area averaging
                # when shrinking (bilinear would alias fine texture, e.g. 4K down to 320x240)
                shrink = width <= vframe.width and height <= vframe.height and size is not None
                reformatter = self._reformatters.setdefault(size, av.video.reformatter.VideoReformatter())
                by_size[size] = reformatter.reformat(
                    vframe, width=width, height=height, format="rgb24", interpolation="AREA" if shrink else "BILINEAR",
                    threads=self.threads).to_ndarray()
        return {name: by_size[size] for name, size in sizes.items()}

    def audio(self) -> np.ndarray:
        """(N,) float32 mono in [-1, 1] at `audio_rate`, N = round(min(duration_s, max_seconds) * audio_rate).

        Zeros when the file has no audio track, or one that is dropped (`audio_dropped`: a source rate over
        MAX_AUDIO_RATE, or audio that starts after the first max_seconds). Reads on from wherever `frames()`
        stopped, skipping video.
        """
        self._audio_called = True
        wave = np.zeros(0, np.float32)
        if self._audio is not None:
            self.drain_audio()
            wave = self._audio.wave(self._t0)  # on the video's clock, silence before it at most max_samples
        duration = self.duration_s if self.duration_s > 0 else len(wave) / self.audio_rate
        n = int(round(min(duration, self.max_seconds) * self.audio_rate))
        if self._audio is not None and self._audio_dropped is None:
            self._audio_dropped = self._audio.dropped or self._audio.late(self._t0, n / self.audio_rate)
        if self._audio_dropped is not None:
            wave = np.zeros(0, np.float32)
        out = np.zeros(n, np.float32)
        out[:min(n, len(wave))] = wave[:n]
        return np.clip(out, -1.0, 1.0)

    def drain_audio(self) -> None:
        """Decode the audio left after wherever `frames()` stopped (skipping video), up to the track's end."""
        if self._audio is None or self._audio.done:
            return
        self._gate.start()
        try:
            for packet in self._packets():
                self._gate.check_deadline()
                if packet.stream.type == "audio":
                    self._audio.feed(packet)
                    if self._audio.done:
                        break
            self._audio.finish()
        finally:
            self._gate.stop()

    # -- a whole video's audio, window by window (max_seconds inf): never held whole ---------------------------

    def audio_between(self, start_s: float, end_s: float) -> np.ndarray:
        """(round(end_s x rate) - round(start_s x rate),) float32 mono in [-1, 1]: the audio decoded so far
        on the video's clock over [start_s, end_s); silence where there is none (no track, a dropped one, not
        yet decoded or released). While `frames()` runs, audio is decoded as far as `audio_decoded_until`."""
        first = int(round(start_s * self.audio_rate))
        count = int(round(end_s * self.audio_rate)) - first
        if self._audio is None or self._audio_dropped is not None:
            return np.zeros(count, np.float32)
        return np.clip(self._audio.between(self._t0, first, count), -1.0, 1.0)

    @property
    def audio_decoded_until(self) -> float:
        """Seconds of the video's clock up to which its audio is decoded (inf without a track, or at its end)."""
        if self._audio is None or self._audio_dropped is not None:
            return math.inf
        return self._audio.decoded_until(self._t0)

    def release_audio(self, before_s: float) -> None:
        """Forget the decoded audio before `before_s` on the video's clock."""
        if self._audio is not None:
            self._audio.release(self._t0, int(round(before_s * self.audio_rate)))

    @property
    def measured_fps(self) -> float:
        """(n_decoded - 1) / (last - first timestamp) of the decoded frames; the nominal rate when fewer than two."""
        if self.n_decoded >= 2 and self._last_time > self._first_time:
            return (self.n_decoded - 1) / (self._last_time - self._first_time)
        return self.info.fps

    @property
    def kept_fps(self) -> float:
        """As measured_fps, of the frames kept: measured_fps unless the video was decimated to ~budget.max_fps."""
        if self.n_frames >= 2 and self._kept_times[1] > self._kept_times[0]:
            return (self.n_frames - 1) / (self._kept_times[1] - self._kept_times[0])
        return min(self.measured_fps, self._gate.budget.max_fps)

    @property
    def facts(self) -> dict:
        """What the reader found, as `videos/` columns: duration_s, fps (measured), kept_fps, width, height,
        n_frames (kept) and has_audio (a track not dropped: its verdict is whole after `audio()` or the frames)."""
        return {"duration_s": float(self.duration_s), "fps": float(self.measured_fps), "kept_fps": float(self.kept_fps),
                "width": self.info.width, "height": self.info.height, "n_frames": self.n_frames,
                "has_audio": self.info.has_audio and self.audio_dropped is None}

    @property
    def audio_dropped(self) -> str | None:
        """Why an audio stream gave silence (known at open for its rate, after `audio()` for its start)."""
        return self._audio_dropped

    @property
    def duration_s(self) -> float:
        """Duration of the whole file from its header; without one, the extent of the decoded frames."""
        if self.info.duration_s > 0:
            return self.info.duration_s
        if self._last_time is None:
            return 0.0
        return self._last_time + (1.0 / self.measured_fps if self.measured_fps > 0 else 0.0)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(source: str | os.PathLike | BinaryIO, *, max_seconds: float = 36.0, audio_rate: int = 16000,
               threads: int = 1, budget: Budget | None = None, deadline_per_s: float | None = None) -> VideoReader:
    """Open a local path or a binary file object (e.g. `storage.open_input(uri)`) for streaming decode.

    `threads` is the video decoder's (0: FFmpeg's choice, one per core); one suits a worker per core.
    `budget`: the per-video budgets (default: the `video` config's defaults). `max_seconds` inf: the whole
    video (its audio read with `audio_between` as the frames go), its decode deadline per `deadline_per_s`
    seconds of video."""
    return VideoReader(source, max_seconds=max_seconds, audio_rate=audio_rate, threads=threads, budget=budget,
                       deadline_per_s=deadline_per_s)
