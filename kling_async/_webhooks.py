"""Webhook deliveries: signature verification usable from any framework, and an aiohttp.web receiver.

Freepik signs each delivery the Standard Webhooks way: headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` (space-separated ``v1,<base64>`` entries), where each signature is
the base64 of HMAC-SHA256 over ``f"{id}.{timestamp}.".encode() + raw_body``. The body is the task status
without the ``data`` wrapper: ``{"task_id": "...", "status": "COMPLETED", "generated": ["https://..."]}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import NamedTuple

from aiohttp import web

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import TransportError, WebhookVerificationError
from ._models import TaskStatus, decode_webhook

__all__ = ["ReplayGuard", "WebhookReceiver", "verify_webhook"]

_log = logging.getLogger("kling_async")

_WHSEC_PREFIX = "whsec_"
# A task status is a few hundred bytes (a few KiB with many result URLs). Anybody can send fresh-looking
# headers, so each connection may make the receiver hold this much: it is kept small.
_MAX_BODY = 64 << 10
_BODY_SECONDS = 10.0  # a delivery's body (a few hundred bytes) arrives in this long after its headers, or not
_SHUTDOWN_TIMEOUT = 2.0  # seconds the standalone server waits for deliveries in progress when it stops
# The standalone server closes a connection that has not sent a whole request head in this long, or sits
# idle between requests (aiohttp's own default is an hour: idle connections would pile up to the fd limit).
_IDLE_SECONDS = 15.0
_LOG_EVERY = 10.0  # seconds between two WARNINGs for one rejection reason; the ones between are counted
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_REPLAYED = "replayed"


class _Rejection(Exception):
    """A failed check: a short reason code for the receiver's counters, and a message for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReplayGuard:
    """Remembers accepted ``webhook-id`` values so a captured delivery cannot be replayed.

    An id is remembered until it is more than ``ttl`` seconds older than its ``webhook-timestamp``. Use a
    ``ttl`` at least as long as the verification tolerance: a replay older than that is already rejected as
    stale. Memory is bounded by ``max_entries``; when full, the oldest id is forgotten first.

    Args:
        ttl: seconds an id is remembered after its timestamp.
        max_entries: the most ids held at once.

    Raises:
        ValueError: ``ttl`` is not positive or ``max_entries`` is less than 1.
    """

    def __init__(self, ttl: float = 300.0, max_entries: int = 100_000) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries!r}")
        self.ttl = ttl
        self.max_entries = max_entries
        # id -> expiry, in insertion order, which is close to expiry order: pruning from the front is cheap
        self._expiry: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __repr__(self) -> str:
        return f"<ReplayGuard ttl={self.ttl:g} entries={len(self._expiry)}/{self.max_entries}>"

    def check_and_remember(self, webhook_id: str, timestamp: float, *, now: float | None = None) -> bool:
        """Remember ``webhook_id`` if it is new.

        Args:
            webhook_id: the delivery's ``webhook-id``.
            timestamp: the delivery's ``webhook-timestamp``, Unix seconds.
            now: the current Unix time; the system clock's when None.

        Returns:
            True if the id was not seen within its lifetime (it is now remembered), False if it is a replay.
        """
        current = SYSTEM_CLOCK.wall() if now is None else now
        self._prune(current)
        known = self._expiry.get(webhook_id)
        expiry = timestamp + self.ttl
        if known is not None and known >= current:
            if expiry > known:
                # A sender's retry keeps the id and signs its own, later timestamp: that delivery can be
                # replayed until it goes stale, so the id is remembered that long.
                self._expiry.move_to_end(webhook_id)
                self._expiry[webhook_id] = expiry
            return False
        if expiry < current:
            return True  # too old to be replayed within the window: nothing worth remembering
        self._expiry.pop(webhook_id, None)
        self._expiry[webhook_id] = expiry
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)
        return True

    def _prune(self, now: float) -> None:
        while self._expiry:
            oldest_id, expiry = next(iter(self._expiry.items()))
            if expiry >= now:
                return
            del self._expiry[oldest_id]


def _signing_key(secret: str | bytes) -> bytes:
    """Turn a webhook secret into the HMAC key.

    Args:
        secret: ``whsec_<base64>`` (Standard Webhooks), any other string (its UTF-8 bytes, as Freepik's
            Python/JS/Java samples use it), or the key bytes themselves.

    Returns:
        The key bytes.

    Raises:
        ValueError: a ``whsec_`` secret whose rest is not base64, or an empty key.
    """
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(_WHSEC_PREFIX):
        try:
            key = base64.b64decode(secret[len(_WHSEC_PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError(
                "webhook secret starts with 'whsec_' but the rest is not valid base64; "
                "pass the secret exactly as the dashboard shows it"
            ) from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        # a plain dict keeps the sender's spelling ("Webhook-Id"); a CIMultiDict has already matched above
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    if not value:
        raise _Rejection("missing-header", f"missing or empty header {name!r}")
    return value


def _raw(name: str, text: str) -> bytes:
    """A header's value as the bytes sent: aiohttp keeps bytes that are not UTF-8 as lone surrogates."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise _Rejection("bad-header", f"{name} is not text") from None


class _Headers(NamedTuple):
    """A delivery's headers, checked: what the signature covers before the body, and what it claims."""

    signed: bytes  # ``{id}.{timestamp}.`` as sent
    signatures: str
    webhook_id: str
    timestamp: int


def _check_headers(headers: Mapping[str, str], tolerance: float, now: float) -> _Headers:
    """The checks that need no body: the three headers are there and the timestamp is fresh."""
    webhook_id = _header(headers, "webhook-id")
    timestamp_text = _header(headers, "webhook-timestamp")
    signature_header = _header(headers, "webhook-signature")

    # At most 15 digits: plenty for Unix seconds, and int() raises ValueError on strings over 4300 digits.
    if not (timestamp_text.isascii() and timestamp_text.isdigit() and len(timestamp_text) <= 15):
        shown = timestamp_text[:40]
        raise _Rejection("bad-timestamp", f"webhook-timestamp is not whole Unix seconds: {shown!r}")
    timestamp = int(timestamp_text)
    if now - timestamp > tolerance:
        age = f"{now - timestamp:.0f} s old"
        raise _Rejection("stale", f"stale delivery: timestamp is {age} (tolerance {tolerance:g} s)")
    if timestamp - now > tolerance:
        ahead = f"{timestamp - now:.0f} s ahead"
        raise _Rejection(
            "future", f"delivery from the future: timestamp is {ahead} (tolerance {tolerance:g} s)"
        )

    signed = _raw("webhook-id", webhook_id) + f".{timestamp_text}.".encode()
    return _Headers(signed, signature_header, webhook_id, timestamp)


def _verify(
    headers: Mapping[str, str],
    raw_body: bytes,
    key: bytes,
    tolerance: float,
    replay_guard: ReplayGuard | None,
    now: float,
) -> TaskStatus:
    """Run every check in order; raise ``_Rejection`` at the first that fails."""
    checked = _check_headers(headers, tolerance, now)
    candidates = [
        _raw("webhook-signature", signature)
        for version, _, signature in (entry.partition(",") for entry in checked.signatures.split())
        if version == "v1"
    ]
    if not candidates:
        raise _Rejection("no-v1-signature", "webhook-signature has no v1 entry")
    mac = hmac.new(key, checked.signed, hashlib.sha256)
    mac.update(raw_body)
    expected = base64.b64encode(mac.digest())
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise _Rejection("bad-signature", "no webhook-signature entry matches the body")

    try:
        task = decode_webhook(raw_body)
    except TransportError as exc:
        raise _Rejection("bad-body", f"body is not a task status: {exc}") from None

    # Remembered only now, after the signature and the body passed: forged deliveries leave no trace.
    webhook_id = checked.webhook_id
    if replay_guard is not None and not replay_guard.check_and_remember(
        webhook_id, checked.timestamp, now=now
    ):
        raise _Rejection(_REPLAYED, f"replayed delivery: webhook-id {webhook_id!r} was already accepted")
    return task


def verify_webhook(
    headers: Mapping[str, str],
    raw_body: bytes,
    secret: str | bytes,
    tolerance: float = 300.0,
    *,
    replay_guard: ReplayGuard | None = None,
    now: float | None = None,
) -> TaskStatus:
    """Verify one webhook delivery and decode its task status.

    The checks run in this order: the three headers are present, the timestamp is an integer within
    ``tolerance`` of ``now`` (either way), a ``v1`` signature entry matches (any one, so rotated keys work;
    other versions are ignored), the body is a task status, and (with a ``replay_guard``) the ``webhook-id``
    was not accepted before.

    Args:
        headers: the request headers, names matched case-insensitively (dict, aiohttp headers, any Mapping).
        raw_body: the body exactly as received, never re-serialized.
        secret: ``whsec_<base64>`` (the rest is base64-decoded, Standard Webhooks style), any other string
            (its UTF-8 bytes are the key, as in Freepik's Python/JS/Java samples), or the key bytes. Pass a
            plain base64 secret without the prefix (the PHP sample's form) as ``base64.b64decode(s)``.
        tolerance: the largest accepted distance, in seconds, between ``webhook-timestamp`` and ``now``.
        replay_guard: remembers accepted ids; without one, replays are not detected.
        now: the current Unix time; the system clock's when None.

    Returns:
        The delivered task status.

    Raises:
        WebhookVerificationError: a header is missing, the timestamp is not an integer, stale or from the
            future, there is no v1 signature or none matches, the body is not a task status, or the id was
            replayed.
        ValueError: a ``whsec_`` secret that is not base64, an empty secret, a ``tolerance`` that is not
            positive, or ``serve=False`` without ``public_url``.
        TypeError: ``host`` is not a string.
    """
    key = _signing_key(secret)
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance!r}")
    current = SYSTEM_CLOCK.wall() if now is None else now
    try:
        return _verify(headers, raw_body, key, tolerance, replay_guard, current)
    except _Rejection as rejection:
        raise WebhookVerificationError(str(rejection)) from None


class WebhookReceiver:
    """An aiohttp.web endpoint that verifies Freepik's deliveries and hands each task status to listeners.

    Run it alone (``async with receiver:`` serves ``receiver.url``), or mount ``receiver.handler`` in your
    own aiohttp app. Each delivery is verified with a replay guard of its own and answered at once: 204 when
    accepted, 400 when verification fails (logged at WARNING, never with the secret or the signature), 413
    when the body is over 64 KiB, 408 when it takes over 10 s to arrive. A request without the webhook
    headers, or with a stale timestamp, is refused before its body is read, and before a ``100 Continue``
    would invite it. A replay of an already
    accepted ``webhook-id`` is answered 204 too, because senders retry on any other status, but listeners
    are not called again; it is counted in ``duplicates``.

    Listeners are plain callables run inline before the answer, so they must be quick (set a future, put into
    a queue). An exception from a listener is logged and never changes the answer.

    Args:
        secret: the webhook secret, in any form ``verify_webhook`` accepts.
        host: the interface to listen on.
        port: the port to listen on; 0 picks a free one.
        public_url: the URL the sender should call (behind a proxy or tunnel); else the bound local address.
        path: the path the standalone server serves.
        tolerance: the largest accepted clock distance, in seconds, and the replay guard's memory.
        serve: False when ``handler`` is mounted in your own app: a client given this receiver then starts
            no server of its own. Needs ``public_url``.
        clock: where deliveries' timestamps are checked against the time (tests pass a fake clock).

    Attributes:
        accepted: deliveries verified and handed to listeners.
        rejected: deliveries answered 400 or 413.
        rejections: ``rejected`` broken down by reason (``"bad-signature"``, ``"stale"``, ``"too-large"``...).
        duplicates: replays of accepted deliveries, answered 204 without calling listeners.

    Raises:
        ValueError: a ``whsec_`` secret that is not base64, an empty secret, a ``tolerance`` that is not
            positive, or ``serve=False`` without ``public_url``.
        TypeError: ``host`` is not a string.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        path: str = "/kling/webhook",
        tolerance: float = 300.0,
        serve: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if not tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {tolerance!r}")
        if not isinstance(host, str):  # aiohttp takes None for every interface; the URL needs an address
            raise TypeError(f"host must be an address or name ('0.0.0.0' for every interface), got {host!r}")
        if not serve and public_url is None:
            raise ValueError("serve=False needs public_url: the URL where your app mounts the handler")
        self.serve = serve
        self._clock = clock or SYSTEM_CLOCK
        self._key = _signing_key(secret)
        self._host = host
        self._port = port
        self._public_url = public_url
        self._path = path
        self._tolerance = tolerance
        self._guard = ReplayGuard(ttl=tolerance)
        self._listeners: list[Callable[[TaskStatus], None]] = []
        self._runner: web.AppRunner | None = None
        self._local_url: str | None = None
        self.accepted = 0
        self.rejected = 0
        self.rejections: collections.Counter[str] = collections.Counter()
        self.duplicates = 0
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, rejections since)
        # Clients that run the server for themselves (``KlingClient`` opened while it was stopped, and
        # those opened while such a client kept it running): the last one to close stops it.
        self._clients = 0
        self._joining = asyncio.Lock()

    @property
    def running(self) -> bool:
        """Whether the standalone server is listening."""
        return self._local_url is not None

    @property
    def url(self) -> str:
        """The URL to give the API as ``webhook_url``.

        Returns:
            ``public_url`` when given, else ``http://host:port/path`` with the port actually bound.

        Raises:
            RuntimeError: no ``public_url`` was given and the server is not running.
        """
        if self._public_url is not None:
            return self._public_url
        if self._local_url is None:
            raise RuntimeError("the receiver's URL is known once it runs: use 'async with receiver:'")
        return self._local_url

    def __repr__(self) -> str:
        url = self._public_url or self._local_url
        return (
            f"<WebhookReceiver url={url!r} accepted={self.accepted} rejected={self.rejected} "
            f"duplicates={self.duplicates}>"
        )

    def add_listener(self, listener: Callable[[TaskStatus], None]) -> None:
        """Call ``listener`` with each accepted task status.

        Args:
            listener: a quick, synchronous callable; it runs inline before the delivery is answered.

        Raises:
            TypeError: ``listener`` is a coroutine function: called, it would only make a coroutine that
                nobody awaits, while the delivery is acknowledged (and so never sent again).
        """
        if inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
            getattr(listener, "__call__", None)  # noqa: B004 (an object whose __call__ is async)
        ):
            raise TypeError(
                f"listener {listener!r} is a coroutine function, but listeners are called synchronously: "
                "give a plain function that hands the status on (e.g. queue.put_nowait, future.set_result)"
            )
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[TaskStatus], None]) -> None:
        """Stop calling ``listener``; a listener that is not registered is ignored.

        Args:
            listener: a callable given to ``add_listener``.
        """
        if listener in self._listeners:
            self._listeners.remove(listener)

    def make_app(self) -> web.Application:
        """Build an aiohttp application that serves ``handler`` at ``path``.

        Returns:
            A new application, ready for ``web.AppRunner`` or ``web.run_app``.
        """
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post(self._path, self.handler, expect_handler=self._expect)
        return app

    async def __aenter__(self) -> WebhookReceiver:
        if self._runner is not None:
            raise RuntimeError("the receiver is already running")
        # Deliveries are answered in microseconds; the bound is for a sender stalled mid-body (aiohttp lingers
        # up to 10 s draining it), which would otherwise hold up the exit.
        runner = web.AppRunner(
            self.make_app(), shutdown_timeout=_SHUTDOWN_TIMEOUT, keepalive_timeout=_IDLE_SECONDS
        )
        self._runner = runner  # taken before the first wait: a second entry meanwhile is refused
        try:
            await runner.setup()
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
            port = runner.addresses[0][1]
        except BaseException:
            self._runner = None
            await runner.cleanup()
            raise
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._local_url = f"http://{host}:{port}{self._path}"
        if self._public_url is None and self._host in _WILDCARDS:
            _log.warning(
                "the webhook receiver listens on every interface but gives the API %s, which no sender can "
                "reach: pass public_url (the address the API should call)",
                self._local_url,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        runner, self._runner, self._local_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def _join(self) -> bool:
        """A client opens with this receiver: start the server if nobody runs it. True when clients run it
        (this one must ``_leave``), False when its owner does (``async with receiver``) or ``serve=False``."""
        if not self.serve:
            return False
        async with self._joining:  # clients opened together start one server
            if self._clients == 0:
                if self._runner is not None:
                    return False  # its owner runs it
                await self.__aenter__()
            self._clients += 1
            return True

    async def _leave(self) -> None:
        """A client that joined closes; the last one stops the server."""
        self._clients -= 1
        if self._clients == 0:
            await self.__aexit__(None, None, None)

    async def handler(self, request: web.Request) -> web.Response:
        """Answer one delivery: verify it, call the listeners, reply 204 (400 or 413 when rejected).

        Args:
            request: the incoming POST.

        Returns:
            The response for the sender.
        """
        # What needs no body first: a request without fresh webhook headers is not read at all.
        try:
            _check_headers(request.headers, self._tolerance, self._clock.wall())
        except _Rejection as rejection:
            return self._reject(request, rejection.reason, str(rejection), status=400, unread=True)
        body: bytes | None = None
        with self._clock.move_on_after(_BODY_SECONDS) as reading:
            try:
                body = await self._read_body(request)
            except ConnectionError:
                _log.info("webhook delivery from %s: the sender left before its body ended", request.remote)
                return web.Response(status=400, text="incomplete")  # nobody is left to read it
        if reading.cancelled_caught:
            message = f"body did not arrive within {_BODY_SECONDS:g} s"
            return self._reject(request, "slow-body", message, status=408, unread=True)
        if body is None:
            return self._reject(request, "too-large", f"body is larger than {_MAX_BODY} bytes", status=413)
        status, reason = self._deliver(request.headers, body, request.remote)
        return web.Response(status=status, text=reason)

    async def _expect(self, request: web.Request) -> web.Response | None:
        """Answer ``Expect: 100-continue`` only for a delivery worth its body: a request without fresh
        webhook headers, or announcing a body over the cap, gets its final answer instead, and its sender
        never sends the body (aiohttp's own handler would invite every body first)."""
        expect = request.headers.get("Expect", "")
        if request.version < (1, 1):
            return None  # HTTP/1.0 has no 100 Continue: the body follows anyway
        if expect.lower() != "100-continue":
            return self._reject(
                request, "bad-expect", f"unknown Expect: {expect[:40]!r}", status=417, unread=True
            )
        try:
            _check_headers(request.headers, self._tolerance, self._clock.wall())
        except _Rejection as rejection:
            return self._reject(request, rejection.reason, str(rejection), status=400, unread=True)
        if request.content_length is not None and request.content_length > _MAX_BODY:
            message = f"body is larger than {_MAX_BODY} bytes"
            return self._reject(request, "too-large", message, status=413, unread=True)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the response's size
        return None

    def receive(self, headers: Mapping[str, str], raw_body: bytes) -> int:
        """Take one delivery your own web framework received (FastAPI, Starlette, Flask...): verify it,
        call the listeners (a client given this receiver resolves its handles), and return the HTTP
        status to answer with: 204 accepted (or a replay, ignored), 400 refused, 413 over 64 KiB.

        Make the receiver with ``serve=False`` and your route's ``public_url``. Pass the body exactly as
        received, never re-serialized.

        Args:
            headers: the request's headers (any mapping; names matched case-insensitively).
            raw_body: the request's body, as bytes.
        """
        if len(raw_body) > _MAX_BODY:
            self._count_rejection("too-large", f"body is larger than {_MAX_BODY} bytes", None)
            return 413
        return self._deliver(headers, raw_body, None)[0]

    def _deliver(self, headers: Mapping[str, str], body: bytes, remote: str | None) -> tuple[int, str | None]:
        """Verify a whole delivery and hand it to the listeners: the status to answer, and why if refused."""
        try:
            task = _verify(headers, body, self._key, self._tolerance, self._guard, self._clock.wall())
        except _Rejection as rejection:
            if rejection.reason == _REPLAYED:
                self.duplicates += 1
                _log.info("webhook delivery ignored: %s", rejection)
                return 204, None
            self._count_rejection(rejection.reason, str(rejection), remote)
            return 400, rejection.reason
        self.accepted += 1
        for listener in tuple(self._listeners):  # a copy: a listener may remove itself
            try:
                listener(task)
            except Exception:
                _log.exception("webhook listener %r failed on task %s", listener, task.task_id)
        return 204, None

    @staticmethod
    async def _read_body(request: web.Request) -> bytes | None:
        """The raw body, or None as soon as it is over the cap (from Content-Length, when sent, unread).

        Read here rather than by ``request.read()``, which a mounting app's ``client_max_size`` bounds:
        an app that takes large uploads elsewhere would buffer a whole forged body before the cap.
        """
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return None
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > _MAX_BODY:
                return None
        return bytes(body)

    def _count_rejection(self, reason: str, message: str, remote: str | None) -> None:
        self.rejected += 1
        self.rejections[reason] += 1
        # Anybody can send rejections as fast as a socket allows: one WARNING per reason per _LOG_EVERY
        # seconds, which says how many came since the last one (all are in ``rejections``).
        now = self._clock.now()
        last, unlogged = self._logged.get(reason, (-math.inf, 0))
        if now - last < _LOG_EVERY:
            self._logged[reason] = (last, unlogged + 1)
            return
        self._logged[reason] = (now, 0)
        sender = f" from {remote}" if remote else ""
        also = f" ({unlogged} more rejected as {reason!r} since the last such warning)" if unlogged else ""
        _log.warning("webhook delivery%s rejected: %s%s", sender, message, also)

    def _reject(
        self, request: web.Request, reason: str, message: str, *, status: int, unread: bool = False
    ) -> web.Response:
        self._count_rejection(reason, message, request.remote)
        response = web.Response(status=status, text=reason)
        if unread:
            # Not kept alive: the connection ends once aiohttp has discarded the unread body (at most its
            # lingering time, 10 s), without buffering it.
            response.force_close()
        return response
