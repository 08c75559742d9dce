"""A clock whose time moves only when a test says so."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """A ``Clock`` for tests: ``now()`` stands still until ``advance()`` moves it.

    Sleeps and deadlines (``move_on_after``) fire in time order as ``advance`` passes them, and after
    each firing every task gets to run until it blocks again, so a test reads as a timeline::

        clock = FakeClock()
        async with KlingClient(..., clock=clock) as client:
            ...
            await clock.advance(30)   # 30 simulated seconds, no real waiting

    The client's pace runs on this clock too: a client not told ``requests_per_second`` opens at 50
    requests a second, so a second request right after a first waits until ``advance`` moves time on
    (or tell the client a rate with a ``burst``).

    Args:
        start: the initial monotonic reading.
        wall: the initial Unix time (moves with ``now``).
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f} timers={len(self._timers)}>"

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    @property
    def next_due(self) -> float | None:
        """When the earliest pending sleep or deadline fires, or None when nothing waits."""
        return self._timers[0][0] if self._timers else None

    def _call_at(self, due: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (due, next(self._seq), callback))

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0 or math.isnan(seconds):
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        self._call_at(self._now + seconds, woken.set)
        await woken.wait()

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        if not math.isinf(seconds):
            self._call_at(self._now + max(0.0, seconds), scope.cancel)
        return scope

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every sleep and deadline due on the way, in order."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"seconds: a non-negative number (got {seconds!r})")
        target = self._now + seconds
        await anyio.wait_all_tasks_blocked()
        while self._timers and self._timers[0][0] <= target:
            due, _, callback = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            callback()
            await anyio.wait_all_tasks_blocked()
        self._now = target
        await anyio.wait_all_tasks_blocked()
