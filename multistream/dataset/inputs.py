"""What a job reads before any work: the embedded demo dataset is generated where it is asked for."""

from __future__ import annotations

import logging

from multistream.config import Config
from multistream.store import storage

log = logging.getLogger(__name__)


def prepare_input(cfg: Config) -> None:
    """Generate the demo dataset at `paths.input` when the demo is asked for and it is not there yet."""
    if cfg.paths.demo and not storage.exists(storage.join(cfg.paths.input, "labels.csv")):
        from multistream.demo.dataset import generate_demo

        log.info("generating the demo dataset at %s", cfg.paths.input)
        generate_demo(cfg.paths.input)
