"""The client against a hostile server: every bad answer ends in a typed error, in time, never a second POST.

Two servers stand in for a broken API or the proxies before it, on real loopback HTTP:

* ``HostileServer``, an aiohttp.web app on the API's paths whose answers each test sets;
* ``RawServer``, a bare TCP listener for what HTTP cannot express (silence, non-HTTP bytes, a cut body).

Each test bounds its wait with ``anyio.fail_after`` so that a hang fails the test instead of the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

import anyio
import pytest
from aiohttp import web

from kling_async import (
    APIError,
    InvalidRequestError,
    KlingClient,
    OmniRequest,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SubmitUncertainError,
    TaskHandle,
    TaskStatus,
    TaskTimeoutError,
    Timeouts,
    TransportError,
)

pytestmark = pytest.mark.anyio

CREATE = "/v1/ai/video/kling-v3-omni-std"
FAMILY = "/v1/ai/video/kling-v3-omni"
KEY_HEADER = "x-freepik-api-key"
KEY = "k"
MB = 1024 * 1024
HUGE = 20 * MB
FOX = OmniRequest(prompt="a fox in snow", duration="5")

# Two tries, no real backoff; a read stalls out after 0.5 s, a whole request after 2 s.
RETRY = RetryPolicy(attempts=2, initial=0.001, maximum=0.001, deadline=2)
TIMEOUTS = Timeouts(connect=1, read=0.5, total=2)
POLL = PollPolicy(initial=0.01, maximum=0.05, multiplier=1.5, timeout=3)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def task_body(task_id: str, status: str = "CREATED", generated: Iterable[str] = ()) -> bytes:
    return json.dumps({"data": {"task_id": task_id, "status": status, "generated": list(generated)}}).encode()


def answer(body: bytes, status: int = 200, content_type: str = "application/json", **headers: str) -> Handler:
    """A handler that always gives this answer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, headers={"Content-Type": content_type, **headers})

    return handler


HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass
class Seen:
    method: str
    path: str
    has_key: bool


@dataclass
class HostileServer:
    """The API's three paths on loopback: well-behaved by default, each answer replaceable by a test."""

    post: Handler = field(default_factory=lambda: answer(task_body("t-1")))
    status: Handler = field(
        default_factory=lambda: answer(task_body("t-1", "COMPLETED", ["https://cdn.example.com/t-1.mp4"]))
    )
    listing: Handler = field(default_factory=lambda: answer(b'{"data": []}'))
    seen: list[Seen] = field(default_factory=list)
    bytes_sent: asyncio.Queue[int] = field(default_factory=asyncio.Queue)  # per huge answer, when it ended
    url: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def count(self, method: str, path: str | None = None) -> int:
        return sum(1 for s in self.seen if s.method == method and (path is None or s.path == path))

    async def _route(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, KEY_HEADER in request.headers))
        return await handler(request)

    async def _on_post(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, self.post)

    async def _on_status(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, self.status)

    async def _on_listing(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, self.listing)

    async def _on_other(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, answer(b"", 404))

    async def __aenter__(self) -> HostileServer:
        app = web.Application()
        app.router.add_post(CREATE, self._on_post)
        app.router.add_get(FAMILY + "/{task_id}", self._on_status)
        app.router.add_get(FAMILY, self._on_listing)
        # Any other path (a redirect's target) is counted too, then refused.
        app.router.add_route("*", "/{tail:.*}", self._on_other)
        # handler_cancellation: a handler that stalls forever ends when the client hangs up.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        assert self._runner is not None
        await self._runner.cleanup()

    # -- answers that need the server's state ----------------------------------------------------------

    def stall_after(self, first: bytes, *, content_length: int | None = None) -> Handler:
        """Send headers and ``first``, then nothing more, forever."""

        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            if content_length is not None:
                response.content_length = content_length
            await response.prepare(request)
            await response.write(first)
            await self.released.wait()
            return response

        return handler

    def trickle(self, every: float = 0.1) -> Handler:
        """A body that never ends: one byte each ``every`` seconds, so no read ever stalls long."""

        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"data": {"task_id": "t-1", "status": "')
            with contextlib.suppress(ConnectionError):
                while not self.released.is_set():
                    await response.write(b" ")
                    await asyncio.sleep(every)
            return response

        return handler

    def huge(self, size: int, *, declared: bool) -> Handler:
        """A JSON answer of ``size`` bytes, with or without Content-Length; counts what was written."""
        chunk = b" " * (64 * 1024)

        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            if declared:
                response.content_length = size
            sent = 0
            try:
                await response.prepare(request)
                await response.write(b'{"data": {"task_id": "t-1", "status": "CREATED", "pad": "')
                while sent < size - 100:
                    await response.write(chunk)
                    sent += len(chunk)
            except ConnectionError:
                pass  # the client hung up: what it did not read, it did not hold in memory
            finally:
                self.bytes_sent.put_nowait(sent)
            return response

        return handler


@dataclass
class RawServer:
    """A TCP listener that reads the request, then answers ``reply`` raw (None: never answers)."""

    reply: bytes | None
    received: bytearray = field(default_factory=bytearray)
    url: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def requests(self, method: str) -> int:
        return bytes(self.received).count(method.encode() + b" /")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.received += head
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            self.received += await reader.readexactly(length)
            if self.reply is None:
                await self.released.wait()
                return
            writer.write(self.reply)
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    async with HostileServer() as hostile:
        yield hostile


def client_for(url: str, *, poll: PollPolicy = POLL) -> KlingClient:
    return KlingClient(api_key=KEY, base_url=url, retry=RETRY, timeouts=TIMEOUTS, poll=poll)


async def refresh(url: str) -> TaskStatus:
    """One status request for task t-1 (retried by the client's rules)."""
    async with client_for(url) as client:
        return await client.task("t-1").refresh()


async def submit(url: str, request: OmniRequest = FOX) -> TaskHandle:
    """One submission (a POST is retried only when it provably created nothing)."""
    async with client_for(url) as client:
        return await client.submit(request)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail (not hang) past ``seconds``, and check the real time taken too."""
    started = time.monotonic()
    with anyio.fail_after(seconds):
        yield
    assert time.monotonic() - started < seconds


# -- an HTML error page from a proxy ----------------------------------------------------------------------


async def test_html_502_on_a_status_request_is_a_retried_server_error(server: HostileServer) -> None:
    server.status = answer(HTML_502, 502, "text/html")
    with within(5), pytest.raises(ServerError) as caught:
        await refresh(server.url)
    assert caught.value.status == 502
    assert "502 Bad Gateway" in caught.value.message
    assert server.count("GET") == RETRY.attempts


async def test_html_502_message_reads_as_text_not_markup(server: HostileServer) -> None:
    server.status = answer(HTML_502, 502, "text/html")
    with within(5), pytest.raises(ServerError) as caught:
        await refresh(server.url)
    message = str(caught.value)
    assert "502 Bad Gateway" in message
    assert "<" not in message
    assert "\n" not in message


async def test_html_502_on_a_submission_is_uncertain_and_never_resent(server: HostileServer) -> None:
    """A 502 may come from a proxy after the API created the task: not resent."""
    server.post = answer(HTML_502, 502, "text/html")
    with within(5), pytest.raises(SubmitUncertainError) as caught:
        await submit(server.url)
    assert isinstance(caught.value.__cause__, ServerError)
    assert caught.value.model == "kling-v3-omni-std"
    assert server.count("POST") == 1


# -- a 200 whose body is not a task --------------------------------------------------------------------------


def deep_task(depth: int) -> bytes:
    """A task whose unknown field ``x`` holds lists nested ``depth`` deep."""
    return b'{"data": {"task_id": "t-1", "status": "CREATED", "x": ' + b"[" * depth + b"]" * depth + b"}}"


# How deep msgspec may nest depends on the interpreter: on 3.11 each level counts against
# sys.getrecursionlimit() (1000, shared with the Python frames below it); from 3.12 on, C code has its own
# budget (1500 levels on 3.12, 10,000 on 3.13). 100,000 is past every one of them.
PAST_EVERY_NESTING_LIMIT = 100_000
NESTING_LIMITED_BY_RECURSION_LIMIT = sys.version_info < (3, 12)

UNUSABLE_200 = [
    pytest.param(b'{"data": {"task_id": "t-1", "stat', id="truncated-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b'{"data": []}', id="data-is-a-list"),
    pytest.param(b'{"task_id": 5}', id="no-envelope"),
    pytest.param(b'{"data": {"task_id": 5, "status": "CREATED"}}', id="id-is-a-number"),
    pytest.param(b'{"data": {"status": "CREATED"}}', id="no-id"),
    pytest.param(b'{"data": {"task_id": "t-1", "status": null}}', id="status-null"),
    pytest.param(b'{"data": {"task_id": "t-1", "status": "X", "generated": "u"}}', id="generated-a-string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"<html><body>Welcome to the hotel wifi</body></html>", id="portal-page"),
    pytest.param(b'{"data": {"task_id": "t-1", "status": "CREATED"}}{"x"', id="trailing-junk"),
    pytest.param(b'{"data": {"task_id": "t-\xff", "status": "CREATED"}}', id="not-utf8"),
    pytest.param(deep_task(PAST_EVERY_NESTING_LIMIT), id="nested-100000-deep"),
]


@pytest.mark.parametrize("body", UNUSABLE_200)
async def test_a_200_that_is_not_a_task_fails_a_status_request_with_transport_error(
    server: HostileServer, body: bytes
) -> None:
    server.status = answer(body)
    with within(5), pytest.raises(TransportError, match="unexpected response body"):
        await refresh(server.url)


@pytest.mark.parametrize("body", UNUSABLE_200)
async def test_a_200_that_is_not_a_task_makes_a_submission_uncertain_once(
    server: HostileServer, body: bytes
) -> None:
    """The POST was answered 200, so a task probably exists: one POST, never a second."""
    server.post = answer(body)
    with within(5), pytest.raises(SubmitUncertainError) as caught:
        await submit(server.url)
    assert isinstance(caught.value.__cause__, TransportError)
    assert server.count("POST") == 1


async def test_a_task_nested_1000_deep_is_unusable_on_3_11_and_its_unknown_field_ignored_after(
    server: HostileServer,
) -> None:
    """1000 levels pass Python 3.11's recursion limit (a TransportError) but not 3.12's or 3.13's C budget,
    where ``x``, an unknown field, is skipped like any other."""
    server.status = answer(deep_task(1000))
    with within(5):
        if NESTING_LIMITED_BY_RECURSION_LIMIT:
            with pytest.raises(TransportError, match="nested too deeply"):
                await refresh(server.url)
        else:
            status = await refresh(server.url)
            assert (status.task_id, status.status) == ("t-1", "CREATED")


async def test_a_submission_answered_with_a_task_nested_1000_deep_is_uncertain_on_3_11_only(
    server: HostileServer,
) -> None:
    """Where the interpreter cannot decode it (3.11) the POST is uncertain; after, the task is created."""
    server.post = answer(deep_task(1000))
    with within(5):
        if NESTING_LIMITED_BY_RECURSION_LIMIT:
            with pytest.raises(SubmitUncertainError):
                await submit(server.url)
        else:
            handle = await submit(server.url)
            assert handle.task_id == "t-1"
    assert server.count("POST") == 1


async def test_a_200_labelled_text_html_with_a_task_inside_is_accepted(server: HostileServer) -> None:
    """Content-Type is not checked: the body is what counts (answers decode leniently)."""
    server.status = answer(task_body("t-1", "IN_PROGRESS"), content_type="text/html; charset=utf-8")
    server.post = answer(task_body("t-2"), content_type="text/html")
    with within(5):
        status = await refresh(server.url)
        handle = await submit(server.url)
    assert (status.task_id, status.status) == ("t-1", "IN_PROGRESS")
    assert (handle.task_id, handle.status) == ("t-2", "CREATED")


@pytest.mark.parametrize("task_id", ["", "..", "a/b", "a?b=c", "a b", "a%2F..%2Fb"])
async def test_a_created_task_id_that_cannot_be_polled_makes_the_submission_uncertain(
    server: HostileServer, task_id: str
) -> None:
    server.post = answer(task_body(task_id))
    with within(5), pytest.raises(SubmitUncertainError):
        await submit(server.url)
    assert server.count("POST") == 1


async def test_a_status_answer_about_another_task_is_not_taken_for_this_one(server: HostileServer) -> None:
    server.status = answer(task_body("someone-else", "COMPLETED", ["https://cdn.example.com/x.mp4"]))
    with within(5), pytest.raises(TransportError):
        await refresh(server.url)


async def test_a_status_answer_about_another_task_is_a_transport_error(server: HostileServer) -> None:
    server.status = answer(task_body("someone-else", "COMPLETED", ["https://cdn.example.com/x.mp4"]))
    with within(5):
        async with client_for(server.url) as client:
            handle = client.task("t-1")
            with pytest.raises(TransportError, match="another task"):
                await handle.refresh()
    assert not handle.done


# -- error answers whose bodies are hostile --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"message": "Interner Fehler: ung\xfcltig"}', id="latin-1"),
        pytest.param(
            b'{"message": "m", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            id="nested-1000-deep",
        ),
        pytest.param(b'{"message": ' + b'"' + b"x" * (3 * MB) + b'"}', id="3-MB-message"),
    ],
)
async def test_a_500_with_a_hostile_body_is_a_server_error(server: HostileServer, body: bytes) -> None:
    server.status = answer(body, 500)
    with within(5), pytest.raises(ServerError):
        await refresh(server.url)
    assert server.count("GET") == RETRY.attempts


async def test_a_3_mb_error_message_is_cut_to_a_readable_length(server: HostileServer) -> None:
    server.status = answer(b'{"message": "' + b"x" * (3 * MB) + b'"}', 500)
    with within(5), pytest.raises(ServerError) as caught:
        await refresh(server.url)
    assert len(str(caught.value)) <= 1000


async def test_a_retry_after_date_in_a_far_future_year_is_ignored(server: HostileServer) -> None:
    server.status = answer(
        b'{"message": "Internal Server Error"}',
        500,
        **{"Retry-After": "Mon, 01 Jan 99999999999999999999 0:0:0 GMT"},
    )
    with within(5), pytest.raises(ServerError):
        await refresh(server.url)


async def test_a_429_asking_to_wait_a_day_fails_within_the_retry_deadline(server: HostileServer) -> None:
    server.status = answer(b'{"message": "Too many requests"}', 429, **{"Retry-After": "86400"})
    # 2.5 s, not 5: the retry deadline is 2 s, and this test spends its whole bound while the bug stands.
    with within(2.5), pytest.raises(RateLimitError) as caught:
        await refresh(server.url)
    assert caught.value.retry_after == 86400


async def test_a_429_with_a_short_retry_after_is_retried_after_it(server: HostileServer) -> None:
    """The control for the test above: a Retry-After under the deadline is honoured, then retried."""
    server.status = answer(b'{"message": "Too many requests"}', 429, **{"Retry-After": "0.2"})
    started = time.monotonic()
    with within(5), pytest.raises(RateLimitError):
        await refresh(server.url)
    assert time.monotonic() - started >= 0.2
    assert server.count("GET") == RETRY.attempts


# -- redirects: the key never leaves the API's host ------------------------------------------------------

REDIRECTS = [301, 302, 303, 307, 308]


@pytest.mark.parametrize("code", REDIRECTS)
@pytest.mark.parametrize("operation", ["status", "submit"])
async def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(
    server: HostileServer, code: int, operation: str
) -> None:
    async with HostileServer() as elsewhere:

        async def moved(request: web.Request) -> web.StreamResponse:
            await request.read()
            return web.Response(status=code, headers={"Location": elsewhere.url + request.path_qs})

        server.status = server.post = moved
        with within(5):
            if operation == "status":
                with pytest.raises(APIError) as caught:
                    await refresh(server.url)
                assert type(caught.value) is APIError
                assert caught.value.status == code
            else:
                with pytest.raises(SubmitUncertainError) as uncertain:
                    await submit(server.url)
                assert isinstance(uncertain.value.__cause__, APIError)
                assert server.count("POST") == 1
        assert not [s for s in elsewhere.seen if s.has_key]
        assert elsewhere.seen == []


# -- huge answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_20_mb_status_answer_is_refused_without_reading_it(
    server: HostileServer, declared: bool
) -> None:
    server.status = server.huge(HUGE, declared=declared)
    with within(5), pytest.raises(TransportError, match="too large"):
        await refresh(server.url)
    with anyio.fail_after(2):
        sent = [await server.bytes_sent.get() for _ in range(server.count("GET"))]
    # The client hung up long before the end (its cap is 4 MB; loopback buffers hold a few MB more).
    assert all(size < HUGE - 100 for size in sent), sent


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_20_mb_create_answer_makes_the_submission_uncertain(
    server: HostileServer, declared: bool
) -> None:
    server.post = server.huge(HUGE, declared=declared)
    with within(5), pytest.raises(SubmitUncertainError, match="too large"):
        await submit(server.url)
    assert server.count("POST") == 1


# -- answers that never end ------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_that_stalls_fails_a_status_request_after_the_read_timeout(
    server: HostileServer, declared: bool
) -> None:
    server.status = server.stall_after(b'{"data": {"task_', content_length=1000 if declared else None)
    started = time.monotonic()
    with within(5), pytest.raises(TransportError, match="timed out"):
        await refresh(server.url)
    # each try ends at the 0.5 s read timeout, not at the 2 s total
    assert time.monotonic() - started < RETRY.attempts * TIMEOUTS.total
    assert server.count("GET") == RETRY.attempts


async def test_a_body_that_stalls_makes_a_submission_uncertain(server: HostileServer) -> None:
    server.post = server.stall_after(b'{"data": {"task_')
    with within(5), pytest.raises(SubmitUncertainError):
        await submit(server.url)
    assert server.count("POST") == 1


async def test_a_body_that_trickles_forever_fails_at_the_total_timeout(server: HostileServer) -> None:
    server.status = server.trickle()
    started = time.monotonic()
    with within(5), pytest.raises(TransportError, match="timed out"):
        await refresh(server.url)
    assert time.monotonic() - started >= TIMEOUTS.total * 0.9


# -- below HTTP: silence, non-HTTP bytes, a cut connection ------------------------------------------------

RAW_ANSWERS = [
    pytest.param(None, id="accepts-never-answers"),
    pytest.param(b"", id="closes-without-answer"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="not-http"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + task_body("t-1")[:30], id="cut-body"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}", id="huge-header"
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}", id="negative-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"),
]


@pytest.mark.parametrize("reply", RAW_ANSWERS)
async def test_a_broken_connection_fails_a_status_request_with_transport_error(reply: bytes | None) -> None:
    async with RawServer(reply) as raw:
        with within(5), pytest.raises(TransportError):
            await refresh(raw.url)
        # aiohttp itself sends an idempotent request once more after a disconnect, outside our limiter
        assert RETRY.attempts <= raw.requests("GET") <= 2 * RETRY.attempts


@pytest.mark.parametrize("reply", RAW_ANSWERS)
async def test_a_broken_connection_after_a_post_makes_it_uncertain_once(reply: bytes | None) -> None:
    async with RawServer(reply) as raw:
        with within(5), pytest.raises(SubmitUncertainError) as caught:
            await submit(raw.url)
        assert isinstance(caught.value.__cause__, TransportError)
        assert caught.value.__cause__.request_sent
        assert raw.requests("POST") == 1


async def test_nothing_listening_lets_a_post_be_retried_because_nothing_was_sent() -> None:
    """The control for the tests above: a refused connection proves no task was created."""
    async with RawServer(None) as raw:
        url = raw.url
    with within(5), pytest.raises(TransportError) as caught:
        await submit(url)
    assert not caught.value.request_sent


# -- a batch where a few tasks always answer garbage -------------------------------------------------------

BAD = {2, 5, 7}
GARBAGE = {
    "html": answer(b"<html><body>oops</body></html>"),
    "wrong-shape": answer(b'{"data": []}'),
    "stall": None,  # set per server: headers, then silence
    "not-utf8": answer(b'{"data": {"task_id": "\xff", "status": "CREATED"}}'),
    "retry-after-overflow": answer(
        b"{}", 503, **{"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}
    ),
}


def batch_server(server: HostileServer, garbage: str) -> None:
    """POST: ids "good-N" / "bad-N" by prompt; the list calls every task COMPLETED; bad ids answer garbage."""
    created: list[str] = []

    async def post(request: web.Request) -> web.StreamResponse:
        prompt = (await request.json())["prompt"]
        task_id = prompt.replace(" ", "-")
        created.append(task_id)
        return web.Response(body=task_body(task_id), content_type="application/json")

    bad = GARBAGE[garbage] or server.stall_after(b"{")

    async def status(request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        if task_id.startswith("bad"):
            return await bad(request)
        url = f"https://cdn.example.com/{task_id}.mp4"
        return web.Response(body=task_body(task_id, "COMPLETED", [url]), content_type="application/json")

    async def listing(request: web.Request) -> web.StreamResponse:
        items = [{"task_id": task_id, "status": "COMPLETED"} for task_id in created]
        return web.Response(body=json.dumps({"data": items}).encode(), content_type="application/json")

    server.post, server.status, server.listing = post, status, listing


def requests_with_bad_ones() -> list[OmniRequest]:
    return [OmniRequest(prompt=f"{'bad' if index in BAD else 'good'} {index}") for index in range(10)]


@pytest.mark.parametrize(
    "garbage",
    [
        "html",
        "wrong-shape",
        "stall",
        pytest.param(
            "not-utf8",
        ),
        pytest.param(
            "retry-after-overflow",
        ),
    ],
)
async def test_a_batch_goes_on_when_a_few_tasks_answer_garbage(server: HostileServer, garbage: str) -> None:
    """Good items succeed; each bad one keeps being checked until its own deadline, then times out."""
    batch_server(server, garbage)
    per_task = 0.6
    started = time.monotonic()
    with within(5):
        async with client_for(server.url) as client:
            outcomes = await client.gather(requests_with_bad_ones(), timeout=per_task)
    elapsed = time.monotonic() - started
    assert [outcome.index for outcome in outcomes] == list(range(10))
    for outcome in outcomes:
        if outcome.index in BAD:
            assert isinstance(outcome.error, TaskTimeoutError), outcome
            assert outcome.error.task_id == outcome.task_id == f"bad-{outcome.index}"
            assert outcome.error.model == "kling-v3-omni-std"
            # checked again and again until the deadline, not given up on after one bad answer
            assert server.count("GET", f"{FAMILY}/bad-{outcome.index}") >= 2
        else:
            assert outcome.ok, outcome
            assert outcome.result is not None
            assert outcome.result.url == f"https://cdn.example.com/good-{outcome.index}.mp4"
    assert server.count("POST") == 10
    assert per_task <= elapsed < per_task + 2


# -- hostile input on our side: text that cannot be sent -------------------------------------------------


def unsendable() -> OmniRequest | InvalidRequestError:
    """A prompt with a lone surrogate: a Python str that UTF-8 cannot carry (or the error refusing it)."""
    try:
        return OmniRequest(prompt="a \ud800 fox")
    except InvalidRequestError as exc:  # validation refusing it is one way to fix the bugs below
        return exc


async def test_a_request_that_cannot_be_encoded_is_invalid_before_any_post(server: HostileServer) -> None:
    request = unsendable()
    if isinstance(request, OmniRequest):
        with within(5), pytest.raises(InvalidRequestError):
            await submit(server.url, request)
    assert server.count("POST") == 0


async def test_a_batch_item_that_cannot_be_encoded_is_its_own_failed_outcome(server: HostileServer) -> None:
    request = unsendable()
    if isinstance(request, InvalidRequestError):
        return  # refused at construction: no batch can hold it
    with within(5):
        async with client_for(server.url) as client:
            outcomes = await client.gather([FOX, request, FOX])
    assert [outcome.ok for outcome in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, InvalidRequestError)
