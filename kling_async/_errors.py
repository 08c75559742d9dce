"""Every error kling-async raises, in one tree.

::

    KlingError                      base of everything below
    ├── InvalidRequestError         a request broke a documented limit; raised before any request is sent
    ├── APIError                    the API answered with an error status (.status, .message, .headers, ...)
    │   ├── BadRequestError         400: the server rejected the parameters
    │   ├── AuthenticationError     401 / 403: missing or invalid key, or a key without access or credits
    │   ├── NotFoundError           404: unknown task id (or a task of another family)
    │   ├── RateLimitError          429: too many requests (.retry_after when the server said)
    │   └── ServerError             5xx: the server failed
    ├── TransportError              no usable HTTP answer: connection refused or reset, timeout, bad body
    │   └── DownloadError           a video could not be saved whole (after retries and fresh URLs)
    ├── TaskFailedError             the task ended FAILED (or CANCELLED); carries the task id
    ├── TaskTimeoutError            our wait deadline passed; the task lives on and stays reachable by id
    ├── SubmitUncertainError        a POST may have created a task, but no answer came back; never resubmitted
    ├── NotSubmittedError           the batch stopped submitting before this item's POST left: nothing sent
    ├── JournalError                a journal file that is foreign, damaged, newer, or reused otherwise
    │   └── ClaimedElsewhere        another worker sharing a PostgreSQL journal holds the item
    └── WebhookVerificationError    a webhook delivery unsigned, badly signed, stale, future or replayed

Every error prints readably and carries its context as attributes; none ever contains the API key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ClaimedElsewhere",
    "DownloadError",
    "InvalidParam",
    "InvalidRequestError",
    "JournalError",
    "KlingError",
    "NotFoundError",
    "NotSubmittedError",
    "RateLimitError",
    "ServerError",
    "SubmitUncertainError",
    "TaskFailedError",
    "TaskTimeoutError",
    "TransportError",
    "WebhookVerificationError",
    "api_error",
]


class KlingError(Exception):
    """Base class of every error raised by kling-async.

    Every one pickles and copies whole (a process pool's worker, a task queue), its attributes included.
    """

    def __reduce__(self) -> tuple[object, ...]:
        # The default rebuilds an exception by calling its class with ``args``, which keyword-only
        # constructors refuse (or misread): the instance is rebuilt from its message and attributes instead.
        return (_rebuild, (type(self), self.args, self._picklable_state()))

    def _picklable_state(self) -> dict[str, object]:
        return dict(self.__dict__)

    def _restore(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)


def _rebuild(cls: type[KlingError], args: tuple[object, ...], state: dict[str, object]) -> KlingError:
    """A pickled ``KlingError`` again: its message and attributes, without calling its constructor."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error._restore(state)
    return error


class InvalidRequestError(KlingError, ValueError):
    """A request broke a documented limit. Raised before anything is sent.

    Attributes:
        field: the offending field, dotted for nested ones (``multi_prompt[2].duration``), or None.
        rule: the rule that was broken, in words (``"at most 2500 characters"``).
    """

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule

    @classmethod
    def for_field(cls, field: str, rule: str) -> InvalidRequestError:
        """The usual form: ``"<field>: <rule>"``."""
        return cls(f"{field}: {rule}", field=field, rule=rule)


class InvalidParam(msgspec.Struct, frozen=True):
    """One entry of a 400 answer's ``invalid_params``: which parameter, and why."""

    name: str = ""
    reason: str = ""


class APIError(KlingError):
    """The API answered with an error status.

    Attributes:
        status: the HTTP status code.
        message: the ``message`` of the answer's body (or a short description when there was none).
        invalid_params: the ``invalid_params`` of a 400 answer, else ``()``.
        task_id: the task the request was about, when there was one.
        headers: the answer's headers, read-only and case-insensitive (``err.headers["Retry-After"]``,
            the rate-limit headers); empty when the error was not built from an answer.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        invalid_params: tuple[InvalidParam, ...] = (),
        task_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.invalid_params = invalid_params
        self.task_id = task_id
        self.headers: Mapping[str, str] = (
            headers if isinstance(headers, CIMultiDictProxy) else CIMultiDictProxy(CIMultiDict(headers or {}))
        )
        super().__init__(self._describe())

    def _picklable_state(self) -> dict[str, object]:
        return {**self.__dict__, "headers": list(self.headers.items())}  # a proxy does not pickle

    def _restore(self, state: dict[str, object]) -> None:
        items = state.pop("headers")
        assert isinstance(items, list)
        super()._restore(state)
        self.headers = CIMultiDictProxy(CIMultiDict(items))

    def _describe(self) -> str:
        text = f"HTTP {self.status}: {self.message}"
        if self.invalid_params:
            text += " (" + "; ".join(f"{p.name}: {p.reason}" for p in self.invalid_params) + ")"
        if self.task_id:
            text += f" [task {self.task_id}]"
        return text


class BadRequestError(APIError):
    """400: the server rejected the request's parameters (see ``invalid_params``)."""


class AuthenticationError(APIError):
    """401 or 403: the API key is missing, invalid, or lacks access or credits."""


class NotFoundError(APIError):
    """404: no such task (unknown id, or a task that belongs to another model family)."""


class RateLimitError(APIError):
    """429: too many requests. ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        invalid_params: tuple[InvalidParam, ...] = (),
        task_id: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(
            message, status=status, invalid_params=invalid_params, task_id=task_id, headers=headers
        )


class ServerError(APIError):
    """5xx: the server failed. Status requests retry these; a POST retries only a 503."""


class TransportError(KlingError):
    """No usable HTTP answer: connection refused or reset, a timeout, or a body that is not the API's.

    Attributes:
        request_sent: False only when the request provably never left this process (the connection
            could not be opened), which is the one transport failure after which a POST may be retried.
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class DownloadError(TransportError):
    """A file could not be downloaded whole (after retries and URL refreshes), or not written to disk."""


class TaskFailedError(KlingError):
    """The task ended ``FAILED`` (or ``CANCELLED``), or ``COMPLETED`` without a result URL.

    The API gives no reason for a failure; ``reason`` says what the client saw when it has something to say.
    """

    def __init__(
        self, task_id: str, status: str = "FAILED", *, model: str | None = None, reason: str | None = None
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.model = model
        self.reason = reason
        super().__init__(f"task {task_id} ended {status}" + (f": {reason}" if reason else ""))


class TaskTimeoutError(KlingError, TimeoutError):
    """Our deadline passed while the task was still running server-side.

    The task is not cancelled: ``client.task(err.task_id, model=err.model)`` re-attaches to it.
    ``last_status`` tells "still queued" (``CREATED``) apart from "generating" (``IN_PROGRESS``).
    """

    def __init__(
        self, task_id: str, *, last_status: str | None, timeout: float | None, model: str | None = None
    ) -> None:
        self.task_id = task_id
        self.last_status = last_status
        self.timeout = timeout
        self.model = model
        waited = f" after {timeout:g} s" if timeout is not None else ""
        super().__init__(
            f"task {task_id} still {last_status or 'unknown'}{waited}; "
            "it runs on and can be re-attached by id"
        )


class SubmitUncertainError(KlingError):
    """A POST left this process but no answer came back: a task may or may not have been created.

    It is never resubmitted automatically, because a second POST could create (and bill) a second video.
    Look the task up in the list endpoint or the dashboard, or resubmit deliberately.
    """

    def __init__(
        self, message: str, *, model: str, key: str | None = None, task_id: str | None = None
    ) -> None:
        self.model = model
        self.key = key
        # Set when the answer named a task that cannot be told apart from another item's (a clash).
        self.task_id = task_id
        super().__init__(message)


class NotSubmittedError(KlingError):
    """The batch was told to stop submitting (``Batch.stop_submitting``) before this item's POST left.

    Nothing was sent for it, so nothing was created or paid: submit it again when you want it (a batch
    run again with the same journal sends it).
    """


class JournalError(KlingError):
    """The journal cannot be used as asked: not SQLite, another application's, newer, damaged, or a key
    recorded with another request.

    Attributes:
        path: the journal file.
        key: the item the error is about, when there is one.
    """

    def __init__(
        self, problem: str, *, path: str, key: str | None = None, task_id: str | None = None
    ) -> None:
        self.path = path
        self.key = key
        # The task the failed record was about: it exists server-side and is reachable by this id.
        self.task_id = task_id
        super().__init__(f"journal {path}: {problem}")


class ClientClosed(RuntimeError):
    """A request for a client that is closed, or closed while it waited (not exported: a plain
    ``RuntimeError`` to callers, told apart inside the package)."""


class ClaimedElsewhere(JournalError):
    """Another worker sharing the PostgreSQL journal holds the item (its POST, or the task it follows), or
    took it since this worker looked. Nothing was sent for it here: it is that worker's to finish, and the
    journal shows how it ends."""


class WebhookVerificationError(KlingError):
    """A webhook delivery failed verification: missing headers, bad signature, stale, future or replayed."""


class _ErrorBody(msgspec.Struct):
    message: str | None = None
    invalid_params: list[InvalidParam] | None = None


class _WrappedErrorBody(msgspec.Struct):
    problem: _ErrorBody | None = None
    message: str | None = None
    invalid_params: list[InvalidParam] | None = None


_error_decoder = msgspec.json.Decoder(_WrappedErrorBody)

_ERROR_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    429: RateLimitError,
}


def api_error(
    status: int,
    body: bytes,
    *,
    task_id: str | None = None,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> APIError:
    """Build the typed error for an error answer. The body may be JSON (plain or under ``problem``) or not.

    ``headers`` are the answer's; the error keeps them (read-only) as ``.headers``.
    """
    message: str | None = None
    params: list[InvalidParam] | None = None
    try:
        decoded = _error_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        decoded = None
    if decoded is not None:
        inner = decoded.problem
        message = decoded.message or (inner.message if inner else None)
        params = decoded.invalid_params or (inner.invalid_params if inner else None)
    if not message and decoded is None:
        message = _readable(body)
    message = _shorten(message or "no message")
    invalid = tuple(params or ())
    if status == 429:
        return RateLimitError(
            message, invalid_params=invalid, task_id=task_id, retry_after=retry_after, headers=headers
        )
    cls = _ERROR_BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(message, status=status, invalid_params=invalid, task_id=task_id, headers=headers)


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_MAX_MESSAGE = 500


def _readable(body: bytes) -> str | None:
    """A short text for a body that is not JSON: an HTML page's title, else its text without tags."""
    head = body[:4096]
    title = _TITLE.search(head)
    raw = title.group(1) if title else head
    text = " ".join(_TAG.sub(" ", raw.decode("utf-8", "replace")).split())
    return text or None


def _shorten(message: str) -> str:
    # A hostile server can send megabytes of message; errors are logged and printed.
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
