"""One audio stream decoded to a mono float32 wave at a fixed rate, fed packet by packet: `VideoReader`
(`multistream.extract.video`) demultiplexes video and audio in one pass and hands this the audio packets as they come."""

from __future__ import annotations

import math
from collections.abc import Callable

import av
import numpy as np

# Hz: a source rate above it is treated as no audio (no recording has one; the resampler's filter grows with it)
MAX_AUDIO_RATE = 384_000


class AudioTrack:
    """Decodes and resamples `stream`'s packets into a buffer of at most `max_samples` (plus the packet that
    crosses it); `decode(stream, packet)` gives a packet's frames (none for an undecodable one)."""

    def __init__(self, stream: av.audio.stream.AudioStream, rate: int, max_samples: float,
                 decode: Callable[[av.stream.Stream, av.Packet], list]):
        self.stream, self.rate, self.max_samples, self._decode = stream, rate, max_samples, decode
        self._resampler = self._new_resampler()
        self._chunks: list[np.ndarray] = []  # resampled mono float32 audio, in order
        self._samples = 0
        self._released = 0  # samples dropped from the front of `_chunks` (`release`)
        self.start: float | None = None  # time of the first decoded audio frame
        self.done = False
        self.dropped: str | None = None  # why the track is treated as no audio (a frame's rate over MAX_AUDIO_RATE)

    def feed(self, packet: av.Packet) -> None:
        """Decode one of the stream's packets (an empty one flushes the decoder and ends the track)."""
        if self.done:
            return
        for frame in self._decode(self.stream, packet):
            if frame.sample_rate > MAX_AUDIO_RATE:
                self.dropped = f"audio at {frame.sample_rate} Hz exceeds {MAX_AUDIO_RATE} Hz"
                self._chunks, self._samples, self.done = [], 0, True
                return
            if self.start is None and frame.time is not None:
                self.start = frame.time
            self._resample(frame)
        if packet.size == 0 or self._samples >= self.max_samples:
            self.finish()

    def finish(self) -> None:
        """Flush the resampler: nothing more is fed."""
        if not self.done:
            self._resample(None)
            self.done = True

    def wave(self, t0: float | None) -> np.ndarray:
        """(N,) float32: the decoded audio placed on a clock that starts at `t0` (the video's first frame):
        padded with silence where audio starts later (at most `max_samples` of it), cut where it starts earlier."""
        wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        if self.start is None:
            return wave
        offset = int(round(min(self.start - (t0 or 0.0), self.max_samples / self.rate) * self.rate))
        return np.concatenate([np.zeros(offset, np.float32), wave]) if offset > 0 else wave[-offset:]

    def _lead(self, t0: float | None) -> int:
        """The video clock's sample index of the first decoded sample."""
        return 0 if self.start is None else int(round((self.start - (t0 or 0.0)) * self.rate))

    def decoded_until(self, t0: float | None) -> float:
        """Seconds on the video's clock up to which audio is decoded (inf once the track is done)."""
        return math.inf if self.done else (self._lead(t0) + self._samples) / self.rate

    def between(self, t0: float | None, first: int, count: int) -> np.ndarray:
        """(count,) float32: samples [first, first + count) of the video's clock (at `rate`), silence where no
        audio was decoded or it was released."""
        out = np.zeros(count, np.float32)
        if not self._chunks or self.dropped:
            return out
        start = first - self._lead(t0) - self._released  # into the buffer
        buffer = np.concatenate(self._chunks)
        lo, hi = max(start, 0), min(start + count, len(buffer))
        if hi > lo:
            out[lo - start:hi - start] = buffer[lo:hi]
        return out

    def release(self, t0: float | None, before: int) -> None:
        """Drop the buffered chunks that end before sample `before` of the video's clock: a whole video's audio
        is never held at once."""
        end = self._lead(t0) + self._released
        while self._chunks and end + len(self._chunks[0]) <= before:
            end += len(self._chunks[0])
            self._released += len(self._chunks.pop(0))

    def late(self, t0: float | None, window_s: float) -> str | None:
        """Why the track is no audio of the first `window_s` seconds on the video's clock: it starts after them."""
        if self.start is not None and self.start - (t0 or 0.0) >= window_s:
            return f"audio starts {self.start - (t0 or 0.0):g} s after the video, past the first {window_s:g} s"
        return None

    def _new_resampler(self) -> av.AudioResampler:
        # rematrix_maxval=1 makes the downmix the mean of the channels instead of a sum that clips
        return av.AudioResampler(format="flt", layout="mono", rate=self.rate, options={"rematrix_maxval": "1.0"})

    def _resample(self, frame: av.AudioFrame | None) -> None:
        try:
            out = self._resampler.resample(frame)
        except ValueError:  # the input format changed mid-stream: start a fresh resampler
            self._resample(None)
            self._resampler = self._new_resampler()
            out = self._resampler.resample(frame)
        for chunk in out:
            samples = chunk.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self._chunks.append(samples)
            self._samples += len(samples)
