"""One request rate for an API key, shared through a PostgreSQL row: workers draw from one schedule, a 429
lowers the rate once however many workers saw it, a Retry-After holds every worker, and three worker
processes together use the key's rate with almost no 429s."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import anyio
import psycopg
import pytest

from kling_async import JournalError, KlingClient
from kling_async._limits import Lane, Limiter, Pace
from kling_async._rate_pg import SharedRate, _Row, key_fingerprint
from kling_async.testing import Simulator
from tests.postgres import database, postgres_server  # noqa: F401  (fixtures)
from tests.test_postgres_journal import peek

pytestmark = pytest.mark.anyio

KEY = "fpk-secret-key-1234"
ROOT = Path(__file__).parent.parent
# Waits are computed from the database's clock: between two calls it moves by at most the time they took
# (measured here), give or take float rounding.
EPSILON = 0.005


def rate_of(dsn: str) -> float:
    [(rate,)] = peek(dsn, "SELECT rate FROM kling_key_rates")
    assert isinstance(rate, float)
    return rate


async def test_only_a_fingerprint_of_the_key_is_stored(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10) as rate:
        await rate.take()
    stored = peek(database, "SELECT fingerprint FROM kling_key_rates")
    assert stored == [(key_fingerprint(KEY),)]
    assert KEY not in str(peek(database, "SELECT * FROM kling_key_rates"))
    assert KEY not in repr(rate)


async def test_a_burst_goes_at_once_then_requests_are_paced_at_the_rate(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10, burst=2) as rate:
        started = time.monotonic()
        taken = [(await rate.take(), time.monotonic() - started) for _ in range(6)]
    assert [wait for wait, _ in taken[:2]] == [0.0, 0.0]
    for n, (wait, elapsed) in enumerate(taken[2:], start=1):  # the n-th past the burst: n tenths on
        assert n * 0.1 - elapsed - EPSILON <= wait <= n * 0.1 + EPSILON


async def test_two_workers_draw_from_one_schedule(database: str) -> None:  # noqa: F811
    async with (
        SharedRate(database, KEY, requests_per_second=10) as first,
        SharedRate(database, KEY, requests_per_second=10) as second,
    ):
        started = time.monotonic()
        waits = [await (first if n % 2 else second).take() for n in range(10)]
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
        assert await other.take() == 0.0


async def test_429s_seen_by_three_workers_at_once_lower_the_rate_once(database: str) -> None:  # noqa: F811
    workers = [SharedRate(database, KEY) for _ in range(3)]
    async with workers[0] as a, workers[1] as b, workers[2] as c:
        for _ in range(20):
            await a.take()  # at the opening's pace: no rate is known before a 429
        await a.throttled(None)
        lowered = rate_of(database)
        await b.throttled(None)  # the same event, seen by the others: no further cut
        await c.throttled(None)
        assert rate_of(database) == lowered


async def test_a_429_event_a_second_later_lowers_the_rate_again(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY) as a, SharedRate(database, KEY) as b:
        for _ in range(20):
            await a.take()
        await a.throttled(None)
        first = rate_of(database)
        await anyio.sleep(1.1)
        await b.throttled(None)
        assert rate_of(database) < first


async def test_a_single_429_never_lowers_a_given_rate_for_long(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10) as rate:
        await rate.take()
        await rate.throttled(None)
        # A dip while the server's bucket refills, and back to the given rate within a few seconds.
        assert rate_of(database) == pytest.approx(9.5)
        await anyio.sleep(2.5)
        await rate.take()
        after = rate_of(database)
    assert after > 9.5


async def test_a_retry_after_holds_every_worker(database: str) -> None:  # noqa: F811
    async with (
        SharedRate(database, KEY, requests_per_second=100) as first,
        SharedRate(database, KEY, requests_per_second=100) as second,
    ):
        await first.take()
        started = time.monotonic()
        await first.throttled(5.0)
        wait = await second.take()
        elapsed = time.monotonic() - started
    assert 5.0 - elapsed - EPSILON <= wait <= 5.0 + EPSILON


async def test_a_worker_waiting_for_its_slot_is_held_by_a_429_another_worker_got_meanwhile(
    database: str,  # noqa: F811
) -> None:
    limiter = Limiter(requests_per_second=2, max_concurrency=4)
    async with (
        SharedRate(database, KEY, requests_per_second=2) as first,
        SharedRate(database, KEY, requests_per_second=2) as second,
        anyio.create_task_group() as group,
    ):
        await first.take()  # the first slot goes now, so the limiter's is half a second on

        async def refused_meanwhile() -> None:
            await anyio.sleep(0.03)
            await first.throttled(1.0)

        group.start_soon(refused_meanwhile)
        started = time.monotonic()
        with limiter.sharing(second):
            await limiter.acquire(Lane.STATUS)
        waited = time.monotonic() - started
        limiter.release()
    assert waited >= 1.0 + 0.03 - EPSILON


async def test_a_retry_after_holds_the_workers_no_longer_than_max_pause(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=100, max_pause=2.0) as rate:
        await rate.throttled(86_400.0)
        assert await rate.take() <= 2.0


async def test_the_database_clock_stepping_back_holds_no_worker_for_the_step(database: str) -> None:  # noqa: F811
    """NTP steps the database host's clock back 30 s: every time the row holds is 30 s ahead of it then.
    A Retry-After running still holds the workers for what is left of it, and the schedule goes on at its
    rate, not 30 s later."""
    async with SharedRate(database, KEY, requests_per_second=10) as rate:
        await rate.take()
        await rate.throttled(1.0)
        peek(  # the same as the clock stepping back 30 s
            database,
            "UPDATE kling_key_rates SET tat = tat + 30, stamp = stamp + 30, window_at = window_at + 30,"
            " blocked_until = blocked_until + 30, cut_at = cut_at + 30 RETURNING 1",
        )
        assert await rate.held() <= 1.0 + EPSILON
        assert await rate.take() <= 1.0 + 0.1 + EPSILON  # the pause, then the next slot at 10/s


async def test_a_killed_connection_is_replaced_on_the_next_call(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10) as rate:
        await rate.take()
        peek(
            database,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()",
        )
        with pytest.raises(JournalError):
            await rate.take()  # the call that finds the connection gone fails...
        assert await rate.take() >= 0.0  # ...and the next one reconnects


async def test_the_latest_given_rate_is_the_key_s(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10):
        pass
    async with SharedRate(database, KEY, requests_per_second=4):
        assert peek(database, "SELECT ceiling, rate FROM kling_key_rates") == [(4.0, 4.0)]


async def test_workers_not_told_a_rate_open_together_at_fifty_a_second(database: str) -> None:  # noqa: F811
    opened = time.monotonic()
    async with SharedRate(database, KEY) as first, SharedRate(database, KEY) as second:
        started = time.monotonic()
        waits = [await (first if n % 2 else second).take() for n in range(6)]
        elapsed = time.monotonic() - started
        grown = 16 ** (time.monotonic() - opened)
    # One schedule at the opening's pace: the n-th slot a fiftieth of a second after the one before, less
    # what the pace grew since the row was made (sixteenfold a second) and the time the calls took.
    assert waits[0] == 0.0
    for n, wait in enumerate(waits):
        assert n * 0.02 / grown - elapsed - EPSILON <= wait <= n * 0.02 + EPSILON


async def test_the_first_429_ends_the_opening_and_starts_from_what_the_server_let_through(
    database: str,  # noqa: F811
) -> None:
    async with SharedRate(database, KEY) as rate:
        for _ in range(20):
            await rate.take()
        await rate.throttled(None)
    # 19 let through (20 slots, one of them refused), less a fifth.
    assert peek(database, "SELECT opening, rate, searching FROM kling_key_rates") == [
        (False, pytest.approx(19 * 0.8), True)
    ]


async def test_a_worker_given_a_rate_ends_the_opening_of_workers_given_none(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY), SharedRate(database, KEY, requests_per_second=10) as told:
        await anyio.sleep(0.3)  # the opening would have more than doubled by now
        await told.take()
        assert peek(database, "SELECT opening, rate FROM kling_key_rates") == [(False, 10.0)]


async def test_a_table_made_by_an_earlier_version_gains_the_openings_column(database: str) -> None:  # noqa: F811
    async with SharedRate(database, KEY, requests_per_second=10):
        pass
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute("ALTER TABLE kling_key_rates DROP COLUMN opening")
        admin.execute("DELETE FROM kling_key_rates")
    async with SharedRate(database, KEY) as rate:
        await rate.take()
        assert await rate.take() > 0.0  # paced by the opening


async def test_a_bad_setting_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="requests_per_second"):
        SharedRate("postgresql://x/y", KEY, requests_per_second=float("nan"))
    with pytest.raises(ValueError, match="burst"):
        SharedRate("postgresql://x/y", KEY, requests_per_second=1, burst=0)


async def test_calls_outside_the_block_raise_a_journal_error(database: str) -> None:  # noqa: F811
    rate = SharedRate(database, KEY, requests_per_second=1)
    with pytest.raises(JournalError, match="not open"):
        await rate.take()


async def test_a_database_that_cannot_be_reached_is_a_journal_error_without_the_password() -> None:
    rate = SharedRate("postgresql://kling:hunter2@127.0.0.1:1/nowhere", KEY)
    with pytest.raises(JournalError) as caught:
        await rate.__aenter__()
    assert "hunter2" not in str(caught.value)


class _Down:
    """A shared rate whose database is down: every call fails as ``SharedRate``'s do."""

    def __init__(self) -> None:
        self.calls = 0

    async def take(self) -> float:
        self.calls += 1
        raise JournalError("shared rate: connection refused", path="postgresql://...")

    async def throttled(self, retry_after: float | None) -> None:
        raise JournalError("shared rate: connection refused", path="postgresql://...")

    async def held(self) -> float:
        raise JournalError("shared rate: connection refused", path="postgresql://...")


async def test_a_limiter_whose_shared_rate_is_down_paces_by_its_own_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = Limiter(requests_per_second=1000, max_concurrency=4)
    down = _Down()
    with caplog.at_level(logging.WARNING, logger="kling_async"), limiter.sharing(down):
        for _ in range(3):
            await limiter.acquire(Lane.STATUS)
            limiter.release()
        await limiter.refused(None)
    assert down.calls == 3  # it was asked each time...
    assert limiter.rate_limited == 1  # ...and the own bucket went on (and heard the 429)
    warnings = [r.message for r in caplog.records if "shared rate cannot be used" in r.message]
    assert len(warnings) == 1  # once per outage, not once per request


class _DownAfterTheSlot(_Down):
    """A shared rate whose database goes down between reserving a slot 50 ms on and the slot's time."""

    async def take(self) -> float:
        self.calls += 1
        return 0.05


async def test_a_limiter_whose_shared_rate_goes_down_while_it_waits_sends_at_its_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = Limiter(requests_per_second=1000, max_concurrency=4)
    with caplog.at_level(logging.WARNING, logger="kling_async"), limiter.sharing(_DownAfterTheSlot()):
        started = time.monotonic()
        await limiter.acquire(Lane.STATUS)
        waited = time.monotonic() - started
        limiter.release()
    assert 0.05 <= waited < 0.5
    assert any("shared rate cannot be used" in r.message for r in caplog.records)


class _Slots:
    """A shared rate that answers every reservation with ``wait`` seconds, and counts the re-reads."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.reads = 0

    async def take(self) -> float:
        return self.wait

    async def throttled(self, retry_after: float | None) -> None:
        pass

    async def held(self) -> float:
        self.reads += 1
        return 0.0


@pytest.mark.parametrize(("wait", "reads"), [(0.0, 0), (0.01, 3)])
async def test_only_a_request_that_waited_for_its_slot_reads_the_shared_retry_after_again(
    wait: float, reads: int
) -> None:
    """The re-read is one more database round trip: a request whose slot was due at once needs none."""
    limiter = Limiter(requests_per_second=1000, max_concurrency=4)
    slots = _Slots(wait)
    with limiter.sharing(slots):
        for _ in range(3):
            await limiter.acquire(Lane.STATUS)
            limiter.release()
    assert slots.reads == reads


async def test_a_client_told_to_share_an_unusable_database_fails_to_open() -> None:
    client = KlingClient("sim-key", "http://127.0.0.1:1", shared="postgresql://k:pw@127.0.0.1:1/none")
    with pytest.raises(JournalError):
        await client.__aenter__()


async def test_a_batch_whose_journal_is_postgresql_shares_the_key_s_rate_through_it(
    database: str,  # noqa: F811
) -> None:
    from kling_async import OmniRequest, PollPolicy

    async with (
        Simulator(time_scale=0.001) as sim,
        KlingClient("sim-key", sim.url, requests_per_second=50, poll=PollPolicy(initial=0.02)) as client,
    ):
        outcomes = await client.gather([OmniRequest(prompt=f"clip {n}") for n in range(3)], journal=database)
        assert client._limiter._shared == []  # given back when the batch ended
    assert all(outcome.ok for outcome in outcomes)
    [(fingerprint, ceiling, granted)] = peek(
        database, "SELECT fingerprint, ceiling, granted FROM kling_key_rates"
    )
    assert (fingerprint, ceiling) == (key_fingerprint("sim-key"), 50.0)
    # Every request of the batch took a slot: three POSTs and at least one status check each.
    assert granted >= 6


def test_a_row_s_bound_a_tenth_below_its_last_confirms_it() -> None:
    """The window after a cut counts the Retry-After's pause and the climb back: a worker row measured
    10.62 then 9.50 on a 10/s server, and bisecting again drew a fourth 429 event."""
    row = _Row.fresh(0.0, None, 10)
    row.pace = Pace(ceiling=None, rate=12.5, target=13.9, bound=10.62)
    row.window_empty, row.granted = True, 20  # accepted since the last cut, 2 s ago
    assert row.refuse(2.0, retry_after=1.0)
    assert row.pace.rate == pytest.approx(9.5)
    assert row.pace.target is None


def _searching_row() -> _Row:
    """A row whose workers drew their first 429: its pace doubles each second its slots are waited for."""
    row = _Row.fresh(0.0, None, 1)
    row.pace = Pace(ceiling=None, rate=10.0, target=None, searching=True)
    return row


def test_a_row_s_pace_grows_while_its_slots_are_waited_for() -> None:
    row = _searching_row()
    now = 0.0
    while now < 1.0:
        row.take(now)
        now += 0.025  # asked for at 40/s: every slot is waited for
    assert row.pace.rate == pytest.approx(20.0, rel=0.05)


def test_a_row_s_pace_does_not_grow_while_no_slot_is_waited_for() -> None:
    """Workers idle for ten seconds asked the server for nothing: their next burst goes at the pace of
    before, not 1,024 times it."""
    row = _searching_row()
    row.take(0.0)
    assert row.take(10.0) == 0.0
    assert row.pace.rate == pytest.approx(10.0)


def test_a_row_s_search_does_not_grow_over_a_retry_after_pause() -> None:
    row = _searching_row()
    row.take(0.0)
    row.blocked_until = 30.0
    assert row.take(1.0) == pytest.approx(29.0)  # held by the pause
    row.take(30.0)
    assert row.pace.rate == pytest.approx(10.0)


def test_a_shared_opening_does_not_grow_while_no_slot_is_waited_for() -> None:
    row = _Row.fresh(0.0, None, 1)
    row.take(0.0)
    row.take(10.0)
    assert row.pace.opening
    assert row.pace.rate == pytest.approx(50.0)


def test_shared_must_be_a_postgresql_url() -> None:
    with pytest.raises(ValueError, match="shared: a postgresql:// URL"):
        KlingClient("sim-key", shared="run.db")


# -- three worker processes ----------------------------------------------------------------------------------

RATE = 10.0
WINDOW = 8.0  # seconds measured, once all three workers are under way


async def run_three_workers(
    dsn: str, tmp_path: Path, told: float | None, *, window: float = WINDOW
) -> tuple[float, float]:
    """Three worker processes sharing ``dsn`` against a simulator allowing RATE requests a second; the
    share of the rate they used over ``window`` seconds in full swing, and the share of 429s over the run
    (``benchmarks/bench_workers.py`` runs it longer)."""
    stop = tmp_path / "stop"
    async with Simulator(rate_limit=RATE, generation_seconds=3600.0) as sim:
        command = [sys.executable, "-m", "tests.scripts.rate_worker", sim.url, dsn, str(stop)]
        if told is not None:
            command.append(str(told))
        workers = [await anyio.open_process(command, cwd=ROOT, stderr=None) for _ in range(3)]
        try:
            with anyio.fail_after(60):
                for worker in workers:
                    assert worker.stdout is not None
                    said = b""
                    while not said.endswith(b"ready\n"):
                        said += await worker.stdout.receive()
            await anyio.sleep(1.0)
            before = sim.counters.responses_by_status[200]
            await anyio.sleep(window)
            used = (sim.counters.responses_by_status[200] - before) / (RATE * window)
        finally:
            stop.touch()
            for worker in workers:
                async with worker:
                    with anyio.fail_after(30):
                        assert await worker.wait() == 0
        answers = sum(sim.counters.responses_by_status.values())
        return used, sim.counters.rate_limited / answers


@pytest.mark.slow
async def test_three_workers_told_the_rate_use_it_together_with_almost_no_429s(
    database: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    used, refused = await run_three_workers(database, tmp_path, told=RATE)
    assert used >= 0.9
    assert refused <= 0.01
