"""Where `jobs/predict.py` in time windows finds an anomaly inside a long video: the localisation table.

    rows = localisation(models="runs/demo", seeds=range(5), windows=DEMO_WINDOWS, folder=...)
    print("\n".join(format_lines(rows)))

For each seed, a fresh demo archive (clips the trained run never saw) gives two long videos made with
`multistream.demo.longvideo`: its normal clips laid end to end, class after class in an order drawn from the seed,
once with one clip of the demo's anomaly kind placed at a position that moves with the seed, once without.
The batch job runs on all of them at once, and each video's row says whether its top-scoring window overlaps the
inserted clip's interval (anomalous videos) and how many of its windows are flagged (all videos).
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np

from multistream.demo.dataset import ANOMALY, generate_demo
from multistream.demo.longvideo import make_long_video
from multistream.store import storage
from multistream.store.layout import RunRoot

POSITIONS = (0.15, 0.35, 0.5, 0.65, 0.85)  # where the anomaly goes, as a share of the normal clips' duration
DEMO_WINDOWS = "{length_s: 4, stride_s: 2}"  # the demo's clips are 2-4 s: a clip is about one window


def long_videos(folder: Path, seed: int, clips_per_class: int, position: float) -> dict[str, dict]:
    """The seed's two long videos under `folder` → {file name: {"seed", "kind", "anomaly": (start_s, end_s) or
    None, "duration_s"}}."""
    clips = generate_demo(folder / f"clips-{seed}", seed=1000 + seed, clips_per_class=clips_per_class, n_anomalies=1)
    rows = list(csv.DictReader(open(clips / "labels.csv")))
    rng = np.random.default_rng(seed)
    classes = sorted({r["label"] for r in rows if r["label"] != ANOMALY})
    normal = [(str(clips / r["uri"]), r["label"]) for label in rng.permutation(classes)
              for r in rows if r["label"] == label]
    inserted = next((str(clips / r["uri"]), ANOMALY) for r in rows if r["label"] == ANOMALY)
    videos = {}
    (folder / "input").mkdir(parents=True, exist_ok=True)
    plain = make_long_video(folder / "input" / f"normal_{seed}.mp4", normal)
    videos[f"normal_{seed}.mp4"] = {"seed": seed, "kind": "normal", "anomaly": None, "duration_s": plain[-1].end_s}
    segments = make_long_video(folder / "input" / f"anomalous_{seed}.mp4", normal, inserted,
                               position * plain[-1].end_s)
    placed = next(s for s in segments if s.label == ANOMALY)
    videos[f"anomalous_{seed}.mp4"] = {"seed": seed, "kind": "anomalous", "anomaly": (placed.start_s, placed.end_s),
                                       "duration_s": segments[-1].end_s}
    return videos


def localisation(models: str, seeds=range(5), windows: str = DEMO_WINDOWS, clips_per_class: int = 3,
                 folder: str | Path | None = None, overrides: tuple[str, ...] = ()) -> list[dict]:
    """The table's rows, one per long video: seed, kind, anomaly interval, the peak window's interval and score,
    whether they overlap, the windows flagged of all, the threshold its windows were judged at, whether the video
    is flagged; and the detector's calibrated (one-window) threshold."""
    from multistream.jobs import predict as job
    from multistream.predict.bundle import open_bundle
    from multistream.predict.models import Detector

    folder = Path(folder or tempfile.mkdtemp(prefix="localise-"))
    videos = {}
    for n, seed in enumerate(seeds):
        videos |= long_videos(folder, seed, clips_per_class, POSITIONS[n % len(POSITIONS)])
    out = folder / "out"
    sets = [f"video.windows={windows}", *overrides]
    if job.main(["--models", models, "--input", str(folder / "input"), "--output", str(out),
                 *[arg for item in sets for arg in ("--set", item)]]) != 0:
        raise RuntimeError("jobs/predict.py failed")
    calibrated = Detector(open_bundle(models)).threshold
    rows = storage.read_table(RunRoot(str(out)).anomaly).to_pylist()
    table = []
    for video_id, facts in sorted(videos.items(), key=lambda item: (item[1]["kind"], item[1]["seed"])):
        own = next(r for r in rows if r["video_id"] == video_id and r["window"] is None)
        mine = [r for r in rows if r["video_id"] == video_id and r["window"] is not None]
        peak = next(r for r in mine if r["window"] == own["peak_window"])
        anomaly = facts["anomaly"]
        overlaps = anomaly is not None and peak["start_s"] < anomaly[1] and anomaly[0] < peak["end_s"]
        table.append({"video": video_id, **facts, "peak": (peak["start_s"], peak["end_s"]), "peak_score": peak["score"],
                      "overlaps": overlaps, "flagged": sum(r["is_anomaly"] for r in mine), "windows": len(mine),
                      "threshold": peak["threshold"], "video_flagged": own["is_anomaly"], "calibrated": calibrated})
    return table


def format_lines(rows: list[dict]) -> list[str]:
    lines = [f"{'video':<18} {'length':>7} {'anomaly at':>13} {'top window':>13} {'score':>7} {'threshold':>9} "
             f"{'overlap':>7} {'flagged':>9}"]
    for r in rows:
        anomaly = f"{r['anomaly'][0]:5.1f}-{r['anomaly'][1]:5.1f}" if r["anomaly"] else "-"
        peak = f"{r['peak'][0]:5.1f}-{r['peak'][1]:5.1f}"
        overlap = ("yes" if r["overlaps"] else "NO") if r["anomaly"] else "-"
        lines.append(f"{r['video']:<18} {r['duration_s']:6.1f}s {anomaly:>13} {peak:>13} {r['peak_score']:7.4f} "
                     f"{r['threshold']:9.4f} {overlap:>7} {r['flagged']:>4}/{r['windows']:<4}")
    anomalous = [r for r in rows if r["anomaly"]]
    normal = [r for r in rows if not r["anomaly"]]
    lines.append(f"top window overlaps the anomaly: {sum(r['overlaps'] for r in anomalous)}/{len(anomalous)}; "
                 f"anomalous videos flagged: {sum(r['video_flagged'] for r in anomalous)}/{len(anomalous)}; "
                 f"normal videos with no window flagged: {sum(r['flagged'] == 0 for r in normal)}/{len(normal)} "
                 f"(calibrated threshold {rows[0]['calibrated']:.4f}, each video's windows judged at the threshold "
                 "for its number of windows)")
    return lines
