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
    parser.add_argument("--input", default=None, help="videos: a folder, an s3:// prefix, WebDataset shards (.tar, "
                        "{0000..0099} patterns) or a .jsonl/.csv/.parquet list of URIs (paths.input)")
    parser.add_argument("--output", default=None, help="run root, local or s3:// (paths.output)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def add_retry_errors(parser: argparse.ArgumentParser) -> None:
    """`--retry-errors`, for the jobs that extract (extract, pipeline, predict)."""
    parser.add_argument("--retry-errors", action="store_true",
                        help="extract again every video with an error row (a plain re-run retries only the "
                             "transient ones: storage, network, timeouts)")


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
    from multistream.store.uris import redact_logs

    redact_logs()  # no URL's credentials or query string (a presigned URL's signature) in any log line
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


JOBS = {  # the `multistream <job>` commands: each is `multistream.jobs.<job>.main`
    "extract": "extract videos into videos/, features/ and flow/",
    "train_motion": "train the motion CNN and embed the temporal stream",
    "train_rnn": "train the per-stream recurrent heads and write embeddings/",
    "tune_rnn": "sweep recurrent-head architectures (the paper's Table I)",
    "fuse": "fit the fusion SVM and the anomaly autoencoder",
    "pipeline": "extract → train_motion → train_rnn → fuse → report",
    "predict": "apply a trained run to new videos",
    "benchmark": "speed and memory against baselines of the same run",
}


def main(argv: list[str] | None = None) -> int:
    """`multistream <job> [flags]`: dispatch to the job's own command line (`multistream <job> --help`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in JOBS:
        width = max(map(len, JOBS))
        lines = [f"  {name:<{width}}  {what}" for name, what in JOBS.items()]
        print("usage: multistream <job> [--config FILE] [--set KEY=VALUE ...] [--input URI] [--output URI] ...\n\n"
              "jobs:\n" + "\n".join(lines) + "\n\n`multistream <job> --help` lists a job's flags.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    job = importlib.import_module(f"multistream.jobs.{argv[0]}")
    sys.argv[0] = f"multistream {argv[0]}"
    return job.main(argv[1:])
