"""Typed events: what the client did and saw, for progress bars, logs and tests.

Events are published to every open ``client.events()`` stream. Publishing never waits: a consumer that
falls more than ``_BUFFER`` events behind loses the oldest unread ones (counted in ``EventHub.dropped``),
so a slow progress bar can never slow a batch down, and what it shows is recent.
"""

from __future__ import annotations

from collections import deque

import anyio
import msgspec

__all__ = [
    "Event",
    "EventHub",
    "EventStream",
    "RateLimited",
    "RequestRetried",
    "StatusChanged",
    "TaskSubmitted",
]

_BUFFER = 10_000


class TaskSubmitted(msgspec.Struct, frozen=True, tag="submitted"):
    """A POST created a task."""

    task_id: str
    model: str
    key: str | None = None


class StatusChanged(msgspec.Struct, frozen=True, tag="status"):
    """A task's status changed (seen by a status request, a list sweep or a webhook)."""

    task_id: str
    model: str
    status: str
    previous: str | None


class RequestRetried(msgspec.Struct, frozen=True, tag="retry"):
    """A request failed and will be sent again after ``delay`` seconds."""

    method: str
    path: str
    attempt: int
    delay: float
    error: str


class RateLimited(msgspec.Struct, frozen=True, tag="rate_limited"):
    """The server answered 429; ``rate`` is the client's pace after it (None: not paced).

    ``headers`` are the answer's rate-limit headers (``Retry-After``, ``RateLimit-*``, ``X-RateLimit-*``)
    as the server spelt them; empty when it sent none.
    """

    retry_after: float | None
    rate: float | None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


Event = TaskSubmitted | StatusChanged | RequestRetried | RateLimited


class _Subscription:
    """One reader's buffer: bounded, the oldest event going first when it is full."""

    __slots__ = ("open", "queue", "ready")

    def __init__(self) -> None:
        self.queue: deque[Event] = deque(maxlen=_BUFFER)
        self.ready = anyio.Event()
        self.open = True

    def close(self) -> None:
        self.open = False
        self.ready.set()


class EventStream:
    """Events in the order they happened; subscribed when created, so nothing between is missed.

    Iterate it with ``async for``; it ends when the client closes (after what is buffered), or call
    ``aclose()`` to stop early. A reader more than 10,000 events behind loses the oldest unread ones.
    """

    def __init__(self, subscription: _Subscription) -> None:
        self._subscription = subscription

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        subscription = self._subscription
        while True:
            if subscription.queue:
                return subscription.queue.popleft()
            if not subscription.open:
                raise StopAsyncIteration
            if subscription.ready.is_set():
                subscription.ready = anyio.Event()
                continue
            await subscription.ready.wait()

    def __del__(self) -> None:
        # A reader that broke out of its loop early stops receiving; the hub forgets it at its next event.
        self._subscription.open = False

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._subscription.close()


class EventHub:
    """Fans each event out to every subscriber without ever blocking the publisher."""

    def __init__(self) -> None:
        self._subscriptions: list[_Subscription] = []
        self.dropped = 0

    @property
    def active(self) -> bool:
        """Whether anyone listens (so callers can skip building events nobody reads)."""
        return bool(self._subscriptions)

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every open subscriber; a full buffer drops its oldest event."""
        gone = False
        for subscription in self._subscriptions:
            if not subscription.open:
                gone = True
                continue
            queue = subscription.queue
            if len(queue) == queue.maxlen:
                self.dropped += 1
            queue.append(event)
            subscription.ready.set()
        if gone:
            # Rebuilt after the loop: removing while iterating skipped the next subscriber.
            self._subscriptions = [s for s in self._subscriptions if s.open]

    def subscribe(self) -> EventStream:
        """A stream of every event from this call on, until the hub closes."""
        subscription = _Subscription()
        self._subscriptions.append(subscription)
        return EventStream(subscription)

    def close(self) -> None:
        """End every subscriber's stream (they finish reading what is buffered)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
