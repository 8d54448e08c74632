"""The two set-up commands: each makes (or refreshes) a virtual environment, installs what it needs, and runs.

    python3 dev.py demo [pipeline flags]     # the whole pipeline on the embedded demo → runs/demo/reports/report.html
    python3 dev.py test [pytest args]        # ruff, then the test suite (`-m fast`: the quick subset)

Options before the command: `--python EXE` (the interpreter of a new environment, default this one) and
`--venv DIR` (default .venv). An environment is reinstalled when pyproject.toml changed since its install.
Standard library only, so it runs on a machine with nothing but Python >= 3.11.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXTRAS = {"demo": "", "test": "[dev]"}


def ensure_venv(venv: Path, python: str, extras: str) -> Path:
    """The environment's interpreter, after creating it and installing the project (with `extras`) if needed."""
    exe = venv / "bin" / "python"
    stamp = venv / f".installed{extras or '[base]'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    # the [dev] install holds the base one: `demo` runs in a test environment as it is
    good = [stamp] if extras else list(venv.glob(".installed*"))
    if exe.exists() and any(s.read_text() == digest for s in good if s.exists()):
        return exe
    if not exe.exists():
        print(f"dev.py: creating {venv} with {python}", flush=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    print(f"dev.py: installing the project{extras} into {venv} (first use: a few minutes)", flush=True)
    # the environment's own pip: the newest one's resolver backtracks into releases that no longer build
    # (boto3/aiobotocore against moto's pins) where the bundled one settles at once
    subprocess.run([str(exe), "-m", "pip", "install", "-q", "-e", f"{ROOT}{extras}"], check=True)
    for old in venv.glob(".installed*"):
        old.unlink()
    stamp.write_text(digest)
    return exe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 dev.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--python", default=sys.executable, help="interpreter of a new environment")
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="the environment's folder (default .venv)")
    parser.add_argument("command", choices=sorted(EXTRAS))
    args, rest = parser.parse_known_args(argv)
    exe = ensure_venv(Path(args.venv).resolve(), args.python, EXTRAS[args.command])
    if args.command == "demo":
        return subprocess.run([str(exe), "jobs/pipeline.py", *rest], cwd=ROOT).returncode
    lint = subprocess.run([str(exe), "-m", "ruff", "check", "multistream", "jobs", "tests", "dev.py"], cwd=ROOT)
    if lint.returncode:
        return lint.returncode
    return subprocess.run([str(exe), "-m", "pytest", "-q", *rest], cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
