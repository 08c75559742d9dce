"""Who owns a created task, under every cancellation and fault (issue: one owner for each task).

Each test pins one defect the hostile review found; they all ran against real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import math
import re
import sqlite3
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from kling_async import (
    AuthenticationError,
    Journal,
    JournalError,
    JournalState,
    KlingClient,
    OmniRequest,
    PollPolicy,
    RetryPolicy,
    SubmitUncertainError,
    TaskFailedError,
    TaskStatus,
    TaskSubmitted,
    Timeouts,
    TransportError,
)
from kling_async._endpoints import Endpoint, endpoint_for
from kling_async._events import _BUFFER as EVENT_BUFFER
from kling_async._events import EventHub, EventStream, StatusChanged
from kling_async._journal import SQLiteJournal
from kling_async._registry import EARLY_DELIVERIES, EARLY_SECONDS, Slots, TaskRegistry
from kling_async._tracker import SWEEP_MIN_TASKS
from kling_async.testing import FakeClock, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY

pytestmark = pytest.mark.anyio


def _prompts(n: int) -> Iterator[OmniRequest]:
    return (OmniRequest(prompt=f"clip {i}", duration="5") for i in range(n))


def _client(sim: Simulator, **options: object) -> KlingClient:
    return KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY, **options)  # type: ignore[arg-type]


async def _first_submitted(events: EventStream) -> str:
    """The task id of the next TaskSubmitted event, then the stream is closed (a hang guard bounds the
    wait; it is no speed claim)."""
    try:
        with anyio.fail_after(5):
            async for event in events:
                if isinstance(event, TaskSubmitted):
                    return event.task_id
    finally:
        await events.aclose()
    raise AssertionError("the event stream ended without a TaskSubmitted")


# -- cancellation never loses a created task --------------------------------------------------------------


async def test_asyncio_timeout_during_a_create_post_keeps_the_created_task(sim: Simulator) -> None:
    """An asyncio.timeout that fires while a POST is on the wire: the caller gets TimeoutError, and the
    task the POST created is still announced (TaskSubmitted) and reachable by id."""
    sim.queue_fault("latency", method="POST", seconds=0.3)
    async with _client(sim) as client:
        events = client.events()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.submit(OmniRequest(prompt="a fox"))
        task_id = await _first_submitted(events)
        assert list(sim.tasks) == [task_id]
        result = await client.task(task_id).wait()
        assert result.url is not None


async def test_a_cancelled_submit_whose_post_ends_uncertain_says_so_in_a_warning(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller left before its POST's answer was lost (the server created the task, then dropped the
    connection): nobody catches the SubmitUncertainError, so a WARNING says a task may exist."""
    sim.faults.latency = 0.1
    sim.queue_fault("drop_after_create")
    async with _client(sim) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await client.submit(OmniRequest(prompt="a fox"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sim.counters.tasks_created == 1
    assert any("may have created a task" in message for message in warnings)


async def test_the_slot_of_a_handle_dropped_after_a_retried_post_comes_back_without_the_cyclic_collector(
    sim: Simulator,
) -> None:
    """A submit whose first try got 503, then its handle dropped: its in-flight slot is back at once (the
    retry left no reference cycle holding the handle until the cyclic collector ran)."""
    sim.queue_fault("503")
    gc.disable()
    try:
        async with _client(sim, max_in_flight=1) as client:
            handle = await client.submit(OmniRequest(prompt="a fox"))
            assert client._slots.held == 1
            del handle
            await asyncio.sleep(0.01)  # the loop lets go of the answered future
            assert client._slots.held == 0
    finally:
        gc.enable()


async def test_an_asyncio_taskgroup_sibling_failing_mid_post_keeps_the_created_task(sim: Simulator) -> None:
    """A sibling's exception cancels a submit() whose POST is on the wire; the task is still announced."""
    sim.queue_fault("latency", method="POST", seconds=0.3)
    async with _client(sim) as client:
        events = client.events()

        async def fail_soon() -> None:
            await asyncio.sleep(0.05)
            raise RuntimeError("sibling")

        async def siblings() -> None:
            async with asyncio.TaskGroup() as group:
                group.create_task(client.submit(OmniRequest(prompt="a fox")))
                group.create_task(fail_soon())

        with pytest.raises(ExceptionGroup):
            await siblings()
        task_id = await _first_submitted(events)
    assert list(sim.tasks) == [task_id]


async def test_closing_the_client_waits_for_a_post_on_the_wire(sim: Simulator) -> None:
    """A client closed while a cancelled caller's POST is on the wire still announces the created task."""
    sim.queue_fault("latency", method="POST", seconds=0.2)
    submitted: list[str] = []
    async with _client(sim) as client:
        events = client.events()

        async def submit() -> None:
            await client.submit(OmniRequest(prompt="a fox"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    submitted = [event.task_id async for event in events if isinstance(event, TaskSubmitted)]
    assert submitted == list(sim.tasks)
    assert len(submitted) == 1


async def _cancel_by_move_on_after(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with anyio.move_on_after(0.05):
        await body()


async def _cancel_by_task_group(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(body)
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("around", [_cancel_by_move_on_after, _cancel_by_task_group])
async def test_an_anyio_scope_around_the_whole_client_cancelled_mid_post_keeps_the_created_task(
    sim: Simulator, around: Callable[[Callable[[], Coroutine[Any, Any, None]]], Awaitable[None]]
) -> None:
    """The scope cancelled holds the client's own task group too: its sender still gets the answer, and
    the client announces the task before it closes."""
    sim.queue_fault("latency", method="POST", seconds=0.3)
    streams: list[EventStream] = []

    async def body() -> None:
        async with _client(sim) as client:
            streams.append(client.events())
            await client.submit(OmniRequest(prompt="a fox"))

    await around(body)
    submitted = [event.task_id async for event in streams[0] if isinstance(event, TaskSubmitted)]
    assert len(submitted) == 1
    assert submitted == list(sim.tasks)


async def test_a_scope_around_the_whole_client_cancelled_mid_post_still_warns_of_a_post_never_answered(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The shielded sender still gives up at the request timeout, and says a task may exist."""
    sim.queue_fault("latency", method="POST", seconds=30.0)

    async def body() -> None:
        async with _client(sim, timeouts=Timeouts(total=0.3)) as client:
            await client.submit(OmniRequest(prompt="a fox"))

    with anyio.fail_after(10):  # a hang guard, no speed claim
        await _cancel_by_move_on_after(body)
    assert any("may have created a task" in record.getMessage() for record in caplog.records)


async def test_a_submit_waiting_for_the_wire_when_the_client_closes_sends_nothing(sim: Simulator) -> None:
    """One POST on the wire, a second submit() waiting for its place (max_concurrency=1), then the client
    closes: the first task is kept; the second POST is not sent (sent, the closing client would cut it
    off mid-flight and lose its task), and its caller is told so, not handed the client's cancellation."""
    sim.queue_fault("latency", method="POST", seconds=0.3)
    outcomes: dict[str, str] = {}
    client = await _client(sim, max_concurrency=1).__aenter__()

    async def submit(name: str) -> None:
        try:
            outcomes[name] = (await client.submit(OmniRequest(prompt=name))).task_id
        except RuntimeError as exc:
            outcomes[name] = str(exc)

    first = asyncio.create_task(submit("first"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(submit("second"))
    await asyncio.sleep(0.05)
    await client.aclose()
    await asyncio.gather(first, second)
    assert outcomes == {
        "first": next(iter(sim.tasks)),
        "second": "the client closed before this POST was sent",
    }
    assert sim.counters.posts == 1


# -- batches live in the caller's scope ---------------------------------------------------------------------


async def test_leaving_an_async_with_map_block_stops_submitting_at_once(sim: Simulator) -> None:
    """Breaking out of `async with client.map(...)`: only POSTs already on the wire land afterwards."""
    async with _client(sim, max_concurrency=4) as client:
        # An endless input: only leaving the block can stop the POSTs (a finite one may all be sent
        # before the first outcome comes back, as a fast client does).
        batch = client.map(OmniRequest(prompt=f"clip {i}", duration="5") for i in itertools.count())
        async with batch as outcomes:
            async for _ in outcomes:
                break
        at_exit = sim.counters.posts
        await anyio.sleep(0.3)
        assert sim.counters.posts <= at_exit + 4  # at most the POSTs on the wire at the exit


async def test_an_exception_in_an_async_with_map_block_propagates_as_it_was(sim: Simulator) -> None:
    """Raising inside `async with client.map(...)` gives the caller that exception, not an ExceptionGroup."""
    async with _client(sim) as client:

        async def consume() -> None:
            async with client.map(_prompts(20)) as outcomes:
                async for _ in outcomes:
                    raise LookupError("mine")

        with pytest.raises(LookupError, match="mine"):
            await consume()


async def test_closing_a_kept_map_iterator_stops_it(sim: Simulator) -> None:
    """`async for` over a map() kept in a variable stops when the iterator is closed (aclosing)."""
    async with _client(sim, max_concurrency=4) as client:
        # An endless input: only closing can stop the POSTs (a finite one may all be sent before the
        # first outcome comes back, as a fast client does).
        batch = client.map(OmniRequest(prompt=f"clip {i}", duration="5") for i in itertools.count())
        async with contextlib.aclosing(batch) as outcomes:
            async for _ in outcomes:
                break
        at_close = sim.counters.posts
        await anyio.sleep(0.3)
        assert sim.counters.posts <= at_close + 4  # at most the POSTs on the wire at the close


async def test_a_batch_left_early_gives_back_every_in_flight_slot(sim: Simulator) -> None:
    """max_in_flight slots taken by a batch come back when it is left early: later submits never block."""
    async with _client(sim, max_in_flight=2) as client:
        async with client.map(_prompts(20)) as outcomes:
            async for _ in outcomes:
                break
        with anyio.fail_after(10):  # a hang guard: a leaked slot blocks this forever
            handles = [await client.submit(OmniRequest(prompt=f"after {i}")) for i in range(2)]
        assert len(handles) == 2


async def test_a_cancelled_batch_gives_back_every_in_flight_slot(sim: Simulator) -> None:
    """A batch cancelled from outside returns its slots too."""
    async with _client(sim, max_in_flight=2) as client:
        with anyio.move_on_after(0.05):
            await client.gather(_prompts(20))
        with anyio.fail_after(10):
            handles = [await client.submit(OmniRequest(prompt=f"after {i}")) for i in range(2)]
        assert len(handles) == 2


async def test_a_task_of_a_cancelled_batch_can_be_re_attached_by_id(sim: Simulator) -> None:
    """After a batch is cancelled, client.task(id) of one of its tasks waits to the result."""
    async with _client(sim) as client:
        events = client.events()
        async with client.map(_prompts(10)):
            task_id = await _first_submitted(events)
        result = await client.task(task_id).wait()
        assert result.task_id == task_id


async def test_items_never_sent_are_not_uncertain_after_a_cancelled_journaled_batch(
    sim: Simulator, tmp_path: Path
) -> None:
    """Items still waiting for the limiter when a journaled batch is cancelled are sent by the next run,
    not reported uncertain: only a POST that may have left is recorded as submitting."""
    journal = tmp_path / "run.db"
    async with _client(sim, requests_per_second=5) as client:
        with anyio.move_on_after(0.5):
            await client.gather(_prompts(12), journal=journal)
    sent_first = sim.counters.posts
    assert 0 < sent_first < 12
    async with _client(sim) as client:
        outcomes = await client.gather(_prompts(12), journal=journal)
    uncertain = [o for o in outcomes if isinstance(o.error, SubmitUncertainError)]
    assert uncertain == []
    assert all(o.ok for o in outcomes)
    assert sim.counters.posts == 12  # nothing paid twice, nothing left out


# -- robustness -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _stand_in(
    post_body: Mapping[str, object], status_body: Mapping[str, object]
) -> AsyncIterator[tuple[str, list[str]]]:
    """A misbehaving API on loopback: every POST gets `post_body`, every GET `status_body`."""
    seen: list[str] = []

    async def create(request: web.Request) -> web.Response:
        seen.append("POST")
        return web.json_response(post_body)

    async def status(request: web.Request) -> web.Response:
        seen.append("GET")
        return web.json_response(status_body)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_post("/v1/ai/video/kling-v3-omni-std", create)
    app.router.add_get("/v1/ai/video/kling-v3-omni", listing)
    app.router.add_get("/v1/ai/video/kling-v3-omni/{task_id}", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def test_a_server_answering_two_posts_with_one_task_id_gives_both_items_an_outcome() -> None:
    """The same task id for two POSTs: the first item follows it, the second ends with an error naming
    the clash, and the batch does not crash."""
    same = {"data": {"task_id": "task-1", "status": "CREATED"}}
    done = {"data": {"task_id": "task-1", "status": "COMPLETED", "generated": ["https://cdn.example/v.mp4"]}}
    async with (
        _stand_in(same, done) as (url, _),
        KlingClient(api_key="k", base_url=url, poll=FAST_POLL, retry=FAST_RETRY, max_concurrency=1) as client,
    ):
        outcomes = await client.gather(_prompts(2))
    assert [o.ok for o in outcomes].count(True) == 1
    clash = next(o for o in outcomes if not o.ok)
    assert isinstance(clash.error, SubmitUncertainError)
    assert "task-1" in str(clash.error)


async def test_a_completed_task_without_a_result_url_is_an_error_outcome() -> None:
    """COMPLETED with an empty `generated` is no video: the item fails with a TaskFailedError saying so."""
    created = {"data": {"task_id": "task-1", "status": "CREATED"}}
    empty = {"data": {"task_id": "task-1", "status": "COMPLETED", "generated": []}}
    async with (
        _stand_in(created, empty) as (url, _),
        KlingClient(api_key="k", base_url=url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        [outcome] = await client.gather(_prompts(1))
    assert not outcome.ok
    assert isinstance(outcome.error, TaskFailedError)
    assert outcome.task_id == "task-1"
    assert "no result URL" in str(outcome.error)


async def test_a_closed_event_subscriber_never_hides_an_event_from_the_next() -> None:
    """Publishing while one subscriber is closed still reaches the subscriber after it."""
    hub = EventHub()
    first, second = hub.subscribe(), hub.subscribe()
    await first.aclose()
    event = StatusChanged(task_id="t", model="m", status="IN_PROGRESS", previous=None)
    hub.publish(event)
    with anyio.fail_after(5):  # a hang guard: a hidden event never arrives
        assert await second.__anext__() == event
    hub.close()


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: PollPolicy(initial=math.nan), "PollPolicy.initial"),
        (lambda: PollPolicy(timeout=math.inf), "PollPolicy.timeout"),
        (lambda: RetryPolicy(deadline=math.nan), "RetryPolicy.deadline"),
        (lambda: KlingClient(api_key="k", requests_per_second=math.nan), "requests_per_second"),
        (lambda: KlingClient(api_key="k", requests_per_second=1e-300), "requests_per_second"),
        (lambda: KlingClient(api_key="k", max_concurrency=0), "max_concurrency"),
        (lambda: KlingClient(api_key="k", max_downloads=0), "max_downloads"),
        (lambda: KlingClient(api_key="k", burst=0), "burst"),
        (lambda: KlingClient(api_key="k\n"), "api_key"),
        (lambda: KlingClient(api_key="k", api_key_header="x key"), "api_key_header"),
    ],
)
def test_a_bad_setting_is_refused_at_construction_naming_it(build: object, field: str) -> None:
    """NaN, infinities, counts below 1 and control characters are refused when the object is built."""
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("build", "options", "field"),
    [
        (KlingClient, {"api_key": "k", "retry": 3}, "retry"),
        (KlingClient, {"api_key": "k", "timeouts": 30}, "timeouts"),
        (KlingClient, {"api_key": "k", "poll": "fast"}, "poll"),
        (KlingClient, {"api_key": "k", "base_url": 5}, "base_url"),
        (KlingClient, {"api_key": "k", "default_headers": [("a", "b")]}, "default_headers"),
        (KlingClient, {"api_key": "k", "webhooks": "x"}, "webhooks"),
        (KlingClient, {"api_key": "k", "proxy": 5}, "proxy"),
        (PollPolicy, {"initial": "15"}, "PollPolicy.initial"),
        (RetryPolicy, {"attempts": 2.5}, "RetryPolicy.attempts"),
        (Timeouts, {"connect": "10"}, "Timeouts.connect"),
    ],
    ids=lambda value: value if isinstance(value, str) else getattr(value, "__name__", ""),
)
def test_a_setting_of_the_wrong_type_is_refused_at_construction_naming_it(
    build: Callable[..., object], options: dict[str, Any], field: str
) -> None:
    """A string for a number, a number for a policy: refused when built, not at the first request."""
    with pytest.raises(TypeError, match=f"^{re.escape(field)}: "):
        build(**options)


def test_a_proxy_that_is_no_http_url_is_refused_at_construction() -> None:
    # aiohttp refused it at the first request: a submit then looked like a POST that may have left.
    with pytest.raises(ValueError, match=r"^proxy: an http"):
        KlingClient(api_key="k", proxy="not a url")


def test_the_error_for_a_bad_key_never_shows_the_key() -> None:
    """The message for a key with a control character does not contain the key."""
    with pytest.raises(ValueError, match="api_key") as caught:
        KlingClient(api_key="secret-key-123\x00")
    assert "secret-key-123" not in str(caught.value)


_LEAK_CANARY = "sk-do-not-leak-4242"


async def test_the_key_is_not_in_a_traceback_rendered_with_locals() -> None:
    """A failed request's traceback, its cause's included, rendered with every frame's locals (as
    Sentry does), never shows the key."""
    closed_port = "http://127.0.0.1:9"
    async with KlingClient(
        api_key=_LEAK_CANARY, base_url=closed_port, retry=RetryPolicy(attempts=1)
    ) as client:
        with pytest.raises(TransportError) as caught:
            await client.list_tasks()
    rendered = traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    assert _LEAK_CANARY not in "".join(rendered)


# -- the journal never drops an id, leaks a slot, hangs, or ends the batch -----------------------------------


class _LockedAtCreated(Journal):
    """A real SQLite journal whose file another connection locks just as a task id is to be recorded."""

    def created(self, key: str, task_id: str, status: str) -> None:
        blocker = sqlite3.connect(self.path)
        blocker.execute("BEGIN IMMEDIATE")
        self._db.execute("PRAGMA busy_timeout = 20")
        try:
            super().created(key, task_id, status)
        finally:
            blocker.rollback()
            blocker.close()


async def test_a_journal_failing_after_a_created_post_keeps_the_id_and_frees_the_slot(
    sim: Simulator, tmp_path: Path
) -> None:
    """The journal cannot record a created task: the item's outcome carries the task id and the
    JournalError, its in-flight slot comes back (max_in_flight=1, so a leak hangs), the batch ends."""
    with _LockedAtCreated(tmp_path / "run.db") as journal:
        async with _client(sim, max_in_flight=1) as client:
            with anyio.fail_after(30):  # a hang guard
                outcomes = await client.gather(_prompts(3), journal=journal)
    assert len(outcomes) == 3
    assert sorted(o.task_id for o in outcomes if o.task_id) == sorted(sim.tasks)
    for outcome in outcomes:
        assert isinstance(outcome.error, JournalError)
        assert outcome.error.task_id == outcome.task_id


class _CreatedFailsOnItsDisk(SQLiteJournal):
    """A custom store whose record of a task id fails with its own error, not a JournalError."""

    async def created(self, key: str, task_id: str, status: str) -> None:
        raise OSError(28, "No space left on device")


async def test_a_custom_journal_failing_with_its_own_error_keeps_the_created_id_in_the_outcome(
    sim: Simulator, tmp_path: Path
) -> None:
    async with _client(sim) as client:
        outcomes = await client.gather(_prompts(2), journal=_CreatedFailsOnItsDisk(tmp_path / "run.db"))
    assert sorted(o.task_id for o in outcomes if o.task_id) == sorted(sim.tasks)
    for outcome in outcomes:
        assert isinstance(outcome.error, JournalError)
        assert "OSError: [Errno 28] No space left on device" in str(outcome.error)


class _CreatedFailsOnce(Journal):
    """A real journal whose first record of each task id fails (a full disk, freed a moment later)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.recorded: list[tuple[str, str, bool]] = []  # (key, status, recorded) of each created call
        self.second_try = threading.Event()  # set once a record of an id succeeded

    def created(self, key: str, task_id: str, status: str) -> None:
        if not any(call[0] == key for call in self.recorded):
            self.recorded.append((key, status, False))
            raise JournalError("database or disk is full", path=self.path, key=key)
        super().created(key, task_id, status)
        self.recorded.append((key, status, True))
        self.second_try.set()


async def test_a_task_id_the_journal_failed_to_record_is_recorded_once_it_can_be(
    sim: Simulator, tmp_path: Path
) -> None:
    """The first record of each id fails: the items still end with their videos, the journal holds
    every id, and a rerun with it sends nothing."""
    with _CreatedFailsOnce(tmp_path / "run.db") as journal:
        async with _client(sim) as client:
            outcomes = await client.gather(_prompts(3), journal=journal)
    assert all(o.ok for o in outcomes)
    with Journal(tmp_path / "run.db") as reader:
        assert sorted(e.task_id or "" for e in reader.entries()) == sorted(sim.tasks)
        assert {e.state for e in reader.entries()} == {JournalState.COMPLETED}
    async with _client(sim) as client:
        again = await client.gather(_prompts(3), journal=tmp_path / "run.db")
    assert all(o.ok for o in again)
    assert sim.counters.posts == 3


async def test_a_task_id_the_journal_failed_to_record_is_recorded_again_before_the_task_ends(
    tmp_path: Path,
) -> None:
    """The id is recorded with the task's next status, not only at its end: a crash while it runs
    leaves the id for the next run."""
    async with Simulator(time_scale=0.001, generation_seconds=1e6, queue_seconds=2.0) as sim:
        journal = _CreatedFailsOnce(tmp_path / "run.db")
        with journal:
            async with _client(sim) as client, anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(client.gather, _prompts(1), journal=journal))
                assert await anyio.to_thread.run_sync(journal.second_try.wait, 10)  # a hang guard
                [task_id] = sim.tasks
                key, status, _ = journal.recorded[-1]
                entry = journal.lookup(key)
                assert entry is not None
                assert entry.task_id == task_id
                assert status == "IN_PROGRESS"
                sim.finish(task_id)


async def test_a_task_id_the_journal_never_records_still_gets_its_video_and_says_why(
    sim: Simulator, tmp_path: Path
) -> None:
    """A store that keeps failing: each item's video is downloaded all the same, and its outcome carries
    the journal's failure and the task id (a rerun will find the item uncertain)."""
    async with _client(sim) as client:
        outcomes = await client.gather(
            _prompts(2), journal=_CreatedFailsOnItsDisk(tmp_path / "run.db"), download=tmp_path / "videos"
        )
    for outcome in outcomes:
        assert outcome.path is not None
        assert outcome.path.is_file()
        assert outcome.result is not None
        assert outcome.result.status == "COMPLETED"
        assert isinstance(outcome.error, JournalError)
        assert outcome.error.task_id == outcome.task_id


class _CreatedHangs(SQLiteJournal):
    """A store that never answers the record of a task id (a hung network disk)."""

    async def created(self, key: str, task_id: str, status: str) -> None:
        await anyio.sleep_forever()


async def test_a_journal_that_hangs_on_a_created_task_does_not_hide_its_id(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The id is announced before the journal records it, and logged when the client stops the hung
    record: no journal, however stuck, is the only one to know a paid task."""
    async with _client(sim, timeouts=Timeouts(total=0.5)) as client:
        events = client.events()
        with anyio.move_on_after(0.3):
            await client.gather(_prompts(1), journal=_CreatedHangs(tmp_path / "run.db"))
        announced = await _first_submitted(events)
    assert [announced] == list(sim.tasks)
    assert any(announced in record.getMessage() for record in caplog.records if record.levelname == "WARNING")


async def test_a_hung_journal_in_a_client_whose_whole_scope_was_cancelled_is_stopped_at_the_bound(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender shielded for its POST is still cancelled once the closing client's wait runs out: the
    hung record ends, and the id it could not record is logged."""
    sim.queue_fault("latency", method="POST", seconds=0.2)
    streams: list[EventStream] = []

    async def body() -> None:
        async with _client(sim, timeouts=Timeouts(total=0.5)) as client:
            streams.append(client.events())
            await client.gather(_prompts(1), journal=_CreatedHangs(tmp_path / "run.db"))

    with anyio.fail_after(10):  # a hang guard, no speed claim
        await _cancel_by_move_on_after(body)
    announced = [event.task_id async for event in streams[0] if isinstance(event, TaskSubmitted)]
    assert announced == list(sim.tasks)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any(announced[0] in message for message in warnings)


class _StatusWritesFail(Journal):
    """A journal whose status records fail (as on a full disk), while the records that matter succeed."""

    def status(self, key: str, status: str) -> None:
        raise JournalError("disk full", path=self.path, key=key)


async def test_a_journal_failing_during_list_sweeps_never_ends_the_batch(
    sim: Simulator, tmp_path: Path
) -> None:
    """Statuses seen by list sweeps cannot be journaled: every item still ends with its video."""
    with _StatusWritesFail(tmp_path / "run.db") as journal:
        # Every POST at once (a told rate with a burst): the tasks run together, so sweeps watch them.
        async with _client(sim, requests_per_second=1000, burst=SWEEP_MIN_TASKS + 4) as client:
            outcomes = await client.gather(_prompts(SWEEP_MIN_TASKS + 4), journal=journal)
    assert sim.counters.lists > 0  # the statuses did come from sweeps
    assert all(o.ok for o in outcomes)


# -- an account-level refusal stops the batch ---------------------------------------------------------------


async def test_a_refused_key_stops_every_further_post(sim: Simulator) -> None:
    """After a 401 to a POST no further POST is sent; every item ends with an AuthenticationError."""
    concurrency = 2
    async with KlingClient(
        api_key="wrong-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY, max_concurrency=concurrency
    ) as client:
        outcomes = await client.gather(_prompts(30))
    assert len(outcomes) == 30
    assert all(isinstance(o.error, AuthenticationError) for o in outcomes)
    assert sim.counters.posts <= concurrency  # only those already on the wire with the first


# -- the registry -------------------------------------------------------------------------------------------


def test_early_deliveries_past_the_bound_evict_the_oldest() -> None:
    """Webhook deliveries for unknown tasks are kept up to a bound, the oldest going first."""
    registry = TaskRegistry(
        poll=PollPolicy(),
        clock=FakeClock(),
        events=EventHub(),
        slots=Slots(None),
        fetch=_no_fetch,
        safety_net=True,
    )
    for n in range(EARLY_DELIVERIES + 1):
        registry.observe(TaskStatus(task_id=f"t{n}", status="IN_PROGRESS"))
    endpoint = endpoint_for("kling-v3-omni-std")
    first = registry.attach(endpoint, "t0", None, started=None, request=None)
    last = registry.attach(endpoint, f"t{EARLY_DELIVERIES}", None, started=None, request=None)
    assert first.status is None  # evicted
    assert last.status == "IN_PROGRESS"


async def test_early_deliveries_older_than_their_age_limit_are_dropped() -> None:
    """A delivery whose handle never came (its caller was cancelled before the POST's answer) is not
    kept for good: a long-lived client's registry stays small."""
    clock = FakeClock()
    registry = TaskRegistry(
        poll=PollPolicy(), clock=clock, events=EventHub(), slots=Slots(None), fetch=_no_fetch, safety_net=True
    )
    registry.observe(TaskStatus(task_id="old", status="COMPLETED", generated=("https://cdn/x.mp4",)))
    await clock.advance(EARLY_SECONDS + 1)
    registry.observe(TaskStatus(task_id="new", status="IN_PROGRESS"))
    endpoint = endpoint_for("kling-v3-omni-std")
    assert registry.attach(endpoint, "old", None, started=None, request=None).status is None
    assert registry.attach(endpoint, "new", None, started=None, request=None).status == "IN_PROGRESS"


async def _no_fetch(endpoint: Endpoint, task_id: str) -> TaskStatus:
    raise AssertionError("no request is expected")


async def test_a_reader_far_behind_loses_the_oldest_events_not_the_newest() -> None:
    """A subscriber's buffer is bounded; when it is full the oldest unread event goes first."""
    hub = EventHub()
    stream = hub.subscribe()
    total = EVENT_BUFFER + 5
    for n in range(total):
        hub.publish(StatusChanged(task_id=f"t{n}", model="m", status="IN_PROGRESS", previous=None))
    first = await stream.__anext__()
    assert isinstance(first, StatusChanged)
    assert first.task_id == "t5"
    assert hub.dropped == 5
    hub.close()
    assert len([event async for event in stream]) == EVENT_BUFFER - 1
