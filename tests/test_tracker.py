"""The batch tracker's list sweeps: which pages they read, whom they leave to checks of their own, and
the learned completion times that decide when they come."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence

import anyio
import msgspec
import pytest

from kling_async import KlingClient, OmniRequest, PollPolicy, TaskHandle, TaskStatus, TaskTimeoutError
from kling_async._models import TaskSummary
from kling_async._polling import Completions, Timings
from kling_async._tracker import SweepListener, Tracker
from kling_async.testing import FakeClock, Faults, MockRequest, MockTransport, Response, Simulator

pytestmark = pytest.mark.anyio

FAMILY = "/v1/ai/video/kling-v3-omni"
POLL = PollPolicy(initial=15.0, maximum=30.0, timeout=None, jitter=0.1)


def prompts(n: int, prefix: str = "clip") -> list[OmniRequest]:
    return [OmniRequest(prompt=f"{prefix} {i}", duration="5") for i in range(n)]


class Account:
    """A server's tasks for a MockTransport: every task runs forever; lists answer ``page_size`` tasks a
    page (newest first), or always 20 when it ignores the parameter, and may leave some tasks out."""

    def __init__(self, *, ignore_page_size: bool = False, unlisted: int = 0) -> None:
        self.ids: list[str] = []
        self.ignore_page_size = ignore_page_size
        # How many of the first tasks created never show in a list.
        self.unlisted = unlisted
        self.pages: list[tuple[int, int]] = []  # (page, page size answered) per list request
        self.status_gets: dict[str, int] = {}
        self._numbers = itertools.count()

    def __call__(self, request: MockRequest) -> Response:
        if request.method == "POST":
            task_id = str(uuid.UUID(int=next(self._numbers)))
            self.ids.append(task_id)
            return _json({"data": {"task_id": task_id, "status": "CREATED", "generated": []}})
        if request.url == FAMILY:
            page = int(request.params["page"])
            size = 20 if self.ignore_page_size else int(request.params["page_size"])
            listed = [i for i in reversed(self.ids) if self.ids.index(i) >= self.unlisted]
            chunk = listed[(page - 1) * size : page * size]
            self.pages.append((page, size))
            return _json({"data": [{"task_id": i, "status": "IN_PROGRESS"} for i in chunk]})
        task_id = request.url.rsplit("/", 1)[1]
        self.status_gets[task_id] = self.status_gets.get(task_id, 0) + 1
        return _json({"data": {"task_id": task_id, "status": "IN_PROGRESS", "generated": []}})


def _json(body: object) -> Response:
    return Response(200, {"Content-Type": "application/json"}, msgspec.json.encode(body))


async def _track_for(
    handler: Callable[[MockRequest], Response | Awaitable[Response]],
    requests: Iterable[OmniRequest] | AsyncIterable[OmniRequest],
    seconds: float,
    clock: FakeClock | None = None,
) -> None:
    """Submit ``requests`` in one batch against ``handler`` and let ``seconds`` of fake time pass."""
    clock = clock or FakeClock()
    async with (
        KlingClient(api_key="k", clock=clock, transport=MockTransport(handler), poll=POLL) as client,
        anyio.create_task_group() as tg,
    ):

        async def run() -> None:
            await client.gather(requests)

        tg.start_soon(run)
        for _ in range(int(seconds)):
            await clock.advance(1.0)
        tg.cancel_scope.cancel()


async def test_a_sweep_reads_20_task_pages_when_the_server_ignores_page_size() -> None:
    account = Account(ignore_page_size=True)
    await _track_for(account, prompts(50), seconds=60)
    first_sweep = [page for page, _ in account.pages[:3]]
    assert first_sweep == [1, 2, 3]
    # Every task was seen by the sweeps, so none needed a status request of its own.
    assert account.status_gets == {}


async def test_a_task_missing_from_the_list_gets_status_requests_of_its_own() -> None:
    account = Account(unlisted=1)
    await _track_for(account, prompts(30), seconds=60)
    missing = account.ids[0]
    assert account.status_gets.get(missing, 0) >= 2
    assert set(account.status_gets) == {missing}


async def test_a_task_the_sweeps_stop_listing_gets_status_requests_of_its_own() -> None:
    account = Account()
    answer = account.__call__

    def handler(request: MockRequest) -> Response:
        if request.url == FAMILY and len(account.pages) == 4:
            account.unlisted = 1  # from the fifth list on, the oldest task is missing from every page
        return answer(request)

    await _track_for(handler, prompts(30), seconds=120)
    assert len(account.pages) > 10
    # Until then the sweeps covered it, with no request of its own; then its own checks resumed.
    assert account.status_gets.get(account.ids[0], 0) >= 2
    assert set(account.status_gets) == {account.ids[0]}


async def test_tasks_get_status_requests_of_their_own_once_the_list_requests_fail() -> None:
    account = Account()
    answer = account.__call__

    def handler(request: MockRequest) -> Response:
        if request.url == FAMILY and len(account.pages) >= 4:
            return Response(400, {"Content-Type": "application/json"}, b'{"message": "list unavailable"}')
        return answer(request)

    await _track_for(handler, prompts(30), seconds=120)
    # Covered by the first four sweeps, then by none: every task is checked on its own.
    assert sorted(account.status_gets) == sorted(account.ids)


class QuietLeader:
    """A ``SweepRelay`` whose leader reports one sweep, then nothing, and keeps its lead."""

    def __init__(self) -> None:
        self.listeners: list[SweepListener] = []

    def leads(self, family: str) -> bool:
        return False

    def resign(self, family: str) -> None:
        pass

    def publish_sweep(self, family: str, tasks: Sequence[TaskSummary], next_in: float) -> None:
        raise AssertionError("a follower never sweeps")

    def add_sweep_listener(self, listener: SweepListener) -> None:
        self.listeners.append(listener)

    def remove_sweep_listener(self, listener: SweepListener) -> None:
        self.listeners.remove(listener)


@contextlib.asynccontextmanager
async def _ten_tracked(
    account: Account, clock: FakeClock, *, deadline: float | None, relay: QuietLeader | None = None
) -> AsyncIterator[tuple[KlingClient, Tracker, list[TaskHandle]]]:
    """Ten tasks created on ``account`` and followed by a tracker of their own (no batch around it)."""
    async with (
        KlingClient(
            api_key="k",
            clock=clock,
            transport=MockTransport(account),
            poll=POLL,
            requests_per_second=1000,
            burst=50,
        ) as client,
        anyio.create_task_group() as tg,
    ):
        handles = [await client.submit(request) for request in prompts(10)]
        tracker = Tracker(
            registry=client._registry,
            pipeline=client._pipeline,
            group=tg,
            finish=lambda item, error: None,
            relay=relay,
        )
        client._registry.subscribe(tracker.status_changed)
        tg.start_soon(tracker.run)
        for index, handle in enumerate(handles):
            tracker.add(index, handle.task_id, handle, deadline, check_now=False)
        yield client, tracker, handles
        tg.cancel_scope.cancel()


async def test_tasks_another_worker_swept_get_status_requests_of_their_own_once_its_sweeps_stop() -> None:
    account, relay, clock = Account(), QuietLeader(), FakeClock()
    async with _ten_tracked(account, clock, deadline=None, relay=relay) as (_, _, handles):
        await clock.advance(1.0)
        listed = [TaskSummary(task_id=handle.task_id, status="IN_PROGRESS") for handle in handles]
        relay.listeners[0](FAMILY, listed, 10.0)  # the leader's next sweep is due in 10 s; it never comes
        await clock.advance(38.0)
        assert account.status_gets == {}  # covered until that sweep is overdue by POLL.maximum (30 s)
        for _ in range(60):
            await clock.advance(1.0)
    assert sorted(account.status_gets) == sorted(account.ids)


async def test_a_covered_task_that_finished_is_not_held_until_its_deadline() -> None:
    account, clock = Account(), FakeClock()
    async with _ten_tracked(account, clock, deadline=clock.now() + 1800.0) as (client, tracker, handles):
        for _ in range(60):  # the sweeps cover every task: each is parked
            await clock.advance(1.0)
        assert account.status_gets == {}
        for handle in handles:  # they finish (a webhook, say) long before the deadline
            client._registry.observe(
                TaskStatus(task_id=handle.task_id, status="COMPLETED", generated=("https://cdn/v.mp4",))
            )
        for _ in range(4 * 30 + 5):  # four longest poll waits
            await clock.advance(1.0)
        # No entry of the tracker's heap holds a finished task (and its handle) until its deadline.
        assert [item.key for _, item in tracker._heap] == []


async def test_a_task_listed_twice_in_one_sweep_counts_once_so_the_sweep_reads_on_to_the_oldest() -> None:
    account = Account(ignore_page_size=True)  # 20 tasks a page
    answer = account.__call__

    def handler(request: MockRequest) -> Response:
        response = answer(request)
        if request.url == FAMILY and request.params["page"] == "1" and len(account.ids) == 50:
            # Another client creates 12 tasks while the first sweep reads: the list (newest first) shifts
            # down, so page 2 repeats the last 12 tasks of page 1, and the 2 oldest move to page 4.
            account.ids.extend(str(uuid.UUID(int=10**6 + k)) for k in range(12))
        return response

    await _track_for(handler, prompts(50), seconds=20)
    assert [page for page, _ in account.pages[:4]] == [1, 2, 3, 4]
    # Counted twice, the repeated tasks would have ended the sweep at page 3, and the 2 oldest would have
    # needed status requests of their own.
    assert account.status_gets == {}


async def test_tasks_the_batch_adds_while_a_sweep_reads_count_nothing_so_it_reads_on_to_the_oldest() -> None:
    account = Account(ignore_page_size=True)  # 20 tasks a page
    answer = account.__call__
    clock = FakeClock()
    more = anyio.Event()  # the batch's next 12 requests may go
    sweeping = False

    async def requests() -> AsyncIterator[OmniRequest]:
        for request in prompts(50):
            yield request
        await more.wait()
        for request in prompts(12, prefix="late"):
            yield request

    async def handler(request: MockRequest) -> Response:
        nonlocal sweeping
        if request.url == FAMILY and request.params["page"] == "1" and not sweeping:
            # The batch submits 12 more tasks while its first sweep reads: the list (newest first) shifts
            # down, page 1 shows the 12 new ones, and the 2 oldest move to page 4.
            sweeping = True
            more.set()
            await clock.sleep(5.0)  # time enough for the 12 to be created and followed
        return answer(request)

    await _track_for(handler, requests(), seconds=20, clock=clock)
    assert [page for page, _ in account.pages[:4]] == [1, 2, 3, 4]
    # Counted as tasks the sweep looked for, the 12 new ones would have ended it at page 3, and the 2
    # oldest would have needed status requests of their own.
    assert set(account.status_gets).isdisjoint(account.ids[:50])


async def test_a_task_that_finishes_while_a_sweep_reads_its_pages_ends_as_its_own_outcome() -> None:
    account = Account(ignore_page_size=True)
    clock = FakeClock()
    holder: list[KlingClient] = []
    answer = account.__call__

    def handler(request: MockRequest) -> Response:
        if request.url == FAMILY and request.params["page"] == "3":
            # The oldest task (on page 3) is listed; the newest (on page 1, skipped as too young to have
            # finished) finishes meanwhile, as a webhook would say.
            newest = account.ids[-1]
            holder[0]._registry.observe(
                TaskStatus(task_id=newest, status="COMPLETED", generated=("https://cdn.example/v.mp4",))
            )
        return answer(request)

    # Every POST at once (a told rate with a burst), so the tasks are created together.
    async with KlingClient(
        api_key="k",
        clock=clock,
        transport=MockTransport(handler),
        poll=POLL,
        requests_per_second=1000,
        burst=50,
    ) as client:
        holder.append(client)
        for _ in range(8):  # tasks of this family take 100 s: none of the new ones is likely finished
            client._registry.timings.bracket(FAMILY, 100.0, 100.0)
        outcomes = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                async for outcome in client.map(prompts(50)):
                    outcomes.append(outcome)

            tg.start_soon(run)
            for _ in range(60):
                await clock.advance(1.0)
            tg.cancel_scope.cancel()
    assert (3, 20) in account.pages
    assert [o.task_id for o in outcomes if o.ok] == [account.ids[-1]]


async def test_with_page_size_ignored_sweeps_still_watch_every_task_of_a_batch() -> None:
    n = 50
    poll = PollPolicy(initial=0.1, maximum=0.3, timeout=None)
    async with (
        Simulator(time_scale=0.01, faults=Faults(ignore_page_size=True)) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=poll) as client,
    ):
        outcomes = await client.gather(prompts(n, "[never] clip"), timeout=1.5)
    assert all(isinstance(o.error, TaskTimeoutError) for o in outcomes)
    assert sim.counters.lists > 0
    # Polled one by one, 50 tasks would cost about 6 requests each here; swept 20 a page, a handful.
    assert sim.counters.status_gets <= n // 10, sim.counters.gets_by_task


def test_the_chance_a_task_finished_follows_the_learned_times() -> None:
    completions = Completions([float(x) for x in range(10, 101)])  # 10, 11, ..., 100 s
    assert completions.finished(5.0, 9.0) == 0.0
    assert completions.finished(5.0, 55.0) == pytest.approx(46 / 91)
    # Seen running at 90 s: of the 10 learned times past 90 s, 5 are at most 95 s.
    assert completions.finished(90.0, 95.0) == pytest.approx(0.5)
    assert completions.finished(5.0, 100.0) == 1.0


def test_the_expected_unnoticed_wait_is_a_share_of_the_generation_time() -> None:
    completions = Completions([10.0] * 8)
    assert completions.waited(5.0, 9.0) == 0.0
    # Every task finished at 10 s: by 15 s each has waited 5 s, half its generation.
    assert completions.waited(5.0, 15.0) == pytest.approx(0.5)


def test_a_task_running_past_every_learned_time_is_expected_within_as_long_again() -> None:
    completions = Completions([10.0] * 8)
    assert completions.finished(20.0, 30.0) == pytest.approx(0.5)
    assert completions.finished(20.0, 40.0) == 1.0
    assert 0.0 < completions.waited(20.0, 30.0) < completions.waited(20.0, 40.0)


def test_a_task_seen_finished_by_a_sweep_is_learned_at_the_middle_of_its_window() -> None:
    timings = Timings()
    for _ in range(8):
        timings.record((FAMILY, "kling-v3-omni-std", "5"), 20.0)
        timings.bracket(FAMILY, 10.0, 20.0)
    completions = timings.completions(FAMILY)
    assert completions is not None
    assert completions.median == 15.0
