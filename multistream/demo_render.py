"""Pixels and samples of the demo's clips (see `multistream.demo` for what the classes look like).

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


_SHAPE_COLOURS = {
    "warm": np.array([[225, 45, 35], [245, 135, 25], [235, 205, 45]], np.float32),
    "cool": np.array([[40, 80, 230], [30, 195, 220], [140, 65, 220]], np.float32),
}
_BACKGROUNDS = {"warm": np.array([115, 90, 55], np.float32), "cool": np.array([65, 85, 115], np.float32)}
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions keep slow motion smooth


def _reflect(s: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] as if bouncing off both ends."""
    span = hi - lo
    return lo + span - np.abs(np.mod(s - lo, 2 * span) - span)


def _speed_profile(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """(T,) float speed in px/s at 160 px width: slow drift plus 1-2 separated short Gaussian bursts."""
    v = np.full_like(t, rng.uniform(8, 15))
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
    """Draw a filled, outlined shape with a highlight into `img` (H, W, 3) uint8 in place."""
    c = tuple(float(v) for v in colour)
    dark = tuple(0.35 * v for v in c)
    light = tuple(min(255.0, 80 + v) for v in c)
    f = 1 << _SHIFT
    if shape == "circle":
        centre, radius = (round(x * f), round(y * f)), round(r * f)
        cv2.circle(img, centre, radius, c, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(img, centre, radius, dark, 1, cv2.LINE_AA, _SHIFT)
    else:
        n = 4 if shape == "square" else 3
        a = angle + 2 * np.pi * np.arange(n) / n
        pts = np.round(np.stack([x + r * np.cos(a), y + r * np.sin(a)], 1) * f).astype(np.int32)
        cv2.fillPoly(img, [pts], c, cv2.LINE_AA, _SHIFT)
        cv2.polylines(img, [pts], True, dark, 1, cv2.LINE_AA, _SHIFT)
    hx, hy = x - 0.35 * r * np.cos(angle), y - 0.35 * r * np.sin(angle)
    cv2.circle(img, (round(hx * f), round(hy * f)), round(0.25 * r * f), light, -1, cv2.LINE_AA, _SHIFT)


def _grain(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """(T, H, W, 3) int16 temporal noise drawn from a few precomputed frames (rendering stays fast)."""
    bank = rng.integers(-2, 3, (4, h, w, 3), dtype=np.int16)
    return bank[rng.integers(0, len(bank), n)]


def render_class_video(spec: ClipSpec, appearance: str, motion: str) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a class clip."""
    rng = np.random.default_rng([*spec.key, 1])
    w, h, scale = spec.width, spec.height, spec.width / 160
    t = np.arange(spec.n_frames) / spec.fps
    travel = np.cumsum(_speed_profile(rng, t) / spec.fps) * scale  # (T,) px along the motion axis
    bg = _background(rng, _BACKGROUNDS[appearance], w, h)
    grain = _grain(rng, h, w, spec.n_frames)
    n_obj = int(rng.integers(2, 4))
    along_len, across_len = (w, h) if motion == "horizontal" else (h, w)
    objects = []
    for k in range(n_obj):
        r = rng.uniform(0.11, 0.16) * h
        lane = (k + rng.uniform(0.3, 0.7)) / n_obj * (across_len - 2 * r) + r
        along = _reflect(rng.uniform(0, along_len) + rng.choice([-1, 1]) * travel, r + 1, along_len - r - 1)
        wobble = 1.5 * scale * np.sin(2 * np.pi * rng.uniform(0.4, 1.0) * t + rng.uniform(0, 2 * np.pi))
        xy = (along, lane + wobble) if motion == "horizontal" else (lane + wobble, along)
        colour = _SHAPE_COLOURS[appearance][rng.integers(0, 3)] + rng.uniform(-20, 20, 3)
        shape = str(rng.choice(["circle", "square", "triangle"]))
        objects.append((shape, xy, r, rng.uniform(0, 2 * np.pi), np.clip(colour, 0, 255)))
    base = np.clip(bg, 0, 255).astype(np.int16)
    frames = np.empty((spec.n_frames, h, w, 3), np.uint8)
    for i in range(spec.n_frames):
        img = np.clip(base + grain[i], 0, 255).astype(np.uint8)
        for shape, (xs, ys), r, angle, colour in objects:
            _draw(img, shape, xs[i], ys[i], r, angle, colour)
        frames[i] = img
    return frames


def render_class_audio(spec: ClipSpec, cue: str) -> np.ndarray:
    """(S,) float32 mono in [-1, 1] at `spec.audio_rate` covering the clip: a low steady or high pulsing tone."""
    rng = np.random.default_rng([*spec.key, 2])
    t = np.arange(round(spec.n_frames / spec.fps * spec.audio_rate)) / spec.audio_rate
    if cue == "low":
        f = rng.uniform(220, 420)
        tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) + 0.35 * np.sin(4 * np.pi * f * t + rng.uniform(0, 6.3))
        env = 1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6.3))
    else:
        tone = np.sin(2 * np.pi * rng.uniform(1300, 2200) * t + rng.uniform(0, 6.3))
        env = 0.5 * (1 + np.tanh(6 * np.sin(2 * np.pi * rng.uniform(2.5, 5.0) * t + rng.uniform(0, 6.3))))
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
