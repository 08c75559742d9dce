"""The limiter's places on the wire: handed straight to the next waiter, in lane turns, never lost."""

from __future__ import annotations

import anyio
import pytest

from kling_async._limits import Lane, Limiter
from kling_async.testing import FakeClock as TimelineClock
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio


async def test_unpaced_submissions_and_status_requests_take_turns_at_a_full_wire() -> None:
    limiter = Limiter(requests_per_second=None, max_concurrency=1)
    await limiter.acquire(Lane.STATUS)  # the only place is taken: everyone below queues
    order: list[Lane] = []

    async def one(lane: Lane) -> None:
        async with limiter.slot(lane):
            order.append(lane)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one, Lane.STATUS)
        for _ in range(3):
            tg.start_soon(one, Lane.SUBMIT)
        await anyio.wait_all_tasks_blocked()
        limiter.release()
    assert order == [Lane.STATUS, Lane.SUBMIT] * 3


async def test_a_waiter_cancelled_just_before_a_place_frees_up_does_not_take_it_away() -> None:
    limiter = Limiter(requests_per_second=None, max_concurrency=1)
    await limiter.acquire(Lane.STATUS)
    got: list[str] = []

    async def wait(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with limiter.slot(Lane.STATUS):
                got.append(name)

    first, second = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "first", first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait, "second", second)
        await anyio.wait_all_tasks_blocked()
        first.cancel()  # the first waiter is cancelled, and before it has run...
        limiter.release()  # ...the place frees up: it goes to the second, not to the one leaving
    assert got == ["second"]
    assert "on_wire=0/1" in repr(limiter)


async def test_a_request_that_waited_for_the_wire_through_a_429_keeps_the_retry_after_pause() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=None, max_concurrency=1, clock=clock)
    await limiter.acquire(Lane.STATUS)
    sent_at: list[float] = []

    async def one() -> None:
        async with limiter.slot(Lane.SUBMIT):
            sent_at.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        limiter.on_rate_limited(retry_after=2.0)  # the request on the wire was refused, Retry-After 2 s
        limiter.release()
    assert sent_at == [pytest.approx(1002.0)]


async def test_a_submission_whose_caller_is_already_cancelled_takes_no_place() -> None:
    limiter = Limiter(requests_per_second=None, max_concurrency=1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire(Lane.SUBMIT)
        pytest.fail("a cancelled caller was let through to send a POST")
    assert "on_wire=0/1" in repr(limiter)


async def test_a_paced_request_cancelled_while_queued_for_its_token_lets_the_next_one_through() -> None:
    clock = TimelineClock()
    limiter = Limiter(requests_per_second=5, max_concurrency=4, clock=clock)
    await limiter.acquire(Lane.STATUS)  # the burst's token is spent: the next request waits for one
    got: list[str] = []

    async def one(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with limiter.slot(Lane.STATUS):
                got.append(name)

    first, second, third = anyio.CancelScope(), anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "first", first)
        tg.start_soon(one, "second", second)  # queued behind the first, which waits for its token
        tg.start_soon(one, "third", third)
        await anyio.wait_all_tasks_blocked()
        second.cancel()
        await clock.advance(1.0)
    assert got == ["first", "third"]
    assert "on_wire=1/4" in repr(limiter)  # the first acquire's place only


async def test_a_paced_submission_whose_caller_is_already_cancelled_takes_no_place_nor_the_turn() -> None:
    clock = FakeClock()
    limiter = Limiter(requests_per_second=5, max_concurrency=1, clock=clock)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire(Lane.SUBMIT)
        pytest.fail("a cancelled caller was let through to send a POST")
    with anyio.fail_after(5):  # the next request is not held up by the one that left
        async with limiter.slot(Lane.STATUS):
            pass
    assert "on_wire=0/1" in repr(limiter)


async def _order_of(
    limiter: Limiter, tries: list[tuple[str, bool]], *, cancel: str | None = None
) -> list[str]:
    """Queue submissions ``(name, retry)`` in this order behind a taken place, then free the places."""
    order: list[str] = []
    scopes = {name: anyio.CancelScope() for name, _ in tries}

    async def one(name: str, retry: bool) -> None:
        with scopes[name]:
            await limiter.acquire(Lane.SUBMIT, retry=retry)
            order.append(name)
            limiter.release()

    async with anyio.create_task_group() as tg:
        for name, retry in tries:
            tg.start_soon(one, name, retry)
            await anyio.wait_all_tasks_blocked()
            if name == cancel:
                scopes[name].cancel()
                await anyio.wait_all_tasks_blocked()
        limiter.release()
    return order


async def test_retries_wait_ahead_of_first_tries_and_in_their_own_order() -> None:
    limiter = Limiter(requests_per_second=None, max_concurrency=1)
    await limiter.acquire(Lane.STATUS)
    # The head of the line holds the bucket's turn (it waits for the wire, then for its token).
    tries = [("head", False), ("first 1", False), ("retry 1", True), ("first 2", False), ("retry 2", True)]
    order = await _order_of(limiter, tries)
    assert order == ["head", "retry 1", "retry 2", "first 1", "first 2"]


async def test_a_retry_that_left_the_queue_leaves_the_others_in_order() -> None:
    limiter = Limiter(requests_per_second=None, max_concurrency=1)
    await limiter.acquire(Lane.STATUS)
    tries = [("head", False), ("first", False), ("retry 1", True), ("retry 2", True), ("retry 3", True)]
    order = await _order_of(limiter, tries, cancel="retry 1")
    assert order == ["head", "retry 2", "retry 3", "first"]


async def test_a_paced_retry_takes_the_next_token_ahead_of_first_tries() -> None:
    clock = TimelineClock()
    limiter = Limiter(requests_per_second=5, max_concurrency=8, clock=clock)
    await limiter.acquire(Lane.SUBMIT)  # the burst's token is spent: the next requests wait for one
    order: list[str] = []

    async def one(name: str, retry: bool) -> None:
        await limiter.acquire(Lane.SUBMIT, retry=retry)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for name, retry in [("head", False), ("first", False), ("retry", True)]:
            tg.start_soon(one, name, retry)
            await anyio.wait_all_tasks_blocked()
        await clock.advance(0.6)
    assert order == ["head", "retry", "first"]
