"""The one place that reads time and waits, so tests can swap in a fake clock.

Everything in the package that reads a monotonic time, a wall-clock time, sleeps or bounds a wait by a
deadline does it through a ``Clock``; ``kling_async.testing.FakeClock`` moves time by hand.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "grown"]


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


def grown(initial: float, multiplier: float, steps: int, ceiling: float) -> float:
    """A wait grown ``steps`` times from ``initial``: ``min(ceiling, initial * multiplier**steps)``, for any
    number of steps (the power alone overflows a float: ``1.5**1751``, after hours of status checks)."""
    if initial >= ceiling:
        return ceiling
    if initial <= 0 or steps <= 0 or multiplier <= 1:
        return initial
    if steps * math.log(multiplier) >= math.log(ceiling / initial):
        return ceiling
    return initial * multiplier**steps
