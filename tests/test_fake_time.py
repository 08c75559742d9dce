"""Polling and Retry-After in fake time: a FakeClock moved by hand and a MockTransport, no real waiting."""

from __future__ import annotations

import itertools
import json
import logging
import math

import anyio
import pytest

from kling_async import KlingClient, OmniRequest, PollPolicy, RetryPolicy
from kling_async.testing import FakeClock, MockRequest, MockTransport, Response

pytestmark = pytest.mark.anyio

TASK = "3f1c6a52-7a40-4f0e-9a43-0c9d0a3c9b11"
NO_JITTER = PollPolicy(initial=15, multiplier=1.5, maximum=30, jitter=0.0, timeout=None)


def _task(status: str, *urls: str) -> Response:
    body = {"data": {"task_id": TASK, "status": status, "generated": list(urls)}}
    return Response(200, {"Content-Type": "application/json"}, json.dumps(body).encode())


def _finishing_at(clock: FakeClock, seconds: float) -> MockTransport:
    """An API whose one task completes `seconds` after the first POST, by the fake clock."""
    started: list[float] = []

    def handler(request: MockRequest) -> Response:
        if request.method == "POST":
            started.append(clock.now())
            return _task("CREATED")
        if clock.now() - started[0] >= seconds:
            return _task("COMPLETED", "https://cdn.example/v.mp4")
        return _task("IN_PROGRESS")

    return MockTransport(handler)


async def _gets_at(
    clock: FakeClock, transport: MockTransport, until: float, step: float = 0.5
) -> list[float]:
    """Advance to `until` in `step`s; the fake times at which each status GET went out."""
    seen: list[float] = []
    start = clock.now()
    while clock.now() - start < until:
        await clock.advance(step)
        gets = sum(r.method == "GET" for r in transport.requests)
        seen += [clock.now() - start] * (gets - len(seen))
    return seen


async def test_a_handle_checks_on_the_default_schedule_before_anything_is_learned() -> None:
    """With nothing learned, checks come at 15, 37.5 and 67.5 s: a 60 s task costs three GETs."""
    clock = FakeClock()
    transport = _finishing_at(clock, 60.0)
    async with KlingClient(api_key="k", poll=NO_JITTER, clock=clock, transport=transport) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.wait)
            gets = await _gets_at(clock, transport, until=90.0)
    assert gets == [15.0, 37.5, 67.5]
    assert handle.done


async def test_a_handle_waiting_hours_on_a_task_that_never_ends_checks_on_every_maximum() -> None:
    """A wait without a deadline checks every ``maximum`` for as long as the task runs (the grown wait
    once overflowed a float after 1,751 checks: an OverflowError out of ``wait()``)."""
    clock = FakeClock()
    transport = _finishing_at(clock, math.inf)
    poll = PollPolicy(initial=1, multiplier=1.5, maximum=1, jitter=0.0, timeout=None)
    async with KlingClient(api_key="k", poll=poll, clock=clock, transport=transport) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.wait)
            gets = await _gets_at(clock, transport, until=2000.0, step=1.0)
            tg.cancel_scope.cancel()
    assert len(gets) == 2000


async def test_a_first_check_at_once_is_followed_by_waits_grown_from_a_second() -> None:
    """``initial=0`` checks at once, then as if the first check had come at one second: not a check on
    every turn of the event loop."""
    clock = FakeClock()
    transport = _finishing_at(clock, math.inf)
    poll = PollPolicy(initial=0, multiplier=2, maximum=30, jitter=0.0, timeout=None)
    async with KlingClient(api_key="k", poll=poll, clock=clock, transport=transport) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        with anyio.fail_after(10):  # real seconds: checks at every turn could keep the fake clock still
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle.wait)
                gets = await _gets_at(clock, transport, until=15.0)
                tg.cancel_scope.cancel()
    assert [later - earlier for earlier, later in itertools.pairwise(gets)] == [2.0, 4.0, 8.0]


async def test_a_wait_times_out_on_the_fake_clock() -> None:
    """wait(timeout=) is measured by the client's clock: it ends at 40 fake seconds, not real ones."""
    clock = FakeClock()
    transport = _finishing_at(clock, 1000.0)
    async with KlingClient(api_key="k", poll=NO_JITTER, clock=clock, transport=transport) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
        outcome: list[BaseException] = []

        async def wait() -> None:
            try:
                await handle.wait(timeout=40)
            except Exception as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await clock.advance(39.9)
            assert outcome == []
            await clock.advance(0.2)
    assert type(outcome[0]).__name__ == "TaskTimeoutError"


async def test_retry_after_holds_every_request_until_it_has_passed() -> None:
    """A 429 with Retry-After: 7 pauses the client: the retry leaves at 7 fake seconds, not before."""
    clock = FakeClock()
    answers = [Response(429, {"Retry-After": "7"}, b'{"message": "slow down"}')]

    def handler(request: MockRequest) -> Response:
        return answers.pop(0) if answers else Response(200, {}, b'{"data": []}')

    transport = MockTransport(handler)
    retry = RetryPolicy(attempts=3, deadline=60)
    async with (
        KlingClient(api_key="k", retry=retry, clock=clock, transport=transport) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.list_tasks)
        await clock.advance(6.9)
        assert len(transport.requests) == 1
        await clock.advance(0.2)
        assert len(transport.requests) == 2


async def test_a_retried_status_request_logs_a_debug_line_with_its_task_attempt_and_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retries are logged at DEBUG with extra= fields a log pipeline can index (task_id, attempt, status)."""
    answers = [Response(503, {}, b'{"message": "busy"}')]

    def handler(request: MockRequest) -> Response:
        return answers.pop(0) if answers else _task("IN_PROGRESS")

    clock = FakeClock()
    retry = RetryPolicy(attempts=3, initial=0.0, maximum=0.0)
    caplog.set_level(logging.DEBUG, logger="kling_async")
    # Told a rate with a burst: the retry leaves at once, as this clock moves only when advanced.
    async with KlingClient(
        api_key="k",
        retry=retry,
        clock=clock,
        transport=MockTransport(handler),
        requests_per_second=100,
        burst=5,
    ) as client:
        await client.task(TASK).refresh()
    [record] = [r for r in caplog.records if r.getMessage().startswith("retrying")]
    assert record.levelno == logging.DEBUG
    fields = (
        getattr(record, "task_id", None),
        getattr(record, "attempt", None),
        getattr(record, "status", None),
    )
    assert fields == (TASK, 1, 503)
