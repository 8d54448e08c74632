"""Extraction at archive scale (`jobs/benchmark.py --scale`), on generated archives of empty `.mp4` files.

Every empty file is an error row at once, so what is measured is the control plane and the commit path:
- the marginal wall time per video (two archive sizes, `jobs/extract.py` in a fresh process and its own
  local Ray each: start-up cancels out), locally and on a moto S3 server (input and run root on S3);
- files per table per 100 videos, the job's output lines for its failures, a re-run of a finished archive;
- the S3 requests per video (counted by the server);
- resume (`commit.resume_state` + the to-do filter) over 10^4 and 10^5 committed videos, tables written
  directly, locally and on S3;
- the driver's peak RSS while planning 10^6 manifest entries (manifest + resume + Ray Data blocks, no Ray).
Writes `reports/scale.json` under the run root and prints a table.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa

from multistream.store import schema, storage
from multistream.store.layout import RunRoot

ROOT = Path(__file__).resolve().parents[2]
PER_FOLDER = 1000
COMMIT: list[str] = []  # the config's own commit rule (commit.every_s, commit.max_mb): nothing to tune
RAY_START_ATTEMPTS = 5  # a local Ray that cannot start within its 30 s (an overloaded machine) is tried again


def make_archive(folder: str, n: int) -> str:
    """`n` empty `.mp4` files, a thousand per class folder (kept: a second call finds them)."""
    for i in range(n):
        path = os.path.join(folder, f"c{i // PER_FOLDER:04d}", f"v{i:07d}.mp4")
        if i % PER_FOLDER == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    return folder


def extract_job(input_uri: str, output: str, overrides: list[str], env: dict | None = None) -> dict:
    """jobs/extract.py in a fresh process with its own local Ray: wall seconds and output lines.

    `overrides`: command-line arguments after the defaults (e.g. ["--config", FILE, "--set", "k=v"])."""
    command = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", input_uri, "--output", output,
               "--set", "paths.demo=false", *COMMIT, *overrides]
    attempt = 0
    while attempt < RAY_START_ATTEMPTS:
        attempt += 1
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, "RAY_ADDRESS": "local", **(env or {})})
        seconds = time.perf_counter() - started
        if result.returncode == 0 or "timed out during startup" not in result.stderr:
            break
    if result.returncode != 0:
        raise RuntimeError(f"extract failed ({result.returncode}):\n{result.stderr[-3000:]}")
    lines = (result.stdout + result.stderr).count("\n")
    # the job's own figure: from its manifest to its last commit, without process and Ray start-up
    job = re.search(r"errors in ([0-9.]+) s", result.stdout)
    return {"seconds": round(seconds, 2), "job_s": float(job[1]) if job else None, "lines": lines,
            "attempts": attempt}


def files_per_100(output: str, n: int) -> dict[str, float]:
    run = RunRoot(output)
    return {name: round(100 * len(storage.list_parts(run.table(name))) / n, 3)
            for name in (schema.VIDEOS, schema.FEATURES, schema.FLOW)}


def archive_figures(make, sizes: tuple[int, int], overrides: list[str], env=None, requests=None) -> dict:
    """Two archives (`make(n) -> input URI, output URI`) through the job, then a re-run of the larger."""
    runs = {}
    for n in sizes:
        input_uri, output = make(n)
        before = requests.total() if requests else 0
        runs[n] = extract_job(input_uri, output, overrides, env) | files_per_100(output, n)
        if requests:
            runs[n]["s3_requests_per_video"] = round((requests.total() - before) / n, 2)
    small, large = sizes
    rerun = extract_job(*make(large), overrides, env)
    marginal = (runs[large]["seconds"] - runs[small]["seconds"]) / (large - small)
    inside = (runs[large]["job_s"] - runs[small]["job_s"]) / (large - small) if runs[small]["job_s"] else None
    return {"runs": {str(n): figures for n, figures in runs.items()},
            "marginal_ms_per_video": round(1000 * marginal, 2),
            "marginal_ms_per_video_in_job": round(1000 * inside, 2) if inside is not None else None,
            "rerun_finished_s": rerun["seconds"], "rerun_job_s": rerun["job_s"], "rerun_lines": rerun["lines"]}


def committed_run(output: str, n: int, per_part: int = 256) -> None:
    """A run root whose `videos/` commits `n` videos (error rows), `per_part` a part, written directly."""
    from multistream.store.commit import part_name

    for start in range(0, n, per_part):
        ids = [f"c{i // PER_FOLDER:04d}/v{i:07d}.mp4" for i in range(start, min(start + per_part, n))]
        table = pa.table({"video_id": ids, "uri": [f"/archive/{v}" for v in ids], "status": ["error"] * len(ids),
                          "error": ["empty file"] * len(ids)})
        table = pa.Table.from_pylist(table.to_pylist(), schema=schema.VIDEOS_SCHEMA)
        storage.write_part(table, RunRoot(output).videos, part_name(ids))


def resume_seconds(output: str, n: int) -> float:
    """Resume over a run root of `n` committed videos: what is committed, and the manifest's to-do."""
    from multistream.store.commit import resume_state

    started = time.perf_counter()
    done = resume_state(RunRoot(output)).done
    todo = [i for i in range(n) if f"c{i // PER_FOLDER:04d}/v{i:07d}.mp4" not in done]
    assert not todo, "every video should be committed"
    return round(time.perf_counter() - started, 2)


def plan_peak_rss(archive: str, output: str) -> dict:
    """Peak RSS of a fresh process that plans the extraction of `archive` (no Ray started)."""
    code = (
        "import resource, time; t = time.perf_counter()\n"
        "from multistream.config import load_config\n"
        "from multistream.dataset.manifest import build_manifest\n"
        "from multistream.store.commit import resume_state\n"
        "from multistream.extract.rows import blocks, entries_table\n"
        "from multistream.store.layout import RunRoot\n"
        "import sys, json\n"
        "cfg = load_config()\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "entries = build_manifest(sys.argv[1], validation=cfg.validation)\n"
        "done = resume_state(RunRoot(sys.argv[2])).done\n"
        "todo = [e for e in entries if e.video_id not in done]\n"
        "parts = blocks(entries_table(todo), 2)\n"
        "print(json.dumps({'entries': len(entries), 'blocks': len(parts), 'seconds': round(time.perf_counter() - t, 1),"
        " 'imports_mb': round(base), 'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, archive, output], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


class CountingS3:
    """A moto S3 server on 127.0.0.1 that counts the requests it answers, by method."""

    def __init__(self):
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):
                pass

        self.counts = collections.Counter()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            self.counts[environ["REQUEST_METHOD"]] += 1
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.server.server_port}",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
        # this process's S3 clients point at it until stop() puts the environment back as it was
        self.saved = {name: os.environ.get(name) for name in [*self.env, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"]}
        os.environ.update(self.env)
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        os.environ.pop("AWS_PROFILE", None)

    def total(self) -> int:
        return sum(self.counts.values())

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_empty(self, prefix: str, n: int) -> str:
        from concurrent.futures import ThreadPoolExecutor

        import boto3

        client = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"])
        bucket, _, key = prefix.removeprefix("s3://").partition("/")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"{key}/c{i // PER_FOLDER:04d}/"
                                                      f"v{i:07d}.mp4", Body=b""), range(n)))
        return prefix

    def stop(self) -> None:
        self.server.shutdown()
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure(overrides: list[str], sizes=(500, 2500), resume=(10_000, 100_000), plan=1_000_000,
            s3: bool = True, scratch: str | None = None) -> dict:
    scratch = scratch or tempfile.mkdtemp(prefix="scale-")
    report: dict = {"sizes": list(sizes), "commit": " ".join(COMMIT[1::2]) or "the config's commit.every_s"}

    def local(n):
        return make_archive(f"{scratch}/archive-{n}", n), f"{scratch}/run-{n}"

    report["local"] = archive_figures(local, sizes, overrides)
    report["resume_s"] = {"local": {}}
    for n in resume:
        committed_run(f"{scratch}/resume-{n}", n)
        report["resume_s"]["local"][str(n)] = resume_seconds(f"{scratch}/resume-{n}", n)
    if s3:
        server = CountingS3()
        try:
            bucket = server.bucket("scale")

            def on_s3(n):
                prefix = f"{bucket}/archive-{n}"
                if not storage.list_parts(f"{bucket}/run-{n}/videos"):
                    server.upload_empty(prefix, n)
                return prefix, f"{bucket}/run-{n}"

            report["s3"] = archive_figures(on_s3, sizes, overrides, server.env, server)
            report["resume_s"]["s3"] = {}
            for n in resume:
                committed_run(f"{bucket}/resume-{n}", n)
                before = server.total()
                report["resume_s"]["s3"][str(n)] = resume_seconds(f"{bucket}/resume-{n}", n)
                report["resume_s"]["s3"][f"{n}_requests"] = server.total() - before
        finally:
            server.stop()
    if plan:
        report["plan"] = plan_peak_rss(make_archive(f"{scratch}/archive-{plan}", plan), f"{scratch}/run-plan")
    return report


def format_lines(report: dict) -> list[str]:
    small, large = (str(n) for n in report["sizes"])
    lines = [f"scale (archives of empty files, {report['commit']}):",
             f"{'':24}{'local':>12}{'s3 (moto)':>12}"]
    places = [p for p in ("local", "s3") if p in report]

    def row(name, get):
        lines.append(f"{name:24}" + "".join(f"{str(get(report[p])):>12}" for p in places))

    row("marginal ms/video", lambda r: r["marginal_ms_per_video"])
    row("  inside the job", lambda r: r.get("marginal_ms_per_video_in_job"))
    row(f"job s ({small}/{large})", lambda r: f"{r['runs'][small]['seconds']:.0f}/{r['runs'][large]['seconds']:.0f}")
    row(f"output lines ({large})", lambda r: r["runs"][large]["lines"])
    row("videos/ files per 100", lambda r: r["runs"][large]["videos"])
    row("re-run finished s", lambda r: r["rerun_finished_s"])
    row("  inside the job", lambda r: r.get("rerun_job_s"))
    if "s3" in report:
        lines.append(f"{'S3 requests per video':24}{'':>12}{report['s3']['runs'][large]['s3_requests_per_video']:>12}")
    for n, seconds in report["resume_s"]["local"].items():
        s3 = report["resume_s"].get("s3", {}).get(n, "")
        lines.append(f"{'resume ' + n + ' committed s':24}{seconds:>12}{s3:>12}")
    if "plan" in report:
        plan = report["plan"]
        lines.append(f"planning {plan['entries']} entries: peak RSS {plan['peak_rss_mb']} MB "
                     f"({plan['imports_mb']} MB after imports), {plan['seconds']} s")
    return lines


def run(config: str | None, overrides: list[str], output: str, **sizes) -> int:
    """The scale section: measure, write `reports/scale.json` under `output`, print the table."""
    arguments = (["--config", config] if config else []) + [a for pair in overrides for a in ("--set", pair)]
    report = measure(arguments, **sizes)
    out = RunRoot(output).scale
    storage.write_text(out, json.dumps(report, indent=2))
    print("\n".join(format_lines(report)))
    print(f"→ {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m multistream.bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/demo", help="run root whose reports/ gets scale.json")
    parser.add_argument("--config", help="config file of the extraction runs (default: the demo's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--sizes", default="500,2500")
    parser.add_argument("--resume", default="10000,100000")
    parser.add_argument("--plan", type=int, default=1_000_000, help="manifest entries to plan (0: skip)")
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args(argv)
    return run(args.config, args.overrides, args.output, sizes=tuple(int(s) for s in args.sizes.split(",")),
               resume=tuple(int(s) for s in args.resume.split(",") if s), plan=args.plan, s3=not args.no_s3)


if __name__ == "__main__":
    raise SystemExit(main())
