"""A clock whose time moves only when someone sleeps, so waiting code is tested without waiting."""

from __future__ import annotations

import anyio.lowlevel


class FakeClock:
    """Monotonic time that jumps forward by exactly what each sleep asks for."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.time

    def wall(self) -> float:
        """Unix time that moves with ``now()``: 2023-11-14 22:13:20 UTC at the start."""
        return 1_700_000_000.0 + self.time - 1000.0

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.time += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()
