"""The request pipeline: send -> retry -> limiter -> transport, for every API request.

``Pipeline.request`` is the whole loop for requests that are safe to repeat (status GETs, list pages).
A create POST takes the same steps, but its try is split in two (see ``_submit.py``): the wait for the
limiter belongs to the caller, and ``exchange`` (the part after which a task may exist) to a task the
client owns. The limiter's feedback (a 429 slows the whole client) and the retry bookkeeping
(``Attempts``, shared with create POSTs) live here once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping

from ._clock import Clock
from ._endpoints import Endpoint
from ._errors import KlingError, RateLimitError, TransportError, api_error
from ._events import EventHub, RateLimited, RequestRetried
from ._limits import Lane, Limiter
from ._models import TaskStatus, TaskSummary, decode_task, decode_task_list
from ._retry import Attempts, RetryPolicy, is_retryable, parse_retry_after
from ._transport import Transport

__all__ = ["Pipeline"]

log = logging.getLogger("kling_async")


class Pipeline:
    """Sends API requests through the client's one limiter, retrying by the policy's rules."""

    def __init__(
        self,
        *,
        transport: Transport,
        limiter: Limiter,
        retry: RetryPolicy,
        clock: Clock,
        events: EventHub,
    ) -> None:
        self.transport = transport
        self.limiter = limiter
        self.retry = retry
        self.clock = clock
        self._events = events
        self._rng = random.Random()

    def attempts(self) -> Attempts:
        """Fresh retry bookkeeping for one operation."""
        return Attempts(self.retry, self.clock, self._rng)

    async def request(
        self,
        method: str,
        path: str,
        *,
        lane: Lane,
        params: Mapping[str, str] | None = None,
        task_id: str | None = None,
    ) -> bytes:
        """Send a request that is safe to repeat; return the body of its 2xx answer.

        Raises:
            APIError: an error answer that retrying cannot fix, or the last of the tries.
            TransportError: no answer, after the last try.
        """
        attempts = self.attempts()
        while True:
            await self.limiter.acquire(lane, retry=attempts.ahead)
            attempts.start()
            try:
                return await self.exchange(method, path, params=params, task_id=task_id)
            except KlingError as error:
                delay = self.retry_delay(
                    attempts, error, is_retryable, method=method, path=path, task_id=task_id
                )
            await self.clock.sleep(delay)

    async def exchange(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        task_id: str | None = None,
    ) -> bytes:
        """One try, on a limiter place the caller already acquired (released here, whatever happens).

        Returns the body of a 2xx answer; raises the typed error of anything else.
        """
        try:
            response = await self.transport.request(method, path, body=body, params=params)
        finally:
            self.limiter.release()
        if response.status != 429:
            self.limiter.on_success()
        if 200 <= response.status < 300:
            return response.body
        headers = response.headers
        retry_after = parse_retry_after(
            headers.get("Retry-After"), now=self.clock.wall(), date=headers.get("Date")
        )
        error = api_error(
            response.status, response.body, task_id=task_id, retry_after=retry_after, headers=headers
        )
        if isinstance(error, RateLimitError):
            told = self.limiter.note_rate_limit_headers(headers)
            await self.limiter.refused(error.retry_after)
            if self._events.active:
                self._events.publish(
                    RateLimited(retry_after=error.retry_after, rate=self.limiter.rate, headers=told)
                )
        raise error

    def retry_delay(
        self,
        attempts: Attempts,
        error: KlingError,
        can_retry: Callable[[KlingError], bool],
        *,
        method: str,
        path: str,
        task_id: str | None = None,
    ) -> float:
        """The wait before trying again after ``error``; raises ``error`` when no try is left.

        A 429 is paced by the limiter (its ``Retry-After`` included), so it adds no backoff here.
        """
        if not can_retry(error):
            raise error
        paced = (error.retry_after or 0.0) if isinstance(error, RateLimitError) else None
        delay = attempts.next_delay(paced_wait=paced)
        if delay is None:
            raise error
        log.debug(
            "retrying %s %s after %s (attempt %d, in %.2fs)",
            method,
            path,
            error,
            attempts.number,
            delay,
            extra={
                "method": method,
                "attempt": attempts.number,
                "delay": delay,
                "task_id": task_id,
                "status": getattr(error, "status", None),
            },
        )
        if self._events.active:
            self._events.publish(
                RequestRetried(
                    method=method, path=path, attempt=attempts.number, delay=delay, error=str(error)
                )
            )
        return delay

    async def fetch_status(self, endpoint: Endpoint, task_id: str) -> TaskStatus:
        """One task's status (one GET, retried)."""
        body = await self.request("GET", endpoint.status_path(task_id), lane=Lane.STATUS, task_id=task_id)
        status = decode_task(body)
        if status.task_id != task_id:
            raise TransportError(f"the status of task {task_id} came back about another task")
        return status

    async def list_page(self, endpoint: Endpoint, *, page: int, page_size: int) -> list[TaskSummary]:
        """One page of a family's tasks, newest first (one GET, retried)."""
        params = {"page": str(page), "page_size": str(page_size)}
        return decode_task_list(
            await self.request("GET", endpoint.family_path, lane=Lane.STATUS, params=params)
        )
