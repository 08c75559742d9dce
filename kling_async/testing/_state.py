"""What the simulator remembers: its tasks, whose status follows from the clock, and its counters."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import msgspec

__all__ = ["TERMINAL", "SimulatedTask", "SimulatorCounters"]

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class SimulatedTask:
    """One accepted task; its status is computed from the clock when read, unless a test forced it."""

    __slots__ = (
        "create_path",
        "created_at",
        "family",
        "finishes_at",
        "forced",
        "model",
        "outcome",
        "payload",
        "started_at",
        "task_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        model: str,
        create_path: str,
        family: str,
        payload: dict[str, Any],
        created_at: float,
        started_at: float,
        finishes_at: float,
        outcome: str,
    ) -> None:
        self.task_id = task_id
        self.model = model
        """The create endpoint's last path segment, e.g. `kling-v3-omni-std`."""
        self.create_path = create_path
        self.family = family
        """The family path that serves this task's status and list, e.g. `/v1/ai/video/kling-v3-omni`."""
        self.payload = payload
        self.created_at = created_at
        """`time.monotonic()` at creation; `started_at` and `finishes_at` are on the same clock."""
        self.started_at = started_at
        self.finishes_at = finishes_at
        """`math.inf` for a task that never finishes."""
        self.outcome = outcome
        """The status the task ends in: COMPLETED, FAILED or CANCELLED."""
        self.forced: str | None = None
        """A status set by hand (`Simulator.set_status`); it overrides the clock."""

    @property
    def status(self) -> str:
        """The status right now."""
        if self.forced is not None:
            return self.forced
        now = time.monotonic()
        if now < self.started_at:
            return "CREATED"
        if now < self.finishes_at:
            return "IN_PROGRESS"
        return self.outcome

    def next_change(self) -> float | None:
        """The monotonic time of the next scheduled status change, or None when none is coming."""
        if self.forced is not None:
            return None
        now = time.monotonic()
        if now < self.started_at:
            return self.started_at
        if now < self.finishes_at and not math.isinf(self.finishes_at):
            return self.finishes_at
        return None

    def __repr__(self) -> str:
        return f"<SimulatedTask {self.task_id} model={self.model} status={self.status}>"


class SimulatorCounters(msgspec.Struct, kw_only=True):
    """What the simulator saw, for tests to assert on; replace `Simulator.counters` to start afresh."""

    posts: int = 0
    """Create requests received (answered, faulted or dropped)."""
    posts_by_payload: Counter[bytes] = msgspec.field(default_factory=Counter)
    """Create requests per payload: the body's sorted-key JSON without `webhook_url`."""
    tasks_by_payload: Counter[bytes] = msgspec.field(default_factory=Counter)
    """Tasks created per payload, keyed as `posts_by_payload`."""
    tasks_created: int = 0
    status_gets: int = 0
    """Requests to a status path (one task), whatever their answer."""
    gets_by_task: Counter[str] = msgspec.field(default_factory=Counter)
    lists: int = 0
    """Requests to a list path."""
    responses_by_status: Counter[int] = msgspec.field(default_factory=Counter)
    """API answers by HTTP status; dropped connections are counted in `connections_dropped` instead."""
    rate_limited: int = 0
    """429 answers sent, enforced or injected."""
    connections_dropped: int = 0
    """API connections closed without an answer."""
    max_concurrent_requests: int = 0
    """The most API requests being handled at once (injected latency included)."""
    downloads: int = 0
    """CDN file answers with content (200 or 206)."""
    cdn_requests_with_key: int = 0
    """CDN requests that carried an API key header: the client must never send one there."""
    webhooks_sent: int = 0
    """Webhook POSTs made, duplicates included."""
    webhooks_dropped: int = 0
    """Webhook deliveries withheld by the `webhook_drop_rate` fault."""
    webhook_failures: int = 0
    """Webhook POSTs that failed to connect or got a non-2xx answer."""

    def duplicate_payloads(self) -> list[bytes]:
        """Payloads that created more than one task: what the SDK must never cause."""
        return [payload for payload, tasks in self.tasks_by_payload.items() if tasks > 1]

    def status_requests_per_task(self) -> float:
        """Status GETs plus list requests per task created (0.0 before the first task)."""
        if not self.tasks_created:
            return 0.0
        return (self.status_gets + self.lists) / self.tasks_created
