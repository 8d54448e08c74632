"""One video through a trained run in this process (no Ray): its top classes, anomaly score and verdict; in
time windows, its score timeline too.

    python -m multistream.predict clip.mp4 --models runs/demo
    python -m multistream.predict camera.mp4 --models runs/demo --set "video.windows={length_s: 8, stride_s: 4}"
"""

from __future__ import annotations

import argparse
import functools
import logging
import posixpath
import sys
import time

import numpy as np

from multistream.config import Config, ConfigError, load_config
from multistream.dataset.manifest import VideoEntry
from multistream.extract.rows import embedded_table
from multistream.fuse.windows import videos_only
from multistream.predict.batch import HeadsStep, TemporalStep, score_table
from multistream.predict.bundle import Bundle, BundleError, open_bundle
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.report.timeline import timeline_text
from multistream.store import schema
from multistream.store.uris import redact, redact_logs, scrub


def predict_video(uri: str, bundle: Bundle, cfg: Config) -> dict:
    """One video through extraction and every model, in this process → {"video_id", "classes": [(label,
    score), ...] best first, "scores" (C,), "anomaly_score", "is_anomaly", "threshold"}, and under video.windows
    "windows": its window rows of `anomaly/` (window, start_s, end_s, score, is_anomaly, threshold) each with
    its "predicted" class, and "window_threshold", the video's own figures aggregated from them as the batch job
    does. Raises ValueError
    for an unreadable video."""
    from multistream.extract.processor import VideoProcessor

    entry = VideoEntry(posixpath.basename(redact(uri).rstrip("/")), uri, None, None)  # no query string in the id
    # the steps the batch job's extraction runs on the same arrays: the motion CNN on each video's (or window's)
    # flow right after its decode (loaded with the first decoded one: an unreadable video needs no model), the
    # heads on its sequences
    motion_cnn = functools.cache(lambda: TemporalEmbedder(bundle, cfg.motion_cnn.device,
                                                          cfg.motion_cnn.embed_batch_size))
    temporal = TemporalStep(lambda flow, positions: motion_cnn()(flow, positions))
    row = VideoProcessor(cfg, after_decode=temporal)(entry)
    if row["video"]["status"] == "ok":
        row, = HeadsStep(VideoEmbedder(bundle, cfg.rnn.device, cfg.rnn.batch_size))([row])
    if row["video"]["status"] != "ok":
        raise ValueError(f"{redact(uri)}: {row['video']['error']}")
    detector = Detector(bundle)
    predictions, anomaly = score_table(embedded_table([row]), bundle.streams, Classifier(bundle), detector,
                                       cfg.video.windows)
    video, = videos_only(predictions).to_pylist()
    screened, = videos_only(anomaly).to_pylist()
    result = {"video_id": entry.video_id, "classes": list(zip(video["top_labels"], video["top_scores"], strict=True)),
              "scores": np.asarray(video["scores"], np.float64), "anomaly_score": float(screened["score"]),
              "is_anomaly": bool(screened["is_anomaly"]), "threshold": float(screened.get("threshold", detector.threshold))}
    if schema.is_windowed(anomaly.schema):
        classes = [r["predicted"] for r in predictions.to_pylist() if r["window"] is not None]
        result["windows"] = [r | {"predicted": label} for r, label in
                             zip([r for r in anomaly.to_pylist() if r["window"] is not None], classes, strict=True)]
        result["window_threshold"] = float(result["windows"][0]["threshold"])
    return result


def format_result(result: dict, bundle: Bundle) -> str:
    lines = [f"{result['video_id']}: top {len(result['classes'])} of {len(bundle.classes)} classes "
             f"(linear SVM margins over {'+'.join(bundle.streams)})"]
    lines += [f"  {rank}. {label:<24} {score:+.4f}" for rank, (label, score) in enumerate(result["classes"], 1)]
    verdict = "ANOMALY" if result["is_anomaly"] else "normal"
    lines.append(f"anomaly score {result['anomaly_score']:.4f} (threshold {result['threshold']:.4f}): {verdict}")
    if "windows" in result:
        windows = result["windows"]
        lines += ["", timeline_text(result["video_id"], windows, result["window_threshold"],
                                    [w["predicted"] for w in windows])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multistream.predict", description="Classify one video and "
                                     "screen it for anomalies with a trained run, in this process (no Ray).")
    parser.add_argument("video", help="a video file: local path or URI (s3://...)")
    parser.add_argument("--models", required=True, metavar="RUN_ROOT_OR_BUNDLE",
                        help="a trained run root, its models/ folder or models/bundle.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a resource setting, e.g. spatial.device=cpu (extraction settings come from the bundle)")
    args = parser.parse_args(argv)
    redact_logs()  # no URL's credentials or query string in a log line
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        bundle = open_bundle(args.models)
        cfg = bundle.config(load_config(None, args.overrides), args.overrides)
        bundle.check_weights(cfg)
        result = predict_video(args.video, bundle, cfg)
    except (BundleError, ConfigError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: {scrub(str(error), args.video)}\n")
    print(format_result(result, bundle))
    print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
