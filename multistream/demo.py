"""A small labelled synthetic video dataset, generated deterministically from a seed.

    python -m multistream.demo --output runs/demo-data [--seed 0]
    generate_demo("runs/demo-data", seed=0)      # -> Path("runs/demo-data")

Layout: `DIR/<Class>/<class>_<nn>.<ext>`, `DIR/anomaly/anomaly_<nn>.<ext>` and `DIR/labels.csv`
(`uri,label,split`; uri relative to DIR; split train|test|anomaly; anomalous clips have label `anomaly`).
labels.csv is written last, so its presence means the set is complete.

Each class is a triple of cues, one per stream, shared between classes so that any single cue splits the
classes only into halves while any two of them identify the class (print `describe()`):

    class        appearance (spatial)   motion (temporal)      audio
    WarmSlide    warm                   horizontal             low
    WarmBob      warm                   vertical               high
    CoolSlide    cool                   horizontal             high
    CoolBob      cool                   vertical               low

- warm: red/orange/yellow shapes on an olive-brown background; cool: blue/cyan/violet shapes on slate.
- horizontal/vertical: shapes travel along one axis and bounce off the borders, slowly (8-15 px/s at
  160 px width) except in 1-2 short bursts per clip (80-120 px/s more), so motion varies over time.
- low: a steady 220-420 Hz tone with a harmonic; high: a 1.3-2.2 kHz tone pulsing at 2.5-5 Hz.
Nuisances vary per clip: shape kind, count, size, positions, speeds, brightness, noise, tone frequency,
phases, frame size (160x120 or 128x96), fps (12-18) and duration (2-4 s). About a fifth of the clips
have no audio track (they must be told apart by the other streams). The anomalies are of an unseen
kind: a flickering two-colour background with noise bursts, a white ring circling the centre, a chirp.

Containers/codecs rotate over mp4 (h264+aac), avi (mpeg4+mp3), mkv (h264+opus), avi (mpeg4+pcm_s16le)
and mkv (mpeg4+flac). Pixels and samples depend only on the seed; encoders run single-threaded.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

DEMO_CLASSES = ["WarmSlide", "WarmBob", "CoolSlide", "CoolBob"]
CUES: dict[str, tuple[str, str, str]] = {  # class -> (appearance, motion, audio)
    "WarmSlide": ("warm", "horizontal", "low"),
    "WarmBob": ("warm", "vertical", "high"),
    "CoolSlide": ("cool", "horizontal", "high"),
    "CoolBob": ("cool", "vertical", "low"),
}
ANOMALY = "anomaly"

_SHAPE_COLOURS = {
    "warm": np.array([[225, 45, 35], [245, 135, 25], [235, 205, 45]], np.float32),
    "cool": np.array([[40, 80, 230], [30, 195, 220], [140, 65, 220]], np.float32),
}
_BACKGROUNDS = {"warm": np.array([115, 90, 55], np.float32), "cool": np.array([65, 85, 115], np.float32)}
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel positions keep slow motion smooth


@dataclass(frozen=True)
class Format:
    ext: str
    video: tuple[str, ...]  # encoder candidates, first available wins
    audio: tuple[str, ...]
    rate: int  # audio sample rate


FORMATS = [
    Format("mp4", ("libx264", "mpeg4"), ("aac",), 44100),
    Format("avi", ("mpeg4",), ("libmp3lame", "pcm_s16le"), 44100),
    Format("mkv", ("libx264", "mpeg4"), ("libopus", "flac"), 48000),
    Format("avi", ("mpeg4",), ("pcm_s16le",), 16000),
    Format("mkv", ("mpeg4",), ("flac",), 16000),
]


@dataclass(frozen=True)
class ClipSpec:
    """One clip to generate: where, what, and how it is encoded."""

    uri: str  # relative to the dataset root
    label: str
    split: str  # train | test | anomaly
    key: tuple[int, ...]  # (seed, kind, index): seeds the clip's content
    ext: str
    video_codec: str  # encoder name
    audio_codec: str | None  # None: no audio track
    audio_rate: int
    width: int
    height: int
    fps: int
    n_frames: int


def _encoder(candidates: tuple[str, ...]) -> str:
    for name in candidates:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"none of the encoders {candidates} is available in this PyAV build")


def _split_and_silent(rng: np.random.Generator, n: int) -> tuple[set[int], set[int]]:
    """~1/3 test, the rest train; ~1/5 without audio, alternating between test and train clips."""
    perm = [int(i) for i in rng.permutation(n)]
    n_test = round(n / 3)
    test, train = perm[:n_test], perm[n_test:]
    alternating = [x for pair in zip(test, train, strict=False) for x in pair] + train[len(test):]
    return set(test), set(alternating[: round(n / 5)])


def plan_demo(seed: int = 0, clips_per_class: int = 12, n_anomalies: int = 6) -> list[ClipSpec]:
    """Every clip of the dataset, classes first (in `DEMO_CLASSES` order), then the anomalies."""
    specs = []
    groups = [(kind, name, clips_per_class) for kind, name in enumerate(DEMO_CLASSES)]
    groups.append((len(DEMO_CLASSES), ANOMALY, n_anomalies))
    for kind, name, n in groups:
        test, silent = _split_and_silent(np.random.default_rng([seed, kind, 1000]), n)
        if name == ANOMALY:
            silent = set(range(n - round(n / 5), n))
        for i in range(n):
            rng = np.random.default_rng([seed, kind, i, 0])
            fmt = FORMATS[(kind + i) % len(FORMATS)]
            fps = int(rng.choice([12, 15, 15, 18]))
            width, height = (160, 120) if rng.random() < 0.75 else (128, 96)
            split = ANOMALY if name == ANOMALY else ("test" if i in test else "train")
            specs.append(ClipSpec(
                uri=f"{name}/{name.lower()}_{i:02d}.{fmt.ext}", label=name, split=split,
                key=(seed, kind, i), ext=fmt.ext, video_codec=_encoder(fmt.video),
                audio_codec=None if i in silent else _encoder(fmt.audio), audio_rate=fmt.rate,
                width=width, height=height, fps=fps, n_frames=round(rng.uniform(2.0, 4.0) * fps),
            ))
    return specs


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


def write_clip(path: Path, spec: ClipSpec, frames: np.ndarray, audio: np.ndarray | None) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames and optional (S,) float32 mono audio into `path`."""
    with av.open(str(path), "w", container_options={"fflags": "+bitexact"}) as out:  # no random ids or dates
        vs = out.add_stream(spec.video_codec, rate=spec.fps)
        vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
        vs.thread_count = 1
        if spec.video_codec == "libx264":
            # with x264's lookahead some outputs differed from run to run (same input); without it they do not
            vs.options = {"preset": "veryfast", "crf": "18", "threads": "1", "rc-lookahead": "0"}
        else:
            vs.bit_rate = 600_000
        aus = None if audio is None else out.add_stream(spec.audio_codec, rate=spec.audio_rate, layout="mono")
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if aus is not None:
            frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = spec.audio_rate, 0
            out.mux(aus.encode(frame))
            out.mux(aus.encode())


def generate_demo(output: str | Path, seed: int = 0, clips_per_class: int = 12, n_anomalies: int = 6) -> Path:
    """Write the dataset under `output` (overwriting its files) and return the root as a Path."""
    root = Path(output)
    (root / "labels.csv").unlink(missing_ok=True)  # until rewritten, the set is incomplete
    specs = plan_demo(seed, clips_per_class, n_anomalies)
    for spec in specs:
        path = root / spec.uri
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec.label == ANOMALY:
            frames, audio = render_anomaly(spec)
        else:
            appearance, motion, sound = CUES[spec.label]
            frames = render_class_video(spec, appearance, motion)
            audio = render_class_audio(spec, sound)
        write_clip(path, spec, frames, audio if spec.audio_codec else None)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["uri", "label", "split"])
        writer.writerows((s.uri, s.label, s.split) for s in specs)
    return root


def describe() -> str:
    """The cue table as Markdown: which appearance, motion and audio cue each class carries."""
    rows = ["| class | appearance (spatial) | motion (temporal) | audio |", "|---|---|---|---|"]
    rows += [f"| {name} | {' | '.join(CUES[name])} |" for name in DEMO_CLASSES]
    rows.append("| anomaly (never trained on) | flickering colours, noise bursts | ring circling the centre | chirp |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic multistream demo dataset.")
    parser.add_argument("--output", required=True, help="dataset root to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips-per-class", type=int, default=12)
    parser.add_argument("--anomalies", type=int, default=6)
    args = parser.parse_args(argv)
    root = generate_demo(args.output, args.seed, args.clips_per_class, args.anomalies)
    n = len(plan_demo(args.seed, args.clips_per_class, args.anomalies))
    print(f"wrote {n} clips and labels.csv to {root}\n{describe()}")


if __name__ == "__main__":
    main()
