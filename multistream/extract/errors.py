"""The error of a video (as opposed to one of the program): it becomes the video's error row, with a kind.

Kinds (`videos/` column `error_kind`, null when ok), from the error and the errors it wraps (`error_kind`):
- "transient": the storage or the network failed for a passing reason (a reset connection, a timeout, S3
  throttling or a 5xx answer): a plain re-run extracts the video again;
- "input": the input cannot be read for a lasting reason (no such file or URL, access denied);
- "video": the bytes are not a usable video (cannot be decoded, no video stream, empty, over a budget);
- "model": a model stage failed on the video.
`--retry-errors` extracts every error row again, whatever its kind.
"""

from __future__ import annotations

import errno
import re

TRANSIENT, INPUT, VIDEO, MODEL = "transient", "input", "video", "model"
ERROR_KINDS = (TRANSIENT, INPUT, VIDEO, MODEL)

# errnos of a network or a storage that may answer next time
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN, errno.EBUSY}
# exception class names of the HTTP and S3 clients (aiohttp, botocore, urllib3, http.client, s3fs), matched by
# name so that no client has to be imported to tell
_TRANSIENT_NAMES = {"ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError", "ClientOSError",
                    "ClientPayloadError", "ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError",
                    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ResponseStreamingError", "IncompleteReadError", "HTTPClientError", "ProtocolError",
                    "IncompleteRead", "RemoteDisconnected", "ProxyConnectionError", "NewConnectionError",
                    "TimeoutError", "ConnectionError", "ResponseEnded", "ThrottlingException",
                    "ProvisionedThroughputExceededException", "OutOfMemoryError"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504", "429",
                    "RequestLimitExceeded", "TooManyRequests"}
_TRANSIENT_TEXT = re.compile(r"connection (?:reset|aborted|refused|closed)|timed? ?out|slow ?down|throttl|"
                             r"service unavailable|too many requests|temporarily|server disconnected|"
                             r"\b(?:429|500|502|503|504)\b|cuda out of memory", re.I)
_LASTING_NAMES = {"FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError",
                  "NoSuchKey", "NoSuchBucket", "AccessDenied"}


class VideoError(Exception):
    """The input cannot be used as a video: empty, truncated, not a video, without a video stream, or over one
    of its budgets (`multistream.extract.budgets.BudgetError`)."""


def chain(error: BaseException | None):
    """`error` and every error it wraps (`__cause__`, `__context__`, Ray's `cause`), outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or one it wraps) is a failure of the storage or the network that may pass."""
    for item in chain(error):
        names = {cls.__name__ for cls in type(item).__mro__}
        if names & _LASTING_NAMES and not names & {"TimeoutError", "ConnectionError"}:
            return False
        if isinstance(item, TimeoutError | ConnectionError) or names & _TRANSIENT_NAMES:
            return True
        if isinstance(item, OSError) and item.errno in _TRANSIENT_ERRNOS:
            return True
        code = _code(item)
        status = getattr(item, "status", None) or getattr(item, "status_code", None)
        if code in _TRANSIENT_CODES or (isinstance(status, int) and (status == 429 or 500 <= status < 600)):
            return True
        if isinstance(item, OSError) and not type(item).__module__.startswith("av") and \
                _TRANSIENT_TEXT.search(str(item)):
            return True  # s3fs and fsspec re-raise client errors as OSError(EIO, message)
    return False


def _code(error: BaseException) -> str:
    """The error code of a botocore ClientError ("SlowDown", "NoSuchKey"), else ""."""
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def error_kind(error: BaseException, stage: str = "decode") -> str:
    """The kind of a video's error met in `stage` ("decode" or a model stage's name): see the module's doc."""
    if is_transient(error):
        return TRANSIENT
    for item in chain(error):
        names = {cls.__name__ for cls in type(item).__mro__}
        if names & _LASTING_NAMES:
            return INPUT
        status = getattr(item, "status", None)
        if isinstance(status, int) and 400 <= status < 500 or _code(item) in _LASTING_NAMES | {"403", "404"}:
            return INPUT  # an http(s) URL answered 4xx (not found, forbidden), S3 no such key or access denied
    return VIDEO if stage == "decode" else MODEL
