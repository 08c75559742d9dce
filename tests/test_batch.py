"""map / gather against the simulator: every item ends as an outcome, nothing is paid twice."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from kling_async import (
    InvalidRequestError,
    Job,
    KlingClient,
    NotSubmittedError,
    OmniRequest,
    Outcome,
    PollPolicy,
    RateLimited,
    RequestRetried,
    RetryPolicy,
    SubmitUncertainError,
    TaskFailedError,
    TaskSubmitted,
    TaskTimeoutError,
)
from kling_async._batch import _Occurrences
from kling_async._journal import SQLiteJournal
from kling_async._tracker import SWEEP_MIN_TASKS
from kling_async.testing import Faults, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY, client_side_tasks

pytestmark = pytest.mark.anyio


def prompts(n: int, prefix: str = "clip") -> list[OmniRequest]:
    return [OmniRequest(prompt=f"{prefix} {i}", duration="5") for i in range(n)]


async def test_gather_returns_one_outcome_per_item_in_input_order(
    client: KlingClient, sim: Simulator
) -> None:
    outcomes = await client.gather(prompts(12))
    assert [o.index for o in outcomes] == list(range(12))
    assert all(o.ok for o in outcomes)
    assert sim.counters.posts == 12
    assert {o.task_id for o in outcomes} == set(sim.tasks)


async def test_an_invalid_item_is_its_own_failed_outcome_and_is_never_sent(
    client: KlingClient, sim: Simulator
) -> None:
    items: list[Job | OmniRequest] = [
        *prompts(2),
        Job(OmniRequest(prompt="wrong family"), model="kling-v3-std"),
    ]
    outcomes = await client.gather(items)
    assert [o.ok for o in outcomes] == [True, True, False]
    assert isinstance(outcomes[2].error, InvalidRequestError)
    assert outcomes[2].task_id is None
    assert sim.counters.posts == 2


async def test_a_failed_task_is_a_failed_outcome_carrying_its_task_id(client: KlingClient) -> None:
    outcomes = await client.gather([OmniRequest(prompt="[fail] clip"), *prompts(1)])
    assert isinstance(outcomes[0].error, TaskFailedError)
    assert outcomes[0].task_id == outcomes[0].error.task_id
    assert outcomes[1].ok


async def test_map_yields_in_completion_order(client: KlingClient) -> None:
    items = [OmniRequest(prompt="[slow] first in"), *prompts(3)]
    order = [o.index async for o in client.map(items)]
    assert order[-1] == 0
    assert sorted(order) == [0, 1, 2, 3]


async def test_job_ids_become_outcome_keys_and_bare_requests_get_stable_digests(client: KlingClient) -> None:
    outcomes = await client.gather([Job(prompts(1)[0], id="shot-1"), prompts(1)[0]])
    assert outcomes[0].key == "shot-1"
    again = await client.gather([Job(prompts(1)[0], id="shot-1"), prompts(1)[0]])
    assert outcomes[1].key == again[1].key
    assert outcomes[1].key != "shot-1"


async def test_async_iterables_are_accepted(client: KlingClient) -> None:
    async def source() -> AsyncIterator[OmniRequest]:
        for request in prompts(3):
            yield request

    assert [o.ok for o in await client.gather(source())] == [True, True, True]


def _breaks_after(n: int) -> Iterator[OmniRequest]:
    """An input that yields ``n`` requests, then raises (a bad row, a cursor's failure)."""
    yield from prompts(n)
    raise ValueError("row 4: the source failed")


async def test_an_input_that_raises_ends_the_batch_with_its_error_after_the_outcomes_of_the_items_taken(
    client: KlingClient, sim: Simulator
) -> None:
    outcomes: list[Outcome] = []

    async def read() -> None:
        async with client.map(_breaks_after(3)) as batch:
            async for outcome in batch:
                outcomes.append(outcome)

    with pytest.raises(ValueError, match="row 4: the source failed"):
        await read()
    assert [o.ok for o in outcomes] == [True, True, True]
    assert {o.task_id for o in outcomes} == set(sim.tasks)


async def test_an_input_that_raises_fails_a_journaled_gather_instead_of_returning_short(
    client: KlingClient, sim: Simulator, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="row 4: the source failed"):
        await client.gather(_breaks_after(3), journal=tmp_path / "run.db")
    assert sim.counters.posts == 3


async def test_a_lazy_input_is_pulled_only_as_submissions_go_out(sim: Simulator) -> None:
    pulled = 0

    def endless() -> Iterator[OmniRequest]:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            # Only the first ever finishes, so exactly one slot frees before the loop breaks.
            yield OmniRequest(prompt=f"lazy {i}" if i == 0 else f"[never] lazy {i}")

    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, max_in_flight=4) as client:
        async for _ in client.map(endless()):
            break
    # Four generating, and at most one more taken once the first finished.
    assert pulled <= 5


async def test_breaking_out_of_map_stops_everything_and_created_ids_were_reported(sim: Simulator) -> None:
    submitted: list[str] = []
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, max_in_flight=5) as client:

        async def listen() -> None:
            async for event in client.events():
                if isinstance(event, TaskSubmitted):
                    submitted.append(event.task_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await anyio.wait_all_tasks_blocked()
            async for _ in client.map(prompts(50)):
                break
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        posts_at_break = sim.counters.posts
        await anyio.sleep(0.1)
        assert sim.counters.posts == posts_at_break  # nothing keeps submitting
    assert sorted(submitted) == sorted(sim.tasks)


async def _read_in_background(client: KlingClient, count: int, read: list[BaseException]) -> None:
    """Read a batch of ``count`` prompts to its end; the RuntimeError it raises goes into ``read``."""
    try:
        async for _ in client.map(prompts(count)):
            pass
    except RuntimeError as exc:
        read.append(exc)


async def test_a_background_batch_whose_client_closes_raises_to_its_reader_instead_of_ending(
    tmp_path: Path,
) -> None:
    """``async for`` over a map() the client runs: the client closing mid-batch is an error for the reader,
    not an end that looks like the batch's."""
    async with Simulator(time_scale=0.001, generation_seconds=1e6) as sim:  # no task finishes
        client = KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL)
        await client.__aenter__()
        read: list[BaseException] = []
        # A task of its own, as a web backend's background job: the client is closed by its owner.
        reading = asyncio.create_task(_read_in_background(client, 3, read))
        await anyio.wait_all_tasks_blocked()  # every task created, none finishing
        await client.aclose()
        await reading
    [error] = read
    assert str(error).startswith("the KlingClient closed while this batch was running")


async def test_a_background_batch_checking_statuses_while_its_client_drains_a_post_hears_the_close(
    tmp_path: Path,
) -> None:
    """The client's close waits for a POST on the wire; the batch's status checks in that wait are not
    the reader's error (they said the handles' client was closed, which hid what happened)."""
    async with Simulator(time_scale=0.001, generation_seconds=1e6) as sim:  # no task finishes
        sim.queue_fault("latency", method="POST", seconds=0.5)  # the first POST hangs while the client closes
        client = KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL)
        await client.__aenter__()
        read: list[BaseException] = []
        three_created = anyio.Event()

        async def count_created() -> None:
            created = 0
            async for event in client.events():
                created += isinstance(event, TaskSubmitted)
                if created == 3:
                    three_created.set()
                    return

        counting = asyncio.create_task(count_created())
        await anyio.wait_all_tasks_blocked()  # listening before the first POST
        reading = asyncio.create_task(_read_in_background(client, 4, read))
        await three_created.wait()
        await counting
        gets = sim.counters.status_gets
        await client.aclose()  # waits for the hanging POST, checks due all along
        await reading
        checked_while_closing = sim.counters.status_gets - gets
    [error] = read
    assert str(error).startswith("the KlingClient closed while this batch was running")
    assert checked_while_closing > 0


async def test_a_batch_stopped_with_tasks_running_names_each_in_a_warning_without_a_journal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Their items get no outcome: without a journal, the log is where their ids are."""
    async with (
        Simulator(time_scale=0.001, generation_seconds=1e6) as sim,  # no task finishes
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as client,
    ):
        with anyio.move_on_after(0.5):
            await client.gather(prompts(3))
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("the batch stopped with 3 tasks still running")
    assert all(task_id in warning for task_id in sim.tasks)


async def test_cancelling_a_gather_leaves_no_task_running(client: KlingClient) -> None:
    """Once the POSTs that were on the wire are answered (they belong to the client), nothing of a
    cancelled gather runs on."""
    before = client_side_tasks()
    with anyio.move_on_after(0.03):
        await client.gather(prompts(30))
    await client._creator.drain(10.0)
    await anyio.wait_all_tasks_blocked()
    assert client_side_tasks() == before


async def test_150_items_survive_15_percent_transient_errors_without_a_duplicate_post() -> None:
    faults = Faults(get_error_rate=0.15, post_error_rate=0.15, post_error_statuses=(503,))
    # Eight tries, with no deadline a loaded machine can reach: what is tested is the tries, not the
    # clock. With FAST_RETRY's 10 s, a CI run once ended an early item with its 503 (2026-12-02).
    retry = dataclasses.replace(FAST_RETRY, deadline=600.0)
    async with (
        Simulator(time_scale=0.001, faults=faults, seed=7) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=retry) as client,
    ):
        outcomes = await client.gather(prompts(150))
    assert [o for o in outcomes if not o.ok] == []
    assert sim.counters.tasks_created == 150
    assert sim.counters.duplicate_payloads() == []
    assert sim.counters.responses_by_status[503] > 0


async def test_late_items_of_a_rate_bound_batch_keep_their_retries() -> None:
    # At 60/s a try queues behind the batch's other requests for about the retries' 0.5 s deadline: a
    # deadline counted from the call, or a retry queued behind the first tries, gives up on items that
    # one more try would carry (both did, each on its own).
    faults = Faults(post_error_rate=0.15, post_error_statuses=(503,))
    retry = RetryPolicy(attempts=8, initial=0.001, maximum=0.005, deadline=0.5)
    async with (
        Simulator(time_scale=0.001, faults=faults, seed=7) as sim,
        KlingClient(
            api_key="sim-key",
            base_url=sim.url,
            poll=FAST_POLL,
            retry=retry,
            requests_per_second=60,
            burst=5,
        ) as client,
    ):
        outcomes = await client.gather(prompts(120))
    assert [o for o in outcomes if not o.ok] == []
    assert sim.counters.tasks_created == 120
    assert sim.counters.responses_by_status[503] > 0


async def test_uncertain_posts_are_reported_per_item_and_never_resent() -> None:
    faults = Faults(post_500_after_create_rate=0.2, drop_after_create_rate=0.1)
    async with (
        Simulator(time_scale=0.001, faults=faults, seed=3) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        outcomes = await client.gather(prompts(60))
    uncertain = [o for o in outcomes if isinstance(o.error, SubmitUncertainError)]
    assert uncertain
    assert len(uncertain) + sum(o.ok for o in outcomes) == 60
    assert sim.counters.posts == 60
    assert sim.counters.duplicate_payloads() == []


async def test_a_429_storm_without_retry_after_is_survived() -> None:
    async with (
        Simulator(time_scale=0.001, rate_limit=50, retry_after=False) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        outcomes = await client.gather(prompts(40))
    assert all(o.ok for o in outcomes)
    assert sim.counters.rate_limited > 0
    assert sim.counters.duplicate_payloads() == []


async def test_max_concurrency_holds_on_the_wire() -> None:
    async with (
        Simulator(time_scale=0.001, faults=Faults(latency=0.01)) as sim,
        # Told a fast rate with a burst, so that the pace never holds requests back: the cap does.
        KlingClient(
            api_key="sim-key",
            base_url=sim.url,
            poll=FAST_POLL,
            max_concurrency=3,
            requests_per_second=1000,
            burst=20,
        ) as client,
    ):
        await client.gather(prompts(20))
    assert sim.counters.max_concurrent_requests == 3


async def test_max_in_flight_holds(sim: Simulator) -> None:
    generating: set[str] = set()
    most = 0
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, max_in_flight=4) as client:

        async def listen() -> None:
            nonlocal most
            async for event in client.events():
                if isinstance(event, TaskSubmitted):
                    generating.add(event.task_id)
                    most = max(most, len(generating))
                elif event.__class__.__name__ == "StatusChanged" and event.status == "COMPLETED":  # type: ignore[union-attr]
                    generating.discard(event.task_id)  # type: ignore[union-attr]

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await anyio.wait_all_tasks_blocked()
            await client.gather(prompts(20))
            tg.cancel_scope.cancel()
    assert most == 4


async def test_list_sweeping_spends_fewer_status_requests_than_polling_each_task() -> None:
    # A coarser time scale than elsewhere, so that scheduling noise on a loaded machine stays small
    # against the sweep interval.
    scale = 0.01
    poll = PollPolicy(initial=15 * scale, maximum=30 * scale, timeout=30.0)
    n = SWEEP_MIN_TASKS * 5
    async with (
        Simulator(time_scale=scale, generation_seconds=60.0) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=poll) as client,
    ):
        outcomes = await client.gather(prompts(n))
    assert all(o.ok for o in outcomes)
    counters = sim.counters
    assert counters.lists > 0
    # Polling each task on this schedule costs 3 requests a task (checks at 15, 37.5 and 67.5 s).
    assert (counters.status_gets + counters.lists) / n <= 2.0, (counters.status_gets, counters.lists)


async def test_a_task_past_its_deadline_is_a_timeout_outcome_with_its_last_status(
    client: KlingClient,
) -> None:
    outcomes = await client.gather([OmniRequest(prompt="[never] clip"), *prompts(1)], timeout=0.3)
    error = outcomes[0].error
    assert isinstance(error, TaskTimeoutError)
    assert error.task_id == outcomes[0].task_id
    assert error.last_status == "IN_PROGRESS"
    assert outcomes[1].ok


async def test_download_saves_each_video_as_its_result_arrives(client: KlingClient, tmp_path: Path) -> None:
    outcomes = await client.gather(
        [Job(r, id=f"clip-{i}") for i, r in enumerate(prompts(3))], download=tmp_path
    )
    paths = [o.path for o in outcomes]
    assert paths == [tmp_path / f"clip-{i}.mp4" for i in range(3)]
    assert all(p is not None and p.read_bytes()[4:8] == b"ftyp" for p in paths)


async def test_a_batch_deadline_ends_running_tasks_as_timeouts_and_takes_no_more_items(
    client: KlingClient, sim: Simulator
) -> None:
    pulled = 0

    def source() -> Iterator[OmniRequest]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield OmniRequest(prompt=f"[never] clip {i}")

    with anyio.fail_after(5):
        outcomes = await client.gather(source(), batch_timeout=0.3)
    assert pulled < 1000
    assert len(outcomes) == pulled
    assert all(isinstance(o.error, TaskTimeoutError) for o in outcomes)
    assert {o.task_id for o in outcomes} == set(sim.tasks)


# -- keys of identical requests in a long input ------------------------------------------------------------


def _digest(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def test_the_occurrence_counts_of_an_endless_input_stay_bounded() -> None:
    """However many distinct requests an input brings, the batch keeps counts for at most one generation
    of them (memory stays flat for an endless bare input)."""
    occurrences = _Occurrences(generation=64)
    for n in range(10 * 64):
        occurrences.next(_digest(n))
        assert len(occurrences) <= 64


def test_a_request_repeated_after_its_generation_ended_gets_a_number_no_earlier_item_had() -> None:
    """A request seen again once its count was dropped is numbered by its new generation: its key can
    never be the key of the earlier identical item."""
    occurrences = _Occurrences(generation=4)
    first = [occurrences.next(_digest(0)), occurrences.next(_digest(0))]
    for n in range(1, 8):
        occurrences.next(_digest(n))
    again = [occurrences.next(_digest(0)), occurrences.next(_digest(0))]
    assert first == ["0", "1"]
    assert len(set(first + again)) == 4


def test_a_request_new_to_the_input_keeps_its_plain_number_in_any_generation() -> None:
    """A content met for the first time is number 0 (and its repeats 1, 2, ...), however many distinct
    requests came before it: its key does not depend on its position in the input."""
    occurrences = _Occurrences(generation=4)
    for n in range(1, 100):
        occurrences.next(_digest(n))
    assert [occurrences.next(_digest(0)) for _ in range(3)] == ["0", "1", "2"]


class _Stopped:
    """A batch told to stop submitting as its first task is created: what was sent by then and after."""

    def __init__(self) -> None:
        self.pulled = 0
        self.pulled_at_stop = 0
        self.posts_at_stop = 0
        self.outcomes: list[Outcome] = []

    def items(self, n: int) -> Iterator[OmniRequest]:
        for request in prompts(n):
            self.pulled += 1
            yield request

    async def run(self, client: KlingClient, sim: Simulator, n: int, **options: object) -> None:
        async with anyio.create_task_group() as tg:
            batch = client.map(self.items(n), **options)  # type: ignore[arg-type]

            async def stop_at_the_first_task() -> None:
                async for event in client.events():
                    if isinstance(event, TaskSubmitted):
                        batch.stop_submitting()
                        self.pulled_at_stop, self.posts_at_stop = self.pulled, sim.counters.posts
                        return

            tg.start_soon(stop_at_the_first_task)
            await anyio.wait_all_tasks_blocked()
            async with batch as outcomes:
                self.outcomes = [outcome async for outcome in outcomes]


def _paced_client(sim: Simulator) -> KlingClient:
    # Told 4 requests a second without a burst: the POSTs after the first wait for their turn (0.25 s
    # each), so the ones its items took are waiting when the first task's id comes back.
    return KlingClient(
        api_key="sim-key",
        base_url=sim.url,
        poll=FAST_POLL,
        retry=FAST_RETRY,
        requests_per_second=4,
        burst=1,
        max_concurrency=6,
    )


async def test_stop_submitting_sends_no_post_after_it(sim: Simulator) -> None:
    stopped = _Stopped()
    async with _paced_client(sim) as client:
        await stopped.run(client, sim, 30)
    assert stopped.posts_at_stop == 1
    assert sim.counters.posts == 1


async def test_stop_submitting_ends_the_items_waiting_for_their_turn_unsent(sim: Simulator) -> None:
    stopped = _Stopped()
    async with _paced_client(sim) as client:
        await stopped.run(client, sim, 30)
    unsent = [o for o in stopped.outcomes if isinstance(o.error, NotSubmittedError)]
    assert len(unsent) == len(stopped.outcomes) - 1 >= 4
    assert all(o.task_id is None for o in unsent)
    assert "stopped submitting" in str(unsent[0].error)


async def test_stop_submitting_follows_the_tasks_already_created_to_their_outcomes(sim: Simulator) -> None:
    stopped = _Stopped()
    async with _paced_client(sim) as client:
        await stopped.run(client, sim, 30)
    created = [o for o in stopped.outcomes if o.task_id is not None]
    assert [o.ok for o in created] == [True]
    assert {o.task_id for o in created} == set(sim.tasks)


async def test_stop_submitting_takes_no_more_items_from_the_input(sim: Simulator) -> None:
    stopped = _Stopped()
    async with _paced_client(sim) as client:
        await stopped.run(client, sim, 30)
    assert stopped.pulled == stopped.pulled_at_stop == len(stopped.outcomes) < 30


@pytest.mark.parametrize("key", [7, "", ("a", "b")], ids=repr)
def test_a_job_whose_id_is_not_a_non_empty_string_is_refused_when_made(key: object) -> None:
    # Its key names a journal row and a file: a number once failed at the first video's save, after
    # every task of the batch was paid for.
    with pytest.raises(InvalidRequestError, match=r"^id: a non-empty string"):
        Job(OmniRequest(prompt="a fox"), id=key)  # type: ignore[arg-type]


async def test_gather_over_an_input_that_fails_names_the_tasks_it_created_on_the_error(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Iterator[OmniRequest]:
        yield from prompts(3)
        raise ValueError("row 4 is broken")

    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as client:
        with pytest.raises(ValueError, match="row 4") as caught:
            await client.gather(broken())
    (note,) = caught.value.__notes__
    assert sim.tasks
    assert all(task_id in note for task_id in sim.tasks)
    assert all(task_id in caplog.text for task_id in sim.tasks)


async def test_a_small_batch_on_a_wide_wire_starts_tasks_for_its_items_not_for_the_wire(
    sim: Simulator,
) -> None:
    # A submitter per place on the wire, started up front, made a one-item gather on a wire of 300,000
    # take 15 s and 657 MB.
    loop = asyncio.get_running_loop()
    created = 0
    default_factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        nonlocal created
        created += 1
        if default_factory is not None:
            return default_factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async with KlingClient(
        api_key="sim-key", base_url=sim.url, poll=FAST_POLL, max_concurrency=10_000
    ) as client:
        loop.set_task_factory(counting)
        try:
            outcomes = await client.gather(prompts(2))
        finally:
            loop.set_task_factory(default_factory)
    assert [outcome.ok for outcome in outcomes] == [True, True]
    assert created < 100


PATIENT_RETRY = RetryPolicy(attempts=3, initial=0.001, maximum=0.02, deadline=60.0)


async def test_stop_submitting_ends_the_items_held_by_a_retry_after_pause_at_once() -> None:
    # The server lets one request through every 20 s, and the list below is it: the batch's first POST
    # gets a 429 whose Retry-After pauses the whole client, and every item waits for the pause to end.
    async with (
        Simulator(time_scale=0.001, rate_limit=0.05, burst=1) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=PATIENT_RETRY) as client,
    ):
        await client.list_tasks()
        async with client.map(prompts(4)) as outcomes:
            async for event in client.events():
                if isinstance(event, RateLimited):
                    break
            outcomes.stop_submitting()
            with anyio.fail_after(5):  # the pause is 20 s
                stopped = [outcome async for outcome in outcomes]
    assert [type(outcome.error) for outcome in stopped] == [NotSubmittedError] * 4
    assert sim.counters.tasks_created == 0


async def test_stop_submitting_ends_the_items_waiting_for_a_distant_token_at_once() -> None:
    async with (
        Simulator(time_scale=0.001) as sim,
        KlingClient(
            api_key="sim-key", base_url=sim.url, poll=FAST_POLL, requests_per_second=0.05, burst=1
        ) as client,
    ):
        await client.list_tasks()  # the bucket's one token: the next comes in 20 s
        async with client.map(prompts(3)) as outcomes:
            await anyio.wait_all_tasks_blocked()
            outcomes.stop_submitting()
            with anyio.fail_after(5):
                stopped = [outcome async for outcome in outcomes]
    assert [type(outcome.error) for outcome in stopped] == [NotSubmittedError] * 3
    assert sim.counters.posts == 0


async def test_an_item_stopped_between_its_tries_says_its_last_try_created_nothing() -> None:
    faults = Faults(post_error_rate=1.0, post_error_statuses=(503,))
    retry = RetryPolicy(attempts=50, initial=0.05, maximum=0.05, deadline=30.0)
    async with (
        Simulator(time_scale=0.001, faults=faults) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=retry) as client,
        client.map(prompts(1)) as outcomes,
    ):
        async for event in client.events():  # subscribed before the batch's first step
            if isinstance(event, RequestRetried):
                break
        outcomes.stop_submitting()
        [outcome] = [outcome async for outcome in outcomes]
    assert isinstance(outcome.error, NotSubmittedError)
    assert "created nothing" in str(outcome.error)
    assert "503" in str(outcome.error)


async def test_items_a_stopped_batch_did_not_send_are_sent_by_a_rerun_with_its_journal(
    sim: Simulator, tmp_path: Path
) -> None:
    stopped = _Stopped()
    journal = tmp_path / "run.db"
    async with _paced_client(sim) as client:
        await stopped.run(client, sim, 30, journal=journal)
        again = await client.gather(prompts(stopped.pulled), journal=journal)
    assert all(o.ok for o in again)
    assert sim.counters.posts == stopped.pulled
    assert sim.counters.duplicate_payloads() == []


async def test_stop_submitting_ends_a_wait_for_an_async_inputs_next_item(sim: Simulator) -> None:
    # A queue-fed input: two items, then nothing for as long as its producer stays open.
    send, receive = anyio.create_memory_object_stream[OmniRequest](10)
    for request in prompts(2):
        send.send_nowait(request)

    async def items() -> AsyncIterator[OmniRequest]:
        async for request in receive:
            yield request

    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as client, send, receive:
        with anyio.fail_after(10):
            async with client.map(items()) as outcomes:
                seen = [await outcomes.__anext__(), await outcomes.__anext__()]
                outcomes.stop_submitting()
                seen += [outcome async for outcome in outcomes]
    assert [o.ok for o in seen] == [True, True]


async def test_stop_submitting_takes_no_more_items_from_an_async_input(sim: Simulator) -> None:
    # Submitters queued for the input's lock when the stop comes must not take an item after it.
    pulled = 0

    async def items() -> AsyncIterator[OmniRequest]:
        nonlocal pulled
        for request in prompts(40):
            await anyio.sleep(0.02)
            pulled += 1
            yield request

    async with (
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, max_concurrency=8) as client,
        client.map(items()) as outcomes,
    ):
        async for event in client.events():
            if isinstance(event, TaskSubmitted):
                break
        outcomes.stop_submitting()
        at_stop = pulled
        [outcome async for outcome in outcomes]
    assert pulled == at_stop < 40


class _SlowSending(SQLiteJournal):
    """A journal whose ``submitting`` record takes 0.3 s: a PostgreSQL round trip far away, a busy disk."""

    async def submitting(self, key: str, model: str, request: bytes) -> None:
        await anyio.sleep(0.3)
        await super().submitting(key, model, request)


async def _stopped_while_recording(sim: Simulator, journal: Path) -> list[Outcome]:
    """A batch told to stop while the journal writes its first POSTs' ``submitting`` records."""
    async with (
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, max_concurrency=4) as client,
        client.map(prompts(4), journal=_SlowSending(journal)) as outcomes,
    ):
        await anyio.sleep(0.1)
        outcomes.stop_submitting()
        return [outcome async for outcome in outcomes]


async def test_a_post_whose_sending_record_is_being_written_when_the_batch_stops_is_not_sent(
    sim: Simulator, tmp_path: Path
) -> None:
    outcomes = await _stopped_while_recording(sim, tmp_path / "run.db")
    assert {type(o.error) for o in outcomes} == {NotSubmittedError}
    assert sim.counters.posts == 0


async def test_a_post_stopped_after_its_sending_record_is_sent_by_a_rerun_not_reported_uncertain(
    sim: Simulator, tmp_path: Path
) -> None:
    await _stopped_while_recording(sim, tmp_path / "run.db")
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as client:
        again = await client.gather(prompts(4), journal=tmp_path / "run.db")
    assert all(o.ok for o in again)
    assert sim.counters.posts == 4
