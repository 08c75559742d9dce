"""Typed events: what the client did and saw, for progress bars, logs and tests.

Events are published to every open ``client.events()`` stream. Publishing never waits: a consumer that
falls more than ``_BUFFER`` events behind misses the newest ones until it catches up (counted in
``EventHub.dropped``), so a slow progress bar can never slow a batch down.
"""

from __future__ import annotations

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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


class EventStream:
    """Events in the order they happened; subscribed when created, so nothing between is missed.

    Iterate it with ``async for``; it ends when the client closes, or call ``aclose()`` to stop early.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[Event]) -> None:
        self._receive = receive

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            raise StopAsyncIteration from None

    def __del__(self) -> None:
        # A reader that broke out of its loop early has no stream to leave open.
        self._receive.close()

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._receive.close()


class EventHub:
    """Fans each event out to every subscriber without ever blocking the publisher."""

    def __init__(self) -> None:
        self._streams: list[MemoryObjectSendStream[Event]] = []
        self.dropped = 0

    @property
    def active(self) -> bool:
        """Whether anyone listens (so callers can skip building events nobody reads)."""
        return bool(self._streams)

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber that has room for it."""
        closed: list[MemoryObjectSendStream[Event]] = []
        for stream in self._streams:
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                self.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                closed.append(stream)
        # Removed after the loop: removing while iterating skipped the next subscriber.
        for stream in closed:
            self._streams.remove(stream)
            stream.close()

    def subscribe(self) -> EventStream:
        """A stream of every event from this call on, until the hub closes."""
        send, receive = anyio.create_memory_object_stream[Event](_BUFFER)
        self._streams.append(send)
        return EventStream(receive)

    def close(self) -> None:
        """End every subscriber's stream (they finish reading what is buffered)."""
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()
