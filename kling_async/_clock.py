"""The one place that reads time and sleeps, so tests can swap in a fake clock."""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """What code needs from time: a monotonic reading, the wall-clock time for records, and a sleep."""

    def now(self) -> float: ...

    def wall(self) -> float:
        """Unix time in seconds: for timestamps a person reads (journal rows), never for measuring waits."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Monotonic time, Unix time and anyio's sleep."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


SYSTEM_CLOCK: Clock = SystemClock()
