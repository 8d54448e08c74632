"""Train one recurrent head per stream on Ray Train, embed every video, and assemble the embeddings table.

Reads features/ (spatial, audio) and motion/ (temporal, from jobs/train_motion.py) under --output; writes
models/rnn_<stream>/ (model.safetensors, model.json, embeddings.parquet) and embeddings/. The streams still
to train train together in one Ray Train run; one already trained is reused, and an interrupted training
resumes from its last epoch. The val split drives every model choice; the test split is scored once.

  python jobs/train_rnn.py                          # every stream of the demo run (runs/demo)
  python jobs/train_rnn.py --stream spatial --set rnn.hidden=512 --output runs/mine
"""

from multistream.cli import job_parser, parse_job_args
from multistream.ray.guard import start_job
from multistream.ray.rnn import run_train_rnn
from multistream.store.layout import RunRoot
from multistream.store.schema import STREAMS
from multistream.train.progress import job_run


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Train the per-stream recurrent heads and embed every video", __doc__)
    parser.add_argument("--stream", choices=[*STREAMS, "all"], default="all",
                        help="which stream to train (default: all; all skips a stream whose table is missing)")
    cfg, args = parse_job_args(parser, argv)
    streams = list(STREAMS) if args.stream == "all" else [args.stream]
    # checks, then the run root's lease; the job's MLflow run where tracking.mlflow_uri is set
    with start_job(cfg, "train_rnn"), job_run(cfg, "train_rnn") as cfg:
        result = run_train_rnn(cfg, streams, skip_missing=args.stream == "all")
    for stream, why in result.missing.items():
        print(f"{stream:>8}: not trained: {why}")
    for stream, r in result.streams.items():
        top5 = "" if r.top5 is None else f"  top-5 {100 * r.top5:.2f}%"
        val = f"val top-1 {100 * r.val['top1']:.2f}%" if "top1" in r.val else "no val split"
        print(f"{stream:>8}: test top-1 {100 * r.top1:.2f}%{top5} ({val})  "
              f"best epoch {r.best_epoch} of {r.epochs}, {r.n_train} train / {r.n_val} val / {r.n_test} test "
              f"videos ({r.status})")
    print(f"embeddings → {RunRoot(cfg.paths.output).embeddings} in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
