"""A whole video in time windows (`video.windows`): one streaming decode, each window sampled, embedded and
stored on its own (docs/design.md#windows).

    for window in WindowedDecode(uri, cfg, estimator):   # rows of `extract.rows`' shape, one per window
        ...                                              # + "window": Span; positions index its own frames
    row = merge_windows(video, rows)                      # one row per video: arrays concatenated, "windows"

A video is cut into shots where consecutive frames' colour histograms jump well above their recent jumps
(`CutDetector`, `windows.shot_cut`; a camera feed is one shot), and each shot into windows: window k of a shot
covers [shot start + k x stride_s, ... + length_s) and exists once a frame of the shot lies past the end of window
k-1, so windows are added until every frame is in one; a shot shorter than one window is one window, cut at the
shot's end. No window spans a cut, as no clip the
models learned from does. Windows are numbered through the video. Frames are decoded once and flow is computed
once per consecutive pair, however many windows share them; only the frames, flow and audio of the windows not
yet emitted are held (memory flat in duration). A window is the unit a UCF101 clip is: its own adaptive sampling
over its frames, flow stacks within it (its first and last pairs repeat at its edges) and audio examples from
its start.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from multistream.config import Config, WindowsConfig
from multistream.extract.budgets import Budget
from multistream.extract.flow.base import (
    FLOW_CHUNK,
    FlowEstimator,
    check_consecutive,
    encode_flow,
    video_estimator,
)
from multistream.extract.sampling import frame_motion, sample_positions
from multistream.extract.video import open_video
from multistream.store.storage import open_input

# a window is closed once the video has passed its end and its audio is decoded that far, or the video is this
# far past it (a file whose audio is interleaved late, or ends early): its audio is silence beyond
AUDIO_WAIT_S = 10.0
# columns of a row's "windows" array, one row per window
WINDOW_FIELDS = ("window", "start_s", "end_s", "positions", "audio")


@dataclass(frozen=True)
class Span:
    index: int  # the window's place in the video, from 0 (the windows that hold frames)
    start_s: float
    end_s: float  # exclusive; a shot's last window's is cut at the shot's end


class WindowedDecode:
    """One video decoded as a stream into window rows (iterate once). Each row holds, for its window:
    "positions" (K,) int32 indices into the window's frames, "timestamps"/"magnitudes" (K,) float32,
    "frames" (K, S, S, 3) uint8, "wave" (N,) float32 of [start_s, end_s), "flow" (F-1, H, W, 2) uint8 of its
    F frames, "first" its first frame's index in the video, "window" its Span. After the iteration: `facts`
    (the `videos/` columns of `processor.decode_video`) and `seconds` (decode_s, flow_s). Raises VideoError
    for an unreadable video."""

    def __init__(self, uri: str, cfg: Config, estimator: FlowEstimator, video_id: str | None = None):
        self.uri, self.cfg, self.windows = uri, cfg, cfg.video.windows
        self.estimator, self.per_video = video_estimator(estimator, video_id or uri)
        self.facts: dict = {}
        self.seconds: dict = {}

    def __iter__(self):
        cfg, windows = self.cfg, self.windows
        started, flow_s = time.perf_counter(), 0.0
        size = cfg.spatial.image_size
        buffer = _Buffer()  # the frames of the windows not yet emitted
        pending: list[np.ndarray] = []  # flow-size frames whose pairs are not computed yet (the last computed first)
        shot = _Shot(0.0, windows)
        complete: list[Span] = []  # windows whose frames are all decoded, in order, waiting for their audio
        cuts, n_samples, n_windows = CutDetector(windows.shot_cut), 0, 0

        def compute_flow(keep_last: bool) -> None:
            nonlocal flow_s, pending
            if len(pending) >= 2:
                t0 = time.perf_counter()
                stored, magnitudes = encode_flow(self.estimator, np.stack(pending), cfg.flow.clip_px, scale)
                buffer.add_pairs(stored, magnitudes)
                flow_s += time.perf_counter() - t0
            pending = pending[-1:] if keep_last else []

        def emit(spans: list[Span]):
            nonlocal n_samples, n_windows
            compute_flow(keep_last=True)
            for span in spans:
                span = dataclasses.replace(span, index=n_windows)  # numbered as emitted: no gaps where one is empty
                window = buffer.window(span, cfg, size)
                if window is not None:
                    n_windows += 1
                    window["wave"] = reader.audio_between(span.start_s, span.end_s)
                    n_samples += len(window["positions"])
                    yield window
            keep = min([span.start_s for span in complete] + [shot.open_from])
            buffer.drop_before(keep)
            reader.release_audio(keep)

        with open_input(self.uri) as handle, open_video(handle, max_seconds=math.inf, audio_rate=cfg.video.audio_rate,
                                                        budget=Budget.of(cfg.video),
                                                        deadline_per_s=cfg.video.max_seconds) as reader:
            info = reader.info
            scale = (info.width / cfg.flow.size[0], info.height / cfg.flow.size[1])
            for frame in reader.frames({"flow": cfg.flow.size, "spatial": (size, size)}):
                t = frame.time_s
                if cuts(t, frame.images["flow"]):
                    complete += shot.finish(t)
                    shot = _Shot(t, windows)
                else:
                    complete += shot.advance(t)
                heard = max(reader.audio_decoded_until, t - AUDIO_WAIT_S)  # audio is decoded in time order
                ready = list(itertools.takewhile(lambda span, heard=heard: heard >= span.end_s, complete))
                if ready:
                    complete = complete[len(ready):]
                    yield from emit(ready)
                buffer.add_frame(t, frame.images["spatial"])
                pending.append(frame.images["flow"])
                if len(pending) > FLOW_CHUNK:
                    compute_flow(keep_last=True)
            compute_flow(keep_last=False)
            reader.drain_audio()
            if self.per_video:
                check_consecutive(self.uri, cfg.flow.backend, reader.n_decoded, reader.n_frames)
            # the video's end: its header's duration, or past its last frame where that is later (or unknown)
            last = buffer.times[-1] + 1.0 / max(reader.kept_fps, 1e-3) if buffer.times else 0.0
            complete += shot.finish(max(reader.duration_s, last))
            yield from emit(complete)
            complete = []
            self.facts = reader.facts | {"n_samples": n_samples}
        self.seconds = {"decode_s": time.perf_counter() - started - flow_s, "flow_s": flow_s}


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (3, 16) float64: each channel's 16-bin histogram, summing to 1."""
    pixels = image.reshape(-1, 3) >> 4
    return np.stack([np.bincount(pixels[:, c], minlength=16) for c in range(3)]) / len(pixels)


class CutDetector:
    """Cuts between shots, frame by frame: the jump of consecutive frames' `colour_histogram`s (half their L1
    distance averaged over the channels: 0 alike, 1 disjoint) is a cut where it is above `threshold` and above
    CUT_RATIO x every jump of the last LOOKBACK_S seconds: a strobe or a flicker jumps all the time and is one
    shot, and two cuts are at least LOOKBACK_S apart. `threshold` None: never a cut."""

    CUT_RATIO = 2.5
    LOOKBACK_S = 1.0

    def __init__(self, threshold: float | None):
        self.threshold = threshold
        self.previous: np.ndarray | None = None
        self.recent: collections.deque[tuple[float, float]] = collections.deque()  # (time, jump)

    def __call__(self, time_s: float, image: np.ndarray) -> bool:
        """Whether a cut lies between the previous frame and this one (at `time_s`, (H, W, 3) uint8)."""
        if self.threshold is None:
            return False
        histogram = colour_histogram(image)
        jump = 0.0 if self.previous is None else float(np.abs(histogram - self.previous).sum()) / 6.0
        self.previous = histogram
        while self.recent and self.recent[0][0] < time_s - self.LOOKBACK_S:
            self.recent.popleft()
        cut = jump > self.threshold and all(jump > self.CUT_RATIO * earlier for _, earlier in self.recent)
        self.recent.append((time_s, jump))
        return cut


class _Shot:
    """The windows of one shot, from its first frame's time `start_s`: window k covers [start_s + k x stride_s,
    ... + length_s); window k exists once a frame of the shot lies past window k-1's end. Its Spans are numbered
    k, within the shot (the video's numbering is given as they are emitted)."""

    def __init__(self, start_s: float, windows: WindowsConfig):
        self.start_s, self.windows = start_s, windows
        self.opened, self.done = 1, 0  # windows [done, opened) are open

    def _start(self, k: int) -> float:
        return self.start_s + k * self.windows.stride_s

    def _span(self, k: int, end_s: float) -> Span:
        return Span(k, self._start(k), min(self._start(k) + self.windows.length_s, end_s))

    @property
    def open_from(self) -> float:
        """The start of the earliest window still open."""
        return self._start(self.done)

    def advance(self, time_s: float) -> list[Span]:
        """A frame of the shot at `time_s` arrives: the windows it opens; returns those it completes."""
        while time_s >= self._start(self.opened - 1) + self.windows.length_s:
            self.opened += 1
        finished = [k for k in range(self.done, self.opened) if time_s >= self._start(k) + self.windows.length_s]
        self.done += len(finished)
        return [self._span(k, math.inf) for k in finished]

    def finish(self, end_s: float) -> list[Span]:
        """The shot ends at `end_s` (a cut, or the video's end): its open windows, cut there."""
        spans = [self._span(k, end_s) for k in range(self.done, self.opened)]
        self.done = self.opened
        return spans


class _Buffer:
    """Decoded frames (spatial size, with their times) and the flow pair ending at each, from frame `first` on."""

    def __init__(self):
        self.first = 0  # the video's index of times[0]
        self.times: list[float] = []
        self.images: list[np.ndarray] = []
        self.pairs: list[np.ndarray | None] = []  # (H, W, 2) uint8 flow from the previous frame; None for frame 0
        self.magnitudes: list[float] = []
        self._flowed = 0  # frames (from the video's first) whose incoming pair is known

    def add_frame(self, time_s: float, image: np.ndarray) -> None:
        self.times.append(time_s)
        self.images.append(image)

    def add_pairs(self, stored: np.ndarray, magnitudes: np.ndarray) -> None:
        """The pairs of the next len(stored) + 1 frames computed (a chunk's first frame was the last one's last)."""
        if self._flowed == 0:
            self.pairs.append(None)
            self.magnitudes.append(0.0)
            self._flowed = 1
        self.pairs.extend(stored)
        self.magnitudes.extend(np.asarray(magnitudes, np.float32).tolist())
        self._flowed += len(stored)

    def drop_before(self, time_s: float) -> None:
        keep = next((i for i, t in enumerate(self.times) if t >= time_s), len(self.times))
        del self.times[:keep], self.images[:keep], self.pairs[:keep], self.magnitudes[:keep]
        self.first += keep

    def window(self, span: Span, cfg: Config, size: int) -> dict | None:
        """The row of the buffered frames in `span` (None where it holds none), its positions sampled."""
        inside = [i for i, t in enumerate(self.times) if span.start_s <= t < span.end_s]
        if not inside:
            return None
        a, b = inside[0], inside[-1] + 1
        flow = (np.stack(self.pairs[a + 1:b]) if b - a > 1
                else np.zeros((0, cfg.flow.size[1], cfg.flow.size[0], 2), np.uint8))
        motion = frame_motion(np.asarray(self.magnitudes[a + 1:b], np.float32))
        positions = sample_positions(motion, cfg.sampling).astype(np.int32)
        times = np.asarray(self.times[a:b], np.float32)
        return {"positions": positions, "timestamps": times[positions],
                "magnitudes": motion.astype(np.float32)[positions],
                "frames": np.stack([self.images[a + i] for i in positions]), "flow": flow,
                "first": self.first + a, "window": span}


class EmbeddedFrames:
    """The spatial CNN's vectors of the frames embedded for earlier windows of a video, by their index in it: a
    frame that overlapping windows both sample is embedded once.

        new = embedded.keep_new(window)   # its "frames" cut to those not embedded yet
        ...                               # the steps: "spatial" (count of new, D) of them
        embedded.fill(row, new)           # "spatial" (K, D): every position's
    """

    def __init__(self):
        self.vectors: dict[int, np.ndarray] = {}

    def keep_new(self, window: dict) -> np.ndarray:
        """Cut the window row's "frames" to the positions not embedded yet → (K,) bool, which those are. Frames
        before the window's first are forgotten: later windows start no earlier."""
        self.vectors = {i: v for i, v in self.vectors.items() if i >= window["first"]}
        new = np.array([int(i) not in self.vectors for i in window["positions"] + window["first"]], bool)
        window["frames"] = window["frames"][new]
        return new

    def fill(self, row: dict, new: np.ndarray) -> None:
        """The row's "spatial" of its new positions → of all K, from the vectors kept; the new ones kept too."""
        index = [int(i) for i in row["positions"] + row["first"]]
        for i, vector in zip([i for i, fresh in zip(index, new, strict=True) if fresh], row["spatial"], strict=True):
            self.vectors[i] = vector
        row["spatial"] = (np.stack([self.vectors[i] for i in index]) if index
                          else row["spatial"].reshape(0, row["spatial"].shape[-1]))


def merge_windows(video: dict, windows: list[dict]) -> dict:
    """One video's finished window rows → its row: "positions" (frame indices in the video), "timestamps",
    "magnitudes", "spatial", "temporal" and "audio" concatenated over the windows in order, and "windows"
    (W, len(WINDOW_FIELDS)) float64: each window's index, start_s, end_s and its counts of positions and audio
    examples (how to cut the concatenations back: `split_windows`). A window's flow is not kept: it served the
    window's flow stacks, and a video's flow is stored only where it is a training clip (no windows)."""
    row = {"video": video}
    for key in ("positions", "timestamps", "magnitudes", "spatial", "temporal", "audio"):
        if windows and key in windows[0]:
            parts = [w[key] + (w["first"] if key == "positions" else 0) for w in windows]
            row[key] = np.concatenate(parts).astype(parts[0].dtype, copy=False)
    row["windows"] = np.array([[w["window"].index, w["window"].start_s, w["window"].end_s, len(w["positions"]),
                                len(w["audio"]) if "audio" in w else 0] for w in windows],
                              np.float64).reshape(-1, len(WINDOW_FIELDS))
    return row


def split_windows(row: dict, key: str) -> list[np.ndarray]:
    """A merged row's `key` array cut back into its windows' (by the counts in "windows")."""
    counts = row["windows"][:, 4 if key == "audio" else 3].astype(np.int64)
    return np.split(row[key], np.cumsum(counts)[:-1]) if len(counts) else []


def spans(row: dict) -> list[Span]:
    """The Spans of a merged row's windows."""
    return [Span(int(w[0]), float(w[1]), float(w[2])) for w in row["windows"]]
