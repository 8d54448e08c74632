"""The list of videos to process, with labels and train/test splits, from one of four sources.

In priority order:
1. `labels` = a CSV file URI: header with a path column (`uri`, `path` or `file`; relative to the input or
   absolute), optional `label` and `split` columns. Only the files it names are used.
2. `labels` = a folder with UCF101 split files (`trainlist0{split}.txt`, `testlist0{split}.txt`, optional
   `classInd.txt`): every video under the input; the split by membership, the label from the list's folder.
3. no `labels` but `<input>/labels.csv` exists: as 1.
4. file names alone: UCF101's `v_<Class>_gXX_cYY.*` gives the class, and the split by the official group rule
   (split 1 tests groups 1-7, split 2 groups 8-14, split 3 groups 15-21); any other file takes its parent
   folder's name as label (None at the top level) and no split.

A CSV may also name a `group` column (clips of one source, kept on one side of the validation split) and
`val` in its `split` column. With a `validation` config, `val` is carved from `train` (`multistream.dataset.splits`).
Labels are bounded (`config.DatasetConfig`: classes, characters a label): past them the manifest is refused.

`video_id` is the video's posix path relative to the input, e.g. `ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`.
The listing and the CSV are read as streams (an archive of 10^6 videos costs ~300 bytes of memory each).

The input may also be a brace pattern (`shards/train-{0000..0099}.tar`), hold WebDataset shards (`.tar`: each
member with a video extension is a video, labelled by its `.json` / `.cls` member, `multistream.dataset.webdataset`)
or be a manifest file (`.jsonl`, `.csv`, `.parquet` of `uri[,video_id][,label][,split][,group]`; local, `s3://`
or `http(s)://` URIs: `multistream.dataset.sources`). Only files with an extension of `dataset.extensions` are
videos; the others are counted by extension (`skipped`).

CLI: `python -m multistream.dataset.manifest INPUT [--labels URI] [--split N] [--val-fraction F] [--val-seed S]`
prints `video_id,label,split` as CSV.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import posixpath
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

from multistream.dataset import sources, webdataset
from multistream.dataset.entry import VideoEntry  # noqa: F401 - the manifest's unit, imported from here too
from multistream.dataset.splits import SPLITS, UCF101_NAME, carve_validation
from multistream.store import storage
from multistream.store.uris import redact, within

log = logging.getLogger(__name__)

PATH_COLUMNS = ("uri", "path", "file")
GROUPS_PER_SPLIT = 7  # UCF101: 25 groups; split k tests groups 7(k-1)+1 .. 7k


def build_manifest(input_uri: str, labels: str | None = None, split: int = 1, validation=None,
                   limits=None, skipped: Counter | None = None, allow_outside_input: bool = False
                   ) -> list[VideoEntry]:
    """Videos under `input_uri` (a folder, a prefix, one file, a brace pattern, WebDataset shards, or a
    manifest file), labelled from `labels` or from the layout; with `validation` (a `config.ValidationConfig`),
    `val` carved from `train`. `limits` (a `config.DatasetConfig`, default its defaults) bounds the classes and
    the length of a label (ValueError) and names the video extensions; `skipped` counts the other files.

    A manifest the user names (`labels`, or a manifest file as the input) may name any URI: it is their
    declaration. A `labels.csv` found inside the input is the archive's own: each video it names must lie under
    the input root (same scheme and bucket), or the build is refused, unless `allow_outside_input`."""
    if split not in (1, 2, 3):
        raise ValueError(f"split must be 1, 2 or 3 (the UCF101 splits), got {split}")
    if limits is None:
        from multistream.config import DatasetConfig

        limits = DatasetConfig()
    if "://" not in input_uri:
        input_uri = os.path.abspath(input_uri)  # listings give absolute local paths; CSV rows must match them
    pattern = sources.is_pattern(input_uri)
    fs, path = storage.filesystem(input_uri)
    if not pattern and not fs.exists(path):
        raise ValueError(f"input {redact(input_uri)} does not exist")
    if sources.is_manifest_file(input_uri) and fs.isfile(path):
        entries = sources.manifest_entries(input_uri)
        return _checked(entries, input_uri, labels, validation, limits)
    # ids are relative to it (a URL's folder: its query string, e.g. a presigned URL's signature, left out)
    root = sources.input_root(input_uri) if pattern else \
        posixpath.dirname(redact(input_uri).rstrip("/")) if fs.isfile(path) else input_uri
    listing = sources.Listing(input_uri, limits.extensions, skipped)
    videos = listing.videos()
    confine = None
    if labels is None and not pattern and storage.exists(storage.join(input_uri, "labels.csv")):
        labels = storage.join(input_uri, "labels.csv")
        confine = None if allow_outside_input else root
    if labels is None:
        entries = [_from_name(root, uri, split) for uri in videos]
    elif not storage.exists(labels):
        raise ValueError(f"labels {redact(labels)} do not exist")
    elif storage.is_dir(labels):
        entries = _from_split_files(root, videos, labels, split)
    else:
        entries = _from_csv(root, videos, labels, confine)
    entries += webdataset.shard_entries(listing.shards, limits.extensions,
                                        lambda video_id: _name_labels(video_id, split), listing.skipped)
    return _checked(entries, input_uri, labels, validation, limits)


def _checked(entries: list[VideoEntry], input_uri: str, labels: str | None, validation,
             limits) -> list[VideoEntry]:
    """`entries` checked against `limits`, sorted by id, `val` carved where `validation` asks."""
    if not entries:
        raise ValueError(f"no videos found under {redact(input_uri)} (extensions: {', '.join(limits.extensions)})")
    check_labels(entries, redact(labels or input_uri), limits)
    entries.sort(key=lambda entry: entry.video_id)
    if validation is not None:
        entries = carve_validation(entries, validation.fraction, validation.seed)
    return entries


def check_labels(entries: list[VideoEntry], source: str, limits=None) -> None:
    """Refuse (ValueError, one line) a label longer than `limits.max_label_chars` or more classes (distinct labels
    outside the anomaly split) than `limits.max_classes`; `limits` a `config.DatasetConfig` (default: its defaults)."""
    if limits is None:
        from multistream.config import DatasetConfig

        limits = DatasetConfig()
    for entry in entries:
        if entry.label is not None and len(entry.label) > limits.max_label_chars:
            raise ValueError(f"{source}: the label of {entry.video_id} has {len(entry.label)} characters, more than "
                             f"dataset.max_label_chars ({limits.max_label_chars})")
    classes = {entry.label for entry in entries if entry.label is not None and entry.split != "anomaly"}
    if len(classes) > limits.max_classes:
        raise ValueError(f"{source}: {len(classes)} classes, more than dataset.max_classes ({limits.max_classes})")


def _video_id(uri: str, root: str) -> str:
    """`uri` relative to `root`, or the whole URI outside it; without credentials or query string either way
    (`multistream.store.uris.redact`: a presigned URL's signature is no part of an id)."""
    uri, root = redact(uri), redact(root)
    prefix = root.rstrip("/") + "/"
    if uri.startswith(prefix) and "/../" not in f"/{uri[len(prefix):]}" and "/./" not in f"/{uri[len(prefix):]}":
        return uri[len(prefix):]  # the common case, without a filesystem lookup per video
    inside = storage.relative(uri, root)
    return uri if inside.startswith("..") else inside  # files outside the root keep their full URI


def _folder(video_id: str) -> str | None:
    return posixpath.basename(posixpath.dirname(video_id)) or None


def _from_name(root: str, uri: str, split: int) -> VideoEntry:
    video_id = _video_id(uri, root)
    return VideoEntry(video_id, uri, *_name_labels(video_id, split))


def _name_labels(video_id: str, split: int) -> tuple[str | None, str | None]:
    """(label, split) from a video id alone: the UCF101 name rule, else the parent folder's name and no split."""
    match = UCF101_NAME.match(posixpath.basename(video_id))
    if match is None:
        return _folder(video_id), None
    label = match["label"]
    if (_folder(video_id) or "").lower() == label.lower():
        label = _folder(video_id)  # UCF101 folders spell some classes differently from their files
    test_groups = range(GROUPS_PER_SPLIT * (split - 1) + 1, GROUPS_PER_SPLIT * split + 1)
    return label, "test" if int(match["group"]) in test_groups else "train"


def _from_split_files(root: str, videos: Iterable[str], folder: str, split: int) -> list[VideoEntry]:
    """UCF101 split lists: lines `Class/v_Class_gXX_cYY.avi [index]`, matched to the videos by file name."""
    membership: dict[str, tuple[str | None, str]] = {}  # file name -> (label, split)
    for name in ("train", "test"):
        list_uri = storage.join(folder, f"{name}list0{split}.txt")
        if not storage.exists(list_uri):
            raise ValueError(f"UCF101 split folder {folder} has no {name}list0{split}.txt")
        for line in storage.read_text(list_uri).splitlines():
            if line.strip():
                listed = line.split()[0].replace("\\", "/")
                membership[posixpath.basename(listed)] = (_folder(listed), name)
    class_index = storage.join(folder, "classInd.txt")
    if storage.exists(class_index):
        classes = {line.split()[-1] for line in storage.read_text(class_index).splitlines() if line.strip()}
        unknown = sorted({label for label, _ in membership.values() if label not in classes})
        if unknown:
            log.warning("%s: split lists name classes missing from classInd.txt: %s", folder, unknown[:10])
    entries = []
    for uri in videos:
        video_id = _video_id(uri, root)
        label, member = membership.get(posixpath.basename(video_id), (_folder(video_id), None))
        entries.append(VideoEntry(video_id, uri, label, member))
    return entries


def _from_csv(root: str, videos: Iterable[str], csv_uri: str, confine: str | None = None) -> list[VideoEntry]:
    """Rows of a CSV manifest whose files exist (read line by line); missing files are logged and skipped.
    With `confine`, a row naming a place outside that root is refused (ValueError), before anything is read."""
    with storage.open_input(csv_uri, "rt") as handle:
        reader = csv.reader(line.lstrip("\ufeff") if number == 0 else line for number, line in enumerate(handle))
        try:
            return _csv_entries(root, set(videos), csv_uri, reader, confine)
        except csv.Error as error:  # one line, not a traceback
            what = (f"a field longer than {csv.field_size_limit()} characters" if "field limit" in str(error)
                    else f"not a readable CSV row ({error})")
            raise ValueError(f"{redact(csv_uri)} line {reader.line_num}: {what}") from None


def _csv_entries(root: str, listed: set[str], csv_uri: str, reader: Iterator[list[str]],
                 confine: str | None = None) -> list[VideoEntry]:
    entries, seen = [], set()
    header = [(name or "").strip().lower() for name in next(reader, [])]
    path_column = next((c for c in PATH_COLUMNS if c in header), None)
    if path_column is None:
        raise ValueError(f"{redact(csv_uri)}: needs a column named one of {PATH_COLUMNS}, found {header}")
    for line, values in enumerate(reader, start=2):
        row = dict(zip(header, (value.strip() for value in values), strict=False))
        name = row.get(path_column, "").replace("\\", "/")
        if not name:
            continue
        uri = name if "://" in name or os.path.isabs(name) else storage.join(root, name)
        if confine is not None and not within(uri, confine):
            raise ValueError(f"{redact(csv_uri)} line {line}: {redact(name)} lies outside the input {redact(confine)}: "
                             "a labels.csv inside the input may name only videos under it (name the manifest with "
                             "paths.labels, or set paths.allow_outside_input, to declare it yours)")
        if uri not in listed and not storage.exists(uri):
            log.warning("%s line %d: %s does not exist, skipped", redact(csv_uri), line, redact(uri))
            continue
        split = row.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            raise ValueError(f"{redact(csv_uri)} line {line}: split must be one of {SPLITS} or empty, got {split!r}")
        video_id = _video_id(uri, root)
        if video_id in seen:
            log.warning("%s line %d: %s listed twice, kept the first", redact(csv_uri), line, video_id)
            continue
        seen.add(video_id)
        entries.append(VideoEntry(video_id, uri, row.get("label") or None, split, row.get("group") or None))
    return entries


def main(argv: list[str] | None = None) -> None:
    from multistream.config import ValidationConfig

    parser = argparse.ArgumentParser(prog="python -m multistream.dataset.manifest", description=__doc__.split("\n")[0])
    parser.add_argument("input", help="folder or URI holding the videos (e.g. s3://bucket/ucf101/)")
    parser.add_argument("--labels", help="CSV manifest or folder of UCF101 split files")
    parser.add_argument("--split", type=int, default=1, help="UCF101 split (1, 2 or 3)")
    parser.add_argument("--val-fraction", type=float, default=ValidationConfig.fraction,
                        help="share of each class's train groups carved into val (0: none)")
    parser.add_argument("--val-seed", type=int, default=ValidationConfig.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        entries = build_manifest(args.input, args.labels, args.split,
                                 ValidationConfig(fraction=args.val_fraction, seed=args.val_seed))
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["video_id", "label", "split"])
    writer.writerows([e.video_id, e.label or "", e.split or ""] for e in entries)


if __name__ == "__main__":
    main()
