"""S3 client settings of every process of a job: retries of a request, back-off mode and timeouts.

The driver takes them from the config's `storage` section (`configure`); they travel to Ray workers as
environment variables (`env`, in the job's runtime environment), and `storage.filesystem` builds every s3fs
client from them, so that the driver, Ray Data's readers and writers and Ray Train's checkpoint uploads (whose
pyarrow filesystem wraps the same s3fs client) all retry alike. Unset variables mean the defaults below.

Two layers retry: botocore (`retries.max_attempts`: retries after the first attempt, with `retry_mode`
back-off; "adaptive" also slows the client down after throttling answers such as 503 SlowDown) and s3fs
around it (connection resets mid-body and SlowDown answers that botocore gave up on). Permanent errors (no
such bucket, access denied) are retried by neither.
"""

from __future__ import annotations

import os

from multistream.config import StorageConfig

PREFIX = "MULTISTREAM_S3_"
KEYS = ("retries", "retry_mode", "connect_timeout", "read_timeout")
DEFAULTS = StorageConfig()


def env(settings: StorageConfig) -> dict[str, str]:
    """The settings as environment variables, for the workers' runtime environment."""
    return {PREFIX + key.upper(): str(getattr(settings, key)) for key in KEYS}


def configure(settings: StorageConfig) -> dict[str, str]:
    """Apply `settings` to this process's S3 clients (and a local Ray it starts); returns `env(settings)`."""
    values = env(settings)
    os.environ.update(values)
    return values


def current() -> StorageConfig:
    """The settings in force in this process: the environment's, else the defaults."""
    values = {}
    for key in KEYS:
        raw = os.environ.get(PREFIX + key.upper())
        if raw:
            kind = type(getattr(DEFAULTS, key))
            values[key] = kind(float(raw)) if kind is int else kind(raw)
    return StorageConfig(**values) if values else DEFAULTS


def client_options(settings: StorageConfig | None = None) -> dict:
    """s3fs constructor options: the botocore client's retry policy and timeouts."""
    settings = settings or current()
    return {"config_kwargs": {"retries": {"max_attempts": settings.retries, "mode": settings.retry_mode},
                              "connect_timeout": settings.connect_timeout,
                              "read_timeout": settings.read_timeout}}
