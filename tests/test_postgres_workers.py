"""Three worker processes, one simulator, one PostgreSQL journal, the same 300 jobs: every job is paid
for once, and a worker killed with its POSTs on the wire leaves them uncertain or adopted, never re-POSTed."""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from anyio.abc import Process

from kling_async import KlingClient
from kling_async._journal_pg import PostgresJournal
from kling_async.testing import Faults, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY
from tests.postgres import database, postgres_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JOBS = 300
LEASE = 1.0
ROOT = Path(__file__).parent.parent


async def start_worker(sim: Simulator, dsn: str, out: Path) -> Process:
    command = [sys.executable, "-m", "tests.postgres", sim.url, dsn, str(JOBS), str(LEASE)]
    with out.open("wb") as stdout:
        return await anyio.open_process(command, cwd=ROOT, stdout=stdout, stderr=None)


def outcomes(out: Path) -> list[list[str]]:
    return [line.split() for line in out.read_text().splitlines()]


def rows(dsn: str, sql: str, *params: object) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


async def test_three_workers_on_one_input_create_each_task_once(database: str, tmp_path: Path) -> None:  # noqa: F811
    async with Simulator(time_scale=0.001, generation_seconds=(30.0, 60.0), queue_seconds=2.0) as sim:
        outs = [tmp_path / f"worker-{n}.txt" for n in range(3)]
        workers = [await start_worker(sim, database, out) for out in outs]
        for worker in workers:
            async with worker:
                assert await worker.wait() == 0
    assert sim.counters.tasks_created == JOBS
    assert sim.counters.posts == JOBS
    assert sim.counters.duplicate_payloads() == []
    journal = dict(rows(database, "SELECT key, task_id FROM kling_items WHERE state = 'completed'"))
    assert len(journal) == JOBS
    assert len(set(journal.values())) == JOBS
    # Each task reached COMPLETED once in the journal's history, whichever worker wrote it.
    assert rows(database, "SELECT count(*) FROM kling_history WHERE status = 'COMPLETED'") == [(JOBS,)]
    # Every worker has an outcome for every job: the task it ran (or found finished), or the claim of another.
    done: dict[str, set[str]] = {}
    for out in outs:
        lines = outcomes(out)
        assert sorted(line[1] for line in lines) == sorted(journal)
        for line in lines:
            if line[0] == "ok":
                done.setdefault(line[1], set()).add(line[2])
            else:
                assert line[2] == "ClaimedElsewhere", line
    assert done == {key: {task} for key, task in journal.items()}


async def test_a_worker_killed_with_posts_on_the_wire_leaves_them_uncertain_or_adopted(
    database: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Slow answers at first, so the victim has POSTs on the wire when it is killed.
    faults = Faults(latency=0.3)
    async with Simulator(
        time_scale=0.001, generation_seconds=(30.0, 60.0), queue_seconds=2.0, faults=faults
    ) as sim:
        async with PostgresJournal(database):  # the tables exist before the test looks for claims
            pass
        outs = [tmp_path / f"worker-{n}.txt" for n in range(3)]
        victim, *survivors = [await start_worker(sim, database, out) for out in outs]
        claims_sql = (
            "SELECT i.key FROM kling_items i JOIN kling_workers w ON w.id = i.worker"
            " WHERE w.pid = %s AND i.state = 'submitting'"
        )
        with anyio.fail_after(30):
            while not rows(database, claims_sql, victim.pid):  # noqa: ASYNC110 - nothing signals a claim
                await anyio.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        async with victim:
            await victim.wait()
        on_the_wire = {key for (key,) in rows(database, claims_sql, victim.pid)}
        victim_id = rows(database, "SELECT id FROM kling_workers WHERE pid = %s", victim.pid)[0][0]
        sim.faults.latency = 0.0
        for worker in survivors:
            async with worker:
                assert await worker.wait() == 0
        # Until its lease runs out, a killed worker is taken as live (its claims held): wait for that.
        lapsed_sql = "SELECT 1 FROM kling_workers WHERE id = %s AND lease_until < clock_timestamp()"
        with anyio.fail_after(30):
            while not rows(database, lapsed_sql, victim_id):  # noqa: ASYNC110 - nothing signals a lapse
                await anyio.sleep(0.02)
        # A later run with the same input: it adopts what the dead worker created, and reports the rest.
        async with KlingClient(
            api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY
        ) as client:
            from kling_async import Job, OmniRequest

            jobs = [Job(OmniRequest(prompt=f"shared clip {i}"), id=f"clip-{i:03d}") for i in range(JOBS)]
            final = await client.gather(jobs, journal=PostgresJournal(database, lease=LEASE))
    assert on_the_wire
    assert sim.counters.duplicate_payloads() == []  # nothing was POSTed twice
    assert max(sim.counters.posts_by_payload.values()) == 1
    states = Counter(state for (state,) in rows(database, "SELECT state FROM kling_items"))
    assert set(states) <= {"completed", "uncertain"}
    assert sum(states.values()) == JOBS
    uncertain = rows(database, "SELECT key, worker FROM kling_items WHERE state = 'uncertain'")
    assert {worker for _, worker in uncertain} <= {victim_id}
    assert {key for key, _ in uncertain} <= on_the_wire
    assert len(uncertain) >= 1
    # The final run's outcomes: every completed row ok, every uncertain row a SubmitUncertainError.
    assert sorted(o.key for o in final if not o.ok) == sorted(key for key, _ in uncertain)
    assert {type(o.error).__name__ for o in final if not o.ok} <= {"SubmitUncertainError"}
    assert JOBS - len(uncertain) <= sim.counters.tasks_created <= JOBS
