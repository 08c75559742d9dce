"""A clock whose time moves only when someone sleeps, so waiting code is tested without waiting."""

from __future__ import annotations

import math

import anyio.lowlevel


class FakeClock:
    """Monotonic time that jumps forward by exactly what each sleep asks for (one sleeper at a time).

    For code with several tasks waiting at once, use ``kling_async.testing.FakeClock``, moved by hand.
    """

    def __init__(self) -> None:
        self.time = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.time

    def wall(self) -> float:
        return 1_700_000_000.0 + self.time

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.time += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        # Time moves only by sleeping, so a deadline can only pass during a sleep: none is armed here.
        assert math.isinf(seconds), "this clock has no deadlines; use kling_async.testing.FakeClock"
        return anyio.CancelScope()
