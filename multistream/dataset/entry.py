"""One video to process: the unit every manifest source gives (`multistream.dataset.manifest`)."""

from __future__ import annotations

from dataclasses import dataclass

# what FFmpeg decodes in common archives: the default of `dataset.extensions` (a file with another extension is
# counted as skipped, never read)
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts",
                    ".m2ts", ".mts", ".3gp", ".ogv", ".mxf", ".vob")


@dataclass(frozen=True, slots=True)
class VideoEntry:
    video_id: str  # stable id: the path relative to the input root, a shard member's name, or a manifest's own
    uri: str  # what a worker opens: a path, an s3:// or http(s):// URI, or a tar member (`store.members`)
    label: str | None
    split: str | None  # "train" | "val" | "test" | "anomaly" | None
    group: str | None = None  # a CSV manifest's `group`: clips that must stay on one side of train/val
