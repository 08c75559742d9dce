"""Create POSTs, owned by the client so that no cancellation can lose a created task.

A submission's try has two halves. Waiting for the limiter (a token, a ``Retry-After`` pause) and the
backoff between tries belong to the caller: cancelling them sends nothing. Once the limiter lets the
POST go, the rest of the try runs in a task of the client's own task group: the ``sending`` record, the
POST, and the recording of its answer (registry, then the caller's ``Recorder`` - a batch's journal -
then the ``TaskSubmitted`` event). Whatever cancels the caller then (an ``asyncio.timeout``, a
``TaskGroup`` sibling, an anyio scope), that task runs to its end, so the task id is known and kept
before the caller sees its cancellation. Closing the client waits, bounded, for such POSTs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from ._endpoints import Endpoint
from ._errors import InvalidRequestError, JournalError, KlingError, SubmitUncertainError, TransportError
from ._events import EventHub, TaskSubmitted
from ._limits import Lane
from ._models import CREATED, Request, TaskStatus, decode_created
from ._pipeline import Pipeline
from ._polling import TaskHandle
from ._registry import TaskRegistry, Ticket
from ._retry import post_created_nothing, post_retryable

__all__ = ["Created", "Creator", "Recorder"]

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


@dataclass(frozen=True, slots=True)
class _Submission:
    """What one create POST is about: where it goes, what it sends, and who records it."""

    endpoint: Endpoint
    request: Request
    body: bytes
    key: str | None
    ticket: Ticket
    recorder: Recorder | None


class _Try:
    """One POST try handed from the caller to the client's task: the answer comes back through here."""

    __slots__ = ("abandoned", "done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Created | None = None
        self.error: BaseException | None = None
        self.abandoned = False

    def settle(self, result: Created | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Creator:
    """Sends create POSTs by the POST rule and records what they created (see the module docs)."""

    def __init__(self, *, pipeline: Pipeline, registry: TaskRegistry, events: EventHub) -> None:
        self._pipeline = pipeline
        self._registry = registry
        self._events = events
        self._group: TaskGroup | None = None
        self._on_wire = 0
        self._idle = anyio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<Creator on_wire={self._on_wire}>"

    def open(self, group: TaskGroup) -> None:
        """Run POSTs in ``group`` (the client's) from now on."""
        self._group = group

    async def drain(self, timeout: float) -> None:
        """Wait until no POST is on the wire, at most ``timeout`` seconds."""
        with self._pipeline.clock.move_on_after(timeout):
            await self._idle.wait()
        if self._on_wire:
            log.warning("closing with %d create POSTs still unanswered", self._on_wire)

    async def create(
        self,
        endpoint: Endpoint,
        request: Request,
        body: bytes,
        *,
        key: str | None,
        ticket: Ticket,
        recorder: Recorder | None = None,
    ) -> Created:
        """POST one request; retry only while the answers prove nothing was created.

        Raises:
            SubmitUncertainError: the POST may have created a task but its answer is unknown (recorded).
            APIError: the server refused it (nothing was created).
            TransportError: no connection could be opened, after the last try.
            JournalError: the ``sending`` record failed (nothing was sent).
        """
        group = self._group
        if group is None:
            raise RuntimeError("the client is not open")
        submission = _Submission(endpoint, request, body, key, ticket, recorder)
        attempts = self._pipeline.attempts()
        while True:
            attempts.start()
            await self._pipeline.limiter.acquire(Lane.SUBMIT)
            attempt = _Try()
            # From here the POST may leave: the try belongs to the client, not to the caller.
            if self._on_wire == 0:
                self._idle = anyio.Event()
            self._on_wire += 1
            group.start_soon(self._send, attempt, submission)
            try:
                await attempt.done.wait()
            except BaseException:
                attempt.abandoned = True
                if attempt.result is not None:
                    _log_abandoned(attempt.result.handle, key)
                raise
            if attempt.error is not None:
                if isinstance(attempt.error, _NothingCreated):
                    error = attempt.error.error
                    delay = self._pipeline.retry_delay(
                        attempts, error, post_retryable, method="POST", path=endpoint.create_path
                    )
                    await self._pipeline.clock.sleep(delay)
                    continue
                raise attempt.error
            assert attempt.result is not None
            return attempt.result

    async def _send(self, attempt: _Try, submission: _Submission) -> None:
        try:
            attempt.settle(await self._try_once(attempt, submission))
        except BaseException as exc:
            attempt.settle(error=exc)
            if not isinstance(exc, Exception):
                raise  # the client is closing: its scope is cancelled
        finally:
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
            endpoint.status_path(status.task_id)  # an id we could never ask about is no task to us
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
        record_error: JournalError | None = None
        if recorder is not None:
            try:
                await recorder.created(handle.task_id, handle.status or CREATED)
            except JournalError as exc:
                exc.task_id = handle.task_id
                record_error = exc
        if self._events.active:
            self._events.publish(TaskSubmitted(task_id=handle.task_id, model=endpoint.model, key=key))
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
