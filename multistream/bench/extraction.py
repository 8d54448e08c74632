"""The extraction job (Ray Data, `run_extract`) against its baselines of the same run.

- sequential and standalone (`baselines`, fresh processes): the plain loop, and each stage alone on one
  thread → its core-seconds; the ceiling is videos ÷ (Σ stage core-seconds ÷ cores), what perfect overlap
  on this machine could reach;
- pipeline: the Ray Data job itself, its start-up, steady-state rate and process-tree memory;
- memory vs length: peak RSS of the per-video core on low-resolution videos of growing length;
- memory vs frame rate: the same on a 25 fps clip, a 240 fps clip and a bomb of tiny frames 100 µs apart, each
  as long as the shortest of those videos.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace

from multistream.bench.baselines import STAGES
from multistream.bench.fresh import in_fresh_process
from multistream.bench.memory import TreeMemory, memory_vs_length, memory_vs_rate, peak_rss_mb
from multistream.config import Config
from multistream.dataset.manifest import VideoEntry

log = logging.getLogger(__name__)


@dataclass
class PipelineRun:
    seconds: float
    videos_per_s: float
    ray_init_s: float
    startup_s: float | None  # to the first committed video
    steady_videos_per_s: float
    ok: int
    errors: int
    peak_pss_mb: float


@dataclass
class StageFigures:
    pipeline_videos_per_s: float
    standalone_videos_per_s: float
    ratio: float
    standalone_core_s: float


@dataclass
class ExtractionReport:
    """The extraction keys of reports/benchmark.json (docs/design.md#benchmark-method)."""

    videos: int
    cores: int
    backends: dict
    sequential: dict  # baselines.LoopResult
    sequential_worker_env: dict  # the same loop with the workers' allocator settings
    pipeline: PipelineRun
    speedup_vs_sequential: float
    steady_speedup_vs_sequential: float
    speedup_vs_sequential_worker_env: float
    ceiling_videos_per_s: float
    fraction_of_ceiling: float
    startup_s: float | None
    fixed_cost_s: float  # wall - videos / steady rate
    stages: dict[str, StageFigures]
    peak_rss_mb: dict


def cores() -> int:
    return len(os.sched_getaffinity(0))


def steady_rate(times: list[float]) -> float:
    """Videos per second between the 10th and 90th percentile of the commit times (seconds, ascending); NaN for
    fewer than 10 distinct commit times (videos committed in a few time-grouped commits give no rate)."""
    if len(set(times)) < 10:
        return float("nan")
    low, high = int(0.1 * len(times)), int(0.9 * len(times))
    return (high - low) / (times[high] - times[low]) if times[high] > times[low] else float("nan")


def pipeline(entries: list[VideoEntry], cfg: Config, output: str) -> PipelineRun:
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
    return PipelineRun(seconds, len(entries) / seconds, ray_init_s, times[0] if times else None,
                       steady_rate(times), summary.ok, len(summary.errors), memory.peak_mb)


def extract(cfg: Config, entries: list[VideoEntry], output: str) -> None:
    """The extraction job on `entries` into the run root `output`, unmeasured (input of the other sections)."""
    from multistream.ray.extract import run_extract
    from multistream.ray.session import init_ray

    init_ray(cfg)
    run_extract(replace(cfg, paths=replace(cfg.paths, output=output)), entries)


def pipeline_stage_rates(output: str) -> dict[str, float]:
    """Per-stage videos/s inside the pipeline, from the per-video stage seconds in `videos/`."""
    from multistream.store import storage
    from multistream.store.layout import RunRoot

    videos = storage.read_table(RunRoot(output).videos).to_pandas()
    videos = videos[videos.status == "ok"]
    seconds = {"decode": (videos.decode_s + videos.flow_s).sum(), "spatial": videos.spatial_s.sum(),
               "audio": videos.audio_s.sum()}
    return {name: len(videos) / s for name, s in seconds.items()}


def measure(cfg: Config, entries: list[VideoEntry], config_path: str | None, overrides: list[str],
            lengths: list[int], scratch: str) -> ExtractionReport:
    """Every extraction figure on `entries`; the pipeline writes its run root at `scratch`.

    Baselines run in fresh processes: the plain loop as anyone would run it, the same loop with the workers'
    allocator settings (so that what the pipeline gains from them alone shows), and the stages standalone on
    one thread with the workers' settings (the ceiling is what the pipeline's own workers could reach).
    """
    from multistream.ray.worker_env import worker_env

    n, env = len(entries), worker_env(cfg.ray.torch_threads)
    request = {"entries": [asdict(entry) for entry in entries]}

    def baseline(name: str, with_env: dict | None = None) -> dict:
        return in_fresh_process(f"multistream.bench.baselines:{name}", config_path, overrides, request, with_env)

    log.info("benchmark on %d videos, %d cores: sequential loop", n, cores())
    seq = baseline("sequential")
    log.info("sequential loop with the workers' allocator settings")
    seq_tuned = baseline("sequential", env)
    log.info("each stage standalone")
    alone = baseline("standalone", env)
    log.info("Ray pipeline")
    pipe = pipeline(entries, cfg, scratch)
    inside = pipeline_stage_rates(scratch)
    ceiling = n / (sum(stage["core_s"] for stage in alone.values()) / cores())
    stages = {name: StageFigures(inside[name], alone[name]["videos_per_s"], inside[name] / alone[name]["videos_per_s"],
                                 alone[name]["core_s"]) for name in STAGES}
    return ExtractionReport(
        videos=n, cores=cores(),
        backends={"flow": cfg.flow.backend, "spatial": cfg.spatial.model, "image_size": cfg.spatial.image_size},
        sequential=seq, sequential_worker_env=seq_tuned, pipeline=pipe,
        speedup_vs_sequential=pipe.videos_per_s / seq["videos_per_s"],
        steady_speedup_vs_sequential=pipe.steady_videos_per_s / seq["videos_per_s"],
        speedup_vs_sequential_worker_env=pipe.videos_per_s / seq_tuned["videos_per_s"],
        ceiling_videos_per_s=ceiling, fraction_of_ceiling=pipe.steady_videos_per_s / ceiling,
        startup_s=pipe.startup_s, fixed_cost_s=pipe.seconds - n / pipe.steady_videos_per_s, stages=stages,
        peak_rss_mb={"pipeline_tree_pss": pipe.peak_pss_mb, "benchmark_driver": peak_rss_mb(),
                     "per_video_length": memory_vs_length(config_path, overrides, env, lengths) if lengths else [],
                     "per_frame_rate": memory_vs_rate(config_path, overrides, env, min(lengths)) if lengths else []},
    )


def format_lines(report: dict) -> list[str]:
    """The printed summary of the extraction keys of a benchmark report (as read back from JSON)."""
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
    for row in memory.get("per_frame_rate", []):
        lines.append(f"  decode+flow of the {row['clip']} clip ({row['source_fps']:.0f} fps, {row['n_frames']} frames "
                     f"kept): peak RSS {row['peak_rss_mb']:.0f} MB, {row['ratio']:.2f}x the 25 fps clip's")
    return lines
