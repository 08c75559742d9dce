"""The one place that reads time and waits, so tests can swap in a fake clock.

Everything in the package that reads a monotonic time, a wall-clock time, sleeps or bounds a wait by a
deadline does it through a ``Clock``; ``kling_async.testing.FakeClock`` moves time by hand.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """What waiting code needs from time."""

    def now(self) -> float:
        """Monotonic seconds, for intervals and deadlines."""
        ...

    def wall(self) -> float:
        """Unix time in seconds, for timestamps (journal rows, webhook signatures, HTTP dates)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (at least a checkpoint, even for 0)."""
        ...

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope that cancels itself ``seconds`` from now (``inf``: never)."""
        ...


class SystemClock:
    """Monotonic time, the system's wall clock, and anyio's sleep and deadlines."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        return anyio.move_on_after(seconds)

    def __repr__(self) -> str:
        return "<SystemClock>"


SYSTEM_CLOCK: Clock = SystemClock()
