"""The baselines our client is measured against, each the usual way to write the pattern.

* **A**, ``AiohttpJsonClient`` with the geometric schedule: bare aiohttp and the stdlib ``json`` (through
  aiohttp's ``json=`` and ``resp.json()``), one ``ClientSession``; each task is POSTed, then its family
  status path is polled until a final status. The floor of what an asyncio client can cost.
* **B**, ``HttpxPydanticClient``: one ``httpx.AsyncClient`` with pydantic v2 models for the request
  (validated, dumped without unset fields) and the response (``model_validate_json``), the pattern of
  the official OpenAI, Runway and Luma SDKs. Same requests as A.
* **C**, ``AiohttpJsonClient`` with ``fixed_schedule(5 s)``: poll every task every 5 seconds, the pattern of
  Freepik's own MCP server. Same transport as A, so only the schedule differs.

A and B poll on the schedule our task handles use while they know nothing (``PollPolicy``: the first check
after ``initial``, each later wait ``multiplier`` times longer up to ``maximum``, each jittered), so that
CPU per request compares like with like. Like ours, each keeps at most ``WIRE`` requests on the wire (an
``asyncio.Semaphore``) over a pool of ``WIRE + 8`` connections; without the semaphore httpx queues every
waiting request inside its pool, whose bookkeeping grows with the queue, and that would not be fair to B.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import httpx
from pydantic import BaseModel, ConfigDict, Field

from kling_async import PollPolicy

from ._common import API_KEY, OMNI_CREATE, OMNI_FAMILY, WIRE, body_for

__all__ = [
    "AiohttpJsonClient",
    "Finished",
    "HttpxPydanticClient",
    "Schedule",
    "fixed_schedule",
    "geometric_schedule",
]

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
# A fresh iterator of waits (seconds) before each status check of one task.
Schedule = Callable[[], Iterator[float]]


def geometric_schedule(policy: PollPolicy) -> Schedule:
    """The waits our handles use before they have learned anything (``PollPolicy``)."""

    def waits() -> Iterator[float]:
        checks = 0
        while True:
            wait = (
                policy.initial
                if checks == 0
                else min(policy.maximum, policy.initial * policy.multiplier**checks)
            )
            yield wait * random.uniform(1.0 - policy.jitter, 1.0 + policy.jitter)
            checks += 1

    return waits


def fixed_schedule(period: float) -> Schedule:
    """The same wait before every check (baseline C: 5 s, time-scaled)."""

    def waits() -> Iterator[float]:
        while True:
            yield period

    return waits


@dataclass(frozen=True, slots=True)
class Finished:
    """A task a client saw finish, and when (``time.monotonic()``)."""

    task_id: str
    status: str
    url: str | None
    known_at: float


class AiohttpJsonClient:
    """Baseline A (and C, with a fixed schedule): aiohttp + stdlib json."""

    def __init__(self, base_url: str, schedule: Schedule, *, wire: int = WIRE) -> None:
        self._base = base_url.rstrip("/")
        self._schedule = schedule
        self._wire = asyncio.Semaphore(wire)
        self._connections = wire + 8
        self._session: aiohttp.ClientSession

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            headers={"x-freepik-api-key": API_KEY},
            timeout=aiohttp.ClientTimeout(total=60, sock_connect=10),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with (
            self._wire,
            self._session.request(method, self._base + path, json=body) as resp,
        ):
            resp.raise_for_status()
            data: dict[str, Any] = (await resp.json())["data"]
            return data

    async def create(self, index: int) -> str:
        """Create one task; its id."""
        task = await self._call("POST", OMNI_CREATE, body_for(index))
        task_id: str = task["task_id"]
        return task_id

    async def run_task(self, index: int) -> Finished:
        """Create one task, then poll it until it finishes."""
        task = await self._call("POST", OMNI_CREATE, body_for(index))
        task_id: str = task["task_id"]
        for wait in self._schedule():
            await asyncio.sleep(wait)
            task = await self._call("GET", f"{OMNI_FAMILY}/{task_id}")
            if task["status"] in TERMINAL:
                generated = task.get("generated") or [None]
                return Finished(task_id, task["status"], generated[0], time.monotonic())
        raise AssertionError("a schedule never ends")


# -- baseline B: httpx + pydantic v2 -------------------------------------------------------------------

Duration = Literal["3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15"]


class OmniTaskRequest(BaseModel):
    """The create request, validated the way an SDK generated from the OpenAPI document would."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = Field(default=None, max_length=2500)
    multi_prompt: list[str] | None = Field(default=None, max_length=6)
    image_url: str | None = None
    start_image_url: str | None = None
    end_image_url: str | None = None
    generate_audio: bool | None = None
    aspect_ratio: Literal["auto", "16:9", "9:16", "1:1"] | None = None
    duration: Duration | None = None
    webhook_url: str | None = None


class TaskData(BaseModel):
    task_id: str
    status: str
    generated: list[str] = Field(default_factory=list)


class TaskResponse(BaseModel):
    data: TaskData


class HttpxPydanticClient:
    """Baseline B: httpx.AsyncClient + pydantic v2 request and response models."""

    def __init__(self, base_url: str, schedule: Schedule, *, wire: int = WIRE) -> None:
        self._base = base_url.rstrip("/")
        self._schedule = schedule
        self._wire = asyncio.Semaphore(wire)
        self._connections = wire + 8
        self._client: httpx.AsyncClient

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            base_url=self._base,
            headers={"x-freepik-api-key": API_KEY},
            limits=httpx.Limits(
                max_connections=self._connections, max_keepalive_connections=self._connections
            ),
            timeout=httpx.Timeout(60.0, connect=10.0),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: BaseModel | None = None) -> TaskData:
        async with self._wire:
            resp = await self._client.request(
                method, path, json=None if body is None else body.model_dump(exclude_none=True)
            )
        resp.raise_for_status()
        return TaskResponse.model_validate_json(resp.content).data

    async def run_task(self, index: int) -> Finished:
        """Create one task, then poll it until it finishes."""
        task = await self._call("POST", OMNI_CREATE, OmniTaskRequest.model_validate(body_for(index)))
        for wait in self._schedule():
            await asyncio.sleep(wait)
            task = await self._call("GET", f"{OMNI_FAMILY}/{task.task_id}")
            if task.status in TERMINAL:
                url = task.generated[0] if task.generated else None
                return Finished(task.task_id, task.status, url, time.monotonic())
        raise AssertionError("a schedule never ends")
