"""Task handles and the schedule on which they ask for their status.

The schedule has two sources:

* the ``PollPolicy``, a geometric prior used while the client knows nothing about how long tasks take:
  the first check after ``initial`` seconds, each later wait ``multiplier`` times the previous one, at most
  ``maximum``, each jittered by ``jitter`` so that tasks submitted together do not poll together;
* what the client has **learned**: the time to completion of recent tasks of the same model and duration.
  Tasks of one kind take similar times, so once a few have finished, a task is first checked just before
  the others finished, then closely around that time. That is how a batch spends about two status
  requests per task while noticing a finished video within a few percent of its generation time.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._clock import Clock, grown
from ._errors import TaskFailedError, TaskTimeoutError
from ._models import (
    CANCELLED,
    COMPLETED,
    CREATED,
    FAILED,
    FAILURE_STATUSES,
    IN_PROGRESS,
    TERMINAL_STATUSES,
    TaskResult,
    TaskStatus,
)

if TYPE_CHECKING:
    from ._endpoints import Endpoint

__all__ = ["Completions", "HandleOwner", "PollPolicy", "TaskHandle", "Timings"]

_SAMPLES = 64
# Learned checks sit at equal-probability quantiles of past completion times: with 7 of them, tasks whose
# times spread over 4x (30-120 s) cost ~4 status requests at ~10% mean delay; tasks of alike times
# collapse onto one or two checks.
_QUANTILES = tuple((k + 0.5) / 7 for k in range(7))
# The first check comes a little early, so that the learned times keep tracking the real ones (a
# sample is when a task was *seen* finished, a bit after it finished).
_EARLY = 0.97
# Checks closer than this (relative) are one check.
_MERGE = 0.03
# Past every learned check, the next wait is this share of the time elapsed (at most `maximum`).
_LATE_STEP = 0.25


def check_positive(name: str, value: object, *, whole: bool = False, optional: bool = False) -> None:
    """Check one configuration number (None passes when ``optional``); the ``ValueError`` names the
    argument and the rule."""
    if value is None:
        if optional:
            return
        raise ValueError(f"{name}: a number is required (got None)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: a number (got {value!r})")
    if whole and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: a whole number, at least 1 (got {value!r})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: a finite number above 0 (got {value!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class PollPolicy:
    """When a task handle asks for its status.

    The defaults suit Kling's 30-120 s generations when nothing has been learned yet: checks at about
    15, 37.5, 67.5, 97.5, 127.5 s... (2 requests for a 30 s video, 3 for 60 s, 5 for 120 s). Once tasks of the
    same model and duration have finished, the client checks around their observed completion time
    instead (see the module docs), and these values only bound it.

    Args:
        initial: seconds from submission to the first check (0: at once; the waits after it then grow
            as if it had come at one second, or at ``maximum`` if shorter).
        maximum: the longest wait between two checks.
        multiplier: growth of the wait between checks while nothing is learned.
        timeout: how long ``TaskHandle.wait`` waits in all before ``TaskTimeoutError`` (None: forever).
        jitter: each wait is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
        safety_interval: with webhooks, the shortest wait between two checks: deliveries resolve
            tasks, and checks only catch the deliveries that never came.
    """

    initial: float = 15.0
    maximum: float = 30.0
    multiplier: float = 1.5
    timeout: float | None = 1800.0
    jitter: float = 0.1
    safety_interval: float = 120.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise TypeError(f"PollPolicy.{spec.name}: a number (got {value!r})")
            if value is not None and not math.isfinite(value):
                raise ValueError(f"PollPolicy.{spec.name}: a finite number (got {value!r})")
        if self.initial < 0 or self.maximum <= 0:
            raise ValueError("PollPolicy: initial must not be negative and maximum must be positive")
        if self.multiplier < 1:
            raise ValueError("PollPolicy.multiplier: at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("PollPolicy.jitter: in [0, 1)")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("PollPolicy.timeout: positive, or None for no deadline")
        if self.safety_interval <= 0:
            raise ValueError("PollPolicy.safety_interval: positive")


# The statuses the API sends, one string each: a handle keeps the shared one rather than the copy each
# decoded answer carries (10,000 handles in flight held 55 bytes each of "IN_PROGRESS").
_STATUSES = {status: status for status in (CREATED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)}

# What makes tasks take alike times: (family path, model, requested duration).
TaskKind = tuple[str, str, str | None]
# The kinds seen so far (a handful per process), so that handles share them.
_KINDS: dict[TaskKind, TaskKind] = {}


class Timings:
    """Recent times to completion, per kind of task (model and requested duration)."""

    def __init__(self) -> None:
        self._samples: dict[TaskKind, deque[float]] = {}
        # Derived from the samples, cached until the next sample: the batch tracker asks for them on every
        # status check it schedules and every sweep it plans.
        self._sorted: dict[TaskKind, list[float]] = {}
        self._completions: dict[str, Completions] = {}
        # Per family: the middle of the window in which each tracked task finished (see ``bracket``).
        self._middles: dict[str, deque[float]] = {}

    def record(self, kind: TaskKind, seconds: float) -> None:
        """Remember that a task of this kind was seen finished ``seconds`` after its submission."""
        samples = self._samples.setdefault(kind, deque(maxlen=_SAMPLES))
        samples.append(seconds)
        self._sorted.pop(kind, None)
        self._completions.pop(kind[0], None)

    def bracket(self, family: str, running: float, finished: float) -> None:
        """Remember that a task of the family was seen running ``running`` seconds after its submission
        and finished ``finished`` seconds after it.

        A task is seen finished up to a whole wait between two looks after it finished; learning that
        late time would make the next waits longer, and the times later still. The middle of the window
        is as often early as late.
        """
        middles = self._middles.setdefault(family, deque(maxlen=_SAMPLES))
        middles.append((running + finished) / 2)
        self._completions.pop(family, None)

    def completions(self, family: str) -> Completions | None:
        """The learned times to completion over a family (None below ``MIN_COMPLETIONS`` of them)."""
        cached = self._completions.get(family)
        if cached is not None:
            return cached
        samples = list(self._middles.get(family, ()))
        if len(samples) < MIN_COMPLETIONS:
            samples = [x for kind, seen in self._samples.items() if kind[0] == family for x in seen]
        if len(samples) < MIN_COMPLETIONS:
            return None
        self._completions[family] = completions = Completions(samples)
        return completions

    def checkpoints(self, kind: TaskKind) -> list[float]:
        """The learned check times for this kind, ascending; empty while nothing is known."""
        cached = self._sorted.get(kind)
        if cached is not None:
            return cached
        samples = self._samples.get(kind)
        if not samples:
            return []
        ordered = sorted(samples)
        last = len(ordered) - 1
        raw = sorted({ordered[round(q * last)] for q in _QUANTILES} | {ordered[-1]})
        raw[0] *= _EARLY
        points: list[float] = []
        for point in raw:
            if not points or point > points[-1] * (1.0 + _MERGE):
                points.append(point)
        self._sorted[kind] = points
        return points


# Fewer finished tasks than this say too little about how long the others take.
MIN_COMPLETIONS = 3
# A task running past every learned time finishes, as far as anyone knows, within as long again: while
# the first tasks finish, the learned times are only the short ones, and most tasks are past them.
_LATE_SPAN = 1.0


class Completions:
    """An empirical distribution of times to completion (seconds since submission).

    It answers two questions about a task still running: how likely it finished since it was last seen
    running, and how long it has probably waited unnoticed, as a share of its generation time.
    """

    __slots__ = ("_inverse", "_times")

    def __init__(self, samples: list[float]) -> None:
        self._times = sorted(max(x, 1e-3) for x in samples)
        # _inverse[k]: the sum of 1 / t over the k shortest times.
        self._inverse = [0.0]
        for x in self._times:
            self._inverse.append(self._inverse[-1] + 1.0 / x)

    def __repr__(self) -> str:
        return f"<Completions n={len(self._times)} median={self.median:.3g}s>"

    @property
    def median(self) -> float:
        """The median time to completion."""
        return self._times[len(self._times) // 2]

    def finished(self, seen: float, now: float) -> float:
        """The chance that a task seen running ``seen`` seconds after submission finished by ``now``."""
        times = self._times
        low = bisect.bisect_right(times, seen)
        if low == len(times):
            return min(1.0, (now - seen) / self._late_span(seen))
        return (bisect.bisect_right(times, now) - low) / (len(times) - low)

    def waited(self, seen: float, now: float) -> float:
        """For a task seen running ``seen`` seconds after submission: the expected time it has waited
        unnoticed by ``now`` (0 while running), as a share of its time to completion."""
        times = self._times
        low = bisect.bisect_right(times, seen)
        if low == len(times):
            # Past every learned time: assume it finishes evenly over the next late span.
            span = self._late_span(seen)
            gone = min(now - seen, span)
            return gone * (now - seen - gone / 2) / (span * seen)
        high = bisect.bisect_right(times, now)
        inverse = self._inverse
        return (now * (inverse[high] - inverse[low]) - (high - low)) / (len(times) - low)

    def total_waited(self, tasks: Sequence[tuple[float | None, float]]) -> Callable[[float], float]:
        """The sum of ``waited`` over tasks ``(started, seen)`` (absolute times; ``started`` None: the share
        of the median since ``seen``), as a function of the absolute time ``now``.

        Equal to summing ``waited`` task by task, in order, but what depends only on when each task was
        seen running is worked out once: planning asks for this sum at many times.
        """
        times, inverse = self._times, self._inverse
        count, median = len(times), self.median
        # Per task: (kind, started, seen since start, low, inverse[low], tasks after low); kind 0: not
        # started, 1: past every learned time, 2: within them.
        prepared: list[tuple[int, float, float, int, float, int]] = []
        for started, seen in tasks:
            if started is None:
                prepared.append((0, 0.0, seen, 0, 0.0, 0))
                continue
            since = seen - started
            low = bisect.bisect_right(times, since)
            if low == count:
                prepared.append((1, started, since, low, 0.0, 0))
            else:
                prepared.append((2, started, since, low, inverse[low], count - low))

        def total(now: float) -> float:
            result = 0.0
            for kind, started, since, low, inverse_low, after in prepared:
                if kind == 2:
                    elapsed = now - started
                    high = bisect.bisect_right(times, elapsed)
                    result += (elapsed * (inverse[high] - inverse_low) - (high - low)) / after
                elif kind == 1:
                    result += self.waited(since, now - started)
                else:
                    result += (now - since) / median
            return result

        return total

    @staticmethod
    def _late_span(seen: float) -> float:
        return max(_LATE_SPAN * seen, 1e-3)


class TaskHandle:
    """A created task: await it for its result, or ask for its status.

    ``await handle`` is ``await handle.wait()``. Waiting never cancels the task server-side: when a wait is
    cancelled or times out, ``client.task(handle.task_id, model=handle.model)`` re-attaches to it.
    """

    __slots__ = (
        "__weakref__",
        "_endpoint",
        "_kind",
        "_owner",
        "_stale",
        "_started",
        "_status",
        "_urls",
        "_waiters",
        "task_id",
    )

    def __init__(
        self,
        owner: HandleOwner,
        endpoint: Endpoint,
        task_id: str,
        *,
        status: str | None,
        urls: tuple[str, ...] = (),
        started: float | None,
        kind: TaskKind,
    ) -> None:
        self._owner = owner
        self._endpoint = endpoint
        self.task_id = task_id
        self._status = status if status is None else _STATUSES.get(status, status)
        self._urls = urls
        self._started = started
        # One tuple per kind, not per handle: 10,000 handles of one kind share it.
        self._kind = _KINDS.setdefault(kind, kind)
        # The scopes of the waits sleeping until the next check, cut short when the task is seen finished.
        self._waiters: list[anyio.CancelScope] | None = None
        # Told it finished, without the result URLs, while nobody waited: the next wait checks at once.
        self._stale = False

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} model={self.model} status={self._status}>"

    @property
    def model(self) -> str:
        """The model whose endpoint created the task."""
        return self._endpoint.model

    @property
    def status(self) -> str | None:
        """The last status seen (None for a re-attached handle not yet refreshed)."""
        return self._status

    @property
    def done(self) -> bool:
        """Whether the last status seen is terminal."""
        return self._status in TERMINAL_STATUSES

    def result(self) -> TaskResult:
        """The finished task's result, without a request.

        Raises:
            TaskFailedError: the task ended FAILED or CANCELLED, or COMPLETED without a result URL.
            RuntimeError: the task is not finished yet.
        """
        if self._status in FAILURE_STATUSES:
            raise TaskFailedError(self.task_id, self._status or "FAILED", model=self.model)
        if not self.done:
            raise RuntimeError(f"task {self.task_id} is not finished (status {self._status})")
        if self._status == COMPLETED and not self._urls:
            raise TaskFailedError(
                self.task_id, COMPLETED, model=self.model, reason="the server gave no result URL"
            )
        return TaskResult(task_id=self.task_id, status=self._status or "", urls=self._urls, model=self.model)

    def __await__(self) -> Generator[Any, None, TaskResult]:
        return self.wait().__await__()

    async def refresh(self) -> TaskStatus:
        """Ask for the task's status once (one GET) and return it."""
        status = await self._owner.fetch_status(self._endpoint, self.task_id)
        self._observe(status)
        return status

    async def wait(self, timeout: float | None = None) -> TaskResult:
        """Wait until the task finishes and return its result.

        Args:
            timeout: seconds to wait at most; None uses the client's ``PollPolicy.timeout``.

        Raises:
            TaskFailedError: the task ended FAILED or CANCELLED.
            TaskTimeoutError: the deadline passed first; the task runs on and stays reachable by id.
        """
        policy = self._owner.poll
        check_positive("timeout", timeout, optional=True)
        limit = policy.timeout if timeout is None else timeout
        with self._owner.clock.move_on_after(limit if limit is not None else math.inf):
            await self._wait_done(policy)
        if not self.done:
            raise TaskTimeoutError(self.task_id, last_status=self._status, timeout=limit, model=self.model)
        return self.result()

    async def _wait_done(self, policy: PollPolicy) -> None:
        clock = self._owner.clock
        attached = clock.now()
        checks = 0
        while not self.done:
            started = self._started if self._started is not None else attached
            elapsed = clock.now() - started
            delay = self._next_delay(policy, elapsed, checks)
            # A plain sleep that _observe cuts short when something else (a webhook, a sweep, another
            # caller's refresh) sees the task finish. A sleep that runs out costs a timer; a deadline on
            # an event wait cost a cancellation (an exception through the task) at every check.
            waiters = self._waiters
            if waiters is None:
                waiters = self._waiters = []
            if self._stale:
                self._stale = False
            else:
                with anyio.CancelScope() as scope:
                    waiters.append(scope)
                    try:
                        await clock.sleep(delay)
                    finally:
                        waiters.remove(scope)
                if self.done:
                    return
            await self.refresh()
            checks += 1

    def _next_delay(self, policy: PollPolicy, elapsed: float, checks: int) -> float:
        owner = self._owner
        points = owner.timings.checkpoints(self._kind) if self._started is not None else []
        if points:
            index = bisect.bisect_right(points, elapsed + 1e-9)
            if index < len(points):
                learned = points[index] - elapsed
                return max(learned, policy.safety_interval) if owner.safety_net else learned
            delay = min(policy.maximum, max(_LATE_STEP * elapsed, 1e-3))
        elif checks == 0:
            delay = max(policy.initial - elapsed, 0.0)
        else:
            # Grown from the first wait; a first check at once (initial 0) grows from a second.
            first = policy.initial or min(policy.maximum, 1.0)
            delay = grown(first, policy.multiplier, checks, policy.maximum)
        if owner.safety_net:
            delay = max(delay, policy.safety_interval)
        if policy.jitter:
            delay *= random.uniform(1.0 - policy.jitter, 1.0 + policy.jitter)
        return delay

    def _wake(self) -> None:
        """Cut short the waits sleeping until their next check: they check now."""
        for scope in self._waiters or ():
            scope.cancel()

    def _check_soon(self) -> None:
        """Its detail is worth a request now (a delivery said COMPLETED without the result URLs): the
        waits sleeping check at once, and when nobody waits, the next wait begins with a check."""
        if self._waiters:
            self._wake()
        else:
            self._stale = True

    def _observe(self, status: TaskStatus) -> None:
        """Take in a status from any source; statuses after a terminal one are ignored."""
        if self.done or status.task_id != self.task_id:
            return
        previous = self._status
        self._status = _STATUSES.get(status.status, status.status)
        if status.generated:
            self._urls = tuple(status.generated)
        if self.done:
            owner = self._owner
            if self._started is not None and status.status not in FAILURE_STATUSES:
                owner.timings.record(self._kind, owner.clock.now() - self._started)
            self._wake()
        if previous != status.status:
            self._owner.status_changed(self, previous)


class HandleOwner(Protocol):
    """What a handle needs from the registry that made it, passed down as this small interface."""

    @property
    def poll(self) -> PollPolicy: ...

    @property
    def timings(self) -> Timings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def safety_net(self) -> bool: ...

    async def fetch_status(self, endpoint: Endpoint, task_id: str) -> TaskStatus: ...

    def status_changed(self, handle: TaskHandle, previous: str | None) -> None: ...
