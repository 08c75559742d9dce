"""Typed events: what the client did and saw, for progress bars, logs and tests.

Events are published to every open ``client.events()`` stream. Publishing never waits: a consumer that
falls more than ``_BUFFER`` events behind loses the oldest ones it has not read (counted in
``EventHub.dropped``), so a slow progress bar can never slow a batch down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

__all__ = [
    "Event",
    "EventHub",
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
    """The server answered 429; ``rate`` is the client's pace after it (None: not paced)."""

    retry_after: float | None
    rate: float | None


Event = TaskSubmitted | StatusChanged | RequestRetried | RateLimited


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
        for stream in self._streams:
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                self.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._streams.remove(stream)

    async def subscribe(self) -> AsyncIterator[Event]:
        """Yield events from now on until the hub closes."""
        send, receive = anyio.create_memory_object_stream[Event](_BUFFER)
        self._streams.append(send)
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            if send in self._streams:
                self._streams.remove(send)
            send.close()

    def close(self) -> None:
        """End every subscriber's stream (they finish reading what is buffered)."""
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()
