"""Create POSTs, owned by the client so that no cancellation can lose a created task.

A submission's try has two halves. Waiting for the limiter (a token, a ``Retry-After`` pause) and the
backoff between tries belong to the caller: cancelling them sends nothing. Once the limiter lets the
POST go, the rest of the try runs in one of the client's **sender** tasks (long-lived, in the client's
task group): the ``sending`` record, the POST, and the recording of its answer (registry, then the
``TaskSubmitted`` event, then the caller's ``Recorder``: a batch's journal). Whatever cancels the
caller then (an ``asyncio.timeout``, a ``TaskGroup`` sibling, an anyio scope, even one around the whole
client), the sender runs the try to its end, so the task id is known and kept before the caller sees its
cancellation. Closing the client waits, bounded, for such POSTs.

Senders are started as needed (one per try in progress at once) and wait for the next try when idle:
handing a try to a waiting sender costs a future, where a task per POST cost anyio's start of a task
(its handle, cancel scope, status event and done callback) for every POST.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from ._endpoints import Endpoint, checked_task_id
from ._errors import (
    ClientClosed,
    InvalidRequestError,
    JournalError,
    KlingError,
    NotSubmittedError,
    SubmitUncertainError,
    TransportError,
)
from ._events import EventHub, TaskSubmitted
from ._limits import Halted, Lane
from ._models import CREATED, Request, TaskStatus, decode_created
from ._pipeline import Pipeline
from ._polling import TaskHandle
from ._registry import TaskRegistry, Ticket
from ._retry import post_created_nothing, post_retryable

__all__ = ["Created", "Creator", "Halt", "Recorder"]

log = logging.getLogger("kling_async")


class Recorder(Protocol):
    """What a batch writes down around a POST (its journal); every method may raise ``JournalError``."""

    async def sending(self) -> None:
        """The POST is about to leave (durable before it does)."""

    async def created(self, task_id: str, status: str) -> None:
        """The POST created this task."""

    async def unsent(self, error: KlingError) -> None:
        """The POST provably created nothing and may be tried again."""

    async def refused(self, error: KlingError) -> None:
        """The POST provably created nothing and will not be tried again (a 4xx)."""

    async def uncertain(self, error: SubmitUncertainError) -> None:
        """A task may or may not exist."""


@dataclass(frozen=True, slots=True)
class Created:
    """A POST's created task: its handle, and the journal's failure to record it, if any."""

    handle: TaskHandle
    record_error: JournalError | None = None


class Halt:
    """A batch's word that none of its POSTs may leave any more (``Batch.stop_submitting``).

    Read where a try would leave: before its wait for the limiter, after it, and after the journal's
    ``sending`` record (a slow disk or database), so a submission still waiting then ends unsent and
    gives back its turn on the wire and its token; a POST already on its way runs to its answer. Waits
    that may be long and are rare (a backoff between tries, an async input's next item, a ``Retry-After``
    pause or a distant token in the limiter) are cut short.
    """

    __slots__ = ("_scopes", "halted")

    def __init__(self) -> None:
        self.halted = False
        self._scopes: set[anyio.CancelScope] = set()

    def halt(self) -> None:
        self.halted = True
        for scope in self._scopes:
            scope.cancel()

    @contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A block that ``halt`` cancels (at once if it came before); see ``cancelled_caught``."""
        with anyio.CancelScope() as scope:
            if self.halted:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)


@dataclass(frozen=True, slots=True)
class _Submission:
    """What one create POST is about: where it goes, what it sends, and who records it."""

    endpoint: Endpoint
    request: Request
    body: bytes
    key: str | None
    ticket: Ticket
    recorder: Recorder | None
    halt: Halt | None


class _Try:
    """One POST try handed from the caller to a sender: the answer comes back through ``answer``.

    ``answer`` is a bare asyncio future (aiohttp ties the client to asyncio): cancelling the caller that
    awaits it cancels it, which tells the sender that nobody will read what it sends back.
    """

    __slots__ = ("answer", "submission")

    def __init__(self, submission: _Submission, answer: asyncio.Future[Created]) -> None:
        self.submission = submission
        self.answer = answer

    @property
    def abandoned(self) -> bool:
        """Whether the caller stopped waiting (it was cancelled)."""
        return self.answer.cancelled()

    def succeed(self, result: Created) -> None:
        if not self.answer.done():
            self.answer.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.answer.done():
            self.answer.set_exception(error)


class Creator:
    """Sends create POSTs by the POST rule and records what they created (see the module docs)."""

    def __init__(self, *, pipeline: Pipeline, registry: TaskRegistry, events: EventHub) -> None:
        self._pipeline = pipeline
        self._registry = registry
        self._events = events
        self._group: TaskGroup | None = None
        self._tries: deque[_Try] = deque()  # handed over, not yet taken by a sender
        self._waiting: list[asyncio.Future[None]] = []  # idle senders, each woken by its future
        self._senders = 0
        self._tasks: set[asyncio.Task[object]] = set()  # the senders' tasks, until they are done
        # The scopes of senders sending now, which shield them from the client's group: a scope
        # enclosing the whole client cancels that group too (see ``_sender``).
        self._sending: set[anyio.CancelScope] = set()
        self._stopping = False  # the client is closing: no new POST leaves
        self._closing = False  # ... and idle senders end
        self._on_wire = 0
        self._idle = anyio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<Creator on_wire={self._on_wire} senders={self._senders}>"

    def open(self, group: TaskGroup) -> None:
        """Run POSTs in ``group`` (the client's) from now on."""
        self._group = group

    async def drain(self, timeout: float) -> None:
        """Wait until no POST is on the wire, at most ``timeout`` seconds, then let idle senders end.

        Senders still sending after that are cancelled (their shields first, then the client's group).
        From the start no new POST leaves: a submission that gets its place on the wire while this waits
        is refused, unsent.
        """
        self._stopping = True
        with self._pipeline.clock.move_on_after(timeout):
            await self._idle.wait()
        self._closing = True
        for scope in self._sending:  # past the bound: sending ends with the client's group
            scope.cancel()
        waiting, self._waiting = self._waiting, []
        for wake in waiting:
            if not wake.done():
                wake.set_result(None)
        if self._on_wire:
            log.warning("closing with %d create POSTs still unanswered", self._on_wire)
        elif self._tasks:
            # Idle senders end at their next step. Waiting for them to be done (not merely told) leaves
            # the client's group without children when it closes, as it was before senders existed.
            await asyncio.wait(self._tasks)

    async def create(
        self,
        endpoint: Endpoint,
        request: Request,
        body: bytes,
        *,
        key: str | None,
        ticket: Ticket,
        recorder: Recorder | None = None,
        halt: Halt | None = None,
    ) -> Created:
        """POST one request; retry only while the answers prove nothing was created.

        Raises:
            NotSubmittedError: ``halt`` was raised before the POST (or its next try) left.
            SubmitUncertainError: the POST may have created a task but its answer is unknown (recorded).
            APIError: the server refused it (nothing was created).
            TransportError: no connection could be opened, after the last try.
            JournalError: the ``sending`` record failed (nothing was sent).
        """
        if self._group is None:
            raise RuntimeError("the client is not open")
        submission = _Submission(endpoint, request, body, key, ticket, recorder, halt)
        pipeline = self._pipeline
        attempts = pipeline.attempts()
        error: KlingError | None = None  # the last try's, which provably created nothing
        while True:
            if halt is not None and halt.halted:
                raise _not_submitted(error)
            try:
                await pipeline.limiter.acquire(Lane.SUBMIT, retry=attempts.ahead, halt=halt)
            except Halted:  # halted while it waited out a pause or a distant token
                raise _not_submitted(error) from None
            if halt is not None and halt.halted:  # halted while it waited for its turn
                pipeline.limiter.unused()  # the next one waiting has it at once, and ends as this one
                raise _not_submitted(error)
            if self._stopping:  # sent now, it would be cut off mid-flight by the closing client
                pipeline.limiter.release()
                raise ClientClosed("the client closed before this POST was sent")
            attempts.start()
            # From here the POST may leave: the try belongs to the client, not to the caller.
            attempt = _Try(submission, asyncio.get_running_loop().create_future())
            self._hand_over(attempt)
            try:
                return await attempt.answer
            except _NothingCreated as nothing:
                error = nothing.error
                # Raised here, it holds this frame, which will hold the next try's answer and its handle:
                # kept from collection (and its in-flight slot from release) until the cyclic collector
                # runs, since the failed try's frames hold it too.
                nothing.__traceback__ = None
            except BaseException:
                answer = attempt.answer
                if answer.done() and not answer.cancelled() and answer.exception() is None:
                    # Answered, but the caller was cancelled before it could take the handle.
                    _log_abandoned(answer.result().handle, key)
                raise
            delay = pipeline.retry_delay(
                attempts, error, post_retryable, method="POST", path=endpoint.create_path
            )
            if halt is None:
                await pipeline.clock.sleep(delay)
            else:
                with halt.interruptible():
                    await pipeline.clock.sleep(delay)

    def _hand_over(self, attempt: _Try) -> None:
        """Give the try to an idle sender, or start one (from the caller's task: nothing here awaits)."""
        if self._on_wire == 0:
            self._idle = anyio.Event()
        self._on_wire += 1
        self._tries.append(attempt)
        while self._waiting:
            wake = self._waiting.pop()
            if not wake.done():
                wake.set_result(None)
                return
        assert self._group is not None
        try:
            self._group.start_soon(self._sender)
        except BaseException:  # the client's group is closed: nothing was sent
            self._tries.remove(attempt)
            self._sent()
            self._pipeline.limiter.release()
            raise
        self._senders += 1

    async def _sender(self) -> None:
        """Run handed-over tries one after another; wait for the next one when there is none."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        tries, loop = self._tries, asyncio.get_running_loop()
        assert self._group is not None  # senders are started in it
        group = self._group.cancel_scope
        attempt: _Try | None = None
        try:
            while True:
                if tries:
                    # Shielded: a cancel scope around the caller's whole `async with KlingClient()`
                    # (anyio's move_on_after, a task group's cancel) cancels the client's group, this
                    # task with it, while a POST is on the wire. The closing client waits for the POST
                    # instead (bounded: ``drain`` cancels these scopes past its bound). Idle, a sender
                    # is not shielded, and takes no new try once its group is cancelled (a background
                    # task failed), so a group cancelled for any other reason never waits for it.
                    with anyio.CancelScope(shield=True) as sending:
                        self._sending.add(sending)
                        try:
                            while tries and not group.cancel_called:
                                attempt = tries.popleft()
                                await self._send(attempt)
                                attempt = None
                        finally:
                            self._sending.discard(sending)
                if self._closing:
                    return
                wake = loop.create_future()
                self._waiting.append(wake)
                await wake
        except BaseException as exc:
            # The client's group is cancelled: whoever still waits hears of it, and tries that no
            # sender will take give their place on the wire back.
            if attempt is not None:
                attempt.fail(exc)
            if self._senders == 1:
                while tries:
                    left = tries.popleft()
                    left.fail(ClientClosed("the client closed before this POST was sent"))
                    self._sent()
                    self._pipeline.limiter.release()
            raise
        finally:
            self._senders -= 1

    async def _send(self, attempt: _Try) -> None:
        try:
            attempt.succeed(await self._try_once(attempt, attempt.submission))
        except Exception as exc:
            if attempt.abandoned and isinstance(exc, SubmitUncertainError):
                _log_abandoned_uncertain(exc, attempt.submission.key)
            attempt.fail(exc)
        except BaseException as exc:
            attempt.fail(exc)
            raise  # the client is closing: its scope is cancelled
        finally:
            self._sent()

    def _sent(self) -> None:
        self._on_wire -= 1
        if self._on_wire == 0:
            self._idle.set()

    async def _try_once(self, attempt: _Try, submission: _Submission) -> Created:
        pipeline = self._pipeline
        endpoint, key, recorder = submission.endpoint, submission.key, submission.recorder
        if recorder is not None:
            try:
                await recorder.sending()
            except BaseException:
                pipeline.limiter.release()
                raise
            if submission.halt is not None and submission.halt.halted:
                # Halted while the record was written (a slow disk or database): it says unsent now.
                pipeline.limiter.unused()
                error = _not_submitted(None)
                await recorder.unsent(error)
                raise error
        try:
            answer = await pipeline.exchange("POST", endpoint.create_path, body=submission.body)
        except KlingError as error:
            if post_created_nothing(error):
                if recorder is not None:
                    await (recorder.unsent if post_retryable(error) else recorder.refused)(error)
                raise _NothingCreated(error) from error
            where = "" if isinstance(error, TransportError) else f"POST {endpoint.create_path}: "
            raise await self._uncertain(
                f"{where}{error}; a task may have been created, so it was not resent",
                endpoint,
                key,
                recorder,
            ) from error
        try:
            status = decode_created(answer)
            checked_task_id(status.task_id)  # an id we could never ask about is no task to us
        except (TransportError, InvalidRequestError) as exc:
            raise await self._uncertain(
                f"POST {endpoint.create_path} answered 2xx without a usable task ({exc})",
                endpoint,
                key,
                recorder,
            ) from exc
        return await self._created(attempt, submission, status)

    async def _created(self, attempt: _Try, submission: _Submission, status: TaskStatus) -> Created:
        registry = self._registry
        endpoint, key, recorder = submission.endpoint, submission.key, submission.recorder
        if registry.get(status.task_id) is not None:
            # A new POST must create a new task; an id we already follow cannot be told apart.
            clash = await self._uncertain(
                f"POST {endpoint.create_path} answered with task {status.task_id}, which another"
                " submission already has; this item's own task, if any, is unknown",
                endpoint,
                key,
                recorder,
            )
            clash.task_id = status.task_id
            raise clash
        # An answer that is already COMPLETED carries its videos: the handle keeps them.
        handle = registry.attach(
            endpoint,
            status.task_id,
            status.status,
            started=self._pipeline.clock.now(),
            request=submission.request,
            urls=status.generated,
        )
        registry.follow(handle, submission.ticket)
        # Announced before the journal records it: a journal that fails, hangs or is cut off by the
        # closing client must not be the only one to know the id.
        if self._events.active:
            self._events.publish(TaskSubmitted(task_id=handle.task_id, model=endpoint.model, key=key))
        record_error: JournalError | None = None
        if recorder is not None:
            try:
                await recorder.created(handle.task_id, handle.status or CREATED)
            except JournalError as exc:
                exc.task_id = handle.task_id
                record_error = exc
            except BaseException:
                log.warning(
                    "task %s was created for item %s but the journal was stopped before recording it;"
                    " it runs on, reachable with client.task(%r, model=%r)",
                    handle.task_id,
                    key,
                    handle.task_id,
                    handle.model,
                    extra={"task_id": handle.task_id},
                )
                raise
        if attempt.abandoned:
            _log_abandoned(handle, key)
        return Created(handle, record_error)

    async def _uncertain(
        self, message: str, endpoint: Endpoint, key: str | None, recorder: Recorder | None
    ) -> SubmitUncertainError:
        error = SubmitUncertainError(message, model=endpoint.model, key=key)
        if recorder is not None:
            try:
                await recorder.uncertain(error)
            except JournalError as exc:  # the answer is unknown either way; say both
                log.warning("could not record an uncertain POST of item %s: %s", key, exc)
        return error


class _NothingCreated(Exception):
    """A try whose POST provably created nothing: the caller may try again (carries the error)."""

    def __init__(self, error: KlingError) -> None:
        super().__init__(str(error))
        self.error = error


def _not_submitted(error: KlingError | None) -> NotSubmittedError:
    if error is None:
        return NotSubmittedError("not sent: the batch stopped submitting before this item's POST left")
    return NotSubmittedError(
        "not sent again: the batch stopped submitting before this item's next try (the last one created"
        f" nothing: {error})"
    )


def _log_abandoned_uncertain(error: SubmitUncertainError, key: str | None) -> None:
    # Nobody is left to catch the SubmitUncertainError: a lone submit() says it here. A batch item's
    # journal records it uncertain.
    log.log(
        logging.WARNING if key is None else logging.INFO,
        "a POST for a caller that was cancelled may have created a task (%s); client.list_tasks() shows"
        " the account's newest tasks",
        error,
        extra={"uncertain_model": error.model},
    )


def _log_abandoned(handle: TaskHandle, key: str | None) -> None:
    # A lone submit() lost its handle: worth a warning. A batch item's id is in the journal and the
    # TaskSubmitted event, and leaving a batch early is deliberate.
    log.log(
        logging.WARNING if key is None else logging.INFO,
        "task %s was created for a caller that was cancelled; it runs on, reachable with"
        " client.task(%r, model=%r)",
        handle.task_id,
        handle.task_id,
        handle.model,
        extra={"task_id": handle.task_id},
    )
