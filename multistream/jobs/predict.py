"""Apply a trained run to new videos: extract them with the run's own settings, embed, classify, screen.

Reads the model bundle of --models (a run root, its models/ folder or models/bundle.json; local or s3://),
checks it (format, every file's sha256, the pretrained weights) before any video is read, extracts the
videos under --input with the bundle's extraction settings, running the motion CNN on each video's flow as
it is computed and the RNN heads on its sequences before the commit, then the fusion SVM and the anomaly
autoencoder. Writes under --output:
videos/ (one row per video, errors included), embeddings/, predictions/ (label and split from the input where
it has them, predicted, scores, top_labels, top_scores) and anomaly/ (score, is_anomaly at the calibrated
threshold); no flow/ nor features/: --keep-flow writes both, as jobs/extract.py writes them.
With --set "video.windows={length_s: 36, stride_s: 18}" each whole video is cut into time windows: every table
gets a row per (video, window), predictions/ and anomaly/ also each video's own row (window null; the rule:
video.windows.class_scores / anomaly_score), and the highest-scoring videos' score timelines are drawn to
reports/figures/anomaly_timelines.png.
No model is re-fit. A --set of an extraction or training setting that differs from the bundle is refused;
resources (ray.*, *.batch_size, *.device) are free. Re-running with the same --output resumes.

  python jobs/predict.py                          # runs/demo's models on a new demo archive (seed 7)
  python jobs/predict.py --models runs/demo --input ../new-videos --output runs/predict
  python jobs/predict.py --models runs/demo --input ../new-videos --output runs/embed --embed-only
  ray job submit --working-dir . -- python jobs/predict.py --config configs/ucf101.yaml \\
      --models s3://bucket/runs/ucf101 --input s3://bucket/new/ --output s3://bucket/runs/new
"""

from multistream.cli import add_retry_errors, job_parser, parse_job_args
from multistream.predict.batch import evaluate, write_timelines
from multistream.predict.bundle import BundleError, open_bundle
from multistream.ray.guard import start_job
from multistream.ray.predict import run_predict
from multistream.store import layout, storage
from multistream.store.uris import redact, within
from multistream.train.progress import job_run

DEMO_MODELS, DEMO_INPUT, DEMO_OUTPUT, DEMO_SEED = "runs/demo", "runs/demo-data-new", "runs/predict", 7


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Embed, classify and screen new videos with a trained run's models", __doc__)
    parser.add_argument("--models", default=DEMO_MODELS, metavar="RUN_ROOT_OR_BUNDLE",
                        help=f"the trained run: its root, models/ folder or models/bundle.json (default {DEMO_MODELS})")
    parser.add_argument("--embed-only", action="store_true",
                        help="write videos/ and embeddings/ only: no classifier, no anomaly detector")
    parser.add_argument("--keep-flow", action="store_true",
                        help="also write flow/ and features/ as jobs/extract.py does; by default neither is written")
    add_retry_errors(parser)
    cfg, args = parse_job_args(parser, argv)
    try:
        bundle = open_bundle(args.models)
        cfg = bundle.config(cfg, args.overrides)
        bundle.check_weights(cfg)
    except BundleError as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    output = layout.absolute(args.output or DEMO_OUTPUT)
    trained = bundle.uri.rsplit("/", 1)[0]  # the run root holding the models (both normalised: file://, symlinks)
    if within(output, trained):
        parser.exit(2, f"{parser.prog}: --output {redact(output)} is the trained run {redact(trained)} or a folder in "
                       f"it: give a run root outside it\n")
    source = layout.absolute(args.input or DEMO_INPUT)
    if args.input is None and not storage.exists(storage.join(source, "labels.csv")):
        from multistream.demo.dataset import generate_demo

        generate_demo(source, seed=DEMO_SEED)
    # the input's own splits are kept as they are: no validation split is carved from them
    cfg = cfg.replace(**{"paths.input": source, "paths.output": output, "paths.demo": False,
                         "validation.fraction": 0.0})

    # checks, then the output run root's lease; the job's MLflow run where tracking.mlflow_uri is set
    with start_job(cfg, "predict", reads_input=True), job_run(cfg, "predict") as cfg:
        summary = run_predict(cfg, bundle, embed_only=args.embed_only, retry_errors=args.retry_errors,
                              keep_flow=args.keep_flow)
    extract = summary.extract
    print(f"extract: {extract.total} videos, {extract.skipped} already done, {extract.ok} ok, "
          f"{len(extract.errors)} errors")
    for line in extract.errors.lines():
        print(line)
    if extract.skipped_line():
        print(extract.skipped_line())
    print(f"predict: {summary.predicted} videos {'embedded' if args.embed_only else 'embedded, classified and screened'}"
          f" ({summary.pending - summary.predicted} left) in {summary.seconds:.1f} s → {output}")
    if not args.embed_only:
        figure, lines = write_timelines(output)
        if figure is not None:
            print(f"anomaly score over time of the {len(lines)} highest-scoring videos → {figure}")
            print("\n".join(lines))
        figures = evaluate(output, bundle.classes)
        if figures.get("top1") is not None:
            print(f"top-1 {figures['top1']:.3f} on {figures['n_labelled']} labelled videos of known classes")
        if figures.get("roc_auc") is not None:
            print(f"anomaly: ROC AUC {figures['roc_auc']:.3f}, flagged {figures['detection_rate']:.2f} of "
                  f"{figures['n_anomalous']} anomalous and {figures['false_positive_rate']:.2f} of "
                  f"{figures['n_normal']} normal videos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
