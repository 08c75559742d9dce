"""Following many tasks at once: one heap of due checks, and list sweeps that cover a page of tasks a request.

The tracker checks the status of a batch's tasks from a heap of due times instead of a coroutine per
task (10,000 waiting tasks cost a heap entry each), and sweeps a family's list endpoint when many of its
tasks are tracked, fetching the detail only of tasks that the sweep shows COMPLETED. It hears every
status change through the registry's fan-out, whoever saw it (its own checks, a sweep, a webhook), and
hands each finished task to ``finish``.

Every finished task costs one detail request (the list has no result URLs), so what a sweep costs beyond
that is its pages. Once enough tasks of a family have finished, their times to completion say how likely
each tracked task finished since it was last seen, and how long it has probably waited unnoticed: a
sweep is due when that expected wait, summed over the tracked tasks as a share of their generation times,
is worth a request (``_SWEEP_WAIT``), so sweeps come often while many tasks are likely finishing and
rarely while none can be. A sweep skips pages holding no task likely finished (their tasks stay with the
sweeps) and stops reading deeper pages when the tasks it has not seen yet are unlikely to have finished;
those keep their own status checks, the fallback for anything a sweep misses. The server's page size is
judged by what it returned: a server that ignores ``page_size`` (20 a page) is read 20 tasks a page.

Workers that share a database share their sweeps through a ``SweepRelay`` (``StatusRelay`` in
``_relay_pg``): one worker leads each family and sweeps it; it publishes every task its pages listed (the
account's, not only its own) and when its next sweep is due, and the other workers' trackers take that in
as if they had swept themselves: their tasks it listed are covered (no status request of their own), those
it listed COMPLETED get their detail fetched, and the rest keep their own checks. A follower asks again
whether it leads whenever the leader's next sweep is overdue, so a dead leader is replaced.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import heapq
import itertools
import logging
import math
import operator
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from ._endpoints import Endpoint
from ._errors import KlingError, NotFoundError, TaskTimeoutError
from ._models import COMPLETED, TaskStatus, TaskSummary
from ._pipeline import Pipeline
from ._polling import Completions, TaskHandle
from ._registry import TaskRegistry

__all__ = ["SWEEP_MIN_TASKS", "SweepListener", "SweepRelay", "Tracked", "Tracker"]

log = logging.getLogger("kling_async")

# A family is swept through its list endpoint once this many of its tasks are tracked, and until fewer
# than _SWEEP_STOP_TASKS are (a sweep of two tasks costs no more than checking each).
SWEEP_MIN_TASKS = 8
_SWEEP_STOP_TASKS = 3
_PAGE_SIZE = 100
# Extra pages read past the deepest tracked task (other tasks of the account are listed too, newest first).
_EXTRA_PAGES = 2
# A sweep is due once the tracked tasks have waited unnoticed this long in expectation, summed over tasks
# as shares of their generation times, per page to read: 0.2 is 4% of a generation for each of five
# tasks, bought with one request. Less buys shorter delays with more list requests (bench_requests).
_SWEEP_WAIT = 0.2
# The next sweep is planned on a grid of waits from 1% of the median generation up to PollPolicy.maximum.
_PLAN_SHORTEST = 0.01
_PLAN_STEP = 1.15
# Planning reads at most this many tracked tasks (evenly spread) and scales the sum up.
_PLAN_SAMPLE = 256
# A deeper page is read only while the unseen tasks hold this many expected finished ones (one pays for
# the page; the others get checks of their own); a page whose tasks (by their place in the list) hold
# less than _SKIP_PAGE is skipped, and its tasks stay with the sweeps.
_DEEPER_PAGE = 1.0
_SKIP_PAGE = 0.05
# Before enough tasks have finished, a sweep every sixth of the longest poll wait.
_UNLEARNED_SWEEPS = 6
# A parked task with a deadline comes due again after this many longest poll waits (see ``_park``).
_PARK_SPAN = 4.0
# The loop sleeps this long or less without a way to be woken early (see ``_run``).
_SHORT_WAIT = 0.001


@dataclass(slots=True, eq=False)
class Tracked:
    """One task the tracker follows for a batch item."""

    index: int
    key: str
    handle: TaskHandle
    deadline: float | None
    added: float
    # Its place among the tasks the tracker added to its family (the list shows newest first).
    seq: int = 0
    # When it was last known to be running (submission, a check or a sweep).
    seen: float = -math.inf
    checks: int = 0
    swept_at: float = -math.inf
    # The due time of its live heap entry (NaN: none). An entry whose time is not this one is stale.
    due: float = math.nan
    # The number of the family's sweep that last counted it among the tasks its pages showed.
    mark: int = 0
    # A sweep showed the task COMPLETED: its detail is fetched at once, and only once.
    urgent: bool = False
    # Its heap entry waits for the sweeps' cover to lapse, not for its next poll time (see ``_park``).
    parked: bool = False

    def __lt__(self, other: Tracked) -> bool:
        """Heap entries due at the same time: the task added first goes first."""
        return self.seq < other.seq


Finish = Callable[[Tracked, "KlingError | None"], None]

_BY_SEQ = operator.attrgetter("seq")

SweepListener = Callable[[str | None, Sequence[TaskSummary], float | None], None]
"""``(family, tasks, next_in)``: another worker's sweep of ``family`` listed ``tasks`` (a long sweep comes in
parts; its last part has ``next_in``, the seconds until its next sweep). ``family`` None: statuses relayed
without their detail, outside any sweep."""


class SweepRelay(Protocol):
    """What a tracker needs to share its sweeps with other workers: who sweeps a family, and what it saw."""

    def leads(self, family: str) -> bool:
        """Whether this worker sweeps ``family`` (asking makes it try to, cheaply and in the background)."""
        ...

    def resign(self, family: str) -> None:
        """This worker no longer needs ``family`` swept: another may lead it."""
        ...

    def publish_sweep(self, family: str, tasks: Sequence[TaskSummary], next_in: float) -> None:
        """Tell the other workers what a sweep listed and when the next one is due (never blocks)."""
        ...

    def add_sweep_listener(self, listener: SweepListener) -> None:
        """Hear what other workers' sweeps listed."""
        ...

    def remove_sweep_listener(self, listener: SweepListener) -> None:
        """Stop hearing them."""
        ...


class _Family:
    """The tracked tasks of one family (one list endpoint) and the state of its sweeps."""

    __slots__ = (
        "active",
        "added",
        "ask_at",
        "endpoint",
        "hearing",
        "items",
        "last_sweep",
        "next_sweep",
        "page_size",
        "parked",
        "ranked",
        "reported",
        "sweeping",
        "sweeps",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.items: dict[str, Tracked] = {}
        self.added = 0
        # The server's page size once known (it may ignore the one asked for).
        self.page_size: int | None = None
        self.sweeping = False
        self.active = False
        self.sweeps = 0  # sweeps begun (a sweep marks the tasks it saw with its number)
        # Some of its tasks may be parked outside the heap (``Tracker._park``).
        self.parked = False
        # The sweep under way answers for the tasks added before it began: their ``seq`` is below this.
        self.ranked = 0
        self.last_sweep = -math.inf
        self.next_sweep = math.inf
        # Shared sweeps: another worker's sweep was heard (its times are then last_sweep and next_sweep);
        # when the parts of the one being heard began to arrive; when to ask again whether this one leads.
        self.reported = False
        self.hearing: float | None = None
        self.ask_at = -math.inf


class Tracker:
    """Checks the status of many tasks from one heap of due times, sweeping list endpoints when it pays.

    Args:
        registry: the handles' registry (clock, poll policy, learned timings).
        pipeline: where list requests go.
        group: where checks and sweeps run.
        finish: hears each tracked task that finished or timed out.
        relay: shares sweeps with other workers; None: this tracker sweeps every family it needs.
    """

    def __init__(
        self,
        *,
        registry: TaskRegistry,
        pipeline: Pipeline,
        group: TaskGroup,
        finish: Finish,
        relay: SweepRelay | None = None,
    ) -> None:
        self._registry = registry
        self._relay = relay
        self._pipeline = pipeline
        self._clock = registry.clock
        self._group = group
        self._finish = finish
        # (due, item): only the entry due at the item's ``due`` is live; rescheduling makes older ones
        # stale. No sequence number beside the time: at 10,000 tasks that was 36 bytes a task.
        self._heap: list[tuple[float, Tracked]] = []
        self._families: dict[str, _Family] = {}
        self._wake = anyio.Event()
        # When the sleeping loop wakes by itself (-inf while it runs): only a check due before then needs
        # to wake it. Waking it for every rescheduled check cost a trip through the loop (a new event and
        # a cancel scope) after nearly every status request.
        self._wakes_at = -math.inf
        # Checks under way at most (a plain count: only the loop takes places, and it waits on a future
        # when none is free).
        self._free_checks = max(4, pipeline.limiter.max_concurrency * 2)
        self._check_freed: asyncio.Future[None] | None = None
        # Due checks run in checker tasks started as needed (at most one per check under way), which
        # wait for the next check when idle: handing a check over costs a future, where a task per check
        # cost anyio's start of a task (its cancel scope, status and done callback) for every check.
        self._ready: deque[Tracked] = deque()
        self._idle: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return sum(len(family.items) for family in self._families.values())

    def running(self) -> list[Tracked]:
        """The items still followed (their tasks not seen finished)."""
        return [item for family in self._families.values() for item in family.items.values()]

    def __repr__(self) -> str:
        return f"<Tracker tracked={len(self)} due={len(self._heap)}>"

    def add(
        self, index: int, key: str, handle: TaskHandle, deadline: float | None, *, check_now: bool
    ) -> None:
        """Follow ``handle`` until it finishes or ``deadline`` passes; ``finish`` hears either."""
        now = self._clock.now()
        # Followed from its creation (one float for both, where the handle knows it).
        started = handle._started
        item = Tracked(index, key, handle, deadline, added=started if started is not None else now)
        if handle.done:
            self._finish(item, _error_of(handle))
            return
        task_id = handle.task_id
        endpoint = handle._endpoint
        family = self._families.get(endpoint.family_path)
        if family is None:
            family = self._families[endpoint.family_path] = _Family(endpoint)
        item.seq = family.added
        family.added += 1
        if len(family.items) + 1 == SWEEP_MIN_TASKS:
            self._wake.set()  # enough tasks to sweep: the loop starts the family's sweeps
        item.seen = item.added
        family.items[task_id] = item
        if check_now:
            self._push(item, now)
        else:
            self._schedule(item)

    def status_changed(self, handle: TaskHandle, previous: str | None) -> None:
        """A registry subscriber: a tracked task that finished leaves the heap and goes to ``finish``."""
        if handle.done:
            item = self._forget(handle)
            if item is not None:
                started = handle._started
                if started is not None and handle.status == COMPLETED:
                    now = self._clock.now()
                    family = handle._endpoint.family_path
                    self._registry.timings.bracket(family, item.seen - started, now - started)
                self._finish(item, _error_of(handle))

    def _schedule(self, item: Tracked, now: float | None = None) -> None:
        if now is None:
            now = self._clock.now()
        handle = item.handle
        started = handle._started if handle._started is not None else now
        due = now + handle._next_delay(self._registry.poll, now - started, item.checks)
        if item.deadline is not None:
            due = min(due, item.deadline)
        self._push(item, due)

    def _park(self, family: _Family, item: Tracked, now: float) -> None:
        """A task the sweeps cover needs no check of its own until a sweep does not see it (``_unpark``
        puts it back on its poll times then) or the sweeps stop coming (``_sweep_due``). Rescheduled at
        each poll time instead, a task of a 2,000-task batch was popped about ten times in its life only
        to be put back.

        Without a deadline it leaves the heap. With one, its entry comes due at the deadline or after
        ``_PARK_SPAN`` longest poll waits, whichever is first: an entry at a deadline half an hour away
        would hold the task (and its handle) that long after it finished.
        """
        if not family.sweeping:
            # Covered by another worker's sweeps while too few of its tasks are here to sweep: the loop
            # does not wake for that family's sweeps, so the task keeps its poll times.
            self._schedule(item, now)
            return
        if item.deadline is None:
            item.due = math.nan  # any entry it has is stale
        else:
            self._push(item, min(item.deadline, now + _PARK_SPAN * self._registry.poll.maximum))
        item.parked = family.parked = True

    def _unpark(self, item: Tracked) -> None:
        """The sweeps no longer cover a parked task: its own checks resume at its poll times."""
        if item.parked and not item.urgent:
            self._schedule(item)

    def _unpark_all(self, family: _Family) -> None:
        family.parked = False
        for item in family.items.values():
            self._unpark(item)

    def _push(self, item: Tracked, due: float) -> None:
        item.parked = False
        item.due = due
        heapq.heappush(self._heap, (due, item))
        if due < self._wakes_at:
            self._wake.set()

    def _tracked(self, item: Tracked) -> bool:
        family = self._families[item.handle._endpoint.family_path]
        return family.items.get(item.handle.task_id) is item

    def _forget(self, handle: TaskHandle) -> Tracked | None:
        """Stop tracking a task; its item, or None when it was not tracked (any more)."""
        family = self._families.get(handle._endpoint.family_path)
        return family.items.pop(handle.task_id, None) if family is not None else None

    def _drop(self, item: Tracked, error: KlingError) -> None:
        if self._forget(item.handle) is not None:
            self._finish(item, error)

    async def run(self) -> None:
        """Forever: start the checks that are due, sweep families, sleep until the next due time."""
        relay = self._relay
        if relay is None:
            await self._run()
            return
        relay.add_sweep_listener(self._heard)
        try:
            await self._run()
        finally:
            relay.remove_sweep_listener(self._heard)
            for path in self._families:
                relay.resign(path)

    async def _run(self) -> None:
        clock, heap, families = self._clock, self._heap, self._families
        while True:
            now = clock.now()
            self._sweep_due(now)
            # Most due entries belong to tasks the sweeps cover, rescheduled at once: the family is looked
            # up once for both questions, and the time is the loop's.
            while heap and heap[0][0] <= now:
                due, item = heapq.heappop(heap)
                handle = item.handle
                family = families[handle._endpoint.family_path]
                if due != item.due or family.items.get(handle.task_id) is not item:
                    continue
                # Taken: a stale entry due at the very same time (two schedules that came out equal, as
                # on a fake clock that has not moved) is not live too.
                item.due = math.nan
                if item.deadline is not None and now >= item.deadline:
                    self._drop(item, self._timeout(item))
                    continue
                if not item.urgent and self._covered(family, item, now):
                    item.checks += 1
                    self._park(family, item, now)
                    continue
                if not self._free_checks:
                    self._check_freed = asyncio.get_running_loop().create_future()
                    await self._check_freed
                self._free_checks -= 1
                self._hand_over(item)
            now = clock.now()
            wait = max(0.0, min(self._heap[0][0] - now if self._heap else math.inf, self._next_sweep_in(now)))
            if wait < _SHORT_WAIT:
                # Due already, or within a millisecond (the time the round took): most waits in a busy
                # batch are such, and a plain sleep costs less than an event and a cancel scope.
                await clock.sleep(wait)
                continue
            if self._wake.is_set():
                self._wake = anyio.Event()  # an unset one is kept: most long waits end by their time
            self._wakes_at = now + wait
            try:
                with clock.move_on_after(wait):
                    await self._wake.wait()
            finally:
                self._wakes_at = -math.inf

    def _covered(self, family: _Family, item: Tracked, now: float) -> bool:
        """Whether the sweeps of the item's family watch it, so that it needs no status request of its own:
        the last sweep saw it, and the next one is not overdue."""
        if family.active:
            return True  # the sweep under way will see it, or leave it to checks of its own
        if not (family.sweeping or family.reported) or item.swept_at < family.last_sweep:
            return False
        return now < family.next_sweep + self._registry.poll.maximum

    def _timeout(self, item: Tracked) -> TaskTimeoutError:
        handle = item.handle
        waited = item.deadline - item.added if item.deadline is not None else None
        return TaskTimeoutError(handle.task_id, last_status=handle.status, timeout=waited, model=handle.model)

    def _hand_over(self, item: Tracked) -> None:
        """Give a due check to an idle checker, or start one."""
        self._ready.append(item)
        while self._idle:
            wake = self._idle.pop()
            if not wake.done():
                wake.set_result(None)
                return
        self._group.start_soon(self._checker)

    async def _checker(self) -> None:
        """Run handed-over checks one after another; wait for the next one when there is none."""
        ready, loop = self._ready, asyncio.get_running_loop()
        while True:
            while ready:
                await self._check(ready.popleft())
            wake = loop.create_future()
            self._idle.append(wake)
            await wake

    async def _check(self, item: Tracked) -> None:
        try:
            await item.handle.refresh()
        except NotFoundError as exc:
            self._drop(item, exc)
        except KlingError as exc:
            # The task still exists server-side: keep checking until its deadline.
            log.warning("status check for %s failed, will check again: %s", item.handle.task_id, exc)
        else:
            item.seen = self._clock.now()
        finally:
            self._free_checks += 1
            freed = self._check_freed
            if freed is not None and not freed.done():
                freed.set_result(None)
            item.urgent = False
        if self._tracked(item):
            item.checks += 1
            self._schedule(item)

    # -- list sweeping -------------------------------------------------------------------------------------

    def _completions(self, family: _Family) -> Completions | None:
        if self._registry.safety_net:
            return None
        return self._registry.timings.completions(family.endpoint.family_path)

    def _finished_chance(self, item: Tracked, completions: Completions | None, now: float) -> float:
        """How likely the item finished since it was last seen running (1 when nothing says otherwise)."""
        started = item.handle._started
        if item.urgent:
            return 0.0  # known finished: its detail is on the way
        if completions is None or started is None:
            return 1.0
        return completions.finished(item.seen - started, now - started)

    def _plan(self, family: _Family, now: float) -> float:
        """When the family's next sweep is due (see the module docs)."""
        poll = self._registry.poll
        if self._registry.safety_net:
            return now + poll.safety_interval
        # Tasks known finished (detail on the way) need no sweep, nor do those the last sweep left to
        # checks of their own.
        items = [
            item for item in family.items.values() if not item.urgent and item.swept_at >= family.last_sweep
        ]
        completions = self._completions(family)
        if completions is None or not items:
            # Nothing learned: a sweep every sixth of the longest poll wait, the first one just before the
            # oldest task's first check could come.
            oldest = min((item.added for item in items), default=now)
            first = oldest + poll.initial * (1.0 - poll.jitter)
            return max(first, now + poll.maximum / _UNLEARNED_SWEEPS)
        stride = max(1, len(items) // _PLAN_SAMPLE)
        sample = items[::stride]
        scale = len(items) / len(sample)
        pages = math.ceil(len(items) / (family.page_size or _PAGE_SIZE))
        budget = _SWEEP_WAIT * pages / scale
        total = completions.total_waited([(item.handle._started, item.seen) for item in sample])
        grid: list[float] = []
        wait = completions.median * _PLAN_SHORTEST
        while wait < poll.maximum:
            grid.append(now + wait)
            wait *= _PLAN_STEP
        # The expected wait only grows with time, so the first point of the grid that reaches the budget
        # is found by bisection: a handful of sums over the sample, where a scan took one per point.
        first = bisect.bisect_left(grid, True, key=lambda due: total(due) >= budget)
        return grid[first] if first < len(grid) else now + poll.maximum

    def _next_sweep_in(self, now: float) -> float:
        waits = [
            max(family.next_sweep, family.ask_at) - now
            for family in self._families.values()
            if family.sweeping and not family.active
        ]
        return max(0.0, min(waits)) if waits else math.inf

    def _sweep_due(self, now: float) -> None:
        relay = self._relay
        for path, family in self._families.items():
            tracked = len(family.items)
            if not family.sweeping and tracked >= SWEEP_MIN_TASKS:
                family.sweeping = True
                if not family.reported:
                    family.next_sweep = self._plan(family, now)
                if relay is not None:
                    relay.leads(path)  # the lock is tried in the background before the first sweep
            elif family.sweeping and tracked < _SWEEP_STOP_TASKS:
                family.sweeping = False
                if relay is not None:
                    relay.resign(path)
                self._unpark_all(family)
            if family.parked and not family.active and now >= family.next_sweep + self._registry.poll.maximum:
                self._unpark_all(family)  # the sweeps stopped coming (another worker's, for one)
            if family.sweeping and not family.active and now >= max(family.next_sweep, family.ask_at):
                if relay is not None and not relay.leads(path):
                    # Another worker sweeps it (its reports move next_sweep), or its leader is gone and
                    # the lock is being tried: ask again a little later.
                    family.ask_at = now + self._registry.poll.maximum / _UNLEARNED_SWEEPS
                    continue
                family.active = True
                self._group.start_soon(self._sweep, family)

    async def _sweep(self, family: _Family) -> None:
        """List the family's tasks page by page (see the module docs), then plan the next sweep."""
        started = self._clock.now()
        # What the pages listed is kept only for a relay to publish: at 10,000 tasks in flight, holding
        # every page's tasks until the sweep ends cost about 140 bytes a task.
        listed: list[TaskSummary] | None = [] if self._relay is not None else None
        try:
            await self._read_pages(family, started, listed)
            family.last_sweep = started
        finally:
            family.active = False
            # Tasks parked while it ran, added after it began: it did not answer for them.
            for item in reversed(family.items.values()):
                if item.seq < family.ranked:
                    break
                self._unpark(item)
            now = self._clock.now()
            family.next_sweep = self._plan(family, now)
            if self._relay is not None:
                assert listed is not None
                self._relay.publish_sweep(family.endpoint.family_path, listed, family.next_sweep - now)
            self._wake.set()

    def _heard(self, path: str | None, tasks: Sequence[TaskSummary], next_in: float | None) -> None:
        """A relay listener: what another worker's sweep listed, taken in as if this tracker had swept."""
        now = self._clock.now()
        if path is None:  # statuses without their detail: a COMPLETED one has its detail fetched
            for summary in tasks:
                for each in self._families.values():
                    item = each.items.get(summary.task_id)
                    if item is not None:
                        self._saw(item, summary, now)
            return
        family = self._families.get(path)
        if family is None:
            return
        if family.hearing is None:
            family.hearing = now
        for summary in tasks:
            item = family.items.get(summary.task_id)
            if item is not None:
                item.swept_at = now
                self._saw(item, summary, now)
        if next_in is not None:  # the sweep's last part
            family.last_sweep = family.hearing
            family.hearing = None
            family.next_sweep = now + next_in
            family.reported = True
            for item in family.items.values():
                if item.swept_at < family.last_sweep:
                    self._unpark(item)  # not listed: its own checks resume
            self._wake.set()

    def detail_wanted(self, handle: TaskHandle) -> None:
        """A registry detail listener: a status without URLs said the task COMPLETED; fetch its detail."""
        family = self._families.get(handle._endpoint.family_path)
        item = family.items.get(handle.task_id) if family is not None else None
        if item is not None:
            self._saw(item, TaskSummary(task_id=handle.task_id, status=COMPLETED), self._clock.now())

    def _saw(self, item: Tracked, summary: TaskSummary, now: float) -> None:
        """A list showed the item's status."""
        if summary.status == COMPLETED:
            # The list has no URLs: fetch the detail now (once, however many sweeps see it).
            if not item.urgent:
                item.urgent = True
                self._push(item, now)
        else:
            item.seen = now
            # Failures need no detail; other statuses only update what we show. A status the handle
            # already has changes nothing, and most sweeps list most tasks as they were.
            handle = item.handle
            if summary.status != handle._status:
                handle._observe(TaskStatus(task_id=summary.task_id, status=summary.status))

    async def _read_pages(self, family: _Family, now: float, listed_all: list[TaskSummary] | None) -> None:
        completions = self._completions(family)
        # The tracked tasks by their place in the list as far as this tracker knows (1: the newest; other
        # tasks of the account may sit above them), with the chance that each finished unseen, summed in
        # that order. Arrays of machine numbers, not lists of Python ones (nor a dict of tuples): a sweep
        # of 10,000 tasks in flight would otherwise hold about 250 bytes a task while it reads.
        ranked = sorted(family.items.values(), key=_BY_SEQ, reverse=True)
        added = family.ranked = family.added
        places = array.array("q", (added - item.seq for item in ranked))
        chances = array.array("d", (self._finished_chance(item, completions, now) for item in ranked))
        up_to = array.array("d", itertools.accumulate(chances))
        # Each ranked task counts once towards what the pages showed: its mark is this sweep's number.
        family.sweeps += 1
        mark = family.sweeps
        total = up_to[-1] if up_to else 0.0
        seen_mass = 0.0
        read: set[int] = set()
        failed = False
        page = 1
        while (
            page <= math.ceil((places[-1] if places else 0) / (family.page_size or _PAGE_SIZE)) + _EXTRA_PAGES
        ):
            size = family.page_size or _PAGE_SIZE
            if family.page_size is not None and completions is not None:
                # Skip a page unless unseen tasks likely finished may sit on it (or above it and shifted
                # down by tasks this tracker does not know).
                last = bisect.bisect_right(places, page * size)
                if last < len(places) and (up_to[last - 1] if last else 0.0) - seen_mass < _SKIP_PAGE:
                    page += 1
                    continue
            try:
                listed = await self._pipeline.list_page(family.endpoint, page=page, page_size=_PAGE_SIZE)
            except KlingError as exc:
                log.warning("list sweep of %s failed; per-task checks go on: %s", family.endpoint, exc)
                failed = True
                break
            read.add(page)
            if listed_all is not None:
                listed_all.extend(listed)
            for summary in listed:
                item = family.items.get(summary.task_id)
                if item is None:
                    continue
                if item.mark != mark and item.seq < added:  # ranked (not added since), not seen yet
                    item.mark = mark
                    seen_mass += chances[bisect.bisect_left(places, added - item.seq)]
                item.swept_at = now
                self._saw(item, summary, now)
            if family.page_size is None:
                if len(listed) >= _PAGE_SIZE or (listed and family.added > len(listed)):
                    # A page shorter than asked while more tasks exist: the server has its own page size.
                    family.page_size = len(listed)
            elif len(listed) > family.page_size:
                family.page_size = len(listed)
            if len(listed) < (family.page_size or _PAGE_SIZE):
                break  # the end of the list
            if total - seen_mass < _DEEPER_PAGE:
                break
            page += 1
        # Tasks on pages skipped because they were unlikely to have finished stay with the sweeps (the next
        # sweep weighs them again). Tasks deeper than the last page read, or missing from a page read
        # where they should have been, or not seen by a sweep that failed, get status requests of their own.
        size = family.page_size or _PAGE_SIZE
        deepest = max(read, default=0)
        items = family.items
        for item, place in zip(ranked, places, strict=True):
            if item.mark == mark or items.get(item.handle.task_id) is not item:
                continue  # seen, or finished while the pages were read
            page = math.ceil(place / size)
            if not failed and completions is not None and page not in read and page < deepest:
                item.swept_at = now
            else:
                self._unpark(item)


def _error_of(handle: TaskHandle) -> KlingError | None:
    """The error a finished handle ends with, or None for a result."""
    try:
        handle.result()
    except KlingError as exc:
        return exc
    return None
