"""Pixels and samples of the demo's clips (see `multistream.demo.dataset` for what the classes look like).

Everything is drawn from a generator seeded by the clip's `ClipSpec.key`, so a clip depends only on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    """One clip to generate: where, what, and how it is encoded."""

    uri: str  # relative to the dataset root
    label: str
    split: str  # train | val | test | anomaly
    key: tuple[int, ...]  # (seed, kind, index): seeds the clip's content
    ext: str
    video_codec: str  # encoder name
    audio_codec: str | None  # None: no audio track
    audio_rate: int
    width: int
    height: int
    fps: int
    n_frames: int


_SHAPE_COLOURS = {  # palette -> its shapes' colours; a clip's palette is a nuisance drawn per clip
    "warm": np.array([[225, 45, 35], [245, 135, 25], [235, 205, 45]], np.float32),
    "cool": np.array([[40, 80, 230], [30, 195, 220], [140, 65, 220]], np.float32),
    "grey": np.array([[235, 235, 235], [150, 150, 150], [55, 55, 55]], np.float32),
}
_BACKGROUNDS = {"warm": np.array([115, 90, 55], np.float32), "cool": np.array([65, 85, 115], np.float32),
                "grey": np.array([105, 105, 105], np.float32)}
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions keep slow motion smooth


def _reflect(s: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] as if bouncing off both ends."""
    span = hi - lo
    return lo + span - np.abs(np.mod(s - lo, 2 * span) - span)


def _speed_profile(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """(T,) float speed in px/s at 160 px width: slow drift plus 1-2 separated short Gaussian bursts."""
    v = np.full_like(t, rng.uniform(15, 25))
    n_bursts = 1 if t[-1] < 3 else int(rng.integers(1, 3))
    for k in range(n_bursts):
        centre = rng.uniform(k + 0.25, k + 0.75) / n_bursts * t[-1]
        v += rng.uniform(80, 120) * np.exp(-0.5 * ((t - centre) / rng.uniform(0.12, 0.2)) ** 2)
    return v


def _background(rng: np.random.Generator, base: np.ndarray, w: int, h: int) -> np.ndarray:
    """(H, W, 3) float32: a base colour with smooth blotches and fine static grain."""
    blotches = cv2.resize(rng.normal(0, 1, (4, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    bg = base * rng.uniform(0.75, 1.25) + rng.uniform(-12, 12, 3).astype(np.float32)
    return bg + 22 * blotches[..., None] + rng.normal(0, 5, (h, w, 1)).astype(np.float32)


def _draw(img: np.ndarray, shape: str, x: float, y: float, r: float, angle: float, colour: np.ndarray) -> None:
    """Draw a filled, outlined shape of area 2 r^2 (a square of circumradius `r`) with a highlight into `img`
    (H, W, 3) uint8 in place: the kinds differ in shape, not size."""
    c = tuple(float(v) for v in colour)
    dark = tuple(0.35 * v for v in c)
    light = tuple(min(255.0, 80 + v) for v in c)
    f = 1 << _SHIFT
    if shape == "circle":
        centre, radius = (round(x * f), round(y * f)), round(r * np.sqrt(2 / np.pi) * f)
        cv2.circle(img, centre, radius, c, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(img, centre, radius, dark, 1, cv2.LINE_AA, _SHIFT)
    else:
        n = 4 if shape == "square" else 3
        a = angle + 2 * np.pi * np.arange(n) / n
        big = r * np.sqrt(4 / (n * np.sin(2 * np.pi / n)))
        pts = np.round(np.stack([x + big * np.cos(a), y + big * np.sin(a)], 1) * f).astype(np.int32)
        cv2.fillPoly(img, [pts], c, cv2.LINE_AA, _SHIFT)
        cv2.polylines(img, [pts], True, dark, 1, cv2.LINE_AA, _SHIFT)
    hx, hy = x - 0.35 * r * np.cos(angle), y - 0.35 * r * np.sin(angle)
    cv2.circle(img, (round(hx * f), round(hy * f)), round(0.25 * r * f), light, -1, cv2.LINE_AA, _SHIFT)


def _grain(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """(T, H, W, 3) int16 temporal noise drawn from a few precomputed frames (rendering stays fast)."""
    bank = rng.integers(-2, 3, (4, h, w, 3), dtype=np.int16)
    return bank[rng.integers(0, len(bank), n)]


def _path(rng: np.random.Generator, motion: str, lane: float, r: float, travel: np.ndarray, t: np.ndarray,
          w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(T,) x and (T,) y of a shape of radius `r` that travels `travel` (T,) px, bouncing off the borders:
    along one axis in its lane (`lane`: 0-1 across the frame) with a slight wobble across it, or diagonally,
    36-54 degrees off the horizontal."""
    if motion == "diagonal":
        angle = rng.uniform(np.pi / 5, 3 * np.pi / 10)
        sx, sy = rng.choice([-1, 1], 2)
        return (_reflect(rng.uniform(0, w) + sx * np.cos(angle) * travel, r + 1, w - r - 1),
                _reflect(rng.uniform(0, h) + sy * np.sin(angle) * travel, r + 1, h - r - 1))
    along_len, across_len = (w, h) if motion == "horizontal" else (h, w)
    along = _reflect(rng.uniform(0, along_len) + rng.choice([-1, 1]) * travel, r + 1, along_len - r - 1)
    wobble = 0.5 * w / 160 * np.sin(2 * np.pi * rng.uniform(0.4, 1.0) * t + rng.uniform(0, 2 * np.pi))
    across = lane * (across_len - 2 * r) + r + wobble
    return (along, across) if motion == "horizontal" else (across, along)


def render_class_video(spec: ClipSpec, shape: str, motion: str) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a class clip: 2-3 shapes of one kind (circle, square or triangle)."""
    rng = np.random.default_rng([*spec.key, 1])
    w, h, scale = spec.width, spec.height, spec.width / 160
    t = np.arange(spec.n_frames) / spec.fps
    travel = np.cumsum(_speed_profile(rng, t) / spec.fps) * scale  # (T,) px along the motion axis
    palette = str(rng.choice(list(_BACKGROUNDS)))
    bg = _background(rng, _BACKGROUNDS[palette], w, h)
    grain = _grain(rng, h, w, spec.n_frames)
    n_obj = int(rng.integers(2, 4))
    objects = []
    for k in range(n_obj):
        r = rng.uniform(0.11, 0.16) * h
        xy = _path(rng, motion, (k + rng.uniform(0.3, 0.7)) / n_obj, r, travel, t, w, h)
        colour = _SHAPE_COLOURS[palette][rng.integers(0, 3)] + rng.uniform(-20, 20, 3)
        objects.append((xy, r, rng.uniform(0, 2 * np.pi), np.clip(colour, 0, 255)))
    base = np.clip(bg, 0, 255).astype(np.int16)
    frames = np.empty((spec.n_frames, h, w, 3), np.uint8)
    for i in range(spec.n_frames):
        img = np.clip(base + grain[i], 0, 255).astype(np.uint8)
        for (xs, ys), r, angle, colour in objects:
            _draw(img, shape, xs[i], ys[i], r, angle, colour)
        frames[i] = img
    return frames


def render_class_audio(spec: ClipSpec, cue: str) -> np.ndarray:
    """(S,) float32 mono in [-1, 1] at `spec.audio_rate` covering the clip: a low steady tone, a high pulsing
    tone or a steady hiss (band-limited noise)."""
    rng = np.random.default_rng([*spec.key, 2])
    t = np.arange(round(spec.n_frames / spec.fps * spec.audio_rate)) / spec.audio_rate
    if cue == "low":
        f = rng.uniform(220, 420)
        tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) + 0.35 * np.sin(4 * np.pi * f * t + rng.uniform(0, 6.3))
        env = 1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6.3))
    elif cue == "high":
        tone = np.sin(2 * np.pi * rng.uniform(1300, 2200) * t + rng.uniform(0, 6.3))
        env = 0.5 * (1 + np.tanh(6 * np.sin(2 * np.pi * rng.uniform(2.5, 5.0) * t + rng.uniform(0, 6.3))))
    else:
        lo = rng.uniform(2800, 3400)
        spectrum = np.fft.rfft(rng.normal(0, 1, len(t)))
        freqs = np.fft.rfftfreq(len(t), 1 / spec.audio_rate)
        spectrum[(freqs < lo) | (freqs > lo + rng.uniform(800, 1200))] = 0
        tone = np.fft.irfft(spectrum, len(t))
        tone /= np.sqrt(2) * tone.std()  # a sine's power
        env = 1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6.3))
    x = rng.uniform(0.2, 0.4) * env * tone / 1.35 + rng.uniform(0.01, 0.04) * rng.normal(0, 1, len(t))
    return np.clip(x, -1, 1).astype(np.float32)


def _bursts(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """(T,) bool: two 0.3 s noise bursts at random times."""
    starts = rng.uniform(0, max(t[-1] - 0.3, 0.01), 2)
    return ((t[:, None] >= starts) & (t[:, None] < starts + 0.3)).any(1)


def render_anomaly(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 RGB frames and (S,) float32 audio of an anomalous clip (flicker, circling ring, chirp)."""
    rng = np.random.default_rng([*spec.key, 1])
    w, h = spec.width, spec.height
    t = np.arange(spec.n_frames) / spec.fps
    ta = np.arange(round(spec.n_frames / spec.fps * spec.audio_rate)) / spec.audio_rate
    colours = rng.uniform(0, 255, (2, 3))
    flicker = (np.sin(2 * np.pi * rng.uniform(3, 6) * t) > 0).astype(int)
    noisy = _bursts(rng, t)
    angle = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(3, 5) * t
    radius = rng.uniform(0.2, 0.3) * w
    frames = np.empty((spec.n_frames, h, w, 3), np.uint8)
    f = 1 << _SHIFT
    for i in range(spec.n_frames):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = colours[flicker[i]].astype(np.uint8)
        if noisy[i]:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        centre = (w / 2 + radius * np.cos(angle[i]), h / 2 + radius * np.sin(angle[i]))
        cv2.circle(img, (round(centre[0] * f), round(centre[1] * f)), round(0.1 * w * f), (255, 255, 255), 4,
                   cv2.LINE_AA, _SHIFT)
        frames[i] = img
    f0, f1 = rng.uniform(150, 300), rng.uniform(3000, 5000)
    k = np.log(f1 / f0) / ta[-1]
    chirp = 0.3 * np.sin(2 * np.pi * f0 * (np.exp(k * ta) - 1) / k)
    chirp += 0.3 * _bursts(rng, ta) * rng.normal(0, 1, len(ta))
    return frames, np.clip(chirp, -1, 1).astype(np.float32)
