"""Train one recurrent head per stream on Ray Train, embed every video, and assemble the embeddings table.

Reads features/ (spatial, audio) and motion/ (temporal, from jobs/train_motion.py) under --output; writes
models/rnn_<stream>/ (model.safetensors, model.json, embeddings.parquet) and embeddings/. Streams are trained
separately; one already trained is skipped, and an interrupted training resumes from its last epoch.

  python jobs/train_rnn.py                          # every stream of the demo run (runs/demo)
  python jobs/train_rnn.py --stream spatial --set rnn.hidden=512 --output runs/mine
"""

import _path  # noqa: F401

from multistream.cli import job_parser, parse_job_args
from multistream.ray.rnn import run_train_rnn
from multistream.schema import STREAMS


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Train the per-stream recurrent heads and embed every video", __doc__)
    parser.add_argument("--stream", choices=[*STREAMS, "all"], default="all",
                        help="which stream to train (default: all; all skips a stream whose table is missing)")
    cfg, args = parse_job_args(parser, argv)
    streams = list(STREAMS) if args.stream == "all" else [args.stream]
    results = run_train_rnn(cfg, streams, skip_missing=args.stream == "all")
    for stream, result in results.items():
        if "missing" in result:
            print(f"{stream:>8}: not trained: {result['missing']}")
            continue
        note = " (already trained)" if result.get("skipped") else ""
        print(f"{stream:>8}: top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
              f"{result['epochs']} epochs, {result['n_train']} train / {result['n_test']} test videos{note}")
    print(f"embeddings → {cfg.paths.output}/embeddings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
