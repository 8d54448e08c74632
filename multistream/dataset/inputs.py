"""What a job reads before any work: the embedded demo dataset is generated where it is asked for, and only
where nothing else lives."""

from __future__ import annotations

import logging

from multistream.config import Config
from multistream.store import storage
from multistream.store.preflight import JobRefused

log = logging.getLogger(__name__)


def prepare_input(cfg: Config) -> None:
    """Generate the demo dataset at `paths.input` when the demo is asked for (`paths.demo`) and it is not there
    yet. The demo is written only into a missing or empty folder: a folder with files of its own (a user's
    archive named by `--set paths.input=...`) is refused, naming `paths.demo`, and left as it is."""
    if not cfg.paths.demo or storage.exists(storage.join(cfg.paths.input, "labels.csv")):
        return
    if storage.exists(cfg.paths.input) and next(storage.iter_files(cfg.paths.input, None), None) is not None:
        raise JobRefused(f"paths.demo is on, but paths.input {cfg.paths.input} holds files that are not the demo: "
                         "the demo is written only into a missing or empty folder (use --input, or --set "
                         "paths.demo=false, for your own videos)")
    from multistream.demo.dataset import generate_demo

    log.info("generating the demo dataset at %s", cfg.paths.input)
    generate_demo(cfg.paths.input)
