"""Lets `python jobs/<job>.py` import the package from a plain checkout (e.g. a `ray job submit` working dir)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
