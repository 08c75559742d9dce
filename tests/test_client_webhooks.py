"""A client that owns a webhook receiver: deliveries resolve handles, polling is only the safety net."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import anyio
import msgspec
import pytest

from kling_async import (
    KlingClient,
    OmniRequest,
    PollPolicy,
    StatusChanged,
    TaskHandle,
    TaskStatus,
    TaskSubmitted,
    WebhookReceiver,
)
from kling_async.testing import Faults, MockRequest, MockTransport, Response, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="
# Checks only after 5 s: a test that finishes sooner was resolved by deliveries alone.
SLOW_SAFETY = replace(FAST_POLL, safety_interval=5.0)


@pytest.fixture
async def hooked_sim() -> AsyncIterator[Simulator]:
    async with Simulator(time_scale=0.001, webhook_secret=SECRET) as sim:
        yield sim


def _client(sim: Simulator, receiver: WebhookReceiver, poll: PollPolicy = SLOW_SAFETY) -> KlingClient:
    return KlingClient(api_key="sim-key", base_url=sim.url, retry=FAST_RETRY, webhooks=receiver, poll=poll)


@pytest.fixture
async def silent_sim() -> AsyncIterator[Simulator]:
    """A simulator whose own deliveries are all lost: the tests deliver what they need themselves."""
    async with Simulator(
        time_scale=0.001, webhook_secret=SECRET, faults=Faults(webhook_drop_rate=1.0)
    ) as sim:
        yield sim


def _signed(body: dict[str, object]) -> tuple[dict[str, str], bytes]:
    """One delivery's headers and body, signed with SECRET as the vendor signs (computed here, not by the
    SDK)."""
    raw = msgspec.json.encode(body)
    webhook_id, timestamp = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }
    return headers, raw


async def _deliver(receiver: WebhookReceiver, body: dict[str, object]) -> int:
    """POST one signed delivery to the receiver's own server."""
    headers, raw = _signed(body)
    async with aiohttp.ClientSession() as session, session.post(receiver.url, data=raw, headers=headers) as r:
        return r.status


async def test_a_delivery_resolves_the_handle_without_a_status_request(hooked_sim: Simulator) -> None:
    receiver = WebhookReceiver(SECRET)
    async with _client(hooked_sim, receiver) as client:
        result = await client.generate(OmniRequest(prompt="a fox"))
    assert result.url is not None
    assert hooked_sim.counters.status_gets == 0
    assert receiver.accepted >= 1


async def test_every_submission_carries_the_receivers_url(hooked_sim: Simulator) -> None:
    receiver = WebhookReceiver(SECRET)
    async with _client(hooked_sim, receiver) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        assert hooked_sim.tasks[handle.task_id].payload["webhook_url"] == receiver.url


async def test_the_client_starts_and_stops_a_receiver_it_was_given_stopped(hooked_sim: Simulator) -> None:
    receiver = WebhookReceiver(SECRET)
    async with _client(hooked_sim, receiver):
        assert receiver.running
    assert not receiver.running


async def test_a_receiver_already_running_is_left_running(hooked_sim: Simulator) -> None:
    async with WebhookReceiver(SECRET) as receiver:
        async with _client(hooked_sim, receiver):
            pass
        assert receiver.running


async def test_clients_sharing_a_receiver_they_started_keep_it_running_until_the_last_closes(
    hooked_sim: Simulator,
) -> None:
    """Two clients given one stopped receiver: the first to close leaves it serving the other, whose
    submissions still carry its URL and are resolved by its deliveries."""
    receiver = WebhookReceiver(SECRET)
    async with _client(hooked_sim, receiver) as second:
        async with _client(hooked_sim, receiver):
            pass
        assert receiver.running
        handle = await second.submit(OmniRequest(prompt="after the first client closed", duration="5"))
        await handle
    assert not receiver.running
    assert receiver.accepted >= 1


async def test_clients_opened_together_on_a_stopped_receiver_start_one_server(hooked_sim: Simulator) -> None:
    """Opened at the same moment, two clients share one server: none is left listening once both closed."""
    receiver = WebhookReceiver(SECRET)
    urls: list[str] = []
    both_open = anyio.Event()

    async def use(client: KlingClient) -> None:
        async with client:
            urls.append(receiver.url)
            if len(urls) == 2:
                both_open.set()
            await both_open.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(use, _client(hooked_sim, receiver))
        tg.start_soon(use, _client(hooked_sim, receiver))
    assert len(set(urls)) == 1
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.post(urls[0]):
            pass


async def test_a_client_that_fails_to_open_does_not_leave_the_receiver_it_started_running() -> None:
    """The receiver is started first; a transport that cannot open ends the client's entry, and the
    receiver it started stops with it."""

    class Unopenable(MockTransport):
        async def open(self) -> None:
            raise OSError("no sockets left")

    receiver = WebhookReceiver(SECRET)

    def never_called(request: MockRequest) -> Response:
        raise AssertionError("nothing is sent by a client that did not open")

    client = KlingClient(api_key="k", transport=Unopenable(never_called), webhooks=receiver)
    with pytest.raises(OSError, match="no sockets left"):
        await client.__aenter__()
    assert not receiver.running


async def test_a_batch_with_a_fifth_of_deliveries_lost_completes_through_safety_polling() -> None:
    faults = Faults(webhook_drop_rate=0.2)
    async with Simulator(time_scale=0.001, webhook_secret=SECRET, faults=faults, seed=5) as sim:
        receiver = WebhookReceiver(SECRET)
        async with _client(sim, receiver, poll=replace(FAST_POLL, safety_interval=0.2)) as client:
            outcomes = await client.gather([OmniRequest(prompt=f"clip {i}") for i in range(100)])
    assert all(o.ok for o in outcomes)
    assert sim.counters.webhooks_dropped > 0


async def test_duplicate_and_reordered_deliveries_never_move_a_finished_task_back(
    hooked_sim: Simulator,
) -> None:
    hooked_sim.faults = Faults(webhook_duplicate_rate=1.0, webhook_reorder=True)
    receiver = WebhookReceiver(SECRET)
    statuses: list[str] = []
    async with _client(hooked_sim, receiver) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        result = await handle
        assert result.status == "COMPLETED"
        client._registry.observe(TaskStatus(task_id=handle.task_id, status="IN_PROGRESS"))
        statuses.append(handle.status or "")
    assert statuses == ["COMPLETED"]


async def test_a_delivery_that_beats_the_post_answer_is_applied_to_the_new_handle(
    hooked_sim: Simulator,
) -> None:
    receiver = WebhookReceiver(SECRET)
    async with _client(hooked_sim, receiver) as client:
        client._registry.observe(
            TaskStatus(task_id="early-1", status="COMPLETED", generated=("https://cdn/x.mp4",))
        )
        handle = client.task("early-1")
        assert handle.status == "COMPLETED"
        assert (await handle).url == "https://cdn/x.mp4"


async def test_status_changes_from_deliveries_are_published_as_events(hooked_sim: Simulator) -> None:
    receiver = WebhookReceiver(SECRET)
    async with _client(hooked_sim, receiver) as client:
        seen: list[StatusChanged] = []
        events = client.events()

        handle = await client.submit(OmniRequest(prompt="a fox"))
        await handle
        async for event in events:
            if isinstance(event, StatusChanged):
                seen.append(event)
            if isinstance(event, StatusChanged) and event.status == "COMPLETED":
                break
    assert [e.status for e in seen][-1] == "COMPLETED"


async def test_a_receiver_mounted_in_your_own_app_is_not_started_by_the_client(hooked_sim: Simulator) -> None:
    receiver = WebhookReceiver(SECRET, public_url="https://example.com/hooks/kling", serve=False)
    async with _client(hooked_sim, receiver) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        assert not receiver.running
        assert hooked_sim.tasks[handle.task_id].payload["webhook_url"] == "https://example.com/hooks/kling"


async def test_a_delivery_another_web_framework_hands_to_receive_resolves_the_handle(
    silent_sim: Simulator,
) -> None:
    """A FastAPI or Flask route passes the headers and raw body to ``receiver.receive`` and answers with
    its status: the client's handle resolves from it, without a status request."""
    receiver = WebhookReceiver(SECRET, public_url="https://app.example/hooks/kling", serve=False)
    async with _client(silent_sim, receiver) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        silent_sim.finish(handle.task_id)
        url = f"{silent_sim.cdn_url}/files/{handle.task_id}.mp4"
        headers, raw = _signed({"task_id": handle.task_id, "status": "COMPLETED", "generated": [url]})
        assert receiver.receive(headers, raw) == 204
        with anyio.fail_after(2):  # the safety net would check only after 5 s
            result = await handle.wait()
    assert result.url == url
    assert silent_sim.counters.status_gets == 0


def test_receive_answers_a_refused_delivery_with_the_status_the_server_would() -> None:
    receiver = WebhookReceiver(SECRET, public_url="https://app.example/hooks/kling", serve=False)
    headers, raw = _signed({"task_id": "t-1", "status": "COMPLETED", "generated": []})
    assert receiver.receive(headers, raw.replace(b"t-1", b"t-2")) == 400  # tampered
    assert receiver.receive(headers, b" " * (1024 * 1024 + 1)) == 413
    assert receiver.rejections == {"bad-signature": 1, "too-large": 1}


def test_serve_false_needs_the_public_url_of_the_mounted_handler() -> None:
    with pytest.raises(ValueError, match="public_url"):
        WebhookReceiver(SECRET, serve=False)


@contextlib.asynccontextmanager
async def _finished(sim: Simulator) -> AsyncIterator[tuple[WebhookReceiver, TaskHandle]]:
    """A client with a receiver of its own, and the handle of a task it submitted that has just finished
    on ``sim`` (nobody told yet)."""
    receiver = WebhookReceiver(SECRET)
    async with _client(sim, receiver) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        sim.finish(handle.task_id)
        yield receiver, handle


async def test_a_completed_delivery_without_urls_has_the_awaited_handle_fetch_the_detail(
    silent_sim: Simulator,
) -> None:
    async with _finished(silent_sim) as (receiver, handle):
        with anyio.fail_after(2):  # the safety net would check only after 5 s
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle.wait)
                await anyio.sleep(0.05)
                assert (
                    await _deliver(
                        receiver, {"task_id": handle.task_id, "status": "COMPLETED", "generated": []}
                    )
                    == 204
                )
        result = handle.result()
    assert result.url is not None
    assert silent_sim.counters.status_gets == 1


async def test_a_completed_delivery_without_urls_before_anyone_waits_has_the_next_wait_fetch_the_detail(
    silent_sim: Simulator,
) -> None:
    """Told while nobody waited, the handle's next wait checks at once instead of after the safety net."""
    async with _finished(silent_sim) as (receiver, handle):
        delivered: dict[str, object] = {"task_id": handle.task_id, "status": "COMPLETED", "generated": []}
        assert await _deliver(receiver, delivered) == 204
        with anyio.fail_after(2):  # the safety net would check only after 5 s
            result = await handle.wait()
    assert result.url is not None
    assert silent_sim.counters.status_gets == 1


async def test_a_completed_delivery_without_urls_has_a_batch_fetch_the_detail(silent_sim: Simulator) -> None:
    receiver = WebhookReceiver(SECRET)
    async with _client(silent_sim, receiver) as client:
        events = client.events()
        with anyio.fail_after(2):  # the safety net would check only after 5 s
            async with client.map([OmniRequest(prompt="a fox")]) as batch:
                task_id = await anext(e.task_id async for e in events if isinstance(e, TaskSubmitted))
                silent_sim.finish(task_id)
                await _deliver(receiver, {"task_id": task_id, "status": "COMPLETED", "generated": []})
                outcomes = [outcome async for outcome in batch]
    assert [o.ok for o in outcomes] == [True]
    assert outcomes[0].result is not None
    assert outcomes[0].result.url is not None


async def test_a_completed_delivery_without_urls_that_beats_the_post_answer_is_not_kept(
    hooked_sim: Simulator,
) -> None:
    async with _client(hooked_sim, WebhookReceiver(SECRET)) as client:
        client._registry.observe(TaskStatus(task_id="early-2", status="COMPLETED", generated=()))
        handle = client.task("early-2")
        assert handle.status is None


async def test_a_later_non_terminal_delivery_that_beats_the_post_answer_does_not_undo_a_terminal_one(
    hooked_sim: Simulator,
) -> None:
    async with _client(hooked_sim, WebhookReceiver(SECRET)) as client:
        client._registry.observe(
            TaskStatus(task_id="early-3", status="COMPLETED", generated=("https://cdn/x.mp4",))
        )
        client._registry.observe(TaskStatus(task_id="early-3", status="IN_PROGRESS"))
        handle = client.task("early-3")
        assert handle.status == "COMPLETED"
