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

import contextlib
import hashlib
import heapq
import itertools
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._endpoints import Endpoint, resolve
from ._errors import (
    InvalidRequestError,
    JournalError,
    KlingError,
    NotFoundError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
)
from ._journal import Journal, JournalEntry, JournalState
from ._models import (
    COMPLETED,
    CREATED,
    FAILED,
    Request,
    TaskResult,
    TaskStatus,
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
_DEEPER_PAGE_MIN = 10
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
    added: float
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

    def add(
        self, index: int, key: str, handle: TaskHandle, deadline: float | None, *, check_now: bool
    ) -> None:
        item = _Item(index, key, handle, deadline, added=self._client._clock.now())
        if handle.done:
            self._done_item(item)
            return
        self._items[handle.task_id] = item
        family = handle._endpoint.family_path
        self._by_family.setdefault(family, {})[handle.task_id] = item
        self._endpoints.setdefault(family, handle._endpoint)
        handle._on_done = self._done
        if check_now:
            self._push(item, self._client._clock.now())
        else:
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

    def _forget(self, task_id: str) -> _Item | None:
        """Stop tracking a task; its item, or None when it was not tracked (any more)."""
        item = self._items.pop(task_id, None)
        if item is not None:
            self._by_family[item.handle._endpoint.family_path].pop(task_id, None)
            item.handle._on_done = None
        return item

    def _done(self, handle: TaskHandle) -> None:
        item = self._forget(handle.task_id)
        if item is not None:
            self._done_item(item)

    def _done_item(self, item: _Item) -> None:
        try:
            item.handle.result()
        except KlingError as exc:
            self._finish(item, exc)
        else:
            self._finish(item, None)

    def _drop(self, item: _Item, error: KlingError) -> None:
        if self._forget(item.handle.task_id) is not None:
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
        waited = item.deadline - item.added if item.deadline is not None else None
        return TaskTimeoutError(handle.task_id, last_status=handle.status, timeout=waited, model=handle.model)

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
        model = self._endpoints[family].model
        for page in range(1, pages + 1):
            try:
                listed = await self._client.list_tasks(model=model, page=page, page_size=_PAGE_SIZE)
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
            # A deeper page pays only for many unseen tasks; a few stragglers get status requests of
            # their own (they are not marked as swept).
            if len(unseen) < _DEEPER_PAGE_MIN or len(listed) < _PAGE_SIZE:
                return


class _Batch:
    """One run of ``map``: submitters, the tracker, the journal, and the outcomes they produce."""

    def __init__(
        self,
        client: KlingClient,
        send: MemoryObjectSendStream[Outcome],
        *,
        timeout: float | None,
        batch_timeout: float | None,
        download: Path | None,
        journal: Journal | None,
        resubmit_uncertain: bool,
        resubmit_failed: bool = False,
    ) -> None:
        self._client = client
        self._send = send
        self._timeout = timeout if timeout is not None else client._poll.timeout
        now = client._clock.now()
        self._batch_deadline = now + batch_timeout if batch_timeout is not None else None
        self._download = download
        self._journal = journal
        self._resubmit_uncertain = resubmit_uncertain
        self._resubmit_failed = resubmit_failed
        self._pending = 0
        self._submitting = True
        self._drained = anyio.Event()
        self._keys: dict[str, str] = {}  # task id -> item key, for journaling status changes
        self._warned_positional = False
        self._seen: set[str] = set()  # every key of this run: two items must never share a task or a file

    async def run(
        self, items: Iterable[Job | Request] | AsyncIterable[Job | Request], *, submitters: int
    ) -> None:
        self._client._status_listeners.append(self._status_changed)
        try:
            async with self._send, anyio.create_task_group() as tg:
                self._tg = tg
                self._tracker = _Tracker(self._client, tg, self._finish)
                tg.start_soon(self._tracker.run)
                source = _iterate(items)
                counter = itertools.count()
                lock = anyio.Lock()

                async def next_job() -> tuple[int, Job] | None:
                    async with lock:
                        if (
                            self._batch_deadline is not None
                            and self._client._clock.now() >= self._batch_deadline
                        ):
                            return None  # past the batch's deadline: take no more items
                        job = await anext(source, None)
                        if job is None:
                            return None
                        self._pending += 1
                        return next(counter), job

                async def submitter() -> None:
                    # The in-flight slot comes first: an item is taken from the input only when it can
                    # be sent, so a lazy input is never read ahead and a drained input stops at once.
                    while True:
                        await self._client._take_slot()
                        pulled = await next_job()
                        if pulled is None:
                            self._client._give_slot()
                            return
                        if not await self._start(*pulled):
                            self._client._give_slot()

                async with anyio.create_task_group() as submit_group:
                    for _ in range(submitters):
                        submit_group.start_soon(submitter)
                self._submitting = False
                if self._pending == 0:
                    self._drained.set()
                await self._drained.wait()
                tg.cancel_scope.cancel()
        finally:
            self._client._status_listeners.remove(self._status_changed)
            if self._journal is not None:
                self._journal.flush()

    async def _start(self, index: int, job: Job) -> bool:
        """Submit one item, or pick it up where a previous run with the same journal left it.

        Returns whether a submission took over the in-flight slot the caller holds for the item.
        """
        key = job.id or f"item-{index}"
        submitted = False
        try:
            endpoint = resolve(job.request, job.model)
            key = job_key(job, endpoint.model, index)
            if key in self._seen:
                raise InvalidRequestError.for_field("id", f"{key!r} is used by another item of this batch")
            self._seen.add(key)
            body = encode_request(job.request)
            journal = self._journal
            if journal is not None and job.id is None and not self._warned_positional:
                self._warned_positional = True
                log.warning(
                    "journal %s: items without an id are keyed by their position too; inserting or removing"
                    " an item changes the keys after it (give each Job a stable id)",
                    journal.path,
                )
            entry = journal.lookup(key) if journal is not None else None
            if journal is not None and entry is not None:
                if (entry.model, entry.request) != (endpoint.model, body):
                    raise JournalError(
                        f"key {key!r} was recorded with another request or model; use another id or journal",
                        path=journal.path,
                        key=key,
                    )
                reattached = await self._resume(index, key, entry)
                if reattached is not None:
                    return reattached
            if journal is not None:
                journal.submitting(key, endpoint.model, body)
            submitted = True
            try:
                handle = await self._client._submit(
                    job.request, model=endpoint.model, key=key, slot_held=True
                )
            except SubmitUncertainError as exc:
                if journal is not None:
                    journal.uncertain(key, str(exc))
                raise
            except KlingError as exc:
                if journal is not None:
                    journal.failed(key, None, f"{type(exc).__name__}: {exc}")
                raise
            if journal is not None:
                journal.created(key, handle.task_id, handle.status or CREATED)
        except KlingError as exc:
            await self._deliver(Outcome(index=index, key=key, error=exc))
            return submitted
        self._track(index, key, handle, check_now=False)
        return True

    async def _resume(self, index: int, key: str, entry: JournalEntry) -> bool | None:
        """Settle an item the journal knows.

        Returns None when it still has to be submitted, True when a running task was re-attached (it
        holds the caller's in-flight slot), False when it was settled from the journal alone.
        """
        if entry.state in (JournalState.SUBMITTING, JournalState.UNCERTAIN):
            if self._resubmit_uncertain:
                return None
            error = SubmitUncertainError(
                f"item {key}: its POST was sent by an earlier run that got no answer, so a task may exist;"
                " not resubmitted (pass resubmit_uncertain=True to send it again)",
                model=entry.model,
                key=key,
            )
            await self._deliver(Outcome(index=index, key=key, error=error))
            return False
        if entry.state == JournalState.FAILED and (entry.task_id is None or self._resubmit_failed):
            return None  # refused before creation (bad key, 4xx), or a failed task asked to be retried
        assert entry.task_id is not None
        if entry.state == JournalState.FAILED:
            failed = TaskFailedError(entry.task_id, entry.status or FAILED, model=entry.model)
            await self._deliver(Outcome(index=index, key=key, task_id=entry.task_id, error=failed))
            return False
        result = TaskResult(entry.task_id, entry.status or COMPLETED, entry.urls, entry.model)
        if entry.state == JournalState.DOWNLOADED and entry.path is not None and Path(entry.path).exists():
            outcome = Outcome(
                index=index, key=key, task_id=entry.task_id, result=result, path=Path(entry.path)
            )
            await self._deliver(outcome)
            return False
        if entry.state == JournalState.COMPLETED and self._download is None:
            await self._deliver(Outcome(index=index, key=key, task_id=entry.task_id, result=result))
            return False
        # Still running, or finished without its file: re-attach by id (no POST) and check at once.
        handle = self._client.task(entry.task_id, model=entry.model)
        self._client._hold_slot(handle.task_id)
        self._track(index, key, handle, check_now=True)
        return True

    def _track(self, index: int, key: str, handle: TaskHandle, *, check_now: bool) -> None:
        self._keys[handle.task_id] = key
        deadline = self._client._clock.now() + self._timeout if self._timeout is not None else None
        if self._batch_deadline is not None:
            deadline = self._batch_deadline if deadline is None else min(deadline, self._batch_deadline)
        self._tracker.add(index, key, handle, deadline, check_now=check_now)

    def _status_changed(self, handle: TaskHandle) -> None:
        key = self._keys.get(handle.task_id)
        if key is not None and self._journal is not None and not handle.done:
            self._journal.status(key, handle.status or "")

    def _finish(self, item: _Item, error: KlingError | None) -> None:
        self._client._release_slot(item.handle.task_id)
        self._keys.pop(item.handle.task_id, None)
        self._tg.start_soon(self._complete, item, error)

    async def _complete(self, item: _Item, error: KlingError | None) -> None:
        handle = item.handle
        outcome = Outcome(index=item.index, key=item.key, task_id=handle.task_id, error=error)
        journal = self._journal
        try:
            if error is None:
                outcome.result = result = handle.result()
                if journal is not None:
                    journal.finished(item.key, result.status, result.urls)
                if self._download is not None:
                    outcome.path = await self._client.download(result, self._download, name=item.key)
                    if journal is not None:
                        journal.downloaded(item.key, str(outcome.path))
            elif journal is not None and isinstance(error, (TaskFailedError, NotFoundError)):
                journal.failed(item.key, handle.status, f"{type(error).__name__}: {error}")
        except KlingError as exc:  # a failed download or journal write is this item's error only
            outcome.error = exc
        await self._deliver(outcome)

    async def _deliver(self, outcome: Outcome) -> None:
        # No flush here: what guards against paying twice (submitting, created) is committed at once;
        # later records are committed by the journal within 0.2 s, and lost ones only cost a status GET.
        await self._send.send(outcome)
        self._pending -= 1
        if not self._submitting and self._pending == 0:
            self._drained.set()


async def run_batch(
    client: KlingClient,
    items: Iterable[Job | Request] | AsyncIterable[Job | Request],
    send: MemoryObjectSendStream[Outcome],
    *,
    submitters: int,
    timeout: float | None,
    batch_timeout: float | None,
    download: Path | None,
    journal: str | os.PathLike[str] | Journal | None,
    resubmit_uncertain: bool,
    resubmit_failed: bool = False,
) -> None:
    """Run every item to an outcome and send each outcome as soon as it is known."""
    if download is not None:
        download.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if journal is not None and not isinstance(journal, Journal):
            journal = stack.enter_context(Journal(journal))
        batch = _Batch(
            client,
            send,
            timeout=timeout,
            batch_timeout=batch_timeout,
            download=download,
            journal=journal,
            resubmit_uncertain=resubmit_uncertain,
            resubmit_failed=resubmit_failed,
        )
        await batch.run(items, submitters=submitters)
