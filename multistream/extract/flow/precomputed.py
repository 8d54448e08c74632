"""Precomputed optical flow (`flow.backend: precomputed`): per-frame flow images computed elsewhere — the widely
shared UCF101 TV-L1 flow, FlowNet 2.0 flow, mmaction2's or TSN's extraction — read instead of computed.

    flow.precomputed.layout   files of the pair of source frames i → i+1 (i from `first_index`)
    mmaction                  ROOT/VIDEO/flow_x_00001.jpg  ROOT/VIDEO/flow_y_00001.jpg   (mmaction2 rawframes, TSN)
    uv                        ROOT/u/VIDEO/frame000001.jpg ROOT/v/VIDEO/frame000001.jpg  (UCF101 tvl1_flow)

ROOT is `flow.precomputed.root` (a folder or an s3:// prefix); VIDEO comes from the video's id by
`flow.precomputed.video_dir`: "{path}" (the id without its extension: mmaction2's `Class/v_Class_g01_c01`, the
mmaction layout's default) or "{stem}" (the file name without it: `v_Class_g01_c01`, the uv layout's). Each image
is one grayscale component whose value v maps linearly onto a displacement: d = v * 2b / 255 - b, b = `bound_px`
(the tools' (clip(d, ±b) + b) * 255 / 2b with b = 20, the same mapping `flow/` stores).

The decoder asks a per-video estimator (`PrecomputedFlow.for_video`) for the pairs of the frames it decodes, in
order, as it asks any backend: each call returns the next len(frames) - 1 pairs, resized to the frames' size with
the vectors scaled by it (flow images of 341x256 feed `flow.size` 320x240), so sampling, `flow/` and the motion CNN
take them as they take computed flow. Pairs join consecutive SOURCE frames: a video that `video.max_fps`
decimates is an error row (the decoder checks), as is a folder without the pairs asked for, but for at most
`missing_pairs` at its end (decoders count a video's last frames differently), where its last pair repeats.
"""

from __future__ import annotations

import asyncio
import posixpath

import cv2
import fsspec.asyn
import numpy as np

from multistream.config import FlowConfig
from multistream.extract.errors import VideoError
from multistream.extract.flow.base import check_frames
from multistream.store import storage

# layout → (x file, y file) under ROOT, from VIDEO and the file's index; the default video_dir
LAYOUTS = {
    "mmaction": ("{video}/flow_x_{index:05d}.jpg", "{video}/flow_y_{index:05d}.jpg", "{path}"),
    "uv": ("u/{video}/frame{index:06d}.jpg", "v/{video}/frame{index:06d}.jpg", "{stem}"),
}


def video_folder(video_id: str, template: str) -> str:
    """VIDEO of `video_id` by `template` ("{path}" | "{stem}", or a pattern using both)."""
    path = posixpath.splitext(video_id.strip("/"))[0]
    return template.format(path=path, stem=posixpath.basename(path))


def component(data: bytes, bound_px: float) -> np.ndarray:
    """One flow image's bytes → (H, W) float32 displacement in pixels."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise VideoError("undecodable flow image")
    return image.astype(np.float32) * np.float32(2.0 * bound_px / 255.0) - np.float32(bound_px)


def resized(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 2) float32 flow → (height, width, 2), the vectors scaled with the image (in pixels of the new size)."""
    h, w = flow.shape[:2]
    if (h, w) == (height, width):
        return flow
    shrink = height <= h and width <= w
    out = cv2.resize(flow, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out * np.array([width / w, height / h], np.float32)


def _fetch(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes | None]:
    """Each file's bytes, concurrently on an object store; None for a file that is not there."""
    if not isinstance(fs, fsspec.asyn.AsyncFileSystem):
        def read(path: str) -> bytes | None:
            try:
                return fs.cat_file(path)
            except FileNotFoundError:
                return None

        return [read(p) for p in paths]

    async def fetch_all():
        return await asyncio.gather(*(fs._cat_file(p) for p in paths), return_exceptions=True)

    results = fsspec.asyn.sync(fs.loop, fetch_all)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, FileNotFoundError):
            raise result
    return [None if isinstance(r, BaseException) else r for r in results]


class VideoFlow:
    """The flow of one video's folder, pair after pair, as `FlowEstimator` calls ask for it."""

    def __init__(self, cfg: FlowConfig, video_id: str):
        pc = cfg.precomputed
        x_file, y_file, default_dir = LAYOUTS[pc.layout]
        self.pc, self.video = pc, video_folder(video_id, pc.video_dir or default_dir)
        self.fs, root = storage.filesystem(pc.root)
        self.files = tuple(posixpath.join(root, name) for name in (x_file, y_file))
        self.next_pair, self.missing, self.last = 0, 0, None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames (only their size and count matter) → (N-1, H, W, 2) float32: the next N-1
        pairs of the folder."""
        check_frames(frames)
        n, height, width = len(frames) - 1, frames.shape[1], frames.shape[2]
        indices = range(self.pc.first_index + self.next_pair, self.pc.first_index + self.next_pair + n)
        paths = [f.format(video=self.video, index=i) for i in indices for f in self.files]
        data = _fetch(self.fs, paths)
        out = np.empty((n, height, width, 2), np.float32)
        for k in range(n):
            x, y = data[2 * k], data[2 * k + 1]
            if x is None or y is None:
                out[k] = self._missing(paths[2 * k + (x is not None)])
                continue
            if self.missing:
                raise VideoError(f"precomputed flow: {paths[2 * k]} follows missing pairs")
            self.last = resized(np.stack([component(x, self.pc.bound_px), component(y, self.pc.bound_px)], -1),
                                height, width)
            out[k] = self.last
        self.next_pair += n
        return out

    def _missing(self, path: str) -> np.ndarray:
        self.missing += 1
        if self.last is None or self.missing > self.pc.missing_pairs:
            found = "" if self.last is None else f" after its first {self.next_pair} pairs"
            raise VideoError(f"precomputed flow: no {path} (the folder of {self.video} ends{found}; "
                             f"flow.precomputed.missing_pairs is {self.pc.missing_pairs})")
        return self.last


class PrecomputedFlow:
    """The `precomputed` backend: `for_video(video_id)` is the estimator of one video (see the module)."""

    def __init__(self, cfg: FlowConfig, threads: int | None = None):
        if not cfg.precomputed.root:
            raise ValueError("flow.precomputed.root: flow.backend precomputed reads its flow images from here")
        if threads is not None:
            cv2.setNumThreads(threads)
        self.cfg = cfg

    def for_video(self, video_id: str) -> VideoFlow:
        return VideoFlow(self.cfg, video_id)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        raise TypeError("precomputed flow belongs to one video: call for_video(video_id) first")
