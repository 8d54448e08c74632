"""The command line every job shares: `--config --set --input --output --help`, plus a job's own flags.

    parser = job_parser("Extract flow, sampled-frame and audio features", __doc__)
    cfg, args = parse_job_args(parser)
"""

from __future__ import annotations

import argparse
import logging
import sys

from multistream.config import DEMO_CONFIG, Config, ConfigError, load_config


def job_parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help=f"YAML config (default: the embedded demo, {DEMO_CONFIG.name})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set flow.backend=farneback (repeatable)")
    parser.add_argument("--input", default=None, help="videos: a folder or an s3:// prefix (paths.input)")
    parser.add_argument("--output", default=None, help="run root, local or s3:// (paths.output)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_job_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse the command line into (config, namespace); a bad config exits with the offending key named."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    overrides = list(args.overrides)
    if args.input is not None:
        overrides += [f"paths.input={args.input}", "paths.demo=false"]
    if args.output is not None:
        overrides.append(f"paths.output={args.output}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: config error: {error}\n")
    return cfg, args


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
