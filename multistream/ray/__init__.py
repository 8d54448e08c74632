"""Thin Ray wrappers (Data, Train, Tune) around the pure cores of `multistream`.

Importing it points Ray Data at `ray_data_logging.yaml` (its console: warnings and errors; its log file:
everything) unless RAY_DATA_LOGGING_CONFIG is set; Ray Data reads it when it is first imported.
"""

import os
from pathlib import Path

os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
