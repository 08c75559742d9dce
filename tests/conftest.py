"""Shared fixtures: a simulator on loopback and a client pointed at it, both fast (time-scaled)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

from kling_async import KlingClient, PollPolicy, RetryPolicy
from kling_async.testing import Simulator

# The tests send Ctrl-Cs to the commands they start, as a terminal does. A suite started as a background
# job of a script (`pytest &`, as CI may be) inherits SIGINT ignored, and so would those commands, which
# rightly keep an inherited ignore (test_cli: a batch started with SIGINT ignored runs on through a
# Ctrl-C). A handler here is reset to the default in every child at exec, as a terminal's shell starts it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# A 60 s generation takes 60 ms; the poll policy is scaled the same way.
TIME_SCALE = 0.001
FAST_POLL = PollPolicy(initial=0.015, maximum=0.03, multiplier=1.5, timeout=10.0)
FAST_RETRY = RetryPolicy(attempts=8, initial=0.001, maximum=0.02, deadline=10.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(time_scale=TIME_SCALE, generation_seconds=60.0, queue_seconds=2.0) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[KlingClient]:
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as c:
        yield c


def client_side_tasks() -> set[asyncio.Task[object]]:
    """Running tasks, less the in-process simulator's connection handlers (aiohttp's server side)."""
    return {task for task in asyncio.all_tasks() if not _is_server_handler(task)}


def _is_server_handler(task: asyncio.Task[object]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_filename.endswith("web_protocol.py")
