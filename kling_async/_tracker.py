"""Following many tasks at once: one heap of due checks, and list sweeps that cover 100 tasks a request.

The tracker checks the status of a batch's tasks from a heap of due times instead of a coroutine per
task (10,000 waiting tasks cost a heap entry each), and sweeps a family's list endpoint when many of its
tasks are tracked, fetching the detail only of tasks that the sweep shows COMPLETED. It hears every
status change through the registry's fan-out, whoever saw it (its own checks, a sweep, a webhook), and
hands each finished task to ``finish``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from ._endpoints import Endpoint
from ._errors import KlingError, NotFoundError, TaskTimeoutError
from ._models import COMPLETED, TaskStatus
from ._pipeline import Pipeline
from ._polling import TaskHandle
from ._registry import TaskRegistry

__all__ = ["SWEEP_MIN_TASKS", "Tracked", "Tracker"]

log = logging.getLogger("kling_async")

# A family is swept through its list endpoint once this many of its tasks are tracked.
SWEEP_MIN_TASKS = 8
_PAGE_SIZE = 100
# Extra pages read past the number needed to cover the tracked tasks (other tasks of the account
# are listed too, newest first).
_EXTRA_PAGES = 2
_SWEEPS_PER_GENERATION = 15
_DEEPER_PAGE_MIN = 10
# A task seen by a sweep within this many sweep intervals needs no status request of its own.
_SWEEP_COVERS = 3


@dataclass(slots=True, eq=False)
class Tracked:
    """One task the tracker follows for a batch item."""

    index: int
    key: str
    handle: TaskHandle
    deadline: float | None
    added: float
    checks: int = 0
    swept_at: float = -math.inf
    # Only the heap entry carrying the current token is live; rescheduling makes older ones stale.
    token: int = 0
    # A sweep showed the task COMPLETED: its detail is fetched at once, and only once.
    urgent: bool = False


Finish = Callable[[Tracked, "KlingError | None"], None]


class Tracker:
    """Checks the status of many tasks from one heap of due times, sweeping list endpoints when it pays."""

    def __init__(
        self,
        *,
        registry: TaskRegistry,
        pipeline: Pipeline,
        group: TaskGroup,
        finish: Finish,
    ) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._clock = registry.clock
        self._group = group
        self._finish = finish
        self._heap: list[tuple[float, int, int, Tracked]] = []
        self._seq = itertools.count()
        self._items: dict[str, Tracked] = {}
        self._by_family: dict[str, dict[str, Tracked]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._wake = anyio.Event()
        self._checks = anyio.Semaphore(max(4, pipeline.limiter.max_concurrency * 2))
        self._last_sweep: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<Tracker tracked={len(self._items)} due={len(self._heap)}>"

    def add(
        self, index: int, key: str, handle: TaskHandle, deadline: float | None, *, check_now: bool
    ) -> None:
        """Follow ``handle`` until it finishes or ``deadline`` passes; ``finish`` hears either."""
        item = Tracked(index, key, handle, deadline, added=self._clock.now())
        if handle.done:
            self._finish(item, _error_of(handle))
            return
        task_id = handle.task_id
        self._items[task_id] = item
        family = handle._endpoint.family_path
        self._by_family.setdefault(family, {})[task_id] = item
        self._endpoints.setdefault(family, handle._endpoint)
        if check_now:
            self._push(item, self._clock.now())
        else:
            self._schedule(item)

    def status_changed(self, handle: TaskHandle, previous: str | None) -> None:
        """A registry subscriber: a tracked task that finished leaves the heap and goes to ``finish``."""
        if handle.done:
            item = self._forget(handle.task_id)
            if item is not None:
                self._finish(item, _error_of(handle))

    def _schedule(self, item: Tracked) -> None:
        now = self._clock.now()
        handle = item.handle
        started = handle._started if handle._started is not None else now
        due = now + handle._next_delay(self._registry.poll, now - started, item.checks)
        if item.deadline is not None:
            due = min(due, item.deadline)
        self._push(item, due)

    def _push(self, item: Tracked, due: float) -> None:
        item.token += 1
        heapq.heappush(self._heap, (due, next(self._seq), item.token, item))
        self._wake.set()

    def _forget(self, task_id: str) -> Tracked | None:
        """Stop tracking a task; its item, or None when it was not tracked (any more)."""
        item = self._items.pop(task_id, None)
        if item is not None:
            self._by_family[item.handle._endpoint.family_path].pop(task_id, None)
        return item

    def _drop(self, item: Tracked, error: KlingError) -> None:
        if self._forget(item.handle.task_id) is not None:
            self._finish(item, error)

    async def run(self) -> None:
        """Forever: start the checks that are due, sweep families, sleep until the next due time."""
        clock = self._clock
        while True:
            now = clock.now()
            self._sweep_due(now)
            while self._heap and self._heap[0][0] <= now:
                _, _, token, item = heapq.heappop(self._heap)
                if token != item.token or item.handle.task_id not in self._items:
                    continue
                if item.deadline is not None and now >= item.deadline:
                    self._drop(item, self._timeout(item))
                    continue
                family = item.handle._endpoint.family_path
                if not item.urgent and item.swept_at > now - _SWEEP_COVERS * self._sweep_interval(family):
                    item.checks += 1
                    self._schedule(item)
                    continue
                await self._checks.acquire()
                self._group.start_soon(self._check, item)
            self._wake = anyio.Event()
            wait = self._heap[0][0] - clock.now() if self._heap else math.inf
            wait = min(wait, self._next_sweep_in(clock.now()))
            with clock.move_on_after(max(wait, 0.0)):
                await self._wake.wait()

    def _timeout(self, item: Tracked) -> TaskTimeoutError:
        handle = item.handle
        waited = item.deadline - item.added if item.deadline is not None else None
        return TaskTimeoutError(handle.task_id, last_status=handle.status, timeout=waited, model=handle.model)

    async def _check(self, item: Tracked) -> None:
        try:
            await item.handle.refresh()
        except NotFoundError as exc:
            self._drop(item, exc)
        except KlingError as exc:
            # The task still exists server-side: keep checking until its deadline.
            log.warning("status check for %s failed, will check again: %s", item.handle.task_id, exc)
        finally:
            self._checks.release()
            item.urgent = False
        if item.handle.task_id in self._items:
            item.checks += 1
            self._schedule(item)

    # -- list sweeping -------------------------------------------------------------------------------------

    def _sweep_interval(self, family: str) -> float:
        """Time between sweeps: a fifteenth of a typical generation (a sixth of the longest poll wait
        while nothing is known), so sweeping costs ~0.15 list requests per task and notices a finished
        task within a few percent of its generation time."""
        poll = self._registry.poll
        if self._registry.safety_net:
            return poll.safety_interval
        typical = self._registry.timings.typical(family)
        if typical is None:
            return poll.maximum / 6
        return min(poll.maximum, typical / _SWEEPS_PER_GENERATION)

    def _next_sweep_in(self, now: float) -> float:
        waits = [
            self._last_sweep.get(family, -math.inf) + self._sweep_interval(family) - now
            for family, items in self._by_family.items()
            if len(items) >= SWEEP_MIN_TASKS
        ]
        return max(0.0, min(waits)) if waits else math.inf

    def _sweep_due(self, now: float) -> None:
        for family, items in self._by_family.items():
            if len(items) < SWEEP_MIN_TASKS:
                continue
            if now - self._last_sweep.get(family, -math.inf) < self._sweep_interval(family):
                continue
            self._last_sweep[family] = now
            self._group.start_soon(self._sweep, family)

    async def _sweep(self, family: str) -> None:
        """List the family's tasks page by page until every tracked one was seen (or a page bound)."""
        tracked = self._by_family.get(family, {})
        pages = (len(tracked) + _PAGE_SIZE - 1) // _PAGE_SIZE + _EXTRA_PAGES
        unseen = set(tracked)
        now = self._clock.now()
        endpoint = self._endpoints[family]
        for page in range(1, pages + 1):
            try:
                listed = await self._pipeline.list_page(endpoint, page=page, page_size=_PAGE_SIZE)
            except KlingError as exc:
                log.warning("list sweep of %s failed; per-task checks go on: %s", family, exc)
                return
            for summary in listed:
                item = tracked.get(summary.task_id)
                if item is None:
                    continue
                unseen.discard(summary.task_id)
                item.swept_at = now
                if summary.status == COMPLETED:
                    # The list has no URLs: fetch the detail now (once, however many sweeps see it).
                    if not item.urgent:
                        item.urgent = True
                        self._push(item, now)
                else:
                    # Failures need no detail; other statuses only update what we show.
                    item.handle._observe(TaskStatus(task_id=summary.task_id, status=summary.status))
            # A deeper page pays only for many unseen tasks; a few stragglers get status requests of
            # their own (they are not marked as swept).
            if len(unseen) < _DEEPER_PAGE_MIN or len(listed) < _PAGE_SIZE:
                return


def _error_of(handle: TaskHandle) -> KlingError | None:
    """The error a finished handle ends with, or None for a result."""
    try:
        handle.result()
    except KlingError as exc:
        return exc
    return None
