"""The PostgreSQL journal keeps SQLite's promises against a real server, and its claims keep two workers
from POSTing the same item: a live worker's claim is its own, a dead worker's claim on the wire is uncertain,
a dead worker's task is adopted."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import psycopg
import psycopg.conninfo
import pytest

from kling_async import JournalError, KlingClient
from kling_async._clock import SystemClock
from kling_async._journal import JournalEntry, JournalState
from kling_async._journal_pg import ClaimedElsewhere, PostgresJournal, redact
from kling_async._journals import open_journal
from kling_async.testing import Simulator
from tests.conftest import FAST_POLL, FAST_RETRY
from tests.postgres import database, postgres_server  # noqa: F401  (fixtures)

MODEL = "kling-v3-omni-std"
REQUEST = b'{"prompt":"a fox in snow","duration":"5"}'
OTHER_REQUEST = b'{"prompt":"a fox in rain","duration":"5"}'

pytestmark = pytest.mark.anyio


def peek(dsn: str, sql: str, *params: object) -> list[Any]:
    """Read through another connection: it sees committed rows only."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


async def expire(dsn: str, journal: PostgresJournal) -> None:
    """Make ``journal``'s worker look dead to the others (as if its heartbeat had stopped long ago).

    In a thread: the update waits for the row's lock while a heartbeat holds it, and the heartbeat can
    only let it go while the event loop runs."""

    def update() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "UPDATE kling_workers SET lease_until = clock_timestamp() - interval '1 hour' WHERE id = %s",
                (journal.worker,),
            )

    await anyio.to_thread.run_sync(update)


async def test_open_journal_makes_a_postgres_journal_for_a_postgresql_url(database: str) -> None:  # noqa: F811
    url = "postgresql://kling:s3cret@db.example/journal"
    journal = open_journal(url)
    assert isinstance(journal, PostgresJournal)
    assert journal.path == "postgresql://kling@db.example/journal"
    assert "s3cret" not in repr(journal)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("postgresql://u:pw@h:5432/db?sslmode=require", "postgresql://u@h:5432/db?sslmode=require"),
        ("postgresql://h/db?user=u&password=pw", "postgresql://h/db?user=u&password=***"),
        ("host=h user=u password='p w' dbname=db", "host=h user=u password=*** dbname=db"),
        ("postgresql://u:pw@[::1/db", "postgresql://..."),
    ],
)
def test_the_password_never_shows_in_the_path(given: str, shown: str) -> None:
    assert redact(given) == shown


async def test_a_server_that_cannot_be_reached_fails_on_entering_without_the_password(tmp_path: Any) -> None:
    journal = PostgresJournal(f"postgresql://kling:s3cret@/db?host={tmp_path}", connect_timeout=2)
    with pytest.raises(JournalError, match="cannot connect") as caught:
        async with journal:
            pass
    assert "s3cret" not in str(caught.value)


async def test_durable_writes_are_committed_before_they_return(database: str) -> None:  # noqa: F811
    async with open_journal(database) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        assert peek(database, "SELECT state FROM kling_items") == [("submitting",)]
        await journal.created("a", "t-a", "CREATED")
        assert peek(database, "SELECT state, task_id FROM kling_items") == [("created", "t-a")]
        await journal.submitting("b", MODEL, REQUEST)
        await journal.uncertain("b", "lost")
        await journal.submitting("c", MODEL, REQUEST)
        await journal.unsent("c", "RateLimitError: HTTP 429")
        await journal.submitting("d", MODEL, REQUEST)
        await journal.failed("d", None, "BadRequestError: HTTP 400")
        assert peek(database, "SELECT key, state FROM kling_items ORDER BY position") == [
            ("a", "created"),
            ("b", "uncertain"),
            ("c", "unsent"),
            ("d", "failed"),
        ]


async def test_an_item_goes_submitting_created_completed_downloaded_with_its_history(
    database: str,  # noqa: F811
) -> None:
    async with PostgresJournal(database, flush_interval=3600) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.status("a", "IN_PROGRESS")
        await journal.status("a", "IN_PROGRESS")
        assert peek(database, "SELECT status FROM kling_items") == [("CREATED",)]  # buffered
        entry = await journal.lookup("a")  # commits the key's buffered writes first
        assert entry is not None
        assert entry.status == "IN_PROGRESS"
        await journal.finished("a", "COMPLETED", ["https://cdn.example/a.mp4"])
        await journal.downloaded("a", "videos/a.mp4")
    assert peek(database, "SELECT state, task_id, status, urls, path FROM kling_items") == [
        ("downloaded", "t-a", "COMPLETED", ["https://cdn.example/a.mp4"], "videos/a.mp4")
    ]
    assert peek(database, "SELECT status FROM kling_history ORDER BY at") == [
        ("CREATED",),
        ("IN_PROGRESS",),
        ("COMPLETED",),
    ]
    async with open_journal(database) as reopened:
        entry = await reopened.lookup("a")
    assert entry is not None
    assert (entry.state, entry.request, entry.urls, entry.path) == (
        JournalState.DOWNLOADED,
        REQUEST,
        ("https://cdn.example/a.mp4",),
        "videos/a.mp4",
    )


async def test_buffered_writes_are_committed_by_the_timer(database: str) -> None:  # noqa: F811
    async with PostgresJournal(database, flush_interval=0.05) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.status("a", "IN_PROGRESS")
        with anyio.fail_after(10):
            while peek(database, "SELECT status FROM kling_items") != [("IN_PROGRESS",)]:  # noqa: ASYNC110
                await anyio.sleep(0.01)


async def test_a_buffered_write_that_no_longer_fits_is_dropped_and_logged(
    database: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kling_async")
    async with open_journal(database) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.downloaded("a", "a.mp4")  # not completed: refused when committed
        await journal.status("a", "IN_PROGRESS")
    assert peek(database, "SELECT state, status, path FROM kling_items") == [("created", "IN_PROGRESS", None)]
    assert [r.getMessage() for r in caplog.records] == [
        f"journal {journal.path}: key 'a' is created and cannot become downloaded; the buffered write is"
        " dropped"
    ]


async def test_the_same_worker_follows_sqlites_rules_for_a_key(database: str) -> None:  # noqa: F811
    async with open_journal(database) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.submitting("a", MODEL, REQUEST)  # a re-run of its own claim
        with pytest.raises(JournalError, match="recorded with another request"):
            await journal.submitting("a", MODEL, OTHER_REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.created("a", "t-a", "IN_PROGRESS")  # the same task again: harmless
        with pytest.raises(JournalError, match="already has task t-a; refusing to replace it by t-b"):
            await journal.created("a", "t-b", "CREATED")
        with pytest.raises(JournalError, match="is created with task t-a; re-attach"):
            await journal.submitting("a", MODEL, REQUEST)
        with pytest.raises(JournalError, match="key 'z' is not in the journal"):
            await journal.created("z", "t-z", "CREATED")
        await journal.submitting("b", MODEL, REQUEST)
        await journal.unsent("b", "ServerError: HTTP 503")
        assert await journal.lookup("b") is None  # unsent: as if never submitted
        await journal.submitting("b", MODEL, OTHER_REQUEST)  # and any request is accepted


async def test_calls_outside_the_block_raise_at_once(database: str) -> None:  # noqa: F811
    journal = open_journal(database)
    with pytest.raises(JournalError, match="not open"):
        await journal.lookup("a")
    async with journal:
        await journal.submitting("a", MODEL, REQUEST)
    with pytest.raises(JournalError, match="closed"):
        await journal.created("a", "t-a", "CREATED")


async def test_a_cancelled_durable_write_still_commits(database: str) -> None:  # noqa: F811
    async with open_journal(database) as journal:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await journal.submitting("a", MODEL, REQUEST)
        assert scope.cancelled_caught
        assert peek(database, "SELECT state FROM kling_items") == [("submitting",)]
        await journal.created("a", "t-a", "CREATED")  # the connection is free for the next call


async def test_another_applications_kling_meta_is_refused(database: str) -> None:  # noqa: F811
    with psycopg.connect(database) as conn:
        conn.execute("CREATE TABLE kling_meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO kling_meta VALUES ('application', 'kling-stats')")
    with pytest.raises(JournalError, match="not a kling-async journal"):
        async with open_journal(database):
            pass


async def test_a_newer_schema_is_refused(database: str) -> None:  # noqa: F811
    async with open_journal(database):
        pass
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE kling_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="written by a newer kling-async"):
        async with open_journal(database):
            pass


# -- claims between workers ---------------------------------------------------------------------------------


async def test_a_live_workers_claim_is_refused_to_another_and_hidden_from_its_lookup(
    database: str,  # noqa: F811
) -> None:
    async with PostgresJournal(database) as first, PostgresJournal(database) as second:
        assert await second.lookup("a") is None
        await first.submitting("a", MODEL, REQUEST)
        assert await second.lookup("a") is None  # held: not uncertain, not to be resumed
        claimed = f"key 'a' is submitting, claimed by worker {first.worker}"
        with pytest.raises(ClaimedElsewhere, match=claimed):
            await second.submitting("a", MODEL, REQUEST)
        await first.created("a", "t-a", "CREATED")
        assert await second.lookup("a") is None  # its task is followed by its live worker
        with pytest.raises(ClaimedElsewhere, match="key 'a' is created with task t-a"):
            await second.submitting("a", MODEL, REQUEST)
    assert peek(database, "SELECT state, task_id, claims FROM kling_items") == [("created", "t-a", 1)]


async def test_two_workers_racing_for_one_key_make_one_claim(database: str) -> None:  # noqa: F811
    outcomes: list[str] = []

    async def claim(journal: PostgresJournal) -> None:
        try:
            await journal.submitting("a", MODEL, REQUEST)
        except ClaimedElsewhere:
            outcomes.append("elsewhere")
        else:
            outcomes.append("claimed")

    async with PostgresJournal(database) as first, PostgresJournal(database) as second:
        for _ in range(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(claim, first)
                tg.start_soon(claim, second)
            with psycopg.connect(database) as conn:
                conn.execute("DELETE FROM kling_items")
    assert sorted(set(outcomes)) == ["claimed", "elsewhere"]
    assert outcomes.count("claimed") == 20


async def test_a_dead_workers_claim_on_the_wire_is_uncertain_and_not_claimed_again(
    database: str,  # noqa: F811
) -> None:
    async with PostgresJournal(database) as first, PostgresJournal(database) as second:
        await first.submitting("a", MODEL, REQUEST)
        await expire(database, first)
        entry = await second.lookup("a")
        assert entry is not None
        assert entry.state == JournalState.UNCERTAIN
        assert entry.error == (
            f"worker {first.worker} stopped while its POST was on the wire, without recording the answer;"
            " a task may exist"
        )
        assert peek(database, "SELECT state FROM kling_items") == [("uncertain",)]


async def test_the_heartbeat_marks_dead_workers_claims_uncertain(database: str) -> None:  # noqa: F811
    async with PostgresJournal(database) as dead:
        await dead.submitting("a", MODEL, REQUEST)
        await expire(database, dead)
        async with PostgresJournal(database, lease=0.15):  # beats every 0.05 s
            with anyio.fail_after(10):
                while peek(database, "SELECT state FROM kling_items") != [("uncertain",)]:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
    (error,) = peek(database, "SELECT error FROM kling_items")[0]
    assert error.startswith(f"worker {dead.worker} stopped while its POST was on the wire")


def steppable_clock(dsn: str) -> str:
    """The DSN whose sessions read the database's clock through ``kling_test_clock.clock_timestamp()``:
    the server's clock plus an offset that ``step_clock`` moves, as NTP stepping the database host would
    (every session sees the step at once; the rows keep what they hold)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA kling_test_clock")
        conn.execute("CREATE TABLE kling_test_clock.step (seconds double precision NOT NULL)")
        conn.execute("INSERT INTO kling_test_clock.step VALUES (0)")
        conn.execute(
            "CREATE FUNCTION kling_test_clock.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS"
            " 'SELECT pg_catalog.clock_timestamp()"
            " + make_interval(secs => (SELECT seconds FROM kling_test_clock.step))'"
        )
    # pg_catalog named after the function's schema, so that the function comes first; tables in public.
    return psycopg.conninfo.make_conninfo(dsn, options="-c search_path=public,kling_test_clock,pg_catalog")


def step_clock(dsn: str, seconds: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE kling_test_clock.step SET seconds = seconds + %s", (seconds,))


async def test_a_live_workers_claim_stays_its_own_when_the_database_clock_jumps_past_its_lease(
    database: str,  # noqa: F811
) -> None:
    """NTP steps the database host's clock 10 s forward: every lease looks over until its worker renews
    it. A worker that saw the other's lease running counts it on its own clock, so the other's claim on
    the wire is not taken for a dead worker's (uncertain, and sent again with resubmit_uncertain)."""
    url = steppable_clock(database)
    # The claimant renews every second; the other one reads the leases every 0.1 s.
    async with PostgresJournal(url, lease=3.0) as claimant, PostgresJournal(url, lease=0.3) as other:
        await claimant.submitting("a", MODEL, REQUEST)
        await anyio.sleep(0.3)  # the other's heartbeat has read the claimant's lease
        step_clock(database, 10.0)
        assert await other.lookup("a") is None  # held by a live worker
        await anyio.sleep(0.3)  # the other's heartbeat reads the leases again
        assert peek(database, "SELECT state, worker FROM kling_items") == [("submitting", claimant.worker)]


async def test_a_worker_that_stops_renewing_a_lease_another_saw_is_dead_once_it_is_over(
    database: str,  # noqa: F811
) -> None:
    """The other rule's guard: a lease counted on a worker's own clock still ends (a worker stopped)."""
    async with PostgresJournal(database, lease=0.3) as observer:
        with psycopg.connect(database, autocommit=True) as conn:  # a worker that renews no more
            conn.execute(
                "INSERT INTO kling_workers (id, host, pid, lease_until)"
                " VALUES ('stopped', 'h', 1, clock_timestamp() + interval '0.5 s')"
            )
            conn.execute(
                "INSERT INTO kling_items (key, model, request, state, worker, created_at, updated_at)"
                " VALUES ('a', %s, %s, 'submitting', 'stopped', 0, 0)",
                (MODEL, REQUEST),
            )
        assert await observer.lookup("a") is None  # its lease runs: held
        with anyio.fail_after(10):
            while peek(database, "SELECT state FROM kling_items") != [("uncertain",)]:  # noqa: ASYNC110
                await anyio.sleep(0.01)


async def test_an_uncertain_item_is_resubmitted_only_as_the_engine_decided_after_its_lookup(
    database: str,  # noqa: F811
) -> None:
    async with PostgresJournal(database) as first, PostgresJournal(database) as second:
        await first.submitting("a", MODEL, REQUEST)
        await expire(database, first)
        # A worker that never looked it up (it saw the claim live) must not POST it now that it is dead.
        with pytest.raises(ClaimedElsewhere, match="no longer live"):
            await second.submitting("a", MODEL, REQUEST)
        entry = await second.lookup("a")  # the engine sees it uncertain, and may resubmit deliberately
        assert entry is not None
        assert entry.state == JournalState.UNCERTAIN
        await second.submitting("a", MODEL, REQUEST)
        await second.created("a", "t-a2", "CREATED")
    assert peek(database, "SELECT state, task_id, claims FROM kling_items") == [("created", "t-a2", 2)]


async def test_a_dead_workers_task_is_adopted_once_and_its_writes_accepted(database: str) -> None:  # noqa: F811
    async with (
        PostgresJournal(database) as first,
        PostgresJournal(database) as second,
        PostgresJournal(database) as third,
    ):
        await first.submitting("a", MODEL, REQUEST)
        await first.created("a", "t-a", "CREATED")
        await expire(database, first)
        entry = await second.lookup("a")
        assert entry is not None
        assert (entry.state, entry.task_id) == (JournalState.CREATED, "t-a")
        assert await third.lookup("a") is None  # adopted by a live worker: held
        await second.status("a", "IN_PROGRESS")
        await second.finished("a", "COMPLETED", ["https://cdn.example/a.mp4"])
    assert peek(database, "SELECT state, status, worker FROM kling_items") == [
        ("completed", "COMPLETED", second.worker)
    ]


async def test_a_claim_write_by_another_worker_is_refused(database: str) -> None:  # noqa: F811
    async with PostgresJournal(database) as first, PostgresJournal(database) as second:
        await first.submitting("a", MODEL, REQUEST)
        with pytest.raises(ClaimedElsewhere):
            await second.created("a", "t-x", "CREATED")
        with pytest.raises(ClaimedElsewhere):
            await second.uncertain("a", "lost")


async def test_a_closed_workers_tasks_are_free_to_adopt_at_once(database: str) -> None:  # noqa: F811
    async with PostgresJournal(database) as first:
        await first.submitting("a", MODEL, REQUEST)
        await first.created("a", "t-a", "CREATED")
    async with PostgresJournal(database) as second:
        entry = await second.lookup("a")
    assert entry is not None
    assert entry.task_id == "t-a"


# -- the engine ---------------------------------------------------------------------------------------------


async def test_gather_with_a_postgresql_url_records_every_item(database: str) -> None:  # noqa: F811
    from kling_async import Job, OmniRequest

    jobs = [Job(OmniRequest(prompt=f"clip {i}"), id=f"clip-{i}") for i in range(12)]
    async with (
        Simulator(time_scale=0.001, generation_seconds=60.0, queue_seconds=2.0) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        outcomes = await client.gather(jobs, journal=database)
        assert all(o.ok for o in outcomes)
        again = await client.gather(jobs, journal=database)  # resumed from the database: no POST
        assert sim.counters.posts == 12
    assert [o.task_id for o in again] == [o.task_id for o in outcomes]
    assert peek(database, "SELECT state, count(*) FROM kling_items GROUP BY state") == [("completed", 12)]


async def test_an_item_a_live_worker_holds_is_that_items_claimed_elsewhere_outcome(
    database: str,  # noqa: F811
) -> None:
    from kling_async import Job, OmniRequest

    jobs = [Job(OmniRequest(prompt=f"clip {i}"), id=f"clip-{i}") for i in range(3)]
    async with (
        PostgresJournal(database) as other,
        Simulator(time_scale=0.001, generation_seconds=60.0, queue_seconds=2.0) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        await other.submitting("clip-1", MODEL, b"{}")  # another worker's POST is on the wire
        outcomes = await client.gather(jobs, journal=database)
        assert sim.counters.posts == 2
    assert [o.ok for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, ClaimedElsewhere)


async def test_a_call_that_meets_a_dead_connection_runs_again_on_a_new_one(
    database: str,  # noqa: F811
) -> None:
    async with open_journal(database) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        with psycopg.connect(database, autocommit=True) as admin:  # a restart, a failover, an admin's kill
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await journal.created("a", "t-a", "CREATED")  # the task id a POST just returned is not lost
    assert peek(database, "SELECT state, task_id FROM kling_items") == [("created", "t-a")]


async def test_a_database_that_is_down_sends_no_post(tmp_path: Any) -> None:
    from kling_async import Job, OmniRequest

    jobs = [Job(OmniRequest(prompt=f"clip {i}"), id=f"clip-{i}") for i in range(3)]
    down = f"postgresql://kling:s3cret@/journal?host={tmp_path}"  # no server listens there
    async with (
        Simulator(time_scale=0.001, generation_seconds=60.0, queue_seconds=2.0) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        with pytest.raises(JournalError, match="cannot connect") as caught:
            async for _ in client.map(jobs, journal=down):
                pass
        assert sim.counters.posts == 0
    assert "s3cret" not in str(caught.value)


# -- the connection pool ------------------------------------------------------------------------------------


class RowLock:
    """Another session holding the row locks of ``keys`` until the block ends: calls that need them wait."""

    def __init__(self, dsn: str, keys: list[str]) -> None:
        self._conn = psycopg.connect(dsn)
        self._conn.execute("SELECT 1 FROM kling_items WHERE key = ANY(%s) FOR UPDATE", (keys,))

    def __enter__(self) -> RowLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.rollback()
        self._conn.close()


def lock_bounded(dsn: str) -> str:
    """The DSN with a lock timeout: a test whose journal waits for a lock fails instead of hanging."""
    return psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=10s")


async def waiting_on_locks(dsn: str, count: int) -> None:
    """Return once ``count`` sessions of the database wait for a lock (the server says so)."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    with anyio.fail_after(10):
        while peek(dsn, sql) != [(count,)]:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def record(journal: PostgresJournal, *keys: str) -> None:
    for key in keys:
        await journal.submitting(key, MODEL, REQUEST)
        await journal.created(key, f"t-{key}", "CREATED")


async def test_calls_for_different_keys_run_on_the_server_at_the_same_time(database: str) -> None:  # noqa: F811
    keys = ["a", "b", "c", "d"]
    found: list[str] = []

    async def look(key: str) -> None:
        entry = await journal.lookup(key)
        assert entry is not None
        found.append(entry.key)

    async with PostgresJournal(lock_bounded(database), connections=4) as journal:
        await record(journal, *keys)
        async with anyio.create_task_group() as tg:
            with RowLock(database, keys):  # released before the task group waits for the calls
                for key in keys:
                    tg.start_soon(look, key)
                await waiting_on_locks(database, len(keys))  # one connection each, all inside the server
                assert found == []
    assert sorted(found) == keys


async def test_a_keys_call_waits_for_its_buffered_write_while_other_keys_go_on(database: str) -> None:  # noqa: F811
    async with PostgresJournal(lock_bounded(database), flush_interval=3600) as journal:
        await record(journal, "a", "b")
        await journal.status("a", "IN_PROGRESS")  # buffered
        seen: list[JournalEntry | None] = []

        async def look() -> None:
            seen.append(await journal.lookup("a"))  # commits a's buffered status first: waits

        async with anyio.create_task_group() as tg:
            with RowLock(database, ["a"]):
                tg.start_soon(look)
                await waiting_on_locks(database, 1)
                with anyio.fail_after(10):
                    await journal.created("b", "t-b", "IN_PROGRESS")  # another key is not held up
                    b = await journal.lookup("b")
                assert b is not None
                assert b.status == "IN_PROGRESS"
                assert seen == []
    assert len(seen) == 1
    assert seen[0] is not None
    assert seen[0].status == "IN_PROGRESS"


async def test_killed_pooled_connections_are_all_replaced_and_fail_no_call(database: str) -> None:  # noqa: F811
    keys = ["a", "b", "c"]
    async with PostgresJournal(lock_bounded(database), connections=3) as journal:
        await record(journal, *keys)
        async with anyio.create_task_group() as tg:
            with RowLock(database, keys):
                for key in keys:
                    tg.start_soon(journal.lookup, key)
                await waiting_on_locks(database, 3)  # the pool holds three connections now
        with psycopg.connect(database, autocommit=True) as admin:  # a failover, or an admin's kill
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        for key in keys * 3:  # every pooled connection takes its turn: none is left dead
            entry = await journal.lookup(key)
            assert entry is not None
            assert entry.task_id == f"t-{key}"


def test_a_pool_without_connections_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^connections: at least 1, got 0$"):
        PostgresJournal("postgresql:///db", connections=0)


class _ClockAnHourOff(SystemClock):
    """A worker's machine whose wall clock is an hour off (no NTP)."""

    def wall(self) -> float:
        return super().wall() + 3600.0


async def test_rows_and_history_are_stamped_with_the_databases_clock_not_a_workers(database: str) -> None:  # noqa: F811
    """Workers whose clocks disagree write one timeline: a row's times and its history follow the database's
    clock, so a status never seems to come before the one it followed."""
    async with PostgresJournal(database, clock=_ClockAnHourOff()) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.finished("a", "COMPLETED", ["https://cdn.example/a.mp4"])
    [(created, updated, now)] = peek(
        database, "SELECT created_at, updated_at, extract(epoch from clock_timestamp()) FROM kling_items"
    )
    assert created <= updated <= now < created + 60
    history = [at for (at,) in peek(database, "SELECT at FROM kling_history ORDER BY at")]
    assert len(history) == 2  # CREATED, COMPLETED
    assert created <= history[0] <= history[1] == updated


async def test_created_calls_ready_together_go_to_the_server_as_one_statement(database: str) -> None:  # noqa: F811
    keys = ["a", "b", "c"]
    async with PostgresJournal(lock_bounded(database), connections=1) as journal:
        await record(journal, "x")
        for key in keys:
            await journal.submitting(key, MODEL, REQUEST)
        async with anyio.create_task_group() as tg:
            with RowLock(database, ["x"]):
                tg.start_soon(journal.lookup, "x")  # holds the only connection until the lock goes
                await waiting_on_locks(database, 1)
                for key in keys:
                    tg.start_soon(journal.created, key, f"t-{key}", "CREATED")
                await anyio.wait_all_tasks_blocked()
    assert peek(database, "SELECT count(DISTINCT updated_at) FROM kling_items WHERE key = ANY(%s)", keys) == [
        (1,)
    ]
    assert peek(
        database, "SELECT key, state, task_id FROM kling_items WHERE key = ANY(%s) ORDER BY key", keys
    ) == [(key, "created", f"t-{key}") for key in keys]


async def test_workers_claiming_the_same_keys_in_opposite_orders_claim_each_once(database: str) -> None:  # noqa: F811
    keys = [f"k{i:02d}" for i in range(60)]
    claimed: list[str] = []

    async def claim(journal: PostgresJournal, key: str) -> None:
        try:
            await journal.submitting(key, MODEL, REQUEST)
        except ClaimedElsewhere:
            return
        claimed.append(key)

    async with PostgresJournal(database):  # the tables
        pass
    with psycopg.connect(database) as conn:
        # Each new row takes the server 2 ms: the two workers' statements, each claiming most of the keys
        # at once, are on the server at the same time.
        conn.execute(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON kling_items FOR EACH ROW EXECUTE FUNCTION slow_insert()"
        )
    async with (
        PostgresJournal(lock_bounded(database), connections=1) as first,
        PostgresJournal(lock_bounded(database), connections=1) as second,
        anyio.create_task_group() as tg,
    ):
        for key, reverse in zip(keys, reversed(keys), strict=True):
            tg.start_soon(claim, first, key)
            tg.start_soon(claim, second, reverse)
    assert sorted(claimed) == keys
