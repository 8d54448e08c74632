"""Tiny real videos for tests, written with PyAV."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# pcm in avi: an mp3 encoder delay would make the muxer shift the video timestamps
AUDIO_CODECS = {".avi": "pcm_s16le", ".mkv": "libopus", ".webm": "libopus"}  # default: aac
AUDIO_RATES = {"libopus": 48000}  # default: 16000


def vfr_timestamps(frames: int, fps: float) -> np.ndarray:
    """(frames,) float64 seconds of the variable-rate clips: intervals cycle through 0.5, 1 and 1.5 / fps."""
    intervals = np.resize([0.5, 1.0, 1.5], max(frames - 1, 0)) / fps
    return np.concatenate([[0.0], np.cumsum(intervals)])


def pattern_frame(t: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame t of a textured background drifting right by 2 px/frame and a square moving down."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:height, :width]
    image = np.roll(texture, 2 * t, axis=1)
    side = max(height // 4, 2)
    top = (3 * t) % max(height - side, 1)
    image[top:top + side, width // 3:width // 3 + side] = 255
    return np.ascontiguousarray(image)


def write_test_video(
    path: str | os.PathLike,
    *,
    frames: int = 30,
    size: tuple[int, int] = (64, 48),
    fps: float = 15,
    codec: str = "libx264",
    audio_tone_hz: float | None = None,
    vfr: bool = False,
    seed: int = 0,
) -> Path:
    """Write `frames` frames of `pattern_frame` at `size` (width, height); the container follows the extension.

    audio_tone_hz: add a mono sine tone (amplitude 0.5) covering the clip. vfr: timestamps follow
    `vfr_timestamps` (needs a container with a fine time base: mp4, mkv, mov).
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=rate)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000) if vfr else 1 / rate
        times = vfr_timestamps(frames, fps) if vfr else np.arange(frames) / float(rate)
        pts = np.round(times / float(video.codec_context.time_base)).astype(int)
        audio, tone = None, np.zeros(0, np.float32)
        if audio_tone_hz is not None:
            audio_codec = AUDIO_CODECS.get(path.suffix.lower(), "aac")
            sample_rate = AUDIO_RATES.get(audio_codec, 16000)
            audio = container.add_stream(audio_codec, rate=sample_rate, layout="mono")
            n = int(round((times[-1] + 1 / fps) * sample_rate))
            tone = (0.5 * np.sin(2 * np.pi * audio_tone_hz * np.arange(n) / sample_rate)).astype(np.float32)
        written = 0  # audio samples so far: audio is interleaved with the video, as real files are
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(t, size, seed), format="rgb24")
            frame.pts, frame.time_base = int(pts[t]), video.codec_context.time_base
            container.mux(video.encode(frame))
            if audio is not None:
                end = len(tone) if t == frames - 1 else int(round(times[t + 1] * sample_rate))
                block = np.ascontiguousarray(tone[None, written:end])
                if block.size:
                    chunk = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                    chunk.sample_rate, chunk.pts, chunk.time_base = sample_rate, written, Fraction(1, sample_rate)
                    container.mux(audio.encode(chunk))
                written = max(written, end)
        container.mux(video.encode())
        if audio is not None:
            container.mux(audio.encode())
    return path


ROOT = Path(__file__).resolve().parents[2]
# extraction shrunk for tiny test videos
SMALL_EXTRACTION = ["--set", "flow.size=[64, 48]", "--set", "spatial.image_size=32", "--set", "sampling.max_seq_len=8",
                    "--set", "sampling.segments=4"]


def run_job_main(job: str, *args: str) -> int:
    """`multistream.jobs.<job>.main()` in this process (so it uses the test session's Ray), shrunk for tiny videos."""
    import importlib

    module = importlib.import_module(f"multistream.jobs.{job}")
    return module.main([*args, *SMALL_EXTRACTION])


def kill_train_worker_when(process, ready, timeout_s: float = 400) -> tuple[int | None, str]:
    """Once `ready()` holds, SIGKILL one Ray Train worker of the job `process` (started with
    start_new_session=True, stdout=PIPE); wait for the job to end. Returns (the killed pid or None, the
    job's output).

    The job's output is read on a thread all along: a pipe nobody reads fills up (64 KiB) and blocks the job
    on its next write, which a slow machine's longer logs reached."""
    import signal
    import threading
    import time

    import psutil

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    killed, deadline = None, time.time() + timeout_s
    try:
        while killed is None and time.time() < deadline and process.poll() is None:
            if ready():
                workers = [p for p in psutil.Process(process.pid).children(recursive=True)
                           if "RayTrainWorker" in " ".join(p.cmdline())]
                if workers:
                    killed = workers[0].pid
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        reader.join(timeout=10)
    return killed, "".join(lines)
