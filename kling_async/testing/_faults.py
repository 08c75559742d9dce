"""Fault settings of the simulator, the queued-fault kinds, and the error answers they produce."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import NamedTuple

import msgspec
from aiohttp import web

__all__ = [
    "AFTER_KINDS",
    "Faults",
    "QueuedFault",
    "error_response",
    "json_response",
    "parse_fault_kind",
    "status_kind",
]

_JSON = msgspec.json.Encoder()

# Bodies the API doc names; any other status gets its reason phrase.
_MESSAGES = {
    404: "Not found",
    429: "Too many requests",
    500: "Internal Server Error",
    503: "Service Unavailable. Please try again later.",
}

# What a reverse proxy in front of the API answers when the upstream is down or slow.
_HTML_PAGE = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

_STATUS_KIND = re.compile(r"([45]\d\d)(_html)?")
_CODES = frozenset(status.value for status in HTTPStatus)

# Kinds that act once the request was handled (a POST has created its task by then).
AFTER_KINDS = frozenset({"drop_after_create", "500_after_create"})
_NAMED_KINDS = AFTER_KINDS | {"drop_before", "latency", "429-no-retry-after"}


class Faults(msgspec.Struct, kw_only=True):
    """Fault injection settings; every default means "no fault", and a running simulator reads them live.

    Rates are probabilities in [0, 1], drawn per request (or per task, or per webhook delivery) from the
    simulator's seeded random generator.
    """

    latency: float = 0.0
    """Real seconds added to every API request (counted inside `max_concurrent_requests`)."""
    get_error_rate: float = 0.0
    """Chance that a GET (status or list) is answered with one of `get_error_statuses`."""
    get_error_statuses: tuple[int, ...] = (500, 502, 503)
    post_error_rate: float = 0.0
    """Chance that a POST is answered with one of `post_error_statuses` before anything is created."""
    post_error_statuses: tuple[int, ...] = (503,)
    post_500_after_create_rate: float = 0.0
    """Chance that a POST is handled (its task created) and then answered 500 anyway."""
    drop_before_rate: float = 0.0
    """Chance that any API request has its connection closed before it is handled."""
    drop_after_create_rate: float = 0.0
    """Chance that a POST is handled (its task created) and then its connection closed without an answer."""
    rate_limit_429_rate: float = 0.0
    """Chance of a 429 beyond the enforced rate limit (Retry-After per the simulator's `retry_after`)."""
    fail_rate: float = 0.0
    """Chance that a new task ends FAILED."""
    cancel_rate: float = 0.0
    """Chance that a new task ends CANCELLED: not in the vendor's status enum, but seen in the wild."""
    never_finish_rate: float = 0.0
    """Chance that a new task stays IN_PROGRESS forever."""
    no_range: bool = False
    """The CDN ignores Range headers and does not advertise `Accept-Ranges`."""
    cut_download_after: int | None = None
    """The CDN sends this many bytes of each file response, then closes the connection."""
    download_pace: float = 0.0
    """Real seconds the CDN waits between the 1 KiB pieces of each file response (a slow link)."""
    wrap_problem: bool = False
    """400 bodies come wrapped as `{"problem": {...}}` (as `application/problem+json`), the other form the
    API schema shows."""
    bare_create: bool = False
    """Create answers carry the bare task `{task_id, status, ...}`, no `data`, as older vendor pages do."""
    ignore_page_size: bool = False
    """List endpoints answer 20 tasks a page whatever `page_size` asks: the vendor documents the parameter
    on the reference-to-video list only, so a real server may ignore it."""
    webhook_drop_rate: float = 0.0
    """Chance that a webhook delivery is never sent."""
    webhook_duplicate_rate: float = 0.0
    """Chance that a webhook delivery is sent twice with the same `webhook-id`."""
    webhook_delay: float = 0.0
    """Real seconds to wait before each webhook delivery."""
    webhook_reorder: bool = False
    """Send the IN_PROGRESS delivery after the final one."""
    webhook_bad_signature_rate: float = 0.0
    """Chance that a webhook delivery is signed with the wrong key."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be between 0 and 1, got {value!r}")
        if self.latency < 0 or self.webhook_delay < 0 or self.download_pace < 0:
            raise ValueError("Faults.latency, webhook_delay and download_pace must not be negative")
        if self.cut_download_after is not None and self.cut_download_after < 0:
            raise ValueError("Faults.cut_download_after must not be negative")


class QueuedFault(NamedTuple):
    """One deterministic fault waiting for the next request of its method."""

    kind: str
    method: str
    seconds: float = 0.0


def parse_fault_kind(kind: str) -> str:
    """Check a queued-fault kind name and return it; raise ValueError for an unknown one."""
    match = _STATUS_KIND.fullmatch(kind)
    if kind in _NAMED_KINDS or (match and int(match.group(1)) in _CODES):
        return kind
    raise ValueError(
        f"unknown fault kind {kind!r}: use a status such as '503' or '502_html',"
        f" or one of {sorted(_NAMED_KINDS)}"
    )


def json_response(
    body: object,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    content_type: str = "application/json",
) -> web.Response:
    """A JSON answer encoded with msgspec."""
    return web.Response(body=_JSON.encode(body), status=status, headers=headers, content_type=content_type)


def status_kind(code: int) -> str:
    """The fault kind for a random error status: gateways answer 502 and 504 with HTML, the API with JSON."""
    return f"{code}_html" if code in (502, 504) else str(code)


def error_response(kind: str, headers: dict[str, str] | None = None) -> web.Response:
    """The answer for a status kind: '503' gives the documented JSON body, '502_html' a proxy's HTML page."""
    match = _STATUS_KIND.fullmatch(kind)
    if match is None:
        raise ValueError(f"{kind!r} is not a status fault")
    code = int(match.group(1))
    if match.group(2):
        page = _HTML_PAGE.format(code=code, phrase=HTTPStatus(code).phrase)
        return web.Response(text=page, status=code, headers=headers, content_type="text/html")
    return json_response({"message": _MESSAGES.get(code, HTTPStatus(code).phrase)}, code, headers)
