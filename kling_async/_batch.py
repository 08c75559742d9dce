"""Bulk generation: ``map`` and ``gather`` over any number of jobs, in the caller's scope.

Shape of a batch run:

* a few **submitters** take an in-flight slot, then pull one job from the (possibly lazy, possibly
  endless) input, so the input is never read ahead; each POST goes through the client's ``Creator``, so a
  cancelled batch never loses a task it created;
* every created task goes to one **tracker** (``_tracker.py``), which hears every status change through
  the registry's fan-out;
* each finished item becomes one frozen ``Outcome``; one item's failure (a refused POST, a failed task, a
  journal write, a download) is its own outcome, never the batch's.

The run lives in a task group of the caller's (``async with client.map(...)``) and everything it took
(slots, listeners) comes back when that block ends, however it ends.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint_if_cancelled
from anyio.streams.memory import MemoryObjectSendStream

from ._endpoints import ModelName, endpoint_for, resolve
from ._errors import (
    AuthenticationError,
    ClientClosed,
    InvalidRequestError,
    JournalError,
    KlingError,
    NotFoundError,
    SubmitUncertainError,
    TaskFailedError,
)
from ._journal import BatchJournal, JournalEntry, JournalState
from ._models import COMPLETED, CREATED, FAILED, Request, TaskResult, encode_request
from ._pipeline import Pipeline
from ._polling import TaskHandle
from ._registry import Slots, TaskRegistry, Ticket
from ._submit import Creator, Halt
from ._tracker import SweepRelay, Tracked, Tracker

__all__ = ["Batch", "BatchOptions", "BatchRun", "Job", "Outcome", "job_key", "legacy_job_key"]

log = logging.getLogger("kling_async")


@dataclass(frozen=True, slots=True)
class Job:
    """One batch item: a request, a stable key and the model (create endpoint) to send it to.

    Args:
        request: the request.
        id: the item's key, stable across runs (used by the journal and for file names). Default: a
            digest of the model, the request and its occurrence among identical requests of the input,
            so editing other items never changes it.
        model: the create endpoint; default: the standard model of the request's family.
    """

    request: Request
    id: str | None = field(default=None, kw_only=True)
    model: ModelName | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        # The key names the journal's row and the downloaded file: one that is not a string failed only
        # when the first video was saved, after every task of the batch was paid for.
        if self.id is not None and (not isinstance(self.id, str) or not self.id):
            raise InvalidRequestError.for_field("id", f"a non-empty string, or None (got {self.id!r})")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one batch item (frozen: what you were handed is what happened).

    Attributes:
        index: the item's position in the input.
        key: the item's stable key (``Job.id`` or a derived digest).
        ok: whether it finished with a result (and its file, when downloading).
        result: the ``TaskResult`` whenever the task completed (also when a later step failed).
        error: the ``KlingError`` when not ``ok``.
        task_id: the created task's id, whenever one was created (also on failures).
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


def job_key(job: Job, model: str, occurrence: int) -> str:
    """The item's stable key: its id, else a digest of model, request and its occurrence among identical
    requests (0 for the first), so inserting, removing or fixing other items never changes it."""
    if job.id is not None:
        return job.id
    return _derived_key(model, encode_request(job.request), str(occurrence))


def _derived_key(model: str, body: bytes, occurrence: str) -> str:
    digest = hashlib.sha256(model.encode() + b"\0" + body + b"\0#" + occurrence.encode())
    return digest.hexdigest()[:20]


# Identical requests of one input are counted exactly among this many distinct requests (a generation).
_GENERATION = 65_536
# Requests of earlier generations go into a Bloom filter: 1 MiB (made when the first generation ends),
# four probes. It wrongly takes a new request for an earlier one about once in 70,000 at 131,072
# distinct requests, once in 50 at a million, and nearly always past ten million.
_SEEN_BITS = 1 << 23
_SEEN_PROBES = 4


class _Occurrences:
    """Each request's occurrence among identical requests of one input, in memory bounded however long
    the input runs.

    ``next(digest)`` is ``"0"`` for the first request with that content, ``"1"`` for the second, ...: what
    counting every request gives, as long as identical requests are fewer than ``generation`` distinct
    requests apart. The counts then start again in a new generation; a request that the filter says an
    earlier generation may have had is numbered ``"<generation>.<count>"``, which no earlier item can
    have (a plain number for one content comes from a single generation). Such a number depends on where
    the generations start, so editing items before it can change it.

    A generation's contents are 56-bit fingerprints of their digests in an open-addressing table of
    8-byte slots (16 to 32 bytes a content, where a dict of int objects took 62); the few contents seen
    more than once, or numbered by generation, have their count in a dict beside it.
    """

    __slots__ = ("_counts", "_generation", "_limit", "_seen", "_size", "_slots")

    def __init__(self, generation: int = _GENERATION) -> None:
        self._limit = generation
        self._generation = 0
        self._seen: bytearray | None = None
        self._slots = array.array("q", bytes(8 * 1024))  # 0: empty; fingerprints are never 0
        self._size = 0
        # fingerprint -> the next count, for contents past their first; negative: numbered by generation.
        self._counts: dict[int, int] = {}

    def __len__(self) -> int:
        return self._size

    def next(self, digest: bytes) -> str:
        """The occurrence of the next request whose content has this digest (16 bytes or more)."""
        fingerprint = int.from_bytes(digest[:7], "big") | 1
        if self._add(fingerprint):
            if self._seen is None or not self._maybe_seen(fingerprint):
                return "0"  # the common case: a content new to the input, nothing else stored
            count = -1
        else:
            count = self._counts.get(fingerprint, 1)
        if count >= 0:
            self._counts[fingerprint] = count + 1
            return str(count)
        self._counts[fingerprint] = count - 1
        return f"{self._generation}.{-count - 1}"

    def _add(self, fingerprint: int) -> bool:
        """Put the fingerprint in this generation's table; False when it was there already."""
        slots = self._slots
        mask = len(slots) - 1
        index = fingerprint & mask
        while True:
            held = slots[index]
            if held == fingerprint:
                return False
            if held == 0:
                break
            index = (index + 1) & mask
        if self._size >= self._limit:
            self._next_generation()
            return self._add(fingerprint)
        slots[index] = fingerprint
        self._size += 1
        if self._size * 2 > len(slots):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array.array("q", bytes(16 * len(old)))
        mask = len(slots) - 1
        for fingerprint in old:
            if fingerprint:
                index = fingerprint & mask
                while slots[index]:
                    index = (index + 1) & mask
                slots[index] = fingerprint

    def _probes(self, fingerprint: int) -> list[int]:
        # Two halves of the fingerprint make the probes (double hashing).
        first, step = fingerprint >> 28, (fingerprint & 0xFFFFFFF) | 1
        return [(first + i * step) % _SEEN_BITS for i in range(_SEEN_PROBES)]

    def _maybe_seen(self, fingerprint: int) -> bool:
        seen = self._seen
        assert seen is not None
        return all(seen[bit >> 3] & (1 << (bit & 7)) for bit in self._probes(fingerprint))

    def _next_generation(self) -> None:
        seen = self._seen
        if seen is None:
            seen = self._seen = bytearray(_SEEN_BITS // 8)
        for fingerprint in self._slots:
            if fingerprint:
                for bit in self._probes(fingerprint):
                    seen[bit >> 3] |= 1 << (bit & 7)
        self._slots = array.array("q", bytes(8 * 1024))
        self._size = 0
        self._counts = {}
        self._generation += 1


def legacy_job_key(job: Job, model: str, index: int) -> str:
    """The key kling-async 0.1 derived from the item's position; journals written with it still resume."""
    digest = hashlib.sha256(
        model.encode() + b"\0" + encode_request(job.request) + b"\0" + str(index).encode()
    )
    return digest.hexdigest()[:20]


def as_job(item: Job | Request) -> Job:
    """A bare request is a Job with the default model and a derived key."""
    return item if isinstance(item, Job) else Job(item)


def _puller(
    items: Iterable[Job | Request] | AsyncIterable[Job | Request], halt: Halt
) -> Callable[[], Awaitable[Job | None]]:
    """A function giving the input's next item as a Job, or None at its end or once ``halt`` is raised;
    concurrent callers are served one at a time.

    A plain iterable is read without awaiting anything (so without a lock: nothing can interleave);
    an async one under a lock, since an async iterator must not be advanced twice at once, and a halt
    ends the wait for its next item (a queue-fed input may have none for a long while).
    """
    if isinstance(items, AsyncIterable):
        source = aiter(items)
        lock = anyio.Lock()

        async def pull_async() -> Job | None:
            with halt.interruptible():
                async with lock:
                    if halt.halted:  # raised while this caller queued for the lock
                        return None
                    try:
                        item = await anext(source)
                    except StopAsyncIteration:
                        return None
                return as_job(item)
            return None  # halted while waiting for the input

        return pull_async
    iterator = iter(items)

    async def pull() -> Job | None:
        try:
            item = next(iterator)
        except StopIteration:
            return None
        return as_job(item)

    return pull


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchOptions:
    """What ``map`` and ``gather`` were asked to do (see ``KlingClient.map``)."""

    timeout: float | None
    batch_timeout: float | None
    download: Path | None
    resubmit_uncertain: bool = False
    resubmit_failed: bool = False


class _Sends:
    """Counts a batch's POSTs between their ``sending`` record and the record of their answer: the
    journal stays open until the last of them is written, even after the batch was cancelled."""

    def __init__(self) -> None:
        self.open = 0
        self.settled = anyio.Event()
        self.settled.set()

    def begin(self) -> None:
        if self.open == 0:
            self.settled = anyio.Event()
        self.open += 1

    def end(self) -> None:
        self.open -= 1
        if self.open == 0:
            self.settled.set()


class _JournalRecorder:
    """Writes one item's POST to the batch journal (the ``Recorder`` of ``_submit.py``).

    A store that fails with anything but ``JournalError`` (a custom ``BatchJournal``'s ``OSError``) fails
    as a ``JournalError`` all the same: the item, not the batch, ends with it, and a created task's id
    goes with it.
    """

    __slots__ = ("_body", "_journal", "_key", "_model", "_sends")

    def __init__(self, journal: BatchJournal, sends: _Sends, key: str, model: str, body: bytes) -> None:
        self._journal = journal
        self._sends = sends
        self._key = key
        self._model = model
        self._body = body

    async def sending(self) -> None:
        await self._write(self._journal.submitting(self._key, self._model, self._body))
        self._sends.begin()

    async def created(self, task_id: str, status: str) -> None:
        try:
            await self._write(self._journal.created(self._key, task_id, status))
        finally:
            self._sends.end()

    async def unsent(self, error: KlingError) -> None:
        try:
            await self._write(self._journal.unsent(self._key, f"{type(error).__name__}: {error}"))
        finally:
            self._sends.end()

    async def refused(self, error: KlingError) -> None:
        try:
            await self._write(self._journal.failed(self._key, None, f"{type(error).__name__}: {error}"))
        finally:
            self._sends.end()

    async def uncertain(self, error: SubmitUncertainError) -> None:
        try:
            await self._write(self._journal.uncertain(self._key, str(error)))
        finally:
            self._sends.end()

    async def _write(self, call: Awaitable[None]) -> None:
        await _journal_write(self._journal, self._key, call)


async def _journal_write(journal: BatchJournal, key: str, call: Awaitable[None]) -> None:
    """Await one journal call; a store's own failure (an ``OSError`` of a custom one) is a JournalError."""
    try:
        await call
    except JournalError:
        raise
    except Exception as exc:
        raise JournalError(f"{type(exc).__name__}: {exc}", path=journal.path, key=key) from exc


class BatchRun:
    """One run of ``map``: submitters, the tracker, the journal, and the outcomes they produce."""

    def __init__(
        self,
        *,
        registry: TaskRegistry,
        creator: Creator,
        pipeline: Pipeline,
        slots: Slots,
        prepare: Callable[[Request], Request],
        download: Callable[[TaskResult, Path, str], Awaitable[Path]],
        send: MemoryObjectSendStream[Outcome],
        journal: BatchJournal | None,
        options: BatchOptions,
        settle_within: float,
        halt: Halt,
        relay: SweepRelay | None = None,
    ) -> None:
        self._registry = registry
        self._halt = halt
        self._relay = relay
        self._creator = creator
        self._pipeline = pipeline
        self._slots = slots
        self._prepare = prepare
        self._download = download
        self._send = send
        self._journal = journal
        self._options = options
        clock = registry.clock
        self._clock = clock
        self._timeout = options.timeout if options.timeout is not None else registry.poll.timeout
        self._batch_deadline = (
            clock.now() + options.batch_timeout if options.batch_timeout is not None else None
        )
        self._pending = 0
        self._submitting = True
        self._input_error: Exception | None = None  # the input raised: no more items, raised at the end
        self._drained = anyio.Event()
        # Task id -> the key of the item following it, with a journal only: its status records go by key,
        # and only a journal (a duplicate entry) can hand two items one task.
        self._followed: dict[str, str] = {}
        self._held: dict[str, Ticket] = {}  # task id -> its item's in-flight slot, while still held
        # Keys of items not finished yet: two must never share one. A dict, not a set: at 10,000 keys its
        # compact table takes about 40 bytes a key, a set's 52.
        self._live_keys: dict[str, None] = {}
        self._tickets: set[Ticket] = set()
        self._occurrences = _Occurrences()
        self._refused: AuthenticationError | None = None
        self._overflow: deque[Outcome] = deque()
        self._statuses: deque[tuple[str, str]] = deque()
        self._statuses_queued = anyio.Event()
        self._sends = _Sends()
        self._settle_within = settle_within
        # Key -> the failure to record its created task: the task is followed all the same, and recorded
        # again with its next status and at its end (the store may have recovered: a disk freed).
        self._unrecorded: dict[str, tuple[TaskHandle, JournalError]] = {}

    async def run(
        self, items: Iterable[Job | Request] | AsyncIterable[Job | Request], *, submitters: int
    ) -> None:
        """Run every item to an outcome and send each outcome as soon as it is known."""
        unsubscribe: list[Callable[[], None]] = []
        tracker: Tracker | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._tracker = tracker = Tracker(
                    registry=self._registry,
                    pipeline=self._pipeline,
                    group=tg,
                    finish=self._finish,
                    relay=self._relay,
                )
                unsubscribe.append(self._registry.subscribe(self._tracker.status_changed))
                unsubscribe.append(self._registry.subscribe_detail(self._tracker.detail_wanted))
                if self._journal is not None:
                    unsubscribe.append(self._registry.subscribe(self._queue_status))
                    tg.start_soon(self._write_statuses)
                tg.start_soon(self._tracker.run)
                pull = _puller(items, self._halt)
                counter = itertools.count()

                async def next_job() -> tuple[int, Job] | None:
                    if self._halt.halted:
                        return None  # told to stop submitting: take no more items
                    if self._batch_deadline is not None and self._clock.now() >= self._batch_deadline:
                        return None  # past the batch's deadline: take no more items
                    if self._input_error is not None:
                        return None
                    try:
                        job = await pull()
                    except Exception as exc:
                        # The caller's input broke (a bad row, a generator's bug): no item is taken
                        # after it, the items taken run to their outcomes, then the batch raises it.
                        if self._input_error is None:
                            self._input_error = exc
                        return None
                    if job is None:
                        return None
                    self._pending += 1
                    return next(counter), job

                started = 1

                async def submitter() -> None:
                    # The in-flight slot comes first: an item is taken from the input only when it can
                    # be sent, so a lazy input is never read ahead and a drained input stops at once.
                    nonlocal started
                    while True:
                        ticket = await self._take_ticket()
                        pulled = await next_job()
                        if pulled is None:
                            self._give_back(ticket)
                            return
                        if started < submitters:
                            # One more while this one sends: as many as the input keeps busy, up to
                            # the wire's places (a one-item batch on a wire of 300,000 started 300,000).
                            started += 1
                            submit_group.start_soon(submitter)
                        await self._start(*pulled, ticket)

                async with anyio.create_task_group() as submit_group:
                    submit_group.start_soon(submitter)
                self._submitting = False
                if self._pending == 0:
                    self._drained.set()
                await self._drained.wait()
                tg.cancel_scope.cancel()
            if self._input_error is not None:
                raise self._input_error
        finally:
            if self._sends.open:
                # POSTs that left before the cancellation are answered within the request timeout;
                # their task ids go to the journal before it closes.
                with anyio.CancelScope(shield=True), self._clock.move_on_after(self._settle_within):
                    await self._sends.settled.wait()
            for stop in unsubscribe:
                stop()
            if tracker is not None:
                _log_left_running(tracker.running(), journaled=self._journal is not None)
            # Whatever ended the run, every slot it took comes back; its tasks stay reachable by id.
            for ticket in self._tickets:
                ticket.release()
            self._tickets.clear()
        # The end of the outcomes. A run that failed leaves that to the engine, which records the failure
        # first: a reader that saw the end before the failure would take the batch for complete.
        self._send.close()

    async def _take_ticket(self) -> Ticket:
        ticket = await self._slots.take()
        if not ticket.released:
            self._tickets.add(ticket)
        return ticket

    def _give_back(self, ticket: Ticket) -> None:
        ticket.release()
        self._tickets.discard(ticket)

    def _key(self, job: Job, model: str, body: bytes) -> str:
        if job.id is not None:
            return job.id
        content = hashlib.sha256(model.encode() + b"\0" + body).digest()
        return _derived_key(model, body, self._occurrences.next(content))

    async def _start(self, index: int, job: Job, ticket: Ticket) -> None:
        """Submit one item, or pick it up where a previous run with the same journal left it."""
        key = job.id or f"item-{index}"
        try:
            endpoint = resolve(job.request, job.model)
            journal_body = encode_request(job.request)
            key = self._key(job, endpoint.model, journal_body)
            if key in self._live_keys:
                raise InvalidRequestError.for_field("id", f"{key!r} is used by another item of this batch")
            journal = self._journal
            if journal is not None:
                entry = await journal.lookup(key)
                if entry is None and job.id is None:
                    legacy = legacy_job_key(job, endpoint.model, index)
                    entry = await journal.lookup(legacy)
                    key = legacy if entry is not None else key
                if entry is not None:
                    if (entry.model, entry.request) != (endpoint.model, journal_body):
                        raise JournalError(
                            f"key {key!r} was recorded with another request or model; use another id or"
                            " journal",
                            path=journal.path,
                            key=key,
                        )
                    if await self._resume(index, key, entry, ticket):
                        return
            if self._refused is not None:
                raise self._refused_error()
            request = self._prepare(job.request)
            recorder = (
                _JournalRecorder(journal, self._sends, key, endpoint.model, journal_body)
                if journal is not None
                else None
            )
            self._live_keys[key] = None
            try:
                created = await self._creator.create(
                    endpoint,
                    request,
                    journal_body if request is job.request else encode_request(request),
                    key=key,
                    ticket=ticket,
                    recorder=recorder,
                    halt=self._halt,
                )
            finally:
                self._live_keys.pop(key, None)
        except AuthenticationError as exc:
            # The account, not the item: no further POST can succeed, so none is sent.
            if self._refused is None:
                self._refused = exc
                log.error("the API refused the key (%s); no further item is sent", exc)
            await self._end_early(Outcome(index=index, key=key, error=exc), ticket)
            return
        except KlingError as exc:
            await self._end_early(Outcome(index=index, key=key, error=exc), ticket)
            return
        if created.record_error is not None:
            # The task exists (and is paid) but the journal could not say so: its video is still fetched.
            self._unrecorded[key] = (created.handle, created.record_error)
            log.warning(
                "task %s was created for item %s but the journal could not record it (%s); it is followed"
                " to its end, and recorded again with its next status",
                created.handle.task_id,
                key,
                created.record_error,
                extra={"task_id": created.handle.task_id},
            )
        self._track(index, key, created.handle, ticket, check_now=False)

    def _refused_error(self) -> AuthenticationError:
        assert self._refused is not None
        return AuthenticationError(
            f"not sent: an earlier POST of this batch was refused ({self._refused.message}); fix the API"
            " key, then run the batch again",
            status=self._refused.status,
        )

    async def _end_early(self, outcome: Outcome, ticket: Ticket) -> None:
        self._give_back(ticket)
        await self._deliver(outcome)

    async def _resume(self, index: int, key: str, entry: JournalEntry, ticket: Ticket) -> bool:
        """Settle an item the journal knows; False when it still has to be submitted."""
        model = entry.model
        if entry.state in (JournalState.SUBMITTING, JournalState.UNCERTAIN):
            if self._options.resubmit_uncertain:
                return False
            error = SubmitUncertainError(
                f"item {key}: its POST was sent by an earlier run that got no answer, so a task may exist;"
                " not resubmitted (resubmit_uncertain=True, or the command line's --resubmit-uncertain, sends"
                " it again)",
                model=model,
                key=key,
            )
            await self._end_early(Outcome(index=index, key=key, error=error), ticket)
            return True
        if entry.state == JournalState.FAILED and entry.task_id is None:
            return False  # refused before creation (bad key, 4xx): worth trying again
        if entry.state == JournalState.FAILED and self._options.resubmit_failed:
            return False
        assert entry.task_id is not None
        task_id = entry.task_id
        if entry.state == JournalState.FAILED:
            failed = TaskFailedError(task_id, entry.status or FAILED, model=model)
            await self._end_early(Outcome(index=index, key=key, task_id=task_id, error=failed), ticket)
            return True
        result = TaskResult(task_id, entry.status or COMPLETED, entry.urls, model)
        if entry.state == JournalState.DOWNLOADED and entry.path is not None and Path(entry.path).exists():
            outcome = Outcome(index=index, key=key, task_id=task_id, result=result, path=Path(entry.path))
            await self._end_early(outcome, ticket)
            return True
        if entry.state == JournalState.COMPLETED and self._options.download is None:
            await self._end_early(Outcome(index=index, key=key, task_id=task_id, result=result), ticket)
            return True
        # Still running, or finished without its file: re-attach by id (no POST) and check at once.
        handle = self._registry.attach(endpoint_for(model), task_id, None, started=None, request=None)
        self._registry.follow(handle, ticket)
        self._track(index, key, handle, ticket, check_now=True)
        return True

    def _track(self, index: int, key: str, handle: TaskHandle, ticket: Ticket, *, check_now: bool) -> None:
        task_id = handle.task_id
        if self._journal is not None:
            if task_id in self._followed:
                # The same task for two items (a duplicate journal entry): the second cannot own it.
                error = SubmitUncertainError(
                    f"item {key}: task {task_id} is already followed for another item of this batch",
                    model=handle.model,
                    key=key,
                    task_id=task_id,
                )
                self._tg.start_soon(self._end_early, Outcome(index=index, key=key, error=error), ticket)
                return
            self._followed[task_id] = key
        if not ticket.released:
            self._held[task_id] = ticket
        self._live_keys[key] = None
        deadline = self._clock.now() + self._timeout if self._timeout is not None else None
        if self._batch_deadline is not None:
            deadline = self._batch_deadline if deadline is None else min(deadline, self._batch_deadline)
        self._tracker.add(index, key, handle, deadline, check_now=check_now)

    def _finish(self, item: Tracked, error: KlingError | None) -> None:
        task_id = item.handle.task_id
        self._followed.pop(task_id, None)
        self._live_keys.pop(item.key, None)
        ticket = self._held.pop(task_id, None)
        if ticket is not None:
            self._give_back(ticket)
        if self._journal is not None or self._options.download is not None:
            self._tg.start_soon(self._complete, item, error)
            return
        # Nothing to write or fetch: the outcome goes out at once, without starting a task for it. While
        # the reader is behind (its buffer full), outcomes wait in order in ``_overflow``, which one task
        # drains: a task per outcome cost anyio's start of a task for most items of a large batch, whose
        # outcomes come faster than a reader takes them (one per trip through the event loop).
        outcome = self._outcome(item, error)
        overflow = self._overflow
        if not overflow:
            try:
                self._send.send_nowait(outcome)
            except anyio.WouldBlock:
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._delivered()  # the reader left: nobody will read it, and the batch is being stopped
                return
            else:
                self._delivered()
                return
        overflow.append(outcome)
        if len(overflow) == 1:
            self._tg.start_soon(self._drain_overflow)

    async def _drain_overflow(self) -> None:
        """Send the outcomes that found the reader's buffer full, in order, until none is left."""
        overflow, send = self._overflow, self._send
        while overflow:
            try:
                try:
                    send.send_nowait(overflow[0])
                except anyio.WouldBlock:
                    await send.send(overflow[0])
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the reader left, as in ``_finish``
            overflow.popleft()
            self._delivered()

    def _outcome(self, item: Tracked, error: KlingError | None) -> Outcome:
        handle = item.handle
        result: TaskResult | None = None
        if error is None:
            try:
                result = handle.result()
            except KlingError as exc:
                error = exc
        return Outcome(index=item.index, key=item.key, task_id=handle.task_id, result=result, error=error)

    async def _complete(self, item: Tracked, error: KlingError | None) -> None:
        handle = item.handle
        journal = self._journal
        if item.key in self._unrecorded:
            await self._record_created(item.key)
        # An item whose task id never reached the journal writes nothing more there (its entry cannot take
        # it), but its video is fetched all the same: the task was paid for.
        unrecorded = self._unrecorded.pop(item.key, (None, None))[1]
        writing = journal if unrecorded is None else None
        result: TaskResult | None = None
        path: Path | None = None
        try:
            if error is None:
                result = handle.result()
                if writing is not None:
                    await writing.finished(item.key, result.status, result.urls)
                if self._options.download is not None:
                    path = await self._download(result, self._options.download, item.key)
                    if writing is not None:
                        # Absolute: a rerun from another working directory finds the file all the same.
                        await writing.downloaded(item.key, str(path.absolute()))
            elif writing is not None and isinstance(error, (TaskFailedError, NotFoundError)):
                await writing.failed(item.key, handle.status, f"{type(error).__name__}: {error}")
        except KlingError as exc:  # a failed download or journal write is this item's error only
            error = exc
        if unrecorded is not None and error is None:
            error = unrecorded  # a rerun will find the item uncertain: the report must say why
        outcome = Outcome(
            index=item.index, key=item.key, task_id=handle.task_id, result=result, error=error, path=path
        )
        await self._deliver(outcome)

    async def _record_created(self, key: str) -> None:
        """Record an item's created task again, after its first record failed; done once it succeeds."""
        assert self._journal is not None
        unrecorded = self._unrecorded.get(key)
        if unrecorded is None:
            return  # recorded meanwhile (the status writer and the item's end both try)
        handle = unrecorded[0]
        status = handle.status or CREATED
        try:
            await _journal_write(self._journal, key, self._journal.created(key, handle.task_id, status))
        except JournalError as exc:
            exc.task_id = handle.task_id
            if key in self._unrecorded:
                self._unrecorded[key] = (handle, exc)
            log.debug("still cannot record task %s of item %s: %s", handle.task_id, key, exc)
            return
        self._unrecorded.pop(key, None)
        log.info("task %s of item %s is recorded in the journal now", handle.task_id, key)

    def _queue_status(self, handle: TaskHandle, previous: str | None) -> None:
        """A registry subscriber: statuses of this batch's running tasks go to the journal, in order."""
        key = self._followed.get(handle.task_id)
        if key is not None and not handle.done:
            self._statuses.append((key, handle.status or ""))
            self._statuses_queued.set()

    async def _write_statuses(self) -> None:
        assert self._journal is not None
        while True:
            await self._statuses_queued.wait()
            self._statuses_queued = anyio.Event()
            while self._statuses:
                key, status = self._statuses.popleft()
                if key in self._unrecorded:
                    await self._record_created(key)
                    continue
                try:
                    await self._journal.status(key, status)
                except JournalError as exc:  # a lost status costs a re-run one status request
                    log.warning("could not journal status %s of item %s: %s", status, key, exc)

    async def _deliver(self, outcome: Outcome) -> None:
        await self._send.send(outcome)
        self._delivered()

    def _delivered(self) -> None:
        self._pending -= 1
        if not self._submitting and self._pending == 0:
            self._drained.set()


_LISTED = 20  # task ids named in the warning; every one is logged at INFO


def _log_left_running(items: list[Tracked], *, journaled: bool) -> None:
    """Tasks a batch stopped following before they finished (it was stopped, failed, or its client closed):
    their items have no outcome, so without a journal the log is where a caller finds their ids (a
    WARNING); a journal has them (INFO)."""
    if not items:
        return
    ids = [item.handle.task_id for item in items]
    more = f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else ""
    log.log(
        logging.INFO if journaled else logging.WARNING,
        "the batch stopped with %d tasks still running, their items without an outcome; they run on,"
        " reachable with client.task(id, model=...): %s%s",
        len(ids),
        ", ".join(ids[:_LISTED]),
        more,
    )
    for item in items:
        handle = item.handle
        log.info(
            "task %s of item %s runs on; client.task(%r, model=%r) reaches it",
            handle.task_id,
            item.key,
            handle.task_id,
            handle.model,
            extra={"task_id": handle.task_id},
        )


class _Engine:
    """The batch's background run. Kept apart from ``Batch`` so that it holds no reference to it: a
    ``Batch`` dropped without ``aclose()`` is then collected, and its ``__del__`` stops this run."""

    __slots__ = ("failure", "finished", "run", "running", "scope", "send")

    def __init__(
        self,
        run: Callable[[MemoryObjectSendStream[Outcome]], Awaitable[None]],
        send: MemoryObjectSendStream[Outcome],
    ) -> None:
        self.run = run
        self.send = send
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        self.failure: Exception | None = None
        self.running = False

    async def __call__(self) -> None:
        self.running = True
        try:
            with self.scope:
                await self.run(self.send)
        except Exception as exc:  # the input's, or a bug in the engine: to the reader, not to the client
            while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]  # as it was raised, not wrapped by the task groups it crossed
            if isinstance(exc, ExceptionGroup) and exc.split(ClientClosed)[1] is None:
                exc = _closed_under_it()  # each of its requests heard it: one error says it
            self.failure = exc
        except anyio.get_cancelled_exc_class():
            if not self.scope.cancel_called:
                # Not stopped by its reader: the client's group, which it ran in, was cancelled. A reader
                # that took the end of the outcomes for the batch's end would miss the items left.
                self.failure = _closed_under_it()
            raise
        finally:
            self.send.close()
            self.finished.set()


def _closed_under_it() -> ClientClosed:
    return ClientClosed(
        "the KlingClient closed while this batch was running; items still running have no outcome (their"
        " tasks run on: the log names them)"
    )


class Batch:
    """The outcomes of ``KlingClient.map``, in completion order: an async iterator and context manager.

    ``async with client.map(...) as outcomes:`` runs the batch in a task group of your own task: leaving
    the block stops submitting and checking at once, and every in-flight slot comes back.
    ``async for outcome in client.map(...)`` works too: the batch then runs in the client's task group
    until it is exhausted, ``aclose()`` is called (``contextlib.aclosing``), the iterator is dropped, or
    the client closes. Either way, tasks already created run on and stay reachable with
    ``client.task(id)``.
    """

    def __init__(
        self,
        run: Callable[[MemoryObjectSendStream[Outcome]], Awaitable[None]],
        *,
        background: TaskGroup,
        buffer: int,
        halt: Halt,
    ) -> None:
        self._halt = halt
        send, self._receive = anyio.create_memory_object_stream[Outcome](buffer)
        self._engine = _Engine(run, send)
        self._background = background
        self._group: TaskGroup | None = None
        self._started = False

    def __repr__(self) -> str:
        state = (
            "finished" if self._engine.finished.is_set() else "running" if self._started else "not started"
        )
        return f"<Batch {state}>"

    def _start(self, group: TaskGroup) -> None:
        self._refuse_a_second_start()
        self._started = True
        group.start_soon(self._engine)

    def _refuse_a_second_start(self) -> None:
        if self._started:
            raise RuntimeError("this batch was already started; call map() again for another")

    async def __aenter__(self) -> Self:
        # Refused before the group is entered: a group left entered would hold the caller's task.
        self._refuse_a_second_start()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        self._start(group)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._engine.scope.cancel()
        self._receive.close()
        assert self._group is not None
        # The engine catches its own failures, so the group ends cleanly; what left the block (an
        # exception of the caller's, a cancellation) then propagates as it was, never as a group.
        await self._group.__aexit__(None, None, None)
        self._engine.send.close()  # an engine cancelled before its first step never closed it
        return None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome:
        if not self._started:
            self._start(self._background)
        try:
            # An outcome already buffered is taken without a trip through the event loop (``receive``
            # makes one for each): outcomes come in bursts, and a reader taking one per trip falls behind.
            await checkpoint_if_cancelled()
            try:
                return self._receive.receive_nowait()
            except anyio.WouldBlock:
                return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            failure, self._engine.failure = self._engine.failure, None
            if failure is not None:
                raise failure from None
            raise StopAsyncIteration from None

    def stop_submitting(self) -> None:
        """Send no more POSTs, and let what was sent finish: a graceful stop (a shutdown, a Ctrl-C).

        No further item is taken from the input (a wait for an async input's next item ends). An item
        taken but whose POST has not left yet ends with a ``NotSubmittedError`` outcome, unsent: at
        once if it waits for its next try after one that created nothing, or for the rate limit (a
        ``Retry-After`` pause, a token; its place is passed on, not spent; a token due within 50 ms is
        waited for first). Tasks already created are followed to their outcomes as
        before, and the iteration ends when they have all ended. Calling it again, or after the batch
        ended, does nothing. ``aclose()`` is the stop that does not wait.
        """
        self._halt.halt()

    async def aclose(self) -> None:
        """Stop the batch: nothing more is submitted or checked; created tasks stay reachable by id."""
        self._engine.scope.cancel()
        self._receive.close()
        if not self._engine.running:
            self._engine.send.close()  # it never ran (or never will: its scope is cancelled)
        elif self._group is None:
            with anyio.CancelScope(shield=True):
                await self._engine.finished.wait()

    def __del__(self) -> None:
        # An iterator dropped without aclose() stops its background batch (a cancel needs no await).
        self._receive.close()
        if not self._started:
            self._engine.send.close()
        elif not self._engine.finished.is_set():
            self._engine.scope.cancel()
