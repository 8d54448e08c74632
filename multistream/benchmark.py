"""Speed and memory of extraction, every figure a ratio against a baseline measured in the same run.

- sequential: the plain loop (decode+flow → spatial → audio per video, default threads) over the videos;
- standalone: each stage alone on one thread over the same videos → its core-seconds; the ceiling is
  videos ÷ (Σ stage core-seconds ÷ cores), what perfect overlap on this machine could reach;
- pipeline: the Ray Data job itself (`run_extract`), its start-up, steady-state rate and process-tree memory;
- memory vs length: peak RSS of the per-video core on low-resolution videos of growing length;
- GPU (where CUDA is at hand): spatial img/s with AMP vs fp32, RAFT pairs/s.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from multistream.config import Config
from multistream.extract import decode_video
from multistream.manifest import VideoEntry

log = logging.getLogger(__name__)

STAGES = ("decode", "spatial", "audio")


def _models(cfg: Config):
    from multistream.audio import AudioEmbedder
    from multistream.flow import make_flow_estimator
    from multistream.spatial import SpatialEmbedder

    return (make_flow_estimator(cfg.flow), SpatialEmbedder(cfg.spatial),
            AudioEmbedder(cfg.audio, sample_rate=cfg.video.audio_rate))


def sequential(entries: list[VideoEntry], cfg: Config) -> dict:
    """The plain loop with default threads: wall seconds, videos/s, frames/s."""
    estimator, spatial, audio = _models(cfg)
    frames, started = 0, time.perf_counter()
    for entry in entries:
        try:
            decoded = decode_video(entry.uri, cfg, estimator)
        except Exception:  # noqa: BLE001 - the pipeline skips bad videos too
            continue
        spatial(decoded.frames)
        audio(decoded.wave)
        frames += decoded.facts["n_frames"]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "videos_per_s": len(entries) / seconds, "frames_per_s": frames / seconds}


def standalone(entries: list[VideoEntry], cfg: Config) -> dict:
    """Each stage alone on one thread: {stage: {core_s, videos_per_s}} (core-seconds = process CPU time)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    estimator, spatial, audio = _models(cfg)
    decoded, start = [], time.process_time()
    for entry in entries:
        try:
            decoded.append(decode_video(entry.uri, cfg, estimator))
        except Exception:  # noqa: BLE001
            pass
    core = {"decode": time.process_time() - start}
    for name, run in (("spatial", lambda d: spatial(d.frames)), ("audio", lambda d: audio(d.wave))):
        start = time.process_time()
        for video in decoded:
            run(video)
        core[name] = time.process_time() - start
    return {name: {"core_s": s, "videos_per_s": len(entries) / s} for name, s in core.items()}


def decode_peak_rss(entries: list[VideoEntry], cfg: Config) -> dict:
    """Decode+flow+sampling of the one video in `entries`: frames used and the process's peak RSS."""
    from multistream.flow import make_flow_estimator

    decoded = decode_video(entries[0].uri, cfg, make_flow_estimator(cfg.flow))
    return {"n_frames": decoded.facts["n_frames"], "peak_rss_mb": peak_rss_mb()}


MEASURES = {measure.__name__: measure for measure in (sequential, standalone, decode_peak_rss)}


def in_fresh_process(measure: str, entries: list[VideoEntry], config_path: str | None, overrides: list[str],
                     env: dict[str, str] | None = None) -> dict:
    """Run MEASURES[measure] in a new interpreter (environment `env` added to this one's), return its dict.

    A fresh process per baseline: no model, allocator or thread state leaks from one measure to the next, and
    allocator settings (read by glibc only at process start) can be those of the pipeline's workers.
    """
    payload = json.dumps({"measure": measure, "config": config_path, "overrides": overrides,
                          "entries": [asdict(entry) for entry in entries]})
    result = subprocess.run([sys.executable, "-m", "multistream.benchmark"], input=payload, capture_output=True,
                            text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"benchmark measure {measure} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure_from_stdin() -> None:
    from multistream.config import load_config

    request = json.load(sys.stdin)
    cfg = load_config(request["config"], request["overrides"])
    entries = [VideoEntry(**entry) for entry in request["entries"]]
    print(json.dumps(MEASURES[request["measure"]](entries, cfg)))


def worker_env(cfg: Config) -> dict[str, str]:
    """The environment of the pipeline's workers (allocator settings, threads), for the baselines beside it."""
    from multistream.ray.session import WORKER_ENV

    return {**WORKER_ENV, "OMP_NUM_THREADS": str(cfg.ray.torch_threads)}


class TreeMemory:
    """Peak proportional set size (PSS) of this process and all its descendants (Ray's included), sampled.

    Reading PSS walks every page table of the tree: sampled every 0.25 s it took a quarter of a core from
    the pipeline it measures on 2 cores, every 2 s a fortieth."""

    def __init__(self, interval: float = 2.0):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        root = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.interval)


def pipeline(entries: list[VideoEntry], cfg: Config, output: str) -> dict:
    """The Ray Data job on the same videos: wall, start-up (to the first committed video), steady state.

    Ray itself is started first and timed apart (`ray_init_s`): on a cluster it is already running when a job
    is submitted. Steady state is the rate between the 10th and 90th percentile of the commit times, so
    neither the actors' start nor the last batches' drain counts in it.
    """
    from multistream.ray.extract import run_extract
    from multistream.ray.session import init_ray

    times: list[float] = []
    started = time.perf_counter()
    init_ray(cfg)
    ray_init_s = time.perf_counter() - started
    started = time.perf_counter()
    with TreeMemory() as memory:
        summary = run_extract(replace(cfg, paths=replace(cfg.paths, output=output)), entries,
                              on_video=lambda row: times.append(time.perf_counter() - started))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "videos_per_s": len(entries) / seconds, "ray_init_s": ray_init_s,
            "startup_s": times[0] if times else None, "steady_videos_per_s": steady_rate(times),
            "ok": summary.ok, "errors": len(summary.errors), "peak_pss_mb": memory.peak_mb}


def steady_rate(times: list[float]) -> float:
    """Videos per second between the 10th and 90th percentile of the commit times (seconds, ascending)."""
    if len(times) < 10:
        return float("nan")
    low, high = int(0.1 * len(times)), int(0.9 * len(times))
    return (high - low) / (times[high] - times[low]) if times[high] > times[low] else float("nan")


def pipeline_stage_rates(output: str) -> dict:
    """Per-stage videos/s inside the pipeline, from the per-video stage seconds in `videos/`."""
    from multistream import schema, storage

    videos = storage.read_table(storage.join(output, schema.VIDEOS)).to_pandas()
    videos = videos[videos.status == "ok"]
    seconds = {"decode": (videos.decode_s + videos.flow_s).sum(), "spatial": videos.spatial_s.sum(),
               "audio": videos.audio_s.sum()}
    return {name: len(videos) / s for name, s in seconds.items()}


def write_long_video(path: Path, seconds: float, fps: int = 15, size: tuple[int, int] = (160, 120)) -> Path:
    """A low-resolution test video of `seconds` (moving texture + a tone), written fast with libx264."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (size[1], size[0] * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for t in range(int(seconds * fps)):
            shift = (3 * t) % size[0]
            image = np.ascontiguousarray(texture[:, shift:shift + size[0]])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def memory_vs_length(config_path: str | None, overrides: list[str], env: dict[str, str],
                     lengths=(10, 60, 600)) -> list[dict]:
    """Peak RSS of decode+flow+sampling (one fresh process each, environment `env`) on videos of `lengths` s."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seconds in lengths:
            path = write_long_video(Path(folder) / f"long_{seconds}s.mp4", seconds)
            entry = VideoEntry(f"long_{seconds}s", str(path), None, None)
            rows.append({"video_s": seconds,
                         **in_fresh_process("decode_peak_rss", [entry], config_path, overrides, env)})
    return rows


def gpu_figures(cfg: Config, frames: int = 512, pairs: int = 64) -> dict | None:
    """Spatial img/s with AMP vs the same timm model in fp32, and RAFT pairs/s; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    import timm

    size = cfg.spatial.image_size
    model = timm.create_model(cfg.spatial.model, pretrained=False, num_classes=0).cuda().eval()
    model = model.to(memory_format=torch.channels_last)
    batch = torch.randn(cfg.spatial.batch_size, 3, size, size, device="cuda").to(memory_format=torch.channels_last)

    def rate(amp: bool) -> float:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            model(batch)
            torch.cuda.synchronize()
            start, done = time.perf_counter(), 0
            while done < frames:
                model(batch)
                done += len(batch)
            torch.cuda.synchronize()
        return done / (time.perf_counter() - start)

    figures = {"device": torch.cuda.get_device_name(), "spatial_fp32_img_s": rate(False),
               "spatial_amp_img_s": rate(True)}
    figures["spatial_amp_speedup"] = figures["spatial_amp_img_s"] / figures["spatial_fp32_img_s"]
    if cfg.flow.backend.startswith("raft") and cfg.flow.weights:
        from multistream.flow import make_flow_estimator

        estimator = make_flow_estimator(cfg.flow)
        width, height = cfg.flow.size
        video = np.random.default_rng(0).integers(0, 256, (pairs + 1, height, width, 3), dtype=np.uint8)
        estimator(video[:2])
        start = time.perf_counter()
        estimator(video)
        figures["raft_pairs_s"] = pairs / (time.perf_counter() - start)
    return figures


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cores() -> int:
    return len(os.sched_getaffinity(0))


def run_all(cfg: Config, entries: list[VideoEntry], config_path: str | None, overrides: list[str],
            lengths: list[int], scratch: str) -> dict:
    """Every measurement of the module on `entries`, as the dict written to reports/benchmark.json.

    Baselines run in fresh processes: the plain loop as anyone would run it, the same loop with the workers'
    allocator settings (so that what the pipeline gains from them alone shows), and the stages standalone on
    one thread with the workers' settings (the ceiling is what the pipeline's own workers could reach).
    """
    n, env = len(entries), worker_env(cfg)
    log.info("benchmark on %d videos, %d cores: sequential loop", n, cores())
    seq = in_fresh_process("sequential", entries, config_path, overrides)
    log.info("sequential loop with the workers' allocator settings")
    seq_tuned = in_fresh_process("sequential", entries, config_path, overrides, env)
    log.info("each stage standalone")
    alone = in_fresh_process("standalone", entries, config_path, overrides, env)
    log.info("Ray pipeline")
    pipe = pipeline(entries, cfg, scratch)
    inside = pipeline_stage_rates(scratch)
    ceiling = n / (sum(stage["core_s"] for stage in alone.values()) / cores())
    return {
        "videos": n, "cores": cores(),
        "backends": {"flow": cfg.flow.backend, "spatial": cfg.spatial.model, "image_size": cfg.spatial.image_size},
        "sequential": seq, "sequential_worker_env": seq_tuned, "pipeline": pipe,
        "speedup_vs_sequential": pipe["videos_per_s"] / seq["videos_per_s"],
        "steady_speedup_vs_sequential": pipe["steady_videos_per_s"] / seq["videos_per_s"],
        "speedup_vs_sequential_worker_env": pipe["videos_per_s"] / seq_tuned["videos_per_s"],
        "ceiling_videos_per_s": ceiling,
        "fraction_of_ceiling": pipe["steady_videos_per_s"] / ceiling,
        "startup_s": pipe["startup_s"],
        "fixed_cost_s": pipe["seconds"] - n / pipe["steady_videos_per_s"],
        "stages": {name: {"pipeline_videos_per_s": inside[name], "standalone_videos_per_s": alone[name]["videos_per_s"],
                          "ratio": inside[name] / alone[name]["videos_per_s"], "standalone_core_s": alone[name]["core_s"]}
                   for name in STAGES},
        "peak_rss_mb": {"pipeline_tree_pss": pipe["peak_pss_mb"], "benchmark_driver": peak_rss_mb(),
                        "per_video_length": memory_vs_length(config_path, overrides, env, lengths) if lengths else []},
        "gpu": gpu_figures(cfg),
    }


def format_table(report: dict) -> str:
    """The printed summary of a benchmark report."""
    seq, tuned, pipe = report["sequential"], report["sequential_worker_env"], report["pipeline"]
    lines = [
        f"extraction benchmark: {report['videos']} videos, {report['cores']} cores, flow={report['backends']['flow']}, "
        f"spatial={report['backends']['spatial']}@{report['backends']['image_size']}",
        f"{'':28}{'videos/s':>10}{'frames/s':>10}{'seconds':>9}",
        f"{'sequential loop':28}{seq['videos_per_s']:>10.2f}{seq['frames_per_s']:>10.1f}{seq['seconds']:>9.1f}",
        f"{'  with workers allocator':28}{tuned['videos_per_s']:>10.2f}{tuned['frames_per_s']:>10.1f}{tuned['seconds']:>9.1f}",
        f"{'ray pipeline (end to end)':28}{pipe['videos_per_s']:>10.2f}{'':>10}{pipe['seconds']:>9.1f}",
        f"{'ray pipeline (steady)':28}{pipe['steady_videos_per_s']:>10.2f}",
        f"{'ceiling (Σ stage core-s/cores)':28}{report['ceiling_videos_per_s']:>10.2f}",
        f"speedup vs sequential: {report['speedup_vs_sequential']:.2f}x end to end, "
        f"{report['steady_speedup_vs_sequential']:.2f}x steady; fraction of ceiling: {report['fraction_of_ceiling']:.0%}; "
        f"start-up {report['startup_s']:.1f} s to the first video (+ ray.init {pipe['ray_init_s']:.1f} s); "
        f"fixed cost {report['fixed_cost_s']:.1f} s (wall - videos/steady rate)",
        f"speedup vs the loop with the workers' allocator settings: {report['speedup_vs_sequential_worker_env']:.2f}x "
        "end to end",
        f"{'stage':12}{'pipeline v/s':>14}{'standalone v/s':>16}{'ratio':>8}{'core-s':>9}",
    ]
    for name, stage in report["stages"].items():
        lines.append(f"{name:12}{stage['pipeline_videos_per_s']:>14.2f}{stage['standalone_videos_per_s']:>16.2f}"
                     f"{stage['ratio']:>8.2f}{stage['standalone_core_s']:>9.1f}")
    memory = report["peak_rss_mb"]
    lines.append(f"peak memory: pipeline process tree {memory['pipeline_tree_pss']:.0f} MB (PSS)")
    for row in memory["per_video_length"]:
        lines.append(f"  decode+flow of a {row['video_s']:>4} s video ({row['n_frames']} frames used): "
                     f"peak RSS {row['peak_rss_mb']:.0f} MB")
    if report.get("gpu"):
        lines.append(f"gpu: {json.dumps(report['gpu'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    _measure_from_stdin()
