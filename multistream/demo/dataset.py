"""A small labelled synthetic video dataset, generated deterministically from a seed.

    python -m multistream.demo --output runs/demo-data [--seed 0]
    generate_demo("runs/demo-data", seed=0)      # -> Path("runs/demo-data")

Layout: `DIR/<Class>/<class>_<nn>.<ext>`, `DIR/anomaly/anomaly_<nn>.<ext>` and `DIR/labels.csv`
(`uri,label,split`; uri relative to DIR; split train|val|test|anomaly; anomalous clips have label `anomaly`).
The demo names its own `val` clips (a third of each class), enough normal clips no model is fitted on to
calibrate the anomaly threshold.
labels.csv is written last, so its presence means the set is complete.

Each class is a triple of cues, one per stream. Each cue takes three values, one of them shared by two classes,
and each stream confuses a different pair, so a single stream tells 3 of the 4 classes apart while any two of
them identify the class (print `describe()`):

    class           appearance (spatial)   motion (temporal)      audio
    CircleSlide     circle                 horizontal             low
    CircleBob       circle                 vertical               high
    SquareZigzag    square                 diagonal               low
    TriangleZigzag  triangle               diagonal               hiss

- circle/square/triangle: 2-3 outlined shapes of that kind, each with a highlight, in one of three palettes
  drawn per clip (warm: red/orange/yellow on olive-brown; cool: blue/cyan/violet on slate; grey: white, grey
  and charcoal on grey).
- horizontal/vertical/diagonal: shapes travel along one axis (or 36-54 degrees off the horizontal) and bounce
  off the borders, slowly (15-25 px/s at 160 px width) except in 1-2 short bursts per clip (80-120 px/s
  more), so motion varies over time.
- low: a steady 220-420 Hz tone with a harmonic; high: a 1.3-2.2 kHz tone pulsing at 2.5-5 Hz; hiss: steady
  noise in a ~1 kHz band between 2.8 and 4.6 kHz.
Nuisances vary per clip: palette, shape count, size, positions, speeds, brightness, noise, tone frequency,
phases, frame size (160x120 or 128x96), fps (12-18) and duration (2-4 s). About a fifth of the clips
have no audio track (they must be told apart by the other streams). The anomalies are of an unseen
kind: a flickering two-colour background with noise bursts, a white ring circling the centre, a chirp.

Containers/codecs rotate, within each split alike in every class, over mp4 (h264+aac), avi (mpeg4+mp3),
mkv (h264+opus), avi (mpeg4+pcm_s16le) and mkv (mpeg4+flac). Pixels and samples depend only on the seed;
encoders run single-threaded.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from multistream.demo.render import ClipSpec, render_anomaly, render_class_audio, render_class_video
from multistream.streams import STREAMS

DEMO_CLASSES = ["CircleSlide", "CircleBob", "SquareZigzag", "TriangleZigzag"]
CUES: dict[str, tuple[str, str, str]] = {  # class -> (appearance, motion, audio)
    "CircleSlide": ("circle", "horizontal", "low"),
    "CircleBob": ("circle", "vertical", "high"),
    "SquareZigzag": ("square", "diagonal", "low"),
    "TriangleZigzag": ("triangle", "diagonal", "hiss"),
}
ANOMALY = "anomaly"
TEST_SHARE, VAL_SHARE = 1 / 3, 1 / 3  # of each class's clips; the rest is train
# 18 per class: 6 train, 6 val, 6 test; 24 normal test clips, and 24 normal val clips to calibrate the anomaly
# threshold on (`multistream.fuse.anomaly.lognormal_threshold` at these counts). A stream that learned
# its cue gets the 12 clips of the classes it can tell apart and a coin flip on the pair it confuses, so its
# top-1 is under 0.8 of its 0.75 ceiling with probability 79/4096 (at most 2 of the 12 flips right). 12
# anomalies: the detection rate moves in steps of 1/12.
CLIPS_PER_CLASS, N_ANOMALIES = 18, 12
STREAM_CUE = {s: i for i, s in enumerate(STREAMS)}  # each stream's cue: its index in the CUES triples


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


def _encoder(candidates: tuple[str, ...]) -> str:
    for name in candidates:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"none of the encoders {candidates} is available in this PyAV build")


def _split_and_silent(rng: np.random.Generator, n: int, turn: int) -> tuple[dict[int, str], set[int]]:
    """Clip index → split: ~1/3 test, ~1/3 val (while 2 or more clips stay in train), the rest train; and
    ~1/5 of the clips without audio, taken in turn from each split, starting at split number `turn` % 3."""
    perm = [int(i) for i in rng.permutation(n)]
    n_test = round(n * TEST_SHARE)
    n_val = round(n * VAL_SHARE) if n - n_test - round(n * VAL_SHARE) >= 2 else 0
    parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
    order = list(parts.values())
    order = order[turn % 3:] + order[:turn % 3]
    turns = [x for group in itertools.zip_longest(*order) for x in group if x is not None]
    return {i: split for split, members in parts.items() for i in members}, set(turns[: round(n / 5)])


def plan_demo(seed: int = 0, clips_per_class: int = CLIPS_PER_CLASS, n_anomalies: int = N_ANOMALIES) -> list[ClipSpec]:
    """Every clip of the dataset, classes first (in `DEMO_CLASSES` order), then the anomalies."""
    specs = []
    groups = [(kind, name, clips_per_class) for kind, name in enumerate(DEMO_CLASSES)]
    groups.append((len(DEMO_CLASSES), ANOMALY, n_anomalies))
    for kind, name, n in groups:
        splits, silent = _split_and_silent(np.random.default_rng([seed, kind, 1000]), n, kind)
        if name == ANOMALY:
            silent = set(range(n - round(n / 5), n))
        in_split = Counter()
        for i in range(n):
            rng = np.random.default_rng([seed, kind, i, 0])
            split = ANOMALY if name == ANOMALY else splits[i]
            # formats rotate within each split alike in every class: no split's codecs tell its classes apart
            fmt = FORMATS[in_split[split] % len(FORMATS)]
            in_split[split] += 1
            fps = int(rng.choice([12, 15, 15, 18]))
            width, height = (160, 120) if rng.random() < 0.75 else (128, 96)
            specs.append(ClipSpec(
                uri=f"{name}/{name.lower()}_{i:02d}.{fmt.ext}", label=name, split=split,
                key=(seed, kind, i), ext=fmt.ext, video_codec=_encoder(fmt.video),
                audio_codec=None if i in silent else _encoder(fmt.audio), audio_rate=fmt.rate,
                width=width, height=height, fps=fps, n_frames=round(rng.uniform(2.0, 4.0) * fps),
            ))
    return specs


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


def generate_demo(output: str | Path, seed: int = 0, clips_per_class: int = CLIPS_PER_CLASS,
                  n_anomalies: int = N_ANOMALIES) -> Path:
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


def cue_ceiling(streams: tuple[str, ...], labels: list[str], present: dict[str, np.ndarray]) -> float | None:
    """The top-1 the cues of `streams` allow on videos of `labels` (N,), in expectation: a video whose cues in
    the streams it has (`present[stream]`, (N,) bool; a clip without audio has no audio cue) are shared by k
    classes is told apart by at best 1 / k. Any single cue → 0.75 (1/4 for a missing stream), any two → 1.0.
    None where a label is not a demo class (another dataset documents no ceiling)."""
    if not labels or any(label not in CUES for label in labels):
        return None
    chances = []
    for i, label in enumerate(labels):
        seen = _seen_cues(streams, present, i)
        chances.append(1 / sum(_share_cues(other, label, seen) for other in DEMO_CLASSES))
    return float(np.mean(chances))


def cue_accuracy(streams: tuple[str, ...], labels: list[str], predicted: list[str],
                 present: dict[str, np.ndarray]) -> float | None:
    """The share of videos of `labels` (N,) predicted as a class that carries their cues in the streams they have
    (`present` as for `cue_ceiling`): what the cues can tell, free of the coin flip between the classes that
    share them, so 1.0 for any streams that learned their cues. None where a label is not a demo class."""
    if not labels or any(label not in CUES for label in labels):
        return None
    agree = [guess in CUES and _share_cues(guess, label, _seen_cues(streams, present, i))
             for i, (label, guess) in enumerate(zip(labels, predicted, strict=True))]
    return float(np.mean(agree))


def cue_figures(streams: tuple[str, ...], labels: list[str], predicted: list[str],
                present: dict[str, np.ndarray]) -> dict[str, float | None]:
    """{"ceiling": `cue_ceiling`, "cue_accuracy": `cue_accuracy`} of an ablation row: what the fuse job is
    given to judge its rows by (`multistream.fuse.run.CueFigures`)."""
    return {"ceiling": cue_ceiling(streams, labels, present),
            "cue_accuracy": cue_accuracy(streams, labels, predicted, present)}


def _seen_cues(streams: tuple[str, ...], present: dict[str, np.ndarray], i: int) -> list[int]:
    """The cue indices video `i` shows in `streams` (a stream it lacks shows none)."""
    return [STREAM_CUE[s] for s in streams if present[s][i]]


def _share_cues(one: str, other: str, cues: list[int]) -> bool:
    return all(CUES[one][c] == CUES[other][c] for c in cues)


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
    parser.add_argument("--clips-per-class", type=int, default=CLIPS_PER_CLASS)
    parser.add_argument("--anomalies", type=int, default=N_ANOMALIES)
    args = parser.parse_args(argv)
    root = generate_demo(args.output, args.seed, args.clips_per_class, args.anomalies)
    n = len(plan_demo(args.seed, args.clips_per_class, args.anomalies))
    print(f"wrote {n} clips and labels.csv to {root}\n{describe()}")


if __name__ == "__main__":
    main()
