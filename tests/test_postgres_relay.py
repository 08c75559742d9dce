"""Workers sharing one PostgreSQL database share statuses and sweeps: ``StatusRelay`` (LISTEN/NOTIFY, the
sweeper's advisory lock) and the tracker that follows another worker's sweeps.

The two-worker tests go through the public switch, ``KlingClient(shared=...)``. The test of a leader that
never sweeps wires a relay by hand on a real client (private attributes: ``_registry``, ``_pipeline``...),
with the lines ``shared=`` uses: ``relay.add_listener(registry.observe)`` and a batch run with ``relay``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
import psycopg
import pytest

from kling_async import Job, KlingClient, OmniRequest, Outcome, PollPolicy, WebhookReceiver
from kling_async._batch import BatchOptions
from kling_async._models import TaskStatus, TaskSummary
from kling_async._relay_pg import _BACKOFF_LAST, StatusRelay, _backoff
from kling_async._submit import Halt
from kling_async.testing import Simulator
from tests.conftest import FAST_RETRY
from tests.postgres import database, postgres_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio

RETRY = 0.05  # seconds between two tries of a family lock held elsewhere: short, for the tests
FAMILY = "/v1/ai/video/kling-v3-omni"


class Heard:
    """What one relay's listeners were called with, and a way to wait for it."""

    def __init__(self, relay: StatusRelay) -> None:
        self.statuses: list[TaskStatus] = []
        self.sweeps: list[tuple[str | None, list[TaskSummary], float | None]] = []
        self._changed = anyio.Event()
        relay.add_listener(self.status)
        relay.add_sweep_listener(self.sweep)

    def status(self, status: TaskStatus) -> None:
        self.statuses.append(status)
        self._changed.set()

    def sweep(self, family: str | None, tasks: Sequence[TaskSummary], next_in: float | None) -> None:
        self.sweeps.append((family, list(tasks), next_in))
        self._changed.set()

    async def until(self, done: Any) -> None:
        """Wait until ``done()`` holds (each call of a listener looks again)."""
        with anyio.fail_after(20):
            while not done():
                self._changed = anyio.Event()
                await self._changed.wait()


@pytest.fixture
async def relays(database: str) -> AsyncIterator[tuple[StatusRelay, StatusRelay]]:  # noqa: F811
    async with StatusRelay(database, retry=RETRY) as a, StatusRelay(database, retry=RETRY) as b:
        yield a, b


async def test_a_status_forwarded_by_one_relay_reaches_the_others_listeners_not_its_own(
    relays: tuple[StatusRelay, StatusRelay],
) -> None:
    a, b = relays
    heard_a, heard_b = Heard(a), Heard(b)
    done = TaskStatus(task_id="task-1", status="COMPLETED", generated=("https://cdn.example/1.mp4",))
    b.forward(done)
    await heard_a.until(lambda: heard_a.statuses)
    # A's answer reaches B after B's own notification would have (one listener hears them in commit order).
    marker = TaskStatus(task_id="task-2", status="IN_PROGRESS")
    a.forward(marker)
    await heard_b.until(lambda: heard_b.statuses)
    assert heard_a.statuses == [done]
    assert heard_b.statuses == [marker]


async def test_a_status_too_big_for_a_notification_arrives_as_a_summary_for_the_sweep_listeners(
    relays: tuple[StatusRelay, StatusRelay],
) -> None:
    a, b = relays
    heard_a = Heard(a)
    urls = tuple(f"https://cdn.example/{n:04d}/{'x' * 80}.mp4" for n in range(100))  # about 10 KB
    b.forward(TaskStatus(task_id="task-big", status="COMPLETED", generated=urls))
    await heard_a.until(lambda: heard_a.sweeps)
    # Without its URLs, a COMPLETED status handed to the registry would end the task with no video.
    assert heard_a.statuses == []
    assert heard_a.sweeps == [(None, [TaskSummary(task_id="task-big", status="COMPLETED")], None)]


class LateSecondConnection(StatusRelay):
    """A relay whose second connection to open is 0.3 s late (a slow network's)."""

    connections = 0

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        self.connections += 1
        if self.connections > 1:
            await anyio.sleep(0.3)
        return await super()._connect()


async def test_an_entered_relay_has_its_listening_and_sending_connections_open(
    database: str,  # noqa: F811
) -> None:
    async with LateSecondConnection(database, retry=RETRY) as relay:
        with psycopg.connect(database, autocommit=True) as admin:
            open_ = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (f"kling-relay {relay.worker[:12]}",),
            ).fetchone()
    assert open_ == (2,)


class HangingSecondConnection(StatusRelay):
    """A relay whose second connection never opens while ``hang`` (a firewall that drops the packets)."""

    connections = 0
    hang = True

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        self.connections += 1
        if self.hang and self.connections > 1:
            await anyio.sleep_forever()
        return await super()._connect()


async def test_a_relay_cancelled_while_it_opens_is_closed_and_can_be_entered_again(
    database: str,  # noqa: F811
) -> None:
    relay = HangingSecondConnection(database, retry=RETRY, connect_timeout=30)
    with anyio.move_on_after(0.5) as scope:
        async with relay:
            pytest.fail("entered without its sending connection")
    assert scope.cancelled_caught
    relay.hang = False
    async with relay:
        pass


def test_the_reconnect_backoff_after_hours_of_failures_is_its_longest_wait() -> None:
    # 2.0**1025 overflows a float: 1,025 failures are three hours of a database down.
    assert _backoff(5000) == _backoff(100) == _BACKOFF_LAST


async def test_a_relay_whose_connections_are_killed_reconnects_and_delivers_again(
    database: str,  # noqa: F811
    relays: tuple[StatusRelay, StatusRelay],
) -> None:
    a, b = relays
    heard_a = Heard(a)
    with psycopg.connect(database, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = ANY(%s)",
            ([f"kling-relay {relay.worker[:12]}" for relay in relays],),
        ).fetchall()
    assert killed == [(True,)] * 4  # each relay's listening and sending connections
    # What was sent while A was not listening is lost (polling is the safety net): send until one arrives.
    with anyio.fail_after(20):
        while not heard_a.statuses:
            b.forward(TaskStatus(task_id="task-after", status="IN_PROGRESS"))
            await anyio.sleep(0.05)
    assert {status.task_id for status in heard_a.statuses} == {"task-after"}


async def test_forward_with_the_database_down_neither_raises_nor_grows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"postgresql://postgres@/postgres?host={tmp_path}"  # no server listens there
    with caplog.at_level(logging.WARNING, logger="kling_async"):
        async with StatusRelay(down, max_queued=100, connect_timeout=1) as relay:
            for n in range(1000):
                relay.forward(TaskStatus(task_id=f"task-{n}", status="IN_PROGRESS"))
            await anyio.sleep(0.05)  # the background tasks fail to connect meanwhile
            assert "queued=100" in repr(relay)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("dropping the oldest" in message for message in messages) == 1
    assert any("cannot reach the database" in message for message in messages)
    assert all("password" not in message for message in messages)


def test_a_url_that_is_not_a_connection_string_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match=r"^url: not a PostgreSQL connection URL") as raised:
        StatusRelay("http://kling:hunter2@db.internal/campaign")
    assert "hunter2" not in str(raised.value)
    assert "db.internal" in str(raised.value)


async def first_to_lead(*relays: StatusRelay) -> StatusRelay:
    """The relay that leads FAMILY, once one does (asking each makes it try; nothing signals a lock)."""
    with anyio.fail_after(20):
        while True:
            leading = [relay for relay in relays if relay.leads(FAMILY)]
            if leading:
                return leading[0]
            await anyio.sleep(RETRY / 5)


async def test_exactly_one_relay_leads_a_family(relays: tuple[StatusRelay, StatusRelay]) -> None:
    a, b = relays
    await first_to_lead(a, b)
    # Several retry periods later, the other still does not lead.
    for _ in range(10):
        await anyio.sleep(RETRY)
        assert a.leads(FAMILY) != b.leads(FAMILY)


async def test_when_the_leader_closes_the_other_relay_takes_the_family_over(database: str) -> None:  # noqa: F811
    async with StatusRelay(database, retry=RETRY) as follower:
        async with StatusRelay(database, retry=RETRY) as leader:
            assert await first_to_lead(leader) is leader
            await anyio.sleep(3 * RETRY)
            assert not follower.leads(FAMILY)
        assert await first_to_lead(follower) is follower


async def test_a_relay_that_resigns_a_family_lets_another_lead_it(
    relays: tuple[StatusRelay, StatusRelay],
) -> None:
    a, b = relays
    assert await first_to_lead(a) is a
    assert not b.leads(FAMILY)
    a.resign(FAMILY)
    assert await first_to_lead(b) is b
    assert not a.leads(FAMILY)


# -- two clients, one simulator, one database ------------------------------------------------------------

TASKS = 24
POLL = PollPolicy(initial=0.05, maximum=0.2, multiplier=1.5, timeout=30.0)


class Requests:
    """The API requests one client sent, counted on its own aiohttp session (a TraceConfig)."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._started)

    async def _started(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        path = params.url.path
        if params.method == "POST":
            self.kinds["create"] += 1
        elif path.rstrip("/").endswith(FAMILY):
            self.kinds["list"] += 1
        else:
            self.kinds["status"] += 1


def shared_client(sim: Simulator, requests: Requests, **options: Any) -> KlingClient:
    return KlingClient(
        api_key="sim-key",
        base_url=sim.url,
        poll=POLL,
        retry=FAST_RETRY,
        trace_configs=[requests.trace],
        **options,
    )


async def gather_shared(client: KlingClient, jobs: list[Job], relay: StatusRelay | None) -> list[Outcome]:
    """``client.gather(jobs)`` whose batch shares sweeps through ``relay``: the client's own batch
    runner, given this relay."""
    send, receive = anyio.create_memory_object_stream[Outcome](math.inf)
    options = BatchOptions(timeout=None, batch_timeout=None, download=None)
    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(client._run_batch, jobs, send, options, None, relay, Halt())
        outcomes = [outcome async for outcome in receive]
    return sorted(outcomes, key=lambda outcome: outcome.index)


def jobs(worker: str) -> list[Job]:
    return [Job(OmniRequest(prompt=f"{worker} clip {n}"), id=f"{worker}-{n}") for n in range(TASKS)]


async def two_workers(dsn: str | None) -> tuple[list[Requests], list[list[Outcome]]]:
    """Two clients (one simulator, one key) each run a batch of TASKS tasks of one family at once; with a
    database, both share it (``shared=``). Each client's requests and outcomes."""
    counts = [Requests(), Requests()]
    outcomes: list[list[Outcome]] = [[], []]
    async with (
        Simulator(time_scale=0.005, generation_seconds=(40.0, 80.0), queue_seconds=2.0) as sim,
        shared_client(sim, counts[0], shared=dsn) as one,
        shared_client(sim, counts[1], shared=dsn) as two,
    ):

        async def run(n: int, client: KlingClient) -> None:
            outcomes[n] = sorted(await client.gather(jobs(f"w{n}")), key=lambda outcome: outcome.index)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0, one)
            tg.start_soon(run, 1, two)
    return counts, outcomes


async def test_workers_sharing_a_relay_have_one_sweeper_and_every_task_completes(database: str) -> None:  # noqa: F811
    alone, _ = await two_workers(None)
    shared, outcomes = await two_workers(database)
    for results in outcomes:
        assert len(results) == TASKS
        assert all(outcome.ok and outcome.result is not None and outcome.result.urls for outcome in results)
    # Alone, both sweep; sharing, one of them does, and the other sends no list request at all.
    assert all(requests.kinds["list"] > 0 for requests in alone)
    sweepers = [requests for requests in shared if requests.kinds["list"]]
    assert len(sweepers) == 1
    follower = next(requests for requests in shared if not requests.kinds["list"])
    alone_cost = min(r.kinds["status"] + r.kinds["list"] for r in alone)
    assert follower.kinds["status"] + follower.kinds["list"] < alone_cost


SECRET = "relay-test-secret"


async def test_a_webhook_delivered_to_worker_b_resolves_the_handle_worker_a_waits_on(database: str) -> None:  # noqa: F811
    # Deliveries come at once; the safety net's first status check would come only after ten minutes.
    poll = PollPolicy(initial=0.05, maximum=0.2, timeout=30.0, safety_interval=600.0)
    async with (
        Simulator(time_scale=0.001, generation_seconds=60.0, queue_seconds=2.0, webhook_secret=SECRET) as sim,
        WebhookReceiver(SECRET) as receiver_b,
    ):
        # The load balancer sends every delivery to worker B, whatever worker submitted.
        receiver_a = WebhookReceiver(SECRET, serve=False, public_url=receiver_b.url)
        options: dict[str, Any] = {"base_url": sim.url, "poll": poll, "retry": FAST_RETRY, "shared": database}
        async with (
            KlingClient("sim-key", webhooks=receiver_a, **options) as a,
            KlingClient("sim-key", webhooks=receiver_b, **options),
        ):
            handle = await a.submit(OmniRequest(prompt="a clip worker A waits for"))
            result = await handle.wait()
    assert result.status == "COMPLETED"
    assert result.urls
    assert (receiver_a.accepted, receiver_b.accepted) == (0, sim.counters.webhooks_sent)
    assert receiver_b.accepted >= 1
    assert sim.counters.status_gets == 0  # A learned the end from B's delivery, not from a request


async def test_a_worker_sweeps_itself_once_the_family_leader_is_gone(database: str) -> None:  # noqa: F811
    requests = Requests()
    outcomes: list[Outcome] = []
    async with (
        Simulator(time_scale=0.005, generation_seconds=(100.0, 200.0), queue_seconds=2.0) as sim,
        shared_client(sim, requests) as client,
        StatusRelay(database, retry=RETRY) as relay,
    ):
        relay.add_listener(client._registry.observe)

        async def run() -> None:
            outcomes.extend(await gather_shared(client, jobs("w"), relay))

        async with anyio.create_task_group() as tg, StatusRelay(database, retry=RETRY) as leader:
            assert await first_to_lead(leader) is leader  # a leader that never sweeps nor reports
            tg.start_soon(run)
            with anyio.fail_after(20):
                while requests.kinds["status"] < TASKS:  # noqa: ASYNC110 - nothing signals a request
                    await anyio.sleep(0.01)
            # Its tasks are followed by checks of their own; it does not sweep the leader's family.
            assert requests.kinds["list"] == 0
        # The leader closed first (its lock went with its connection): the batch went on and swept itself.
    assert requests.kinds["list"] > 0
    assert len(outcomes) == TASKS
    assert all(outcome.ok and outcome.result is not None and outcome.result.urls for outcome in outcomes)
