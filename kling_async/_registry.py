"""Who owns a created task: the registry of handles, the one fan-out of status changes, and in-flight slots.

* ``Slots`` is the only owner of the ``max_in_flight`` cap. A ``Ticket`` is one slot: taken before a POST,
  handed over to the task the POST created, released exactly once (releasing again is harmless), by
  whichever comes first: the task is seen finished, the batch that took it ends, or nothing follows
  the task any more (its handle was garbage-collected).
* ``TaskRegistry`` keeps one live handle per task id (weakly: a handle nobody holds goes away, and the id
  can always be re-attached), holds webhook deliveries that arrive before the POST's own answer
  (bounded, oldest evicted), and is the **single fan-out** of status changes: a handle that sees a new
  status tells the registry, which frees the task's slot when it is terminal, publishes
  ``StatusChanged`` and calls each subscriber (a batch's tracker and journal).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import anyio

from ._clock import Clock
from ._endpoints import Endpoint
from ._events import EventHub, StatusChanged
from ._models import COMPLETED, TERMINAL_STATUSES, Request, TaskStatus
from ._polling import PollPolicy, TaskHandle, Timings

__all__ = ["DetailListener", "Slots", "StatusListener", "TaskRegistry", "Ticket"]

log = logging.getLogger("kling_async")

# Deliveries that beat their POST's answer, kept until the handle exists (the oldest go first), and for at
# most EARLY_SECONDS: a POST answers within its request timeout, so an older one is for a task whose handle
# never came (its caller was cancelled before the answer, or another client made it).
EARLY_DELIVERIES = 10_000
EARLY_SECONDS = 600.0

StatusListener = Callable[[TaskHandle, "str | None"], None]
# Called with a handle whose task a status without its result URLs said COMPLETED: fetch its detail now.
DetailListener = Callable[[TaskHandle], None]


class Ticket:
    """One in-flight slot; ``release()`` gives it back once, however many owners call it."""

    __slots__ = ("_slots", "lone", "released")

    def __init__(self, slots: Slots | None) -> None:
        self._slots = slots
        self.released = slots is None
        self.lone = False  # taken by a ``submit()`` (not a batch, whose tracker follows its tasks)

    def release(self) -> None:
        """Give the slot back (no-op after the first call)."""
        if not self.released:
            self.released = True
            assert self._slots is not None
            self._slots._give_back()

    def __repr__(self) -> str:
        return f"<Ticket {'released' if self.released else 'held'}>"


_FREE = Ticket(None)  # the ticket of a client without a cap: nothing to take or give back


class Slots:
    """The ``max_in_flight`` cap: how many created tasks may be generating at once (None: no cap)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._semaphore = anyio.Semaphore(limit) if limit is not None else None
        self._by_task: dict[str, Ticket] = {}

    def __repr__(self) -> str:
        if self._semaphore is None:
            return "<Slots uncapped>"
        return f"<Slots {self.held}/{self.limit} held>"

    @property
    def held(self) -> int:
        """Slots taken and not yet given back."""
        if self._semaphore is None or self.limit is None:
            return 0
        return self.limit - self._semaphore.value

    @property
    def full(self) -> bool:
        """Whether a ``take`` would wait."""
        return self._semaphore is not None and self._semaphore.value == 0

    def lone_holders(self) -> list[str]:
        """The tasks holding slots that ``submit()`` took."""
        return [task_id for task_id, ticket in self._by_task.items() if ticket.lone]

    async def take(self) -> Ticket:
        """Wait for a free slot and return it as a ticket (at once without a cap)."""
        if self._semaphore is None:
            return _FREE
        await self._semaphore.acquire()
        return Ticket(self)

    def _give_back(self) -> None:
        assert self._semaphore is not None
        self._semaphore.release()

    def hand_over(self, ticket: Ticket, task_id: str) -> None:
        """The task now holds the ticket until it finishes (released at once if the ticket already was)."""
        if not ticket.released:
            self._by_task[task_id] = ticket

    def finished(self, task_id: str) -> None:
        """The task stopped generating: its slot comes back."""
        ticket = self._by_task.pop(task_id, None)
        if ticket is not None:
            ticket.release()


class TaskRegistry:
    """Handles by task id, early deliveries, and the fan-out of every status change (see the module docs).

    Handles created here get this registry as their owner: it gives them the poll policy, learned timings,
    the clock and the status request, and hears each status they see.
    """

    def __init__(
        self,
        *,
        poll: PollPolicy,
        clock: Clock,
        events: EventHub,
        slots: Slots,
        fetch: Callable[[Endpoint, str], Awaitable[TaskStatus]],
        safety_net: bool,
    ) -> None:
        self._poll = poll
        self._clock = clock
        self._timings = Timings()
        self._events = events
        self.slots = slots
        self._fetch = fetch
        self.safety_net = safety_net
        self._handles: weakref.WeakValueDictionary[str, TaskHandle] = weakref.WeakValueDictionary()
        self._early: OrderedDict[str, tuple[TaskStatus, float]] = OrderedDict()  # with when it came
        self._listeners: list[StatusListener] = []
        self._detail_listeners: list[DetailListener] = []

    def __repr__(self) -> str:
        return f"<TaskRegistry handles={len(self._handles)} early={len(self._early)} {self.slots!r}>"

    # -- what handles need (the HandleOwner protocol of _polling) ------------------------------------------

    @property
    def poll(self) -> PollPolicy:
        return self._poll

    @property
    def timings(self) -> Timings:
        return self._timings

    @property
    def clock(self) -> Clock:
        return self._clock

    async def fetch_status(self, endpoint: Endpoint, task_id: str) -> TaskStatus:
        return await self._fetch(endpoint, task_id)

    def status_changed(self, handle: TaskHandle, previous: str | None) -> None:
        """The one fan-out: slot, ``StatusChanged`` event, then every subscriber (each on its own)."""
        if handle.done:
            self.slots.finished(handle.task_id)
        if self._events.active:
            self._events.publish(
                StatusChanged(
                    task_id=handle.task_id, model=handle.model, status=handle.status or "", previous=previous
                )
            )
        # A copy: a subscriber may unsubscribe itself (or another) while being called.
        for listener in tuple(self._listeners):
            try:
                listener(handle, previous)
            except Exception:  # one subscriber's bug must not hide the change from the others
                log.exception("status listener %r failed on task %s", listener, handle.task_id)

    # -- handles -------------------------------------------------------------------------------------------

    def attach(
        self,
        endpoint: Endpoint,
        task_id: str,
        status: str | None,
        *,
        started: float | None,
        request: Request | None,
        urls: tuple[str, ...] = (),
    ) -> TaskHandle:
        """The handle of a task (a new one, or the live one for that id), with any early delivery applied.

        A live handle of another family that never had an answer (``client.task`` given the wrong
        model, its checks all 404) gives way to one of this family: a task id is reachable again with
        the right model, without every holder of the wrong handle letting go of it first.
        """
        existing = self._handles.get(task_id)
        if existing is not None and (
            existing.status is not None or existing._endpoint.family_path == endpoint.family_path
        ):
            return existing
        duration = getattr(request, "duration", None) if request is not None else None
        handle = TaskHandle(
            self,
            endpoint,
            task_id,
            status=status,
            urls=urls,
            started=started,
            kind=(endpoint.family_path, endpoint.model, duration),
        )
        self._handles[task_id] = handle
        early = self._early.pop(task_id, None)
        if early is not None:
            handle._observe(early[0])
        return handle

    def get(self, task_id: str) -> TaskHandle | None:
        """The live handle of a task id, if anything holds one."""
        return self._handles.get(task_id)

    def follow(self, handle: TaskHandle, ticket: Ticket) -> None:
        """The task holds ``ticket`` until it finishes or its handle is no longer held by anyone."""
        if ticket.released:
            return
        if handle.done:
            ticket.release()
            return
        self.slots.hand_over(ticket, handle.task_id)
        weakref.finalize(handle, self.slots.finished, handle.task_id)

    def observe(self, status: TaskStatus) -> None:
        """A status from outside a handle (a webhook delivery): to its handle, or kept for a while.

        A COMPLETED status without its result URLs is not taken as the end (the task would end with no
        video): whoever follows the task fetches its detail now. A terminal status kept for a handle to
        come is not replaced by a later non-terminal one (deliveries may come out of order).
        """
        handle = self._handles.get(status.task_id)
        if status.status == COMPLETED and not status.generated:
            if handle is not None and not handle.done:
                handle._check_soon()
                for listener in tuple(self._detail_listeners):
                    try:
                        listener(handle)
                    except Exception:
                        log.exception("detail listener %r failed on task %s", listener, handle.task_id)
            return
        if handle is not None:
            handle._observe(status)
            return
        kept = self._early.pop(status.task_id, None)
        if (
            kept is not None
            and kept[0].status in TERMINAL_STATUSES
            and status.status not in TERMINAL_STATUSES
        ):
            status = kept[0]
        now = self._clock.now()
        self._early[status.task_id] = (status, now)
        early = self._early
        while len(early) > EARLY_DELIVERIES or now - next(iter(early.values()))[1] > EARLY_SECONDS:
            early.popitem(last=False)

    # -- subscribers ---------------------------------------------------------------------------------------

    def subscribe_detail(self, listener: DetailListener) -> Callable[[], None]:
        """Call ``listener(handle)`` when a status without result URLs says the handle's task COMPLETED
        (its detail has the URLs); returns the unsubscribe function."""
        self._detail_listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._detail_listeners:
                self._detail_listeners.remove(listener)

        return unsubscribe

    def subscribe(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(handle, previous)`` on every status change; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe
