"""One request rate for an API key, shared through a PostgreSQL row: workers draw from one schedule, a 429
lowers the rate once however many workers saw it, and a Retry-After holds every worker."""

from __future__ import annotations

import time

import anyio
import pytest

from kling_async import JournalError
from kling_async._rate_pg import SharedRate, key_fingerprint
from tests.postgres import database, postgres_server  # noqa: F401  (fixtures)
from tests.test_postgres_journal import peek

pytestmark = pytest.mark.anyio

KEY = "fpk-secret-key-1234"
# Waits are computed from the database's clock: between two calls it moves by at most the time they took
# (measured here), give or take float rounding.
EPSILON = 0.005


async def test_only_a_fingerprint_of_the_key_is_stored(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10) as rate:
        await rate.take()
    stored = peek(database, "SELECT fingerprint FROM kling_rates")
    assert stored == [(key_fingerprint(KEY),)]
    assert KEY not in str(peek(database, "SELECT * FROM kling_rates"))
    assert KEY not in repr(rate)


async def test_a_burst_goes_at_once_then_requests_are_paced_at_the_rate(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10, burst=2) as rate:
        started = time.monotonic()
        taken = [((await rate.take()).wait, time.monotonic() - started) for _ in range(6)]
    assert [wait for wait, _ in taken[:2]] == [0.0, 0.0]
    for n, (wait, elapsed) in enumerate(
        taken[2:], start=1
    ):  # the n-th past the burst: n tenths from the first
        assert n * 0.1 - elapsed - EPSILON <= wait <= n * 0.1 + EPSILON


async def test_two_workers_draw_from_one_schedule(database: str) -> None:  # noqa: F811
    async with (
        SharedRate(database, KEY, requests_per_second=10) as first,
        SharedRate(database, KEY, requests_per_second=10) as second,
    ):
        started = time.monotonic()
        waits = [(await (first if n % 2 else second).take()).wait for n in range(10)]
        elapsed = time.monotonic() - started
    assert waits[0] == 0.0
    # Ten requests on one schedule: the last is 0.9 s after the first (less the time the calls took).
    assert 0.9 - elapsed - EPSILON <= waits[-1] <= 0.9 + EPSILON


async def test_another_key_has_its_own_schedule(database: str) -> None:  # noqa: F811
    async with (
        SharedRate(database, KEY, requests_per_second=10) as first,
        SharedRate(database, "another-key", requests_per_second=10) as other,
    ):
        for _ in range(5):
            await first.take()
        assert (await other.take()).wait == 0.0


async def test_a_429_seen_by_three_workers_lowers_the_rate_once(database: str) -> None:  # noqa: F811
    workers = [SharedRate(database, KEY, requests_per_second=8) for _ in range(3)]
    async with workers[0] as a, workers[1] as b, workers[2] as c:
        permits = [await worker.take() for worker in (a, b, c)]
        rates = [
            await worker.throttled(permit, None) for worker, permit in zip((a, b, c), permits, strict=True)
        ]
        assert rates == [4.0, 4.0, 4.0]
        later = await a.take()  # a 429 under the new generation lowers it again
        assert await b.throttled(later, None) == 2.0


async def test_a_retry_after_holds_every_worker(database: str) -> None:  # noqa: F811
    async with (
        SharedRate(database, KEY, requests_per_second=100) as first,
        SharedRate(database, KEY, requests_per_second=100) as second,
    ):
        permit = await first.take()
        started = time.monotonic()
        await first.throttled(permit, 5.0)
        wait = (await second.take()).wait
        elapsed = time.monotonic() - started
    assert 5.0 - elapsed - EPSILON <= wait <= 5.0 + EPSILON


async def test_the_rate_climbs_back_after_a_quiet_spell(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10, recover_after=0.5) as rate:
        assert await rate.throttled(await rate.take(), None) == 5.0
        await rate.take()  # too soon: the rate stays lowered
        assert peek(database, "SELECT rate FROM kling_rates") == [(5.0,)]
        await anyio.sleep(0.6)
        await rate.take()  # a quiet spell later: a tenth of the ceiling comes back
    assert peek(database, "SELECT rate FROM kling_rates") == [(6.0,)]


async def test_a_bad_setting_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="requests_per_second"):
        SharedRate("postgresql://x/y", KEY, requests_per_second=float("nan"))
    with pytest.raises(ValueError, match="burst"):
        SharedRate("postgresql://x/y", KEY, requests_per_second=1, burst=0)


async def test_calls_outside_the_block_raise_a_journal_error(database: str) -> None:  # noqa: F811
    rate = SharedRate(database, KEY, requests_per_second=1)
    with pytest.raises(JournalError, match="not open"):
        await rate.take()
