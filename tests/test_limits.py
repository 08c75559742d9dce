"""The limiter: token bucket pacing, 429 back-off for the whole client, recovery, wire cap, fair lanes."""

from __future__ import annotations

import anyio
import pytest

from kling_async._limits import DECREASE, Lane, Limiter
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio


async def _take(limiter: Limiter, n: int, lane: Lane = Lane.STATUS) -> None:
    for _ in range(n):
        async with limiter.slot(lane):
            pass


async def test_token_bucket_paces_requests_to_the_rate() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=10, max_concurrency=4, clock=clock)
    start = clock.now()
    await _take(limiter, 11)
    assert clock.now() - start == pytest.approx(1.0)


async def test_burst_lets_that_many_requests_leave_at_once() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=1, burst=5, max_concurrency=8, clock=clock)
    await _take(limiter, 5)
    assert clock.slept == []


async def test_unpaced_limiter_never_waits() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=None, max_concurrency=2, clock=clock)
    await _take(limiter, 100)
    assert clock.slept == []


async def test_retry_after_pauses_every_request() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=None, max_concurrency=2, clock=clock)
    limiter.on_rate_limited(2.5)
    start = clock.now()
    await _take(limiter, 1, Lane.SUBMIT)
    assert clock.now() - start == pytest.approx(2.5)


async def test_429_lowers_the_rate_once_per_burst_of_answers() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=10, max_concurrency=2, clock=clock)
    limiter.on_rate_limited(None)
    limiter.on_rate_limited(None)  # a second 429 from requests already on the wire
    assert limiter.rate == pytest.approx(10 * DECREASE)
    assert limiter.rate_limited == 2


async def test_unpaced_limiter_starts_pacing_below_the_rate_it_was_sending() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=None, max_concurrency=2, clock=clock)
    for _ in range(10):
        await _take(limiter, 1)
        await clock.sleep(0.05)  # sending at 20/s
    limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(20 * DECREASE, rel=0.01)


async def test_rate_recovers_after_a_decrease_but_never_passes_the_ceiling() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=10, max_concurrency=2, clock=clock)
    limiter.on_rate_limited(None)
    await _take(limiter, 200)
    assert limiter.rate == pytest.approx(10.0)


async def test_max_concurrency_caps_requests_on_the_wire() -> None:
    limiter = Limiter(requests_per_second=None, max_concurrency=3)
    holding = 0
    most = 0
    release = anyio.Event()

    async def hold() -> None:
        nonlocal holding, most
        async with limiter.slot(Lane.STATUS):
            holding += 1
            most = max(most, holding)
            await release.wait()
            holding -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        assert holding == 3
        release.set()
    assert most == 3


async def test_submissions_and_status_requests_take_turns() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=5, max_concurrency=1, clock=clock)
    await _take(limiter, 1)  # empty the bucket so every request below has to wait its turn
    order: list[Lane] = []

    async def one(lane: Lane) -> None:
        async with limiter.slot(lane):
            order.append(lane)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one, Lane.SUBMIT)
        for _ in range(4):
            tg.start_soon(one, Lane.STATUS)
    assert order[:6] == [Lane.SUBMIT, Lane.STATUS] * 3


async def test_the_cut_after_a_429_starts_from_what_the_server_accepted_not_from_the_burst_sent() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=None, max_concurrency=2, clock=clock)
    for i in range(100):  # sending at 50/s, of which the server answered 10/s
        await _take(limiter, 1)
        if i % 5 == 0:
            limiter.on_success()
        await clock.sleep(0.02)
    limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(10 * DECREASE, rel=0.1)
