"""Webhook verification, the replay guard, and the receiver over real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kling_async._errors import WebhookVerificationError
from kling_async._models import TaskStatus
from kling_async._webhooks import _LOG_EVERY, _MAX_BODY, ReplayGuard, WebhookReceiver, verify_webhook
from kling_async.testing import FakeClock

RAW_SECRET = "fp-webhook-secret-7c1e"
WHSEC_KEY = bytes(range(24))
WHSEC_SECRET = "whsec_" + base64.b64encode(WHSEC_KEY).decode()
NOW = 1_700_000_000
BODY = b'{"task_id":"t-1","status":"COMPLETED","generated":["https://cdn.example/t-1.mp4"]}'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sign(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The v1 signature, computed here from the spec rather than by the module under test."""
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signed_headers(
    key: bytes = RAW_SECRET.encode(),
    *,
    webhook_id: str = "msg_1",
    timestamp: int = NOW,
    body: bytes = BODY,
) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + sign(key, webhook_id, str(timestamp), body),
    }


# --- verify_webhook: accepted deliveries --------------------------------------------------------------------


def test_raw_string_secret_signs_with_its_utf8_bytes() -> None:
    """A secret without the whsec_ prefix is used as its UTF-8 bytes (Freepik's Python/JS/Java samples)."""
    task = verify_webhook(signed_headers(RAW_SECRET.encode()), BODY, RAW_SECRET, now=NOW)
    assert (task.task_id, task.status, task.generated) == (
        "t-1",
        "COMPLETED",
        ("https://cdn.example/t-1.mp4",),
    )


def test_whsec_secret_is_base64_decoded() -> None:
    """A whsec_ secret signs with the base64-decoded rest (Standard Webhooks)."""
    task = verify_webhook(signed_headers(WHSEC_KEY), BODY, WHSEC_SECRET, now=NOW)
    assert task.task_id == "t-1"


def test_bytes_secret_is_the_key_itself() -> None:
    """A bytes secret is used as the key unchanged."""
    task = verify_webhook(signed_headers(WHSEC_KEY), BODY, WHSEC_KEY, now=NOW)
    assert task.task_id == "t-1"


def test_published_standard_webhooks_vector_passes_the_signature_check() -> None:
    """The Standard Webhooks reference vector verifies; it fails only later, its body not being a task."""
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with pytest.raises(WebhookVerificationError, match="not a task status"):
        verify_webhook(headers, body, secret, now=1614265330)


def test_any_v1_entry_may_match_for_key_rotation() -> None:
    """With two v1 entries, a match on the second one is enough (the sender is rotating keys)."""
    headers = signed_headers()
    old = sign(b"old-secret", "msg_1", str(NOW), BODY)
    headers["webhook-signature"] = f"v1,{old} {headers['webhook-signature']}"
    assert verify_webhook(headers, BODY, RAW_SECRET, now=NOW).task_id == "t-1"


def test_entries_of_other_versions_are_ignored() -> None:
    """Entries that are not v1 are skipped, even when they precede the matching v1 entry."""
    headers = signed_headers()
    headers["webhook-signature"] = f"v1a,c2lnbmF0dXJl v2,bm9wZQ== {headers['webhook-signature']}"
    assert verify_webhook(headers, BODY, RAW_SECRET, now=NOW).task_id == "t-1"


def test_header_names_are_case_insensitive_in_a_plain_dict() -> None:
    """A plain dict with the sender's capitalisation verifies."""
    headers = {name.title(): value for name, value in signed_headers().items()}
    assert "Webhook-Signature" in headers
    assert verify_webhook(headers, BODY, RAW_SECRET, now=NOW).task_id == "t-1"


def test_aiohttp_header_mapping_is_accepted() -> None:
    """aiohttp's CIMultiDictProxy works as the headers mapping, whatever the case."""
    headers = CIMultiDictProxy(CIMultiDict({name.upper(): value for name, value in signed_headers().items()}))
    assert verify_webhook(headers, BODY, RAW_SECRET, now=NOW).task_id == "t-1"


def test_timestamp_at_the_tolerance_edge_is_accepted() -> None:
    """A delivery exactly `tolerance` seconds old still verifies."""
    assert verify_webhook(signed_headers(), BODY, RAW_SECRET, tolerance=300, now=NOW + 300).task_id == "t-1"


def test_now_defaults_to_the_wall_clock() -> None:
    """Without `now`, a delivery stamped with the current Unix time verifies."""
    timestamp = int(time.time())
    assert verify_webhook(signed_headers(timestamp=timestamp), BODY, RAW_SECRET).task_id == "t-1"


def test_unknown_fields_are_ignored_and_unknown_statuses_kept() -> None:
    """A body with extra fields and a new status decodes, the status kept as sent."""
    body = b'{"task_id":"t-2","status":"CANCELLED","generated":[],"progress":0.4}'
    task = verify_webhook(signed_headers(body=body), body, RAW_SECRET, now=NOW)
    assert (task.task_id, task.status, task.generated) == ("t-2", "CANCELLED", ())


def test_without_a_replay_guard_a_repeat_is_not_detected() -> None:
    """Replay detection is opt-in: the same delivery verifies twice without a guard."""
    headers = signed_headers()
    verify_webhook(headers, BODY, RAW_SECRET, now=NOW)
    assert verify_webhook(headers, BODY, RAW_SECRET, now=NOW + 1).task_id == "t-1"


# --- verify_webhook: rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_rejected_by_name(name: str) -> None:
    """Each of the three headers is required, and the error names the missing one."""
    headers = signed_headers()
    del headers[name]
    with pytest.raises(WebhookVerificationError, match=f"missing or empty header '{name}'"):
        verify_webhook(headers, BODY, RAW_SECRET, now=NOW)


@pytest.mark.parametrize("timestamp", ["soon", "1700000000.5", "-1700000000", "1e9", "9" * 5000])
def test_timestamp_that_is_not_an_integer_is_rejected(timestamp: str) -> None:
    """webhook-timestamp must be whole Unix seconds (and a sane number of digits)."""
    headers = signed_headers()
    headers["webhook-timestamp"] = timestamp
    with pytest.raises(WebhookVerificationError, match="webhook-timestamp is not whole Unix seconds"):
        verify_webhook(headers, BODY, RAW_SECRET, now=NOW)


def test_stale_delivery_is_rejected() -> None:
    """A delivery older than the tolerance is stale."""
    with pytest.raises(WebhookVerificationError, match="stale"):
        verify_webhook(signed_headers(), BODY, RAW_SECRET, tolerance=300, now=NOW + 301)


def test_delivery_from_the_future_is_rejected() -> None:
    """A timestamp more than the tolerance ahead of now is rejected."""
    with pytest.raises(WebhookVerificationError, match="from the future"):
        verify_webhook(signed_headers(), BODY, RAW_SECRET, tolerance=300, now=NOW - 301)


def test_signature_with_another_key_is_rejected() -> None:
    """A v1 entry made with the wrong key does not verify."""
    with pytest.raises(WebhookVerificationError, match="no webhook-signature entry matches"):
        verify_webhook(signed_headers(b"someone-else"), BODY, RAW_SECRET, now=NOW)


def test_signature_without_a_v1_entry_is_rejected() -> None:
    """A header holding only other versions has nothing to check."""
    headers = signed_headers()
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(WebhookVerificationError, match="no v1 entry"):
        verify_webhook(headers, BODY, RAW_SECRET, now=NOW)


def test_tampered_body_is_rejected() -> None:
    """Changing one byte of a signed body breaks the signature."""
    tampered = BODY.replace(b"COMPLETED", b"COMPLETEX")
    with pytest.raises(WebhookVerificationError, match="no webhook-signature entry matches"):
        verify_webhook(signed_headers(), tampered, RAW_SECRET, now=NOW)


def test_signed_body_that_is_not_a_task_is_rejected() -> None:
    """A correctly signed body that is not a task status is rejected."""
    body = b'{"status": "COMPLETED"}'
    with pytest.raises(WebhookVerificationError, match="not a task status"):
        verify_webhook(signed_headers(body=body), body, RAW_SECRET, now=NOW)


def test_signature_is_checked_before_the_body_is_decoded() -> None:
    """An unsigned garbage body fails on its signature, never reaching the decoder."""
    with pytest.raises(WebhookVerificationError, match="no webhook-signature entry matches"):
        verify_webhook(signed_headers(), b"not json", RAW_SECRET, now=NOW)


def test_replay_is_rejected_with_a_guard() -> None:
    """With a replay guard, a second delivery of the same webhook-id is rejected."""
    guard = ReplayGuard()
    verify_webhook(signed_headers(), BODY, RAW_SECRET, replay_guard=guard, now=NOW)
    with pytest.raises(WebhookVerificationError, match="replayed"):
        verify_webhook(signed_headers(), BODY, RAW_SECRET, replay_guard=guard, now=NOW + 5)


def test_forged_delivery_does_not_poison_the_replay_guard() -> None:
    """A badly signed delivery's id is not remembered, so the genuine one with that id still verifies."""
    guard = ReplayGuard()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(signed_headers(b"forger"), BODY, RAW_SECRET, replay_guard=guard, now=NOW)
    assert verify_webhook(signed_headers(), BODY, RAW_SECRET, replay_guard=guard, now=NOW).task_id == "t-1"


def test_whsec_secret_that_is_not_base64_is_a_configuration_error() -> None:
    """A malformed whsec_ secret raises ValueError at call time, not a verification failure."""
    with pytest.raises(ValueError, match="whsec_") as caught:
        verify_webhook(signed_headers(), BODY, "whsec_not*base64!", now=NOW)
    assert not isinstance(caught.value, WebhookVerificationError)


def test_empty_secret_is_a_configuration_error() -> None:
    """An empty key would let anyone sign: it is refused."""
    with pytest.raises(ValueError, match="empty"):
        verify_webhook(signed_headers(b""), BODY, "", now=NOW)


def test_non_positive_tolerance_is_a_configuration_error() -> None:
    """A tolerance of zero or less would reject every delivery: it is refused up front."""
    with pytest.raises(ValueError, match="tolerance"):
        verify_webhook(signed_headers(), BODY, RAW_SECRET, tolerance=0, now=NOW)


# --- ReplayGuard --------------------------------------------------------------------------------------------


def test_replay_guard_forgets_an_id_once_older_than_ttl() -> None:
    """An id is a replay up to ttl seconds after its timestamp, and new again after that."""
    guard = ReplayGuard(ttl=300)
    assert guard.check_and_remember("msg_1", NOW, now=NOW)
    assert not guard.check_and_remember("msg_1", NOW, now=NOW + 300)
    assert guard.check_and_remember("msg_1", NOW, now=NOW + 301)


def test_replay_guard_remembers_an_id_until_its_latest_retry_is_stale() -> None:
    """A sender's retry keeps the id with a later timestamp; a capture of the retry is refused until the
    retry itself is older than ``ttl``, not only until the first attempt is."""
    guard = ReplayGuard(ttl=300)
    assert guard.check_and_remember("msg_X", NOW, now=NOW)
    assert not guard.check_and_remember("msg_X", NOW + 200, now=NOW + 200)  # the retry: a duplicate
    assert not guard.check_and_remember("msg_X", NOW + 200, now=NOW + 301)  # its capture, replayed
    assert guard.check_and_remember("msg_X", NOW + 200, now=NOW + 501)


def test_replay_guard_memory_is_bounded_by_forgetting_the_oldest() -> None:
    """At max_entries, remembering a new id forgets the oldest one."""
    guard = ReplayGuard(ttl=300, max_entries=2)
    for webhook_id in ("a", "b", "c"):
        assert guard.check_and_remember(webhook_id, NOW, now=NOW)
    assert len(guard) == 2
    assert not guard.check_and_remember("c", NOW, now=NOW)
    assert guard.check_and_remember("a", NOW, now=NOW)


def test_replay_guard_drops_expired_ids() -> None:
    """Expired ids are pruned, so a quiet guard holds nothing."""
    guard = ReplayGuard(ttl=10)
    guard.check_and_remember("a", NOW, now=NOW)
    guard.check_and_remember("b", NOW + 100, now=NOW + 100)
    assert len(guard) == 1


def test_replay_guard_does_not_store_an_id_already_past_its_ttl() -> None:
    """An id whose timestamp is older than ttl cannot be replayed in time, so it takes no memory."""
    guard = ReplayGuard(ttl=10)
    assert guard.check_and_remember("a", NOW, now=NOW + 11)
    assert len(guard) == 0


@pytest.mark.parametrize(("ttl", "max_entries"), [(0, 10), (-1, 10), (10, 0)])
def test_replay_guard_refuses_unbounded_settings(ttl: float, max_entries: int) -> None:
    """A non-positive ttl or an empty capacity is a configuration error."""
    with pytest.raises(ValueError, match="must be"):
        ReplayGuard(ttl=ttl, max_entries=max_entries)


# --- WebhookReceiver over loopback HTTP ---------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def live_headers(webhook_id: str = "msg_1", body: bytes = BODY) -> dict[str, str]:
    return signed_headers(webhook_id=webhook_id, timestamp=int(time.time()), body=body)


@pytest.mark.anyio
async def test_receiver_answers_204_and_calls_listeners(session: aiohttp.ClientSession) -> None:
    """A valid delivery is answered 204 and its TaskStatus handed to the listener."""
    received: list[TaskStatus] = []
    async with WebhookReceiver(RAW_SECRET) as receiver:
        receiver.add_listener(received.append)
        async with session.post(receiver.url, data=BODY, headers=live_headers()) as response:
            assert response.status == 204
    assert [(task.task_id, task.status) for task in received] == [("t-1", "COMPLETED")]
    assert receiver.accepted == 1


@pytest.mark.anyio
async def test_receiver_rejects_a_bad_signature_with_400(session: aiohttp.ClientSession) -> None:
    """A badly signed delivery gets 400, is counted by reason, and reaches no listener."""
    received: list[TaskStatus] = []
    async with WebhookReceiver(RAW_SECRET) as receiver:
        receiver.add_listener(received.append)
        headers = live_headers()
        headers["webhook-signature"] = "v1," + sign(b"forger", "msg_1", headers["webhook-timestamp"], BODY)
        async with session.post(receiver.url, data=BODY, headers=headers) as response:
            assert response.status == 400
    assert received == []
    assert (receiver.rejected, receiver.rejections["bad-signature"]) == (1, 1)


@pytest.mark.anyio
async def test_receiver_logs_rejections_without_secret_or_signature(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The WARNING for a rejected delivery shows the reason, never the secret or the signature."""
    caplog.set_level(logging.WARNING, logger="kling_async")
    headers = live_headers()
    signature = sign(b"forger", "msg_1", headers["webhook-timestamp"], BODY)
    headers["webhook-signature"] = "v1," + signature
    async with (
        WebhookReceiver(RAW_SECRET) as receiver,
        session.post(receiver.url, data=BODY, headers=headers) as response,
    ):
        assert response.status == 400
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no webhook-signature entry matches" in warnings[0].getMessage()
    assert RAW_SECRET not in caplog.text
    assert signature not in caplog.text


@pytest.mark.anyio
async def test_receiver_delivers_a_replayed_id_once(session: aiohttp.ClientSession) -> None:
    """A replay of an accepted delivery is answered 204 but reaches the listeners only once."""
    received: list[TaskStatus] = []
    async with WebhookReceiver(RAW_SECRET) as receiver:
        receiver.add_listener(received.append)
        headers = live_headers()
        for _ in range(2):
            async with session.post(receiver.url, data=BODY, headers=headers) as response:
                assert response.status == 204
    assert len(received) == 1
    assert (receiver.accepted, receiver.duplicates, receiver.rejected) == (1, 1, 0)


@pytest.mark.anyio
async def test_listener_error_still_answers_204(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the sender still gets 204 and later listeners still run."""
    received: list[TaskStatus] = []

    def broken(task: TaskStatus) -> None:
        raise RuntimeError("listener bug")

    async with WebhookReceiver(RAW_SECRET) as receiver:
        receiver.add_listener(broken)
        receiver.add_listener(received.append)
        async with session.post(receiver.url, data=BODY, headers=live_headers()) as response:
            assert response.status == 204
    assert len(received) == 1
    assert "listener bug" in caplog.text


@pytest.mark.anyio
async def test_removed_listener_is_not_called(session: aiohttp.ClientSession) -> None:
    """After remove_listener, deliveries no longer reach that listener."""
    received: list[TaskStatus] = []
    async with WebhookReceiver(RAW_SECRET) as receiver:
        receiver.add_listener(received.append)
        receiver.remove_listener(received.append)
        async with session.post(receiver.url, data=BODY, headers=live_headers()) as response:
            assert response.status == 204
    assert received == []


# In the two 413 tests the client closes first: answered early, aiohttp's client stops sending the body but
# keeps the connection, and the server then lingers waiting for the rest until its shutdown timeout.


@pytest.mark.anyio
async def test_receiver_refuses_a_body_over_the_cap_with_413() -> None:
    """A body over the cap (announced by Content-Length) is refused with 413 before verification."""
    body = b" " * (_MAX_BODY + 1)
    headers = live_headers(body=body)
    async with (
        WebhookReceiver(RAW_SECRET) as receiver,
        aiohttp.ClientSession() as session,
        session.post(receiver.url, data=io.BytesIO(body), headers=headers) as response,
    ):
        assert response.request_info.headers["Content-Length"] == str(len(body))
        assert response.status == 413
    assert receiver.rejections["too-large"] == 1


@pytest.mark.anyio
async def test_receiver_refuses_a_chunked_body_over_the_cap_with_413() -> None:
    """Without Content-Length, the cap is enforced while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield b" " * (_MAX_BODY // 16)

    async with (
        WebhookReceiver(RAW_SECRET) as receiver,
        aiohttp.ClientSession() as session,
        session.post(receiver.url, data=chunks(), headers=live_headers()) as response,
    ):
        assert "Content-Length" not in response.request_info.headers
        assert response.status == 413
    assert receiver.rejections["too-large"] == 1


async def _raw_request(
    port: int, head: bytes, body: bytes = b"", *, rest: bytes = b"", close: bool = False
) -> bytes:
    """Send a request's head and (part of) its body over a bare socket; the status line, or b"" when
    ``close``: the connection is closed without waiting for an answer. After the status line, ``rest``
    ends the body: the server discards what it left unread before it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        if close:
            return b""
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.write(rest)
        await asyncio.wait_for(reader.read(), 5)  # the server closes the connection
        return status
    finally:
        writer.close()


def _head(headers: dict[str, str], length: int) -> bytes:
    lines = [f"{name}: {value}" for name, value in headers.items()]
    head = ["POST /kling/webhook HTTP/1.1", "Host: x", "Connection: close", f"Content-Length: {length}"]
    text = "\r\n".join([*head, *lines])
    return text.encode("utf-8", "surrogateescape") + b"\r\n\r\n"


def _port(receiver: WebhookReceiver) -> int:
    port = URL(receiver.url).port
    assert port is not None
    return port


@pytest.mark.anyio
async def test_receiver_refuses_a_request_without_webhook_headers_before_reading_its_body() -> None:
    """A request without the webhook headers is answered 400 while its announced body is still unsent."""
    async with WebhookReceiver(RAW_SECRET) as receiver:
        status = await _raw_request(_port(receiver), _head({}, _MAX_BODY), rest=bytes(_MAX_BODY))
    assert status.startswith(b"HTTP/1.1 400")
    assert receiver.rejections["missing-header"] == 1


@pytest.mark.anyio
async def test_receiver_refuses_a_stale_delivery_before_reading_its_body() -> None:
    """A stale timestamp is answered 400 while the announced body is still unsent."""
    headers = signed_headers(timestamp=int(time.time()) - 3600)
    async with WebhookReceiver(RAW_SECRET) as receiver:
        status = await _raw_request(_port(receiver), _head(headers, _MAX_BODY), rest=bytes(_MAX_BODY))
    assert status.startswith(b"HTTP/1.1 400")
    assert receiver.rejections["stale"] == 1


@pytest.mark.anyio
async def test_receiver_answers_408_to_a_body_that_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh-looking delivery whose body stops short is answered 408 once the body's time is up."""
    monkeypatch.setattr("kling_async._webhooks._BODY_SECONDS", 0.2)
    async with WebhookReceiver(RAW_SECRET) as receiver:
        status = await _raw_request(
            _port(receiver), _head(live_headers(), len(BODY)), BODY[:-1], rest=BODY[-1:]
        )
    assert status.startswith(b"HTTP/1.1 408")
    assert receiver.rejections["slow-body"] == 1


@pytest.mark.anyio
async def test_a_sender_leaving_mid_body_is_not_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """A sender that closes its connection before its body ended leaves no ERROR (no traceback)."""
    async with WebhookReceiver(RAW_SECRET) as receiver:
        await _raw_request(_port(receiver), _head(live_headers(), len(BODY)), BODY[:-1], close=True)
        await asyncio.sleep(0.1)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _expecting(
    port: int, headers: dict[str, str], length: int
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a request's head with ``Expect: 100-continue`` and no body; the first status line answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head({**headers, "Expect": "100-continue"}, length))
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 5), reader, writer


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "length", "status", "reason"),
    [
        ({}, len(BODY), b"400", "missing-header"),
        (signed_headers(timestamp=NOW), len(BODY), b"400", "stale"),
        ("live", _MAX_BODY + 1, b"413", "too-large"),
    ],
    ids=["no-webhook-headers", "stale", "over-the-cap"],
)
async def test_receiver_refuses_a_request_expecting_100_continue_without_inviting_its_body(
    headers: dict[str, str] | str, length: int, status: bytes, reason: str
) -> None:
    """A sender waiting for ``100 Continue`` gets the refusal as its first answer and never sends its body."""
    sent = live_headers() if headers == "live" else headers
    assert isinstance(sent, dict)
    async with WebhookReceiver(RAW_SECRET) as receiver:
        line, _, writer = await _expecting(_port(receiver), sent, length)
        writer.close()
        await writer.wait_closed()  # else the receiver's exit waits for the connection it keeps open
    assert line.startswith(b"HTTP/1.1 " + status)
    assert receiver.rejections[reason] == 1


@pytest.mark.anyio
async def test_receiver_answers_417_to_an_expectation_it_does_not_know() -> None:
    """An ``Expect`` other than ``100-continue`` is refused with 417, as HTTP says, and counted."""
    async with WebhookReceiver(RAW_SECRET) as receiver:
        status = await _raw_request(
            _port(receiver), _head({**live_headers(), "Expect": "200-ok"}, len(BODY)), BODY
        )
    assert status.startswith(b"HTTP/1.1 417")
    assert receiver.rejections["bad-expect"] == 1


@pytest.mark.anyio
async def test_receiver_invites_the_body_of_a_fresh_delivery_expecting_100_continue() -> None:
    """A delivery with fresh webhook headers gets ``100 Continue``, then its body is verified and accepted."""
    seen: list[TaskStatus] = []
    async with WebhookReceiver(RAW_SECRET) as receiver:
        receiver.add_listener(seen.append)
        line, reader, writer = await _expecting(_port(receiver), live_headers(), len(BODY))
        try:
            assert line.startswith(b"HTTP/1.1 100")
            assert await asyncio.wait_for(reader.readline(), 5) == b"\r\n"
            writer.write(BODY)
            final = await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
    assert final.startswith(b"HTTP/1.1 204")
    assert [task.task_id for task in seen] == ["t-1"]


@pytest.mark.anyio
async def test_receiver_answers_400_to_bytes_that_are_not_utf8_in_a_header() -> None:
    """A byte that is not UTF-8 in webhook-id is a failed signature (400, counted), not a server error."""
    headers = live_headers()
    headers["webhook-id"] = "msg_\udcff"
    async with WebhookReceiver(RAW_SECRET) as receiver:
        status = await _raw_request(_port(receiver), _head(headers, len(BODY)), BODY)
    assert status.startswith(b"HTTP/1.1 400")
    assert receiver.rejections["bad-signature"] == 1


def test_a_header_that_is_not_text_fails_verification() -> None:
    """verify_webhook given a header holding a lone surrogate raises its own error, not UnicodeEncodeError."""
    headers = signed_headers()
    headers["webhook-signature"] = "v1,\ud800"
    with pytest.raises(WebhookVerificationError, match="webhook-signature is not text"):
        verify_webhook(headers, BODY, RAW_SECRET, now=NOW)


@pytest.mark.anyio
async def test_body_of_exactly_the_cap_is_not_too_large(session: aiohttp.ClientSession) -> None:
    """The cap is inclusive: a body of exactly the cap reaches verification (and fails there, not being a
    task)."""
    body = b" " * _MAX_BODY
    headers = live_headers(body=body)
    async with (
        WebhookReceiver(RAW_SECRET) as receiver,
        session.post(receiver.url, data=io.BytesIO(body), headers=headers) as response,
    ):
        assert response.status == 400
    assert dict(receiver.rejections) == {"bad-body": 1}


@contextlib.asynccontextmanager
async def _mounted(receiver: WebhookReceiver, *, client_max_size: int) -> AsyncIterator[int]:
    """``receiver.handler`` at /kling/webhook of a user's own app on loopback; yields its port."""
    app = web.Application(client_max_size=client_max_size)
    app.router.add_post("/kling/webhook", receiver.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_cap_holds_in_a_user_app_that_allows_larger_bodies() -> None:
    """In an app with a bigger client_max_size, the handler still refuses a chunked body over the cap."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield b" " * (_MAX_BODY // 16)

    receiver = WebhookReceiver(RAW_SECRET)
    async with _mounted(receiver, client_max_size=8 << 20) as port:
        url = f"http://127.0.0.1:{port}/kling/webhook"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=chunks(), headers=live_headers()) as response,
        ):
            assert response.status == 413
    assert receiver.rejections["too-large"] == 1


@pytest.mark.anyio
async def test_a_chunked_body_is_refused_at_the_cap_in_an_app_that_allows_larger_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler stops reading a chunked body once past its cap, not at the mounting app's larger
    ``client_max_size``: a sender that stalls after twice the cap is refused 413 at once (not 408 once the
    body's time is up, which would mean the receiver held on to wait for the rest)."""
    monkeypatch.setattr("kling_async._webhooks._BODY_SECONDS", 2.0)
    receiver = WebhookReceiver(RAW_SECRET)
    lines = [f"{name}: {value}" for name, value in live_headers().items()]
    head = "\r\n".join(["POST /kling/webhook HTTP/1.1", "Host: x", "Transfer-Encoding: chunked", *lines])
    piece = b" " * 4096
    chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n") * (2 * _MAX_BODY // len(piece))
    async with _mounted(receiver, client_max_size=256 << 20) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head.encode() + b"\r\n\r\n" + chunks)  # and no last chunk: the sender stalls
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
            await writer.wait_closed()
    assert status.startswith(b"HTTP/1.1 413")
    assert receiver.rejections["too-large"] == 1


@pytest.mark.anyio
async def test_handler_mounts_in_the_users_own_app(session: aiohttp.ClientSession) -> None:
    """receiver.handler serves deliveries from an aiohttp app the user builds and runs."""
    received: list[TaskStatus] = []
    receiver = WebhookReceiver(WHSEC_SECRET)
    receiver.add_listener(received.append)
    app = web.Application()
    app.router.add_post("/hook", receiver.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        headers = signed_headers(WHSEC_KEY, timestamp=int(time.time()))
        async with session.post(f"http://127.0.0.1:{port}/hook", data=BODY, headers=headers) as response:
            assert response.status == 204
    finally:
        await runner.cleanup()
    assert [task.task_id for task in received] == ["t-1"]


@pytest.mark.anyio
async def test_receiver_stops_listening_on_exit(session: aiohttp.ClientSession) -> None:
    """Leaving the context closes the port and leaves no task running."""
    tasks_before = asyncio.all_tasks()
    async with WebhookReceiver(RAW_SECRET) as receiver:
        url = receiver.url
        async with session.post(url, data=BODY, headers=live_headers()) as response:
            assert response.status == 204
    assert asyncio.all_tasks() <= tasks_before
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.post(url, data=BODY, headers=live_headers())


@pytest.mark.anyio
async def test_port_in_use_raises_and_leaves_the_receiver_stopped() -> None:
    """A failed start propagates the OSError; the receiver stays stopped and can be started elsewhere."""
    async with WebhookReceiver(RAW_SECRET) as first:
        port = URL(first.url).port
        assert port is not None
        second = WebhookReceiver(RAW_SECRET, port=port)
        with pytest.raises(OSError, match="in use"):
            await second.__aenter__()
        with pytest.raises(RuntimeError):
            _ = second.url


@pytest.mark.anyio
async def test_receiver_cannot_be_entered_twice() -> None:
    """Starting a running receiver again is an error, not a second server."""
    async with WebhookReceiver(RAW_SECRET) as receiver:
        with pytest.raises(RuntimeError, match="already running"):
            await receiver.__aenter__()


@pytest.mark.anyio
async def test_a_receiver_entered_twice_at_once_starts_one_server() -> None:
    """A second entry while the first is still starting is refused, as a second entry after it is."""
    receiver = WebhookReceiver(RAW_SECRET)
    results = await asyncio.gather(receiver.__aenter__(), receiver.__aenter__(), return_exceptions=True)
    try:
        assert [type(result) for result in results] == [WebhookReceiver, RuntimeError]
    finally:
        await receiver.__aexit__(None, None, None)


def test_an_async_listener_is_refused_when_added() -> None:
    """A coroutine function would be called without being awaited while the delivery is acknowledged."""

    async def listener(task: TaskStatus) -> None:
        pass

    class Handler:
        async def __call__(self, task: TaskStatus) -> None:
            pass

    receiver = WebhookReceiver(RAW_SECRET)
    for wrong in (listener, Handler()):
        with pytest.raises(TypeError, match="coroutine function"):
            receiver.add_listener(wrong)  # type: ignore[arg-type]


def test_a_host_that_is_not_a_string_is_refused_when_built() -> None:
    """``host=None`` (aiohttp's every interface) gives no address for the URL the API is given."""
    with pytest.raises(TypeError, match="host must be an address"):
        WebhookReceiver(RAW_SECRET, host=None)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_receiver_on_every_interface_without_public_url_warns_that_no_sender_can_reach_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Listening on 0.0.0.0 without ``public_url``, the URL given to the API names no reachable host."""
    async with WebhookReceiver(RAW_SECRET, host="0.0.0.0") as receiver:
        pass
    assert "pass public_url" in caplog.text
    assert receiver.rejected == 0


@pytest.mark.anyio
async def test_a_receiver_with_a_public_url_on_every_interface_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with WebhookReceiver(RAW_SECRET, host="0.0.0.0", public_url="https://hooks.example/kling"):
        pass
    assert "public_url" not in caplog.text


@pytest.mark.anyio
async def test_a_connection_that_never_completes_its_request_head_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender that trickles its headers (or sends nothing) is cut off after the idle time, not after an
    hour."""
    monkeypatch.setattr("kling_async._webhooks._IDLE_SECONDS", 0.3)
    async with WebhookReceiver(RAW_SECRET) as receiver:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(receiver))
        try:
            writer.write(b"POST /kling/webhook HTTP/1.1\r\nHost: x\r\n")  # and no end of the head
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        finally:
            writer.close()


def test_rejections_are_logged_once_per_reason_per_interval_with_a_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of forged deliveries writes one WARNING per reason every ``_LOG_EVERY`` seconds, each saying
    how many it stands for; the counters still count every one."""
    clock = FakeClock(wall=NOW)
    receiver = WebhookReceiver(RAW_SECRET, clock=clock)
    forged = {**signed_headers(), "webhook-signature": "v1,AAAA"}
    for _ in range(5):
        assert receiver.receive(forged, BODY) == 400
    anyio.run(clock.advance, _LOG_EVERY)
    assert receiver.receive(forged, BODY) == 400
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "4 more rejected as 'bad-signature'" in warnings[1]
    assert receiver.rejections["bad-signature"] == 6


def test_receiver_refuses_a_malformed_whsec_secret_when_built() -> None:
    """The receiver checks its secret at construction, before any delivery arrives."""
    with pytest.raises(ValueError, match="whsec_"):
        WebhookReceiver("whsec_%%%")


def test_public_url_is_the_url_without_running() -> None:
    """With public_url, url is that address, known before the server starts."""
    receiver = WebhookReceiver(RAW_SECRET, public_url="https://hooks.example.com/kling")
    assert receiver.url == "https://hooks.example.com/kling"


def test_url_of_a_stopped_receiver_without_public_url_is_an_error() -> None:
    """The bound address is unknown until the server runs."""
    with pytest.raises(RuntimeError, match="async with"):
        _ = WebhookReceiver(RAW_SECRET).url


@pytest.mark.anyio
async def test_repr_shows_url_and_counters_but_not_the_secret() -> None:
    """The repr is for debugging: the live URL and counters, never the secret."""
    async with WebhookReceiver(WHSEC_SECRET) as receiver:
        text = repr(receiver)
        assert receiver.url in text
    assert "accepted=0" in text
    assert "rejected=0" in text
    assert WHSEC_SECRET not in text
    assert WHSEC_SECRET.removeprefix("whsec_") not in text
