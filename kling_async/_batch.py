"""Bulk generation: ``map`` and ``gather`` over any number of jobs.

Shape of a batch run:

* a few **submitters** pull jobs from the (possibly lazy, possibly endless) input one at a time, so the
  input is never materialised; each POST waits for the client's limiter and in-flight cap;
* every created task goes to one **tracker**, which checks statuses from a heap of due times instead of
  a coroutine per task (10,000 waiting tasks cost a heap entry each), and sweeps a family's list endpoint
  when many of its tasks are tracked, fetching the detail only of tasks that the sweep shows COMPLETED;
* each finished item becomes an ``Outcome``; one item's failure is its own outcome, never the batch's.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._endpoints import Endpoint, resolve
from ._errors import KlingError, NotFoundError, TaskTimeoutError
from ._limits import Lane
from ._models import (
    COMPLETED,
    Request,
    TaskResult,
    TaskStatus,
    decode_task_list,
    encode_request,
)
from ._polling import TaskHandle

if TYPE_CHECKING:
    from ._client import KlingClient

__all__ = ["Job", "Outcome", "run_batch"]

log = logging.getLogger("kling_async")

# A family is swept through its list endpoint once this many of its tasks are tracked.
SWEEP_MIN_TASKS = 8
_PAGE_SIZE = 100
# Extra pages read past the number needed to cover the tracked tasks (other tasks of the account
# are listed too, newest first).
_EXTRA_PAGES = 2
_SWEEPS_PER_GENERATION = 15
# A task seen by a sweep within this many sweep intervals needs no status request of its own.
_SWEEP_COVERS = 3


@dataclass(frozen=True, slots=True)
class Job:
    """One batch item: a request, a stable key and the model (create endpoint) to send it to.

    Args:
        request: the request.
        id: the item's key, stable across runs (used by the journal and for file names). Default: a
            digest of the model, the request and the item's position.
        model: the create endpoint; default: the standard model of the request's family.
    """

    request: Request
    id: str | None = field(default=None, kw_only=True)
    model: str | None = field(default=None, kw_only=True)


@dataclass(slots=True)
class Outcome:
    """What became of one batch item.

    Attributes:
        index: the item's position in the input.
        key: the item's stable key (``Job.id`` or a derived digest).
        ok: whether it finished with a result.
        result: the ``TaskResult`` when ``ok``.
        error: the ``KlingError`` when not ``ok``.
        task_id: the created task's id, whenever one was created (also on most failures).
        path: the downloaded file, when the batch was asked to download.
    """

    index: int
    key: str
    result: TaskResult | None = None
    error: KlingError | None = None
    task_id: str | None = None
    path: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether the item finished with a result."""
        return self.error is None and self.result is not None


def job_key(job: Job, model: str, index: int) -> str:
    """The item's stable key: its id, else a digest of model, request and position."""
    if job.id is not None:
        return job.id
    digest = hashlib.sha256(
        model.encode() + b"\0" + encode_request(job.request) + b"\0" + str(index).encode()
    )
    return digest.hexdigest()[:20]


def as_job(item: Job | Request) -> Job:
    """A bare request is a Job with the default model and a derived key."""
    return item if isinstance(item, Job) else Job(item)


async def _iterate(items: Iterable[Job | Request] | AsyncIterable[Job | Request]) -> AsyncIterator[Job]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield as_job(item)
    else:
        for item in items:
            yield as_job(item)


@dataclass(slots=True)
class _Item:
    index: int
    key: str
    handle: TaskHandle
    deadline: float | None
    checks: int = 0
    swept_at: float = float("-inf")
    # Only the heap entry carrying the current token is live; rescheduling makes older ones stale.
    token: int = 0
    # A sweep showed the task COMPLETED: its detail is fetched at once, and only once.
    urgent: bool = False


class _Tracker:
    """Checks the status of many tasks from one heap of due times, sweeping list endpoints when it pays."""

    def __init__(
        self, client: KlingClient, tg: TaskGroup, finish: Callable[[_Item, KlingError | None], None]
    ):
        self._client = client
        self._tg = tg
        self._finish = finish
        self._heap: list[tuple[float, int, int, _Item]] = []
        self._seq = itertools.count()
        self._items: dict[str, _Item] = {}
        self._by_family: dict[str, dict[str, _Item]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._wake = anyio.Event()
        self._checks = anyio.Semaphore(max(4, client._limiter.max_concurrency * 2))
        self._last_sweep: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, index: int, key: str, handle: TaskHandle, deadline: float | None) -> None:
        item = _Item(index, key, handle, deadline)
        if handle.done:
            self._finish(item, None)
            return
        self._items[handle.task_id] = item
        family = handle._endpoint.family_path
        self._by_family.setdefault(family, {})[handle.task_id] = item
        self._endpoints.setdefault(family, handle._endpoint)
        handle._on_done = self._done
        self._schedule(item)

    def _schedule(self, item: _Item) -> None:
        clock = self._client._clock
        now = clock.now()
        started = item.handle._started if item.handle._started is not None else now
        delay = item.handle._next_delay(self._client._poll, now - started, item.checks)
        due = now + delay
        if item.deadline is not None:
            due = min(due, item.deadline)
        self._push(item, due)

    def _push(self, item: _Item, due: float) -> None:
        item.token += 1
        heapq.heappush(self._heap, (due, next(self._seq), item.token, item))
        self._wake.set()

    def _done(self, handle: TaskHandle) -> None:
        item = self._items.pop(handle.task_id, None)
        if item is None:
            return
        self._by_family[handle._endpoint.family_path].pop(handle.task_id, None)
        handle._on_done = None
        try:
            handle.result()
        except KlingError as exc:
            self._finish(item, exc)
        else:
            self._finish(item, None)

    def _drop(self, item: _Item, error: KlingError) -> None:
        task_id = item.handle.task_id
        if self._items.pop(task_id, None) is None:
            return
        self._by_family[item.handle._endpoint.family_path].pop(task_id, None)
        item.handle._on_done = None
        self._finish(item, error)

    async def run(self) -> None:
        """Forever: start the checks that are due, sweep families, sleep until the next due time."""
        clock = self._client._clock
        while True:
            now = clock.now()
            self._sweep_due(now)
            while self._heap and self._heap[0][0] <= now:
                _, _, token, item = heapq.heappop(self._heap)
                if token != item.token or item.handle.task_id not in self._items:
                    continue
                if item.deadline is not None and now >= item.deadline:
                    self._drop(item, self._timeout(item))
                    continue
                family = item.handle._endpoint.family_path
                if not item.urgent and item.swept_at > now - _SWEEP_COVERS * self._sweep_interval(family):
                    item.checks += 1
                    self._schedule(item)
                    continue
                await self._checks.acquire()
                self._tg.start_soon(self._check, item)
            self._wake = anyio.Event()
            wait = self._heap[0][0] - clock.now() if self._heap else float("inf")
            wait = min(wait, self._next_sweep_in(clock.now()))
            with anyio.move_on_after(max(wait, 0.0)):
                await self._wake.wait()

    def _timeout(self, item: _Item) -> TaskTimeoutError:
        handle = item.handle
        return TaskTimeoutError(
            handle.task_id, last_status=handle.status, timeout=self._client._poll.timeout, model=handle.model
        )

    async def _check(self, item: _Item) -> None:
        try:
            await item.handle.refresh()
        except NotFoundError as exc:
            self._drop(item, exc)
        except KlingError as exc:
            # The task still exists server-side: keep checking until its deadline.
            log.warning("status check for %s failed, will check again: %s", item.handle.task_id, exc)
        finally:
            self._checks.release()
            item.urgent = False
        if item.handle.task_id in self._items:
            item.checks += 1
            self._schedule(item)

    # -- list sweeping -------------------------------------------------------------------------------------

    def _sweep_interval(self, family: str) -> float:
        """Time between sweeps: a fifteenth of a typical generation (a sixth of the longest poll wait
        while nothing is known), so sweeping costs ~0.15 list requests per task and notices a finished
        task within a few percent of its generation time."""
        if self._client._safety_net:
            return self._client._poll.safety_interval
        typical = self._client._timings.typical(family)
        if typical is None:
            return self._client._poll.maximum / 6
        return min(self._client._poll.maximum, typical / _SWEEPS_PER_GENERATION)

    def _next_sweep_in(self, now: float) -> float:
        waits = [
            self._last_sweep.get(family, float("-inf")) + self._sweep_interval(family) - now
            for family, items in self._by_family.items()
            if len(items) >= SWEEP_MIN_TASKS
        ]
        return max(0.0, min(waits)) if waits else float("inf")

    def _sweep_due(self, now: float) -> None:
        for family, items in self._by_family.items():
            if len(items) < SWEEP_MIN_TASKS:
                continue
            if now - self._last_sweep.get(family, float("-inf")) < self._sweep_interval(family):
                continue
            self._last_sweep[family] = now
            self._tg.start_soon(self._sweep, family)

    async def _sweep(self, family: str) -> None:
        """List the family's tasks page by page until every tracked one was seen (or a page bound)."""
        tracked = self._by_family.get(family, {})
        pages = (len(tracked) + _PAGE_SIZE - 1) // _PAGE_SIZE + _EXTRA_PAGES
        unseen = set(tracked)
        now = self._client._clock.now()
        for page in range(1, pages + 1):
            try:
                body = await self._client._request(
                    "GET",
                    family,
                    lane=Lane.STATUS,
                    params={"page": str(page), "page_size": str(_PAGE_SIZE)},
                )
                listed = decode_task_list(body)
            except KlingError as exc:
                log.warning("list sweep of %s failed; per-task checks go on: %s", family, exc)
                return
            for summary in listed:
                item = tracked.get(summary.task_id)
                if item is None:
                    continue
                unseen.discard(summary.task_id)
                item.swept_at = now
                if summary.status == COMPLETED:
                    # The list has no URLs: fetch the detail now (once, however many sweeps see it).
                    if not item.urgent:
                        item.urgent = True
                        self._push(item, now)
                else:
                    # Failures need no detail; other statuses only update what we show.
                    item.handle._observe(TaskStatus(task_id=summary.task_id, status=summary.status))
            if not unseen or len(listed) < _PAGE_SIZE:
                return


async def run_batch(
    client: KlingClient,
    items: Iterable[Job | Request] | AsyncIterable[Job | Request],
    send: MemoryObjectSendStream[Outcome],
    *,
    submitters: int,
    timeout: float | None,
    download: Path | None,
) -> None:
    """Run every item to an outcome and send each outcome as soon as it is known."""
    pending = 0
    submitting = True
    drained = anyio.Event()

    async def deliver(outcome: Outcome) -> None:
        nonlocal pending
        await send.send(outcome)
        pending -= 1
        if not submitting and pending == 0:
            drained.set()

    async with send, anyio.create_task_group() as tg:

        async def complete(item: _Item, error: KlingError | None) -> None:
            handle = item.handle
            outcome = Outcome(index=item.index, key=item.key, task_id=handle.task_id, error=error)
            if error is None:
                outcome.result = handle.result()
                if download is not None:
                    try:
                        outcome.path = await client.download(outcome.result, download, name=item.key)
                    except KlingError as exc:
                        outcome.error = exc
            await deliver(outcome)

        def finish(item: _Item, error: KlingError | None) -> None:
            client._release_slot(item.handle.task_id)
            tg.start_soon(complete, item, error)

        tracker = _Tracker(client, tg, finish)
        tg.start_soon(tracker.run)
        source = _iterate(items)
        counter = itertools.count()
        lock = anyio.Lock()

        async def next_job() -> tuple[int, Job] | None:
            nonlocal pending
            async with lock:
                job = await anext(source, None)
                if job is None:
                    return None
                pending += 1
                return next(counter), job

        async def submitter() -> None:
            while (pulled := await next_job()) is not None:
                index, job = pulled
                key = job.id or f"item-{index}"
                try:
                    endpoint = resolve(job.request, job.model)
                    key = job_key(job, endpoint.model, index)
                    handle = await client._submit(job.request, model=endpoint.model, key=key)
                except KlingError as exc:
                    await deliver(Outcome(index=index, key=key, error=exc))
                    continue
                limit = timeout if timeout is not None else client._poll.timeout
                deadline = client._clock.now() + limit if limit is not None else None
                tracker.add(index, key, handle, deadline)

        async with anyio.create_task_group() as submit_group:
            for _ in range(submitters):
                submit_group.start_soon(submitter)
        submitting = False
        if pending == 0:
            drained.set()
        await drained.wait()
        tg.cancel_scope.cancel()


def encode_outcome(outcome: Outcome) -> bytes:
    """JSON of an outcome (for reports and the CLI's --json)."""
    error = None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}"
    return msgspec.json.encode(
        {
            "index": outcome.index,
            "id": outcome.key,
            "task_id": outcome.task_id,
            "status": outcome.result.status if outcome.result else "ERROR",
            "path": str(outcome.path) if outcome.path else None,
            "error": error,
        }
    )
