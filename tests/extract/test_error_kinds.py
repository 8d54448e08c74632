"""The kind of a video's error: transient (a re-run retries it), input, video or model."""

import errno

import pytest

from multistream.extract.budgets import BudgetError
from multistream.extract.errors import error_kind, is_transient
from multistream.extract.video import VideoError


def wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as error:
            raise outer from error
    except BaseException as error:
        return error


class ClientError(Exception):  # as botocore's: an error code in `response`
    def __init__(self, code: str):
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}}


class ClientResponseError(Exception):  # as aiohttp's: an HTTP status
    def __init__(self, status: int):
        super().__init__(f"{status}, message='x', url='http://h/v.mp4'")
        self.status = status


@pytest.mark.parametrize("error, kind", [
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "transient"),
    (TimeoutError("read timed out"), "transient"),
    (OSError(errno.EIO, "An error occurred (SlowDown) when calling the GetObject operation"), "transient"),
    (ClientError("SlowDown"), "transient"),
    (ClientError("InternalError"), "transient"),
    (ClientResponseError(503), "transient"),
    (ClientResponseError(429), "transient"),
    (wrapped(VideoError("x.mp4: not a readable video (reset)"), ConnectionResetError()), "transient"),
    (FileNotFoundError("/data/missing.mp4"), "input"),
    (PermissionError("denied"), "input"),
    (ClientResponseError(404), "input"),
    (ClientError("NoSuchKey"), "input"),
    (VideoError("x.mp4: no video stream"), "video"),
    (BudgetError("x.mp4: frame of 9000x9000 exceeds video.max_pixels"), "video"),
    (wrapped(VideoError("x.mp4: not a readable video"), OSError(errno.EINVAL, "Invalid data")), "video"),
])
def test_errors_are_told_apart(error, kind):
    assert error_kind(error) == kind
    assert is_transient(error) == (kind == "transient")


def test_a_model_stage_failure_is_the_model_s_unless_it_may_pass():
    assert error_kind(RuntimeError("shape mismatch"), "spatial") == "model"
    assert error_kind(RuntimeError("CUDA out of memory. Tried to allocate"), "spatial") == "model"
    assert error_kind(TimeoutError(), "audio") == "transient"
