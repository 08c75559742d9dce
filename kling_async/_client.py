"""KlingClient: configuration, lifecycle, and the request pipeline client -> retry -> limiter -> transport."""

from __future__ import annotations

import logging
import os
import random
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup

from ._batch import Job, Outcome, run_batch
from ._clock import SYSTEM_CLOCK, Clock
from ._download import download_file, safe_file_name
from ._endpoints import Endpoint, endpoint_for, resolve
from ._errors import (
    InvalidRequestError,
    KlingError,
    RateLimitError,
    SubmitUncertainError,
    TransportError,
    api_error,
)
from ._events import EventHub, EventStream, RateLimited, RequestRetried, StatusChanged, TaskSubmitted
from ._journal import Journal
from ._limits import Lane, Limiter
from ._models import (
    Request,
    TaskResult,
    TaskStatus,
    TaskSummary,
    decode_task,
    decode_task_list,
    encode_request,
    with_webhook,
)
from ._polling import PollPolicy, TaskHandle, Timings
from ._retry import RetryPolicy, is_retryable, parse_retry_after, post_created_nothing, post_retryable
from ._transport import Timeouts, Transport
from ._webhooks import WebhookReceiver

__all__ = ["KlingClient"]

log = logging.getLogger("kling_async")

DEFAULT_BASE_URL = "https://api.freepik.com"
KEY_VARIABLES = ("FREEPIK_API_KEY", "MAGNIFIC_API_KEY")
_EARLY_DELIVERIES = 10_000
_MAX_PAGE_SIZE = 100


def _is_magnific(host: str) -> bool:
    return host == "magnific.com" or host.endswith(".magnific.com")


class KlingClient:
    """An asynchronous client for the Kling 3 video API.

    Use it as ``async with KlingClient() as client:``; one client shares one connection pool, one rate
    limiter and one retry policy between every request it makes.

    Args:
        api_key: the API key; else ``FREEPIK_API_KEY``, else ``MAGNIFIC_API_KEY``.
        base_url: the API's address; else ``KLING_BASE_URL``, else ``https://api.freepik.com``.
        requests_per_second: a ceiling on the request rate. None: no fixed pace; the client slows down
            by itself at the first 429 and then finds the server's limit.
        burst: how many requests may leave at once after a quiet spell (the token bucket's size).
        max_concurrency: the most API requests on the wire at once.
        max_in_flight: the most tasks generating at once; a submission waits for a slot. None: no cap.
            A slot is freed when the client sees the task finish (or a batch gives up on it).
        max_downloads: the most file downloads at once (separate from API requests).
        poll: when task handles ask for their status.
        retry: how failed requests are repeated.
        timeouts: per-request time limits.
        api_key_header: the header carrying the key; by default ``x-magnific-api-key`` for a
            magnific.com host and ``x-freepik-api-key`` otherwise.
        webhooks: a ``WebhookReceiver``: every submission gets its ``webhook_url``, deliveries resolve
            handles at once, and polling slows to a safety net (``PollPolicy.safety_interval``). The
            client starts the receiver if it is not running (unless it was made with ``serve=False``
            because your own app mounts its handler), and then stops it on close.
        clock: where waiting code reads time (tests swap it).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        requests_per_second: float | None = None,
        burst: int | None = None,
        max_concurrency: int = 16,
        max_in_flight: int | None = None,
        max_downloads: int = 4,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        api_key_header: str | None = None,
        webhooks: WebhookReceiver | None = None,
        clock: Clock | None = None,
    ) -> None:
        key = api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        if not key:
            raise KlingError("no API key: pass api_key=... or set FREEPIK_API_KEY (or MAGNIFIC_API_KEY)")
        url = (base_url or os.environ.get("KLING_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise KlingError(f"base_url: must be an http(s) URL, got {url!r}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight: at least 1, or None for no cap")
        header = api_key_header or (
            "x-magnific-api-key" if _is_magnific(parts.hostname or "") else "x-freepik-api-key"
        )
        self.base_url = url
        self._poll = poll or PollPolicy()
        self._retry = retry or RetryPolicy()
        self._clock = clock or SYSTEM_CLOCK
        self._limiter = Limiter(
            max_pause=self._retry.deadline,
            requests_per_second=requests_per_second,
            burst=burst,
            max_concurrency=max_concurrency,
            clock=self._clock,
        )
        self._downloads = anyio.Semaphore(max_downloads)
        self._in_flight = anyio.Semaphore(max_in_flight) if max_in_flight is not None else None
        self._transport = Transport(
            base_url=url,
            auth_header=(header, key),
            timeouts=timeouts or Timeouts(),
            connection_limit=max_concurrency + 8,
        )
        self._timings = Timings()
        self._events = EventHub()
        self._handles: weakref.WeakValueDictionary[str, TaskHandle] = weakref.WeakValueDictionary()
        self._holding_slot: set[str] = set()
        self._rng = random.Random()
        self._webhooks = webhooks
        self._owns_receiver = False
        # Deliveries that beat the POST's own answer, applied when the handle is made (bounded).
        self._early: dict[str, TaskStatus] = {}
        self._status_listeners: list[Callable[[TaskHandle], None]] = []
        self._task_group: TaskGroup
        self._state = "new"

    def __repr__(self) -> str:
        return f"<KlingClient base_url={self.base_url!r} {self._state} limiter={self._limiter!r}>"

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"a KlingClient can be opened once; this one is {self._state}")
        if self._webhooks is not None:
            if self._webhooks.serve and not self._webhooks.running:
                await self._webhooks.__aenter__()
                self._owns_receiver = True
            self._webhooks.add_listener(self._on_webhook)
        await self._transport.open()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._state = "open"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool and end event streams. Tasks on the server are not affected."""
        if self._state == "closed":
            return
        opened = self._state == "open"
        self._state = "closed"
        self._events.close()
        try:
            if opened:
                # Background work (batches started by map) ends here; the task group must be the
                # innermost scope when it exits, so this is not shielded.
                self._task_group.cancel_scope.cancel()
                await self._task_group.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self._transport.close()
                if self._webhooks is not None:
                    self._webhooks.remove_listener(self._on_webhook)
                    if self._owns_receiver:
                        await self._webhooks.__aexit__(None, None, None)

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(
                "this KlingClient is closed"
                if self._state == "closed"
                else "use `async with KlingClient(...)`"
            )

    # -- public operations -------------------------------------------------------------------------------

    async def submit(self, request: Request, *, model: str | None = None) -> TaskHandle:
        """Create one task (one POST) and return its handle at once.

        Args:
            request: an ``OmniRequest``, ``Kling3Request`` or ``VideoReferenceRequest``.
            model: the create endpoint; by default the standard model of the request's family.

        Raises:
            InvalidRequestError: the request or model is invalid (nothing was sent).
            SubmitUncertainError: the POST may have created a task but no answer came back.
            APIError: the server refused the request (nothing was created).
        """
        return await self._submit(request, model=model, key=None)

    async def _submit(
        self, request: Request, *, model: str | None, key: str | None, slot_held: bool = False
    ) -> TaskHandle:
        """Submit; with ``slot_held`` the caller already took the in-flight slot this task will hold."""
        self._require_open()
        try:
            endpoint = resolve(request, model)
            if self._webhooks is not None and request.webhook_url is None:
                request = with_webhook(request, self._webhooks.url)
            body = encode_request(request)
        except BaseException:
            if slot_held:
                self._give_slot()
            raise
        if not slot_held:
            await self._take_slot()
        try:
            answer = await self._post(endpoint, body, key=key)
        except BaseException:
            self._give_slot()
            raise
        # An answer that is already COMPLETED carries its videos: the handle keeps them.
        handle = self._attach(
            endpoint,
            answer.task_id,
            answer.status,
            started=self._clock.now(),
            request=request,
            urls=answer.generated,
        )
        self._hold_slot(handle.task_id)
        if self._events.active:
            self._events.publish(TaskSubmitted(task_id=handle.task_id, model=endpoint.model, key=key))
        if handle.done:
            self._release_slot(handle.task_id)
        return handle

    async def list_tasks(
        self, *, model: str = "kling-v3-omni-std", page: int = 1, page_size: int = 100
    ) -> list[TaskSummary]:
        """One page of the family's tasks, newest first (one GET): ids and statuses, no result URLs.

        Useful to settle a ``SubmitUncertainError``: a task created by the unanswered POST shows up here.

        Raises:
            InvalidRequestError: ``page`` below 1 or ``page_size`` outside 1..100 (nothing is sent).
        """
        if page < 1:
            raise InvalidRequestError.for_field("page", f"at least 1 (got {page})")
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            raise InvalidRequestError.for_field("page_size", f"from 1 to {_MAX_PAGE_SIZE} (got {page_size})")
        endpoint = endpoint_for(model)
        params = {"page": str(page), "page_size": str(page_size)}
        return decode_task_list(
            await self._request("GET", endpoint.family_path, lane=Lane.STATUS, params=params)
        )

    def task(self, task_id: str, *, model: str = "kling-v3-omni-std") -> TaskHandle:
        """A handle to an existing task, by id: no request is sent until it is awaited or refreshed.

        The model only has to name the right family (std and pro share their status path).
        """
        self._require_open()
        endpoint = endpoint_for(model)
        endpoint.status_path(task_id)  # validates the id before anything is sent
        existing = self._handles.get(task_id)
        if existing is not None:
            return existing
        return self._attach(endpoint, task_id, None, started=None, request=None)

    async def generate(
        self, request: Request, *, model: str | None = None, timeout: float | None = None
    ) -> TaskResult:
        """Submit a request and wait for its result."""
        handle = await self.submit(request, model=model)
        return await handle.wait(timeout=timeout)

    async def download(
        self,
        result: TaskResult | str,
        dest: str | os.PathLike[str] = ".",
        *,
        name: str | None = None,
    ) -> Path:
        """Save a result's video (or any file URL) and return the path written.

        The file is streamed beside its target and renamed into place only when whole; a broken
        transfer resumes with ``Range``; an expired result URL is replaced by a fresh one from the task.
        An existing different file is never overwritten.

        Args:
            result: a ``TaskResult`` (its first URL) or a URL.
            dest: a directory (existing, or written with a trailing slash) or a file path.
            name: the file's base name inside a directory; default: the task id.

        Raises:
            DownloadError: the file could not be fetched whole.
        """
        self._require_open()
        if isinstance(result, str):
            url, task_id, model = result, None, None
        else:
            if result.url is None:
                raise KlingError(f"task {result.task_id} has no result URL to download")
            url, task_id, model = result.url, result.task_id, result.model
        target = Path(dest)
        if target.is_dir() or str(dest).endswith(("/", os.sep)):
            target = target / safe_file_name(name or task_id or urlsplit(url).path.rsplit("/", 1)[-1])

        async def fresh_url() -> str:
            assert task_id is not None
            assert model is not None
            status = await self._fetch_status(endpoint_for(model), task_id)
            if not status.generated:
                raise KlingError(f"task {task_id} has no result URL any more (status {status.status})")
            return status.generated[0]

        async with self._downloads:
            return await download_file(
                self._transport,
                url,
                target,
                retry=self._retry,
                clock=self._clock,
                fresh_url=fresh_url if task_id is not None and model is not None else None,
            )

    async def map(
        self,
        requests: Iterable[Job | Request] | AsyncIterable[Job | Request],
        *,
        journal: str | os.PathLike[str] | Journal | None = None,
        download: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        batch_timeout: float | None = None,
        resubmit_uncertain: bool = False,
        resubmit_failed: bool = False,
    ) -> AsyncIterator[Outcome]:
        """Run every request to an outcome, yielding outcomes as they finish (completion order).

        One item's failure is its own ``Outcome`` (with ``.error``), never an exception out of the batch.
        The input may be lazy and unbounded: items are pulled only as submissions go out. Breaking out of
        the loop or cancelling it stops submitting and checking; created tasks stay reachable by id
        (``TaskSubmitted`` events carry them).

        Args:
            requests: requests or ``Job``s, from any iterable or async iterable.
            journal: an SQLite file (or ``Journal``) recording every item before its POST and after; a
                later run with the same file skips finished items, re-attaches to running tasks by id,
                and reports items whose POST got no answer as ``SubmitUncertainError`` instead of
                sending them again.
            download: a directory to save each video into as soon as its result arrives.
            timeout: per-task deadline in seconds (default: the poll policy's timeout).
            batch_timeout: deadline for the whole batch: no item is taken from the input after it, and
                tasks still running then end as ``TaskTimeoutError`` outcomes (they run on server-side).
            resubmit_uncertain: send again the items a journal marks uncertain (this may pay twice).
            resubmit_failed: submit again the items whose task a journal records as FAILED (a new task).
        """
        self._require_open()
        folder = Path(download) if download is not None else None
        send, receive = anyio.create_memory_object_stream[Outcome](self._limiter.max_concurrency)
        finished = anyio.Event()
        scope = anyio.CancelScope()
        failures: list[Exception] = []

        async def engine() -> None:
            try:
                with scope:
                    await run_batch(
                        self,
                        requests,
                        send,
                        submitters=self._limiter.max_concurrency,
                        timeout=timeout,
                        batch_timeout=batch_timeout,
                        download=folder,
                        journal=journal,
                        resubmit_uncertain=resubmit_uncertain,
                        resubmit_failed=resubmit_failed,
                    )
            except Exception as exc:  # a bug in the engine: surface it to the caller, not the client
                failures.append(exc)
            finally:
                send.close()
                finished.set()

        self._task_group.start_soon(engine)
        try:
            async with receive:
                async for outcome in receive:
                    yield outcome
            if failures:
                raise failures[0]
        finally:
            scope.cancel()
            with anyio.CancelScope(shield=True):
                await finished.wait()

    async def gather(
        self,
        requests: Iterable[Job | Request] | AsyncIterable[Job | Request],
        *,
        journal: str | os.PathLike[str] | Journal | None = None,
        download: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        batch_timeout: float | None = None,
        resubmit_uncertain: bool = False,
        resubmit_failed: bool = False,
    ) -> list[Outcome]:
        """Like ``map``, but return every outcome at the end, in input order."""
        batch = self.map(
            requests,
            journal=journal,
            download=download,
            timeout=timeout,
            batch_timeout=batch_timeout,
            resubmit_uncertain=resubmit_uncertain,
            resubmit_failed=resubmit_failed,
        )
        outcomes = [outcome async for outcome in batch]
        outcomes.sort(key=lambda outcome: outcome.index)
        return outcomes

    def events(self) -> EventStream:
        """Every event from this call until the client closes: submissions, status changes, retries, 429s.

        ``async for event in client.events():`` ... Publishing never waits for a slow reader: past
        10,000 unread events the newest are dropped for that reader.
        """
        self._require_open()
        return self._events.subscribe()

    # -- plumbing shared with handles --------------------------------------------------------------------

    def _attach(
        self,
        endpoint: Endpoint,
        task_id: str,
        status: str | None,
        *,
        started: float | None,
        request: Request | None,
        urls: tuple[str, ...] = (),
    ) -> TaskHandle:
        duration = getattr(request, "duration", None) if request is not None else None
        handle = TaskHandle(
            self,
            endpoint,
            task_id,
            status=status,
            urls=urls,
            started=started,
            kind=(endpoint.family_path, endpoint.model, duration),
        )
        self._handles[task_id] = handle
        early = self._early.pop(task_id, None)
        if early is not None:
            handle._observe(early)
        return handle

    @property
    def _safety_net(self) -> bool:
        """Whether webhooks deliver statuses, so that polling only guards against lost deliveries."""
        return self._webhooks is not None

    def _on_webhook(self, status: TaskStatus) -> None:
        handle = self._handles.get(status.task_id)
        if handle is not None:
            handle._observe(status)
        elif len(self._early) < _EARLY_DELIVERIES:
            self._early[status.task_id] = status

    def _status_changed(self, handle: TaskHandle, previous: str | None) -> None:
        if handle.done:
            self._release_slot(handle.task_id)
        for listener in self._status_listeners:
            listener(handle)
        if self._events.active:
            status = handle.status or ""
            self._events.publish(
                StatusChanged(task_id=handle.task_id, model=handle.model, status=status, previous=previous)
            )

    async def _take_slot(self) -> None:
        """Wait for room under ``max_in_flight`` (no wait without a cap)."""
        if self._in_flight is not None:
            await self._in_flight.acquire()

    def _give_slot(self) -> None:
        """Return a slot that no task came to hold."""
        if self._in_flight is not None:
            self._in_flight.release()

    def _hold_slot(self, task_id: str) -> None:
        """The task takes over the slot taken for it, until it finishes (or we stop following it)."""
        if self._in_flight is not None:
            self._holding_slot.add(task_id)

    def _release_slot(self, task_id: str) -> None:
        """The task stopped generating (or we stopped following it): free its slot."""
        if self._in_flight is not None and task_id in self._holding_slot:
            self._holding_slot.discard(task_id)
            self._in_flight.release()

    async def _fetch_status(self, endpoint: Endpoint, task_id: str) -> TaskStatus:
        body = await self._request("GET", endpoint.status_path(task_id), lane=Lane.STATUS, task_id=task_id)
        status = decode_task(body)
        if status.task_id != task_id:
            raise TransportError(f"the status of task {task_id} came back about another task")
        return status

    async def _post(self, endpoint: Endpoint, body: bytes, *, key: str | None) -> TaskStatus:
        try:
            answer = await self._request("POST", endpoint.create_path, body=body, lane=Lane.SUBMIT)
        except KlingError as exc:
            if post_created_nothing(exc):
                raise
            where = "" if isinstance(exc, TransportError) else f"POST {endpoint.create_path}: "
            raise SubmitUncertainError(
                f"{where}{exc}; a task may have been created, so it was not resent",
                model=endpoint.model,
                key=key,
            ) from exc
        try:
            created = decode_task(answer)
            endpoint.status_path(created.task_id)  # an id we could never ask about is no task to us
        except (TransportError, InvalidRequestError) as exc:
            raise SubmitUncertainError(
                f"POST {endpoint.create_path} answered 200 without a usable task ({exc})",
                model=endpoint.model,
                key=key,
            ) from exc
        return created

    async def _request(
        self,
        method: str,
        path: str,
        *,
        lane: Lane,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        task_id: str | None = None,
    ) -> bytes:
        """Send through limiter and transport, retrying by the rules; return the body of a 2xx answer."""
        self._require_open()
        can_retry = post_retryable if method == "POST" else is_retryable
        first = self._clock.now()
        attempt = 0
        while True:
            attempt += 1
            async with self._limiter.slot(lane):
                try:
                    # Once a POST leaves, its answer is awaited even if the caller is cancelled (within the
                    # request timeout): the answer holds the id of a task that now exists and costs money.
                    with anyio.CancelScope(shield=method == "POST"):
                        response = await self._transport.request(method, path, body=body, params=params)
                except TransportError as exc:
                    error: KlingError = exc
                else:
                    if response.status != 429:
                        self._limiter.on_success()
                    if 200 <= response.status < 300:
                        return response.body
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    error = api_error(
                        response.status, response.body, task_id=task_id, retry_after=retry_after
                    )
            if isinstance(error, RateLimitError):
                self._limiter.on_rate_limited(error.retry_after)
                if self._events.active:
                    self._events.publish(RateLimited(retry_after=error.retry_after, rate=self._limiter.rate))
            if not can_retry(error) or attempt >= self._retry.attempts:
                raise error
            # A 429 is paced by the limiter (Retry-After included), so no sleep here, but a Retry-After
            # that would take us past the deadline fails now rather than hang; others back off here.
            if isinstance(error, RateLimitError):
                delay, waiting = 0.0, error.retry_after or 0.0
            else:
                delay = waiting = self._retry.backoff(attempt, self._rng)
            if self._clock.now() + waiting - first > self._retry.deadline:
                raise error
            log.debug("retrying %s %s after %s (attempt %d, in %.2fs)", method, path, error, attempt, delay)
            if self._events.active:
                self._events.publish(
                    RequestRetried(method=method, path=path, attempt=attempt, delay=delay, error=str(error))
                )
            await self._clock.sleep(delay)
