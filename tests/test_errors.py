"""Error answers become typed errors that carry status, message, invalid params and task id."""

from __future__ import annotations

import copy
import pickle

import pytest

from kling_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClaimedElsewhere,
    DownloadError,
    InvalidParam,
    InvalidRequestError,
    JournalError,
    KlingError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    WebhookVerificationError,
)
from kling_async._errors import api_error

_VALIDATION = (
    b'{"message": "Your request parameters didn\'t validate.",'
    b' "invalid_params": [{"name": "duration", "reason": "must be one of 3..15"}]}'
)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (418, APIError),
    ],
)
def test_each_status_maps_to_its_error(status: int, cls: type[APIError]) -> None:
    error = api_error(status, b'{"message": "m"}', task_id="t-1")
    assert type(error) is cls
    assert (error.status, error.message, error.task_id) == (status, "m", "t-1")
    assert isinstance(error, KlingError)


def test_400_carries_invalid_params_by_name() -> None:
    error = api_error(400, _VALIDATION)
    assert error.invalid_params == (InvalidParam(name="duration", reason="must be one of 3..15"),)
    assert "duration: must be one of 3..15" in str(error)


def test_400_wrapped_in_problem_is_read_the_same() -> None:
    error = api_error(400, b'{"problem": ' + _VALIDATION + b"}")
    assert error.message == "Your request parameters didn't validate."
    assert error.invalid_params[0].name == "duration"


def test_an_html_error_page_becomes_a_readable_message() -> None:
    error = api_error(502, b"<html><body>502 Bad Gateway</body></html>")
    assert isinstance(error, ServerError)
    assert "502 Bad Gateway" in error.message


def test_an_empty_body_still_gives_a_message() -> None:
    assert api_error(500, b"").message == "no message"


def test_429_keeps_the_retry_after_hint() -> None:
    error = api_error(429, b'{"message": "Too many requests"}', retry_after=3.0)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 3.0


def test_timeout_error_says_the_task_lives_on() -> None:
    error = TaskTimeoutError("abc", last_status="CREATED", timeout=5.0)
    assert str(error) == "task abc still CREATED after 5 s; it runs on and can be re-attached by id"
    assert isinstance(error, TimeoutError)


_EVERY_KIND: list[KlingError] = [
    api_error(400, _VALIDATION, task_id="t-1", headers={"X-Request-Id": "r-1"}),
    api_error(429, b"{}", retry_after=2.5, headers=[("Set-Cookie", "a=1"), ("set-cookie", "b=2")]),  # type: ignore[arg-type]
    ServerError("down", status=503),
    TransportError("reset", request_sent=False),
    DownloadError("short body"),
    TaskFailedError("t-2", "CANCELLED", model="kling-v3-omni-std", reason="no result URL"),
    TaskTimeoutError("t-3", last_status="IN_PROGRESS", timeout=60.0, model="kling-v3-pro"),
    SubmitUncertainError("no answer", model="kling-v3-omni-std", key="row-7", task_id="t-4"),
    JournalError("disk full", path="/tmp/run.db", key="row-8", task_id="t-5"),
    ClaimedElsewhere("claimed", path="postgresql://...", key="row-9"),
    InvalidRequestError.for_field("prompt", "at most 2500 characters"),
    WebhookVerificationError("bad signature"),
]


def _whole(error: BaseException) -> tuple[object, ...]:
    """What an error says and carries (headers as their items: a proxy has no equality of its own)."""
    state = {k: list(v.items()) if k == "headers" else v for k, v in vars(error).items()}
    return type(error), str(error), error.args, state


@pytest.mark.parametrize("error", _EVERY_KIND, ids=lambda e: type(e).__name__)
def test_every_error_comes_back_whole_from_pickle(error: KlingError) -> None:
    """A process pool or task queue hands the caller the error itself, attributes and all (the default
    pickling called the keyword-only constructors with the message alone and failed)."""
    again = pickle.loads(pickle.dumps(error))
    assert _whole(again) == _whole(error)


@pytest.mark.parametrize("error", _EVERY_KIND, ids=lambda e: type(e).__name__)
def test_every_error_deep_copies_whole(error: KlingError) -> None:
    assert _whole(copy.deepcopy(error)) == _whole(error)


def test_the_headers_of_a_pickled_api_error_still_look_up_case_insensitively() -> None:
    error = pickle.loads(pickle.dumps(api_error(429, b"{}", headers={"Retry-After": "3"})))
    assert isinstance(error, APIError)
    assert error.headers["retry-after"] == "3"
