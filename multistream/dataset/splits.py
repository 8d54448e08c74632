"""Splits of the manifest: `train | val | test | anomaly`, and the validation split carved from `train`.

`val` is chosen deterministically (a hash of `validation.seed` and the group, no random state), whole groups
at a time so that related clips never straddle train and val: a UCF101 group (`v_<Class>_gXX_cYY`: the clips
of one group are cut from one long video), a CSV manifest's `group` column, else the video alone. Per class,
`round(fraction × groups)` of its train groups (at least one where the class has two or more, never all of
them) go to `val`, so every class with more than one group has validation videos. A manifest that names its
own `val` videos is kept as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import re
from collections import defaultdict

import numpy as np

SPLITS = ("train", "val", "test", "anomaly")
UCF101_NAME = re.compile(r"^v_(?P<label>[A-Za-z0-9]+)_g(?P<group>\d+)_c\d+\.\w+$")


def group_of(entry) -> str:
    """The group a manifest entry belongs to (see the module docstring)."""
    return entry.group or video_group(entry.video_id)


def video_group(video_id: str) -> str:
    """The group a video id alone tells: UCF101's `<class>_gXX`, else the video itself."""
    match = UCF101_NAME.match(posixpath.basename(video_id))
    if match is not None:
        return f"{match['label'].lower()}_g{int(match['group']):02d}"
    return video_id


def _rank(seed: int, group: str) -> bytes:
    return hashlib.sha1(f"{seed}\0{group}".encode()).digest()


def group_folds(video_ids: list[str], folds: int, seed: int = 0) -> np.ndarray:
    """(N,) int64: each video's fold in 0..folds-1, whole groups (`video_group`) at a time, dealt in a seeded
    hash order, so that fold sizes differ by about one group."""
    groups = sorted({video_group(v) for v in video_ids}, key=lambda group: _rank(seed, group))
    fold = {group: i % folds for i, group in enumerate(groups)}
    return np.array([fold[video_group(v)] for v in video_ids], np.int64)


def carve_validation(entries: list, fraction: float, seed: int = 0) -> list:
    """`entries` (VideoEntry) with whole train groups moved to split "val" (see the module docstring)."""
    if fraction <= 0 or any(entry.split == "val" for entry in entries):
        return entries
    groups = defaultdict(set)  # label -> its train groups
    for entry in entries:
        if entry.split == "train":
            groups[entry.label].add(group_of(entry))
    chosen = set()
    for label in sorted(groups, key=str):
        ranked = sorted(groups[label], key=lambda group: _rank(seed, group))
        if len(ranked) >= 2:
            chosen.update(ranked[:min(len(ranked) - 1, max(1, round(fraction * len(ranked))))])
    return [dataclasses.replace(entry, split="val") if entry.split == "train" and group_of(entry) in chosen
            else entry for entry in entries]
