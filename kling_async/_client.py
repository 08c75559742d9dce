"""KlingClient: the facade. Configuration, lifecycle, and public verbs that delegate to the layers below.

Who owns what (``docs/architecture.md``): the ``Pipeline`` sends every API request; the ``Creator`` owns
create POSTs once they may leave; the ``TaskRegistry`` owns handles and the one fan-out of status changes;
``Slots`` owns the in-flight cap; a ``BatchRun`` (``map``/``gather``) runs in the caller's scope.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, nullcontext, suppress
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._batch import Batch, BatchOptions, BatchRun, Job, Outcome
from ._clock import SYSTEM_CLOCK, Clock
from ._download import download_file, name_in_url, safe_file_name
from ._endpoints import Endpoint, ModelName, checked_task_id, endpoint_for, resolve
from ._errors import ClientClosed, DownloadError, InvalidRequestError, KlingError
from ._events import EventHub, EventStream
from ._journal import BatchJournal, Journal
from ._journals import open_journal, postgres_url
from ._limits import Limiter
from ._models import Request, TaskResult, TaskStatus, TaskSummary, encode_request, with_webhook
from ._pipeline import Pipeline
from ._polling import PollPolicy, TaskHandle, check_positive
from ._registry import Slots, TaskRegistry, Ticket
from ._retry import RetryPolicy
from ._secret import Secret
from ._shared import Sharing
from ._submit import Creator, Halt
from ._tracker import SweepRelay
from ._transport import AiohttpTransport, Timeouts, TraceConfigs, Transport
from ._webhooks import WebhookReceiver

__all__ = ["KlingClient"]

log = logging.getLogger("kling_async")

DEFAULT_BASE_URL = "https://api.freepik.com"
KEY_VARIABLES = ("FREEPIK_API_KEY", "MAGNIFIC_API_KEY")
_MAX_PAGE_SIZE = 100
_MIN_RATE = 0.01  # requests a second
_KEEPER_RESCAN = 1.0  # seconds between two looks for tasks holding the slots a submission waits for
# Header names are RFC 9110 tokens; values are visible ASCII and spaces (no control characters).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")
# Closing the client waits this long past the request timeout for create POSTs still on the wire.
_CLOSE_GRACE = 1.0


def _is_magnific(host: str) -> bool:
    return host == "magnific.com" or host.endswith(".magnific.com")


class _Host:
    """The task the client's background work runs in: its task group (the senders of create POSTs, the
    batches iterated without ``async with``) and what it shares through a database (whose connections'
    tasks run in groups of their own). Started when the client opens, ended by ``aclose`` from whichever
    task calls it: a task group entered in the opener's task could be left only by that task, from the
    scope it was entered in (``aclose`` in a shutdown hook or inside a batch's block cancelled its caller).
    """

    def __init__(self, sharing: Sharing | None) -> None:
        self._sharing = sharing
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TaskGroup:
        """Start the task; its task group once it runs (or what kept it from running, raised here)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[TaskGroup] = loop.create_future()
        self._task = task = loop.create_task(self._run(ready), name="kling-async client")
        try:
            return await ready
        except BaseException:  # it failed to start (a shared database), or the opener was cancelled
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # raised here already, through ``ready``
            raise

    async def stop(self) -> None:
        """End the background work (its tasks are cancelled) and wait for it to end."""
        if self._task is not None:
            self._stopping.set()
            await self._task

    async def _run(self, ready: asyncio.Future[TaskGroup]) -> None:
        try:
            async with AsyncExitStack() as stack:
                if self._sharing is not None:
                    await stack.enter_async_context(self._sharing)
                group = await stack.enter_async_context(anyio.create_task_group())
                if ready.cancelled():  # the opener gave up meanwhile
                    return
                ready.set_result(group)
                await self._stopping.wait()
                group.cancel_scope.cancel()
        except BaseException as exc:
            if ready.done():
                raise
            if isinstance(exc, asyncio.CancelledError):
                ready.cancel()
            else:
                ready.set_exception(exc)


_NOTED_IDS = 20  # task ids a note names; the log has them all


def _note_created(exc: Exception, outcomes: list[Outcome]) -> None:
    """Name on ``exc`` (and in the log) the tasks of the outcomes a failed ``gather`` will not return."""
    created = [outcome.task_id for outcome in sorted(outcomes, key=lambda o: o.index) if outcome.task_id]
    if not created:
        return
    log.warning(
        "gather() failed after creating %d task(s), which run on: %s", len(created), " ".join(created)
    )
    shown = " ".join(created[:_NOTED_IDS])
    more = f" and {len(created) - _NOTED_IDS} more (logged)" if len(created) > _NOTED_IDS else ""
    exc.add_note(
        f"gather() had {len(outcomes)} outcome(s) when this ended it; the tasks they created run on, and"
        f" client.task(task_id, model=...) reaches each: {shown}{more}"
    )


class KlingClient:
    """An asynchronous client for the Kling 3 video API.

    Use it as ``async with KlingClient() as client:``; one client shares one connection pool, one rate
    limiter and one retry policy between every request it makes.

    Args:
        api_key: the API key; else ``FREEPIK_API_KEY``, else ``MAGNIFIC_API_KEY``.
        base_url: the API's address; else ``KLING_BASE_URL``, else ``https://api.freepik.com``.
        requests_per_second: a ceiling on the request rate. None: no fixed pace; the client opens at 50
            requests a second, doubling twelve times a second (once a second while more than four
            requests are on the wire) until the first 429, and then finds the server's limit by itself.
        burst: how many requests may leave at once after a quiet spell (the token bucket's size).
        max_concurrency: the most API requests on the wire at once.
        max_in_flight: the most tasks generating at once; a submission waits for a slot. None: no cap.
            A slot is freed when the client sees the task finish, when the batch that submitted it
            ends, or when nothing holds the task's handle any more.
        max_downloads: the most file downloads at once (separate from API requests).
        poll: when task handles ask for their status.
        retry: how failed requests are repeated.
        timeouts: per-request time limits.
        api_key_header: the header carrying the key; by default ``x-magnific-api-key`` for a
            magnific.com host and ``x-freepik-api-key`` otherwise.
        webhooks: a ``WebhookReceiver``: every submission gets its ``webhook_url``, deliveries resolve
            handles at once, and polling slows to a safety net (``PollPolicy.safety_interval``). The
            client starts the receiver if it is not running (unless it was made with ``serve=False``
            because your own app mounts its handler), and then stops it on close; clients sharing one
            receiver they started keep it running until the last of them closes.
        clock: where waiting code reads time (tests pass ``kling_async.testing.FakeClock``).
        proxy: a proxy URL for API and file requests (``http://user:pass@proxy:3128``). None: the
            environment's, when ``trust_env``.
        trust_env: honour ``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY`` and ``~/.netrc``, as httpx does.
        default_headers: extra headers on every API request (not on file downloads, which go to other
            hosts). They cannot carry the key: a header named like the key's is a ``ValueError``.
        trace_configs: aiohttp ``TraceConfig``s for the client's session (OpenTelemetry and the like).
        transport: for tests and advanced use: what sends the requests, instead of the aiohttp
            transport built from the options above (``kling_async.testing.MockTransport``).
        shared: a ``postgresql://`` URL of a database this client shares with other workers using the
            same API key (the ``postgres`` extra): they pace their requests by one rate for the key (a
            429 any of them gets slows them all once), a webhook delivered to any of them resolves the
            handle in the one that waits, and one of them sweeps each family's task list for all.
            Batches whose journal is a PostgreSQL URL share through it for their duration anyway. See
            the guide "Many workers".

    Raises:
        KlingError: no API key was given or found.
        ValueError: a setting breaks its rule (the message names it): a count below 1, a rate or time
            that is not a finite positive number, a key or header with control characters.
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
        proxy: str | None = None,
        trust_env: bool = True,
        default_headers: Mapping[str, str] | None = None,
        trace_configs: TraceConfigs | None = None,
        transport: Transport | None = None,
        shared: str | None = None,
    ) -> None:
        key = api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        if not key:
            raise KlingError("no API key: pass api_key=... or set FREEPIK_API_KEY (or MAGNIFIC_API_KEY)")
        if not isinstance(key, str) or not _HEADER_VALUE.fullmatch(key):
            # Never echo the key itself: the message would put it in logs.
            raise ValueError("api_key: visible ASCII characters only (it holds a control or other character)")
        for name, value, kind in (
            ("base_url", base_url, str),
            ("poll", poll, PollPolicy),
            ("retry", retry, RetryPolicy),
            ("timeouts", timeouts, Timeouts),
            ("webhooks", webhooks, WebhookReceiver),
            ("proxy", proxy, str),
            ("default_headers", default_headers, Mapping),
        ):
            if value is not None and not isinstance(value, kind):  # else it fails later, obscurely
                raise TypeError(f"{name}: a {kind.__name__} or None (got {type(value).__name__})")
        proxy_parts = urlsplit(proxy) if proxy is not None else None
        if proxy_parts is not None and (
            proxy_parts.scheme not in ("http", "https") or not proxy_parts.netloc
        ):
            # aiohttp refuses it at the first request, which then looked like a POST that may have left.
            raise ValueError(f"proxy: an http(s) URL (got {proxy!r})")
        url = (base_url or os.environ.get("KLING_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise KlingError(f"base_url: must be an http(s) URL, got {url!r}")
        if parts.query or parts.fragment:  # every path would be appended after it, with the key
            raise KlingError(f"base_url: no query or fragment, got {url!r}")
        check_positive("requests_per_second", requests_per_second, optional=True)
        if requests_per_second is not None and requests_per_second < _MIN_RATE:
            # Below it the next token is hours away, and at 1e-300 no wait a float can hold.
            raise ValueError(
                f"requests_per_second: at least {_MIN_RATE} (one request in 100 s),"
                f" got {requests_per_second!r}"
            )
        check_positive("burst", burst, whole=True, optional=True)
        check_positive("max_concurrency", max_concurrency, whole=True)
        check_positive("max_in_flight", max_in_flight, whole=True, optional=True)
        check_positive("max_downloads", max_downloads, whole=True)
        header = api_key_header or (
            "x-magnific-api-key" if _is_magnific(parts.hostname or "") else "x-freepik-api-key"
        )
        if not _TOKEN.fullmatch(header):
            raise ValueError(f"api_key_header: a header name (letters, digits, '-', ...) (got {header!r})")
        if shared is not None and postgres_url(shared) is None:
            raise ValueError("shared: a postgresql:// URL (got another kind of value)")
        timeouts = timeouts or Timeouts()
        self.base_url = url
        self._poll = poll or PollPolicy()
        self._retry = retry or RetryPolicy()
        self._timeouts = timeouts
        self._clock = clock or SYSTEM_CLOCK
        self._api_key = Secret(key)
        self._limiter = Limiter(
            max_pause=self._retry.deadline,
            requests_per_second=requests_per_second,
            burst=burst,
            max_concurrency=max_concurrency,
            clock=self._clock,
        )
        self._downloads = anyio.Semaphore(max_downloads)
        self._transport: Transport = (
            transport
            if transport is not None
            else AiohttpTransport(
                base_url=url,
                auth_header=(header, self._api_key.reveal()),
                timeouts=timeouts,
                connection_limit=max_concurrency + 8,
                proxy=proxy,
                trust_env=trust_env,
                default_headers=default_headers,
                trace_configs=trace_configs,
            )
        )
        self._events = EventHub()
        self._slots = Slots(max_in_flight)
        self._pipeline = Pipeline(
            transport=self._transport,
            limiter=self._limiter,
            retry=self._retry,
            clock=self._clock,
            events=self._events,
        )
        self._webhooks = webhooks
        self._owns_receiver = False
        self._registry = TaskRegistry(
            poll=self._poll,
            clock=self._clock,
            events=self._events,
            slots=self._slots,
            fetch=self._fetch_status,
            safety_net=webhooks is not None,
        )
        self._creator = Creator(pipeline=self._pipeline, registry=self._registry, events=self._events)
        self._requests_per_second = requests_per_second
        self._burst = burst
        self._sharing = self._share(shared) if shared is not None else None
        self._host = _Host(self._sharing)
        self._slot_waiters = 0  # submit() calls waiting for a max_in_flight slot
        self._keeping_slots = False
        self._task_group: TaskGroup
        self._state = "new"
        self._closing = False  # aclose is under way: its connections are still open
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that opened it

    def __repr__(self) -> str:
        return f"<KlingClient base_url={self.base_url!r} {self._state} limiter={self._limiter!r}>"

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"a KlingClient can be opened once; this one is {self._state}")
        self._state = "opening"
        try:
            if self._webhooks is not None:
                self._owns_receiver = await self._webhooks._join()
                self._webhooks.add_listener(self._registry.observe)
            await self._transport.open()
            self._task_group = await self._host.start()
        except BaseException:
            self._state = "closed"
            with anyio.CancelScope(shield=True):
                await self._transport.close()
                await self._leave_receiver()
            raise
        self._creator.open(self._task_group)
        self._loop = asyncio.get_running_loop()
        self._state = "open"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client: wait (bounded) for create POSTs on the wire, then close the connections.

        Batches still iterated in the background stop; tasks on the server are not affected. Any task
        may call it, not only the one that opened the client (an application's shutdown hook, a test
        fixture's teardown).
        """
        if self._state in ("closed", "opening"):
            return
        opened = self._state == "open"
        self._state = "closed"
        self._closing = True
        try:
            if opened:
                with anyio.CancelScope(shield=True):
                    # A POST on the wire answers within the request timeout: its task id is worth that.
                    await self._creator.drain(self._timeouts.total + _CLOSE_GRACE)
                await self._host.stop()  # background work ends here
        finally:
            self._closing = False
            self._events.close()
            with anyio.CancelScope(shield=True):
                await self._transport.close()
                await self._leave_receiver()

    async def _leave_receiver(self) -> None:
        """Stop hearing the receiver's deliveries, and leave its server if this client started or joined
        it (the last client to leave stops it)."""
        if self._webhooks is None:
            return
        self._webhooks.remove_listener(self._registry.observe)
        if self._owns_receiver:
            self._owns_receiver = False
            await self._webhooks._leave()

    def _share(self, url: str) -> Sharing:
        return Sharing(
            url,
            api_key=self._api_key,
            limiter=self._limiter,
            requests_per_second=self._requests_per_second,
            burst=self._burst,
            max_pause=self._retry.deadline,
            observe=self._registry.observe,
            webhooks=self._webhooks,
        )

    @staticmethod
    def _relay(sharing: Sharing | None) -> SweepRelay | None:
        return sharing.relay if sharing is not None else None

    def _batch_sharing(self, journal: object) -> AbstractAsyncContextManager[Sharing | None]:
        """A batch with a PostgreSQL journal shares through it, unless the client already shares."""
        url = postgres_url(journal)
        if self._sharing is not None or url is None:
            return nullcontext(self._sharing)
        return self._share(url)

    async def _fetch_status(self, endpoint: Endpoint, task_id: str) -> TaskStatus:
        """A handle's status GET: a handle that outlived its client says how to reach its task again.

        While the client closes (its POSTs drain, its batches are stopped) its connections are still
        open: a batch's checks go on until it is stopped, and end with the close, not with this error.
        """
        if self._state == "closed" and not self._closing:
            raise ClientClosed(
                f"task {task_id}: the KlingClient that made this handle is closed; an open client reaches"
                f" the task with client.task({task_id!r}, model={endpoint.model!r})"
            )
        if not self._closing:
            self._require_open()
        return await self._pipeline.fetch_status(endpoint, task_id)

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(
                "this KlingClient is closed"
                if self._state == "closed"
                else "use `async with KlingClient(...)`"
            )
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            # Its connections, limiter and background tasks belong to that loop: used from another one,
            # aiohttp fails obscurely and the client's own task group is cancelled under its owner.
            raise RuntimeError(
                "this KlingClient belongs to the event loop that opened it (another thread's?); open one"
                " KlingClient per event loop"
            )

    # -- public operations -------------------------------------------------------------------------------

    def _prepare(self, request: Request) -> Request:
        """The request as it is sent: with this client's webhook URL when it has a receiver."""
        if self._webhooks is not None and request.webhook_url is None:
            return with_webhook(request, self._webhooks.url)
        return request

    async def submit(self, request: Request, *, model: ModelName | None = None) -> TaskHandle:
        """Create one task (one POST) and return its handle at once.

        Once the POST may have left, cancelling the caller does not lose the task: it is registered,
        published as ``TaskSubmitted`` and logged, and ``client.task(id)`` reaches it.

        Args:
            request: an ``OmniRequest``, ``Kling3Request`` or ``VideoReferenceRequest``.
            model: the create endpoint; by default the standard model of the request's family.

        Raises:
            InvalidRequestError: the request or model is invalid (nothing was sent).
            SubmitUncertainError: the POST may have created a task but no answer came back.
            APIError: the server refused the request (nothing was created).
        """
        self._require_open()
        endpoint = resolve(request, model)
        request = self._prepare(request)
        body = encode_request(request)
        ticket = await (self._wait_for_slot() if self._slots.full else self._slots.take())
        ticket.lone = True  # (an uncapped client's one shared ticket is never handed over)
        try:
            created = await self._creator.create(endpoint, request, body, key=None, ticket=ticket)
        except BaseException:
            ticket.release()
            raise
        return created.handle

    async def _wait_for_slot(self) -> Ticket:
        """A ``max_in_flight`` slot for ``submit()`` when every one is held. A slot comes back when the
        client sees its task finish: tasks submitted and not awaited yet ("submit them all, then await
        them all") would hold every slot for good, so while a submission waits the client checks them."""
        self._slot_waiters += 1
        if not self._keeping_slots:
            self._keeping_slots = True
            self._task_group.start_soon(self._keep_slots)
        try:
            return await self._slots.take()
        finally:
            self._slot_waiters -= 1

    async def _keep_slots(self) -> None:
        """While a ``submit()`` waits for a slot, follow the tasks ``submit()`` made (each once)."""
        followed: set[str] = set()

        async def follow(handle: TaskHandle) -> None:
            with suppress(Exception):  # its own waiter, if any, hears what went wrong
                await handle.wait()

        async with anyio.create_task_group() as followers:
            while self._slot_waiters:
                for task_id in self._slots.lone_holders():
                    handle = self._registry.get(task_id)
                    if task_id not in followed and handle is not None:
                        followed.add(task_id)
                        followers.start_soon(follow, handle)
                await self._clock.sleep(_KEEPER_RESCAN)
            self._keeping_slots = False  # with no wait since the check: a new waiter starts another
            followers.cancel_scope.cancel()

    async def list_tasks(
        self, *, model: str = "kling-v3-omni-std", page: int = 1, page_size: int = 100
    ) -> list[TaskSummary]:
        """One page of the family's tasks, newest first (one GET): ids and statuses, no result URLs.

        Useful to settle a ``SubmitUncertainError``: a task created by the unanswered POST shows up here.

        Raises:
            InvalidRequestError: ``page`` below 1 or ``page_size`` outside 1..100 (nothing is sent).
        """
        self._require_open()
        for field, value in (("page", page), ("page_size", page_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequestError.for_field(field, f"a whole number (got {value!r})")
        if page < 1:
            raise InvalidRequestError.for_field("page", f"at least 1 (got {page})")
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            raise InvalidRequestError.for_field("page_size", f"from 1 to {_MAX_PAGE_SIZE} (got {page_size})")
        return await self._pipeline.list_page(endpoint_for(model), page=page, page_size=page_size)

    def task(self, task_id: str, *, model: str = "kling-v3-omni-std") -> TaskHandle:
        """A handle to an existing task, by id: no request is sent until it is awaited or refreshed.

        The model only has to name the right family (std and pro share their status path).
        """
        self._require_open()
        endpoint = endpoint_for(model)
        task_id = checked_task_id(task_id)  # before anything is sent
        return self._registry.attach(endpoint, task_id, None, started=None, request=None)

    async def generate(
        self, request: Request, *, model: ModelName | None = None, timeout: float | None = None
    ) -> TaskResult:
        """Submit a request and wait for its result."""
        check_positive("timeout", timeout, optional=True)  # before the POST, not after its task is paid for
        handle = await self.submit(request, model=model)
        return await handle.wait(timeout=timeout)

    async def download(
        self,
        result: TaskResult | str,
        dest: str | os.PathLike[str] = ".",
        *,
        name: str | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Save a result's video (or any file URL) and return the path written.

        The file is streamed beside its target and renamed into place only when whole; a broken
        transfer resumes with ``Range``; an expired result URL is replaced by a fresh one from the task.
        An existing different file is never overwritten.

        Args:
            result: a ``TaskResult`` (its first URL) or a URL.
            dest: a directory (existing, or written with a trailing slash) or a file path.
            name: the file's base name inside a directory; default: the task id.
            max_bytes: the largest file accepted; a larger one is a ``DownloadError`` and nothing of it
                is kept (None: no cap).

        Raises:
            DownloadError: the file could not be fetched whole.
        """
        self._require_open()
        if isinstance(result, str):
            url, task_id, model = result, None, None
        elif isinstance(result, TaskResult):
            if result.url is None:
                raise KlingError(f"task {result.task_id} has no result URL to download")
            url, task_id, model = result.url, result.task_id, result.model
        else:
            raise TypeError(f"result: a TaskResult or a URL (got {type(result).__name__})")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: a string, or None for the task id (got {type(name).__name__})")
        target = Path(dest)
        try:
            folder = target.is_dir()
        except OSError as exc:  # a name too long for the file system, say
            raise DownloadError(f"cannot write {target}: {exc.strerror or exc}") from None
        if folder or str(dest).endswith(("/", os.sep)):
            target = target / safe_file_name(name or task_id or name_in_url(url))

        async def fresh_url() -> str:
            assert task_id is not None
            assert model is not None
            status = await self._pipeline.fetch_status(endpoint_for(model), task_id)
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
                source=task_id,
                deadline=self._timeouts.download_deadline,
                max_bytes=max_bytes,
            )

    async def _download_item(self, result: TaskResult, folder: Path, key: str) -> Path:
        return await self.download(result, folder, name=key)

    def map(
        self,
        requests: Iterable[Job | Request] | AsyncIterable[Job | Request],
        *,
        journal: str | os.PathLike[str] | Journal | BatchJournal | None = None,
        download: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        batch_timeout: float | None = None,
        resubmit_uncertain: bool = False,
        resubmit_failed: bool = False,
    ) -> Batch:
        """Run every request to an outcome, yielding outcomes as they finish (completion order).

        ``async with client.map(requests) as outcomes: async for outcome in outcomes: ...`` runs the
        batch in your task: leaving the block (a ``break``, an exception, a cancellation) stops
        submitting and checking at once and gives back every in-flight slot. ``async for outcome in
        client.map(requests)`` works too, and stops when the iterator is closed (``aclose()``,
        ``contextlib.aclosing``) or exhausted. Either way created tasks stay reachable by id
        (``TaskSubmitted`` events and ``Outcome.task_id`` carry them).

        One item's failure is its own ``Outcome`` (with ``.error``), never an exception out of the batch.
        The input may be lazy and unbounded: items are pulled only as submissions go out. After a
        401/403 answer to a POST no further POST is sent: every remaining item ends with that error.

        Args:
            requests: requests or ``Job``s, from any iterable or async iterable.
            journal: an SQLite file (or ``Journal``) recording every item just before its POST leaves and
                after; a later run with the same file skips finished items, re-attaches to running
                tasks by id, and reports items whose POST got no answer as ``SubmitUncertainError``
                instead of sending them again.
            download: a directory to save each video into as soon as its result arrives.
            timeout: per-task deadline in seconds (default: the poll policy's timeout).
            batch_timeout: deadline for the whole batch: no item is taken from the input after it, and
                tasks still running then end as ``TaskTimeoutError`` outcomes (they run on server-side).
            resubmit_uncertain: send again the items a journal marks uncertain (this may pay twice).
            resubmit_failed: send again the items whose task a journal recorded as FAILED (a new task,
                paid again, for those items only).
        """
        self._require_open()
        if not isinstance(requests, Iterable | AsyncIterable) or isinstance(requests, str | bytes):
            raise TypeError(
                f"requests: an iterable or async iterable of requests or Jobs (got {type(requests).__name__})"
            )
        if download is not None and not isinstance(download, str | os.PathLike):
            raise TypeError(f"download: a folder's path, or None (got {type(download).__name__})")
        check_positive("timeout", timeout, optional=True)
        check_positive("batch_timeout", batch_timeout, optional=True)
        options = BatchOptions(
            timeout=timeout,
            batch_timeout=batch_timeout,
            download=Path(download) if download is not None else None,
            resubmit_uncertain=resubmit_uncertain,
            resubmit_failed=resubmit_failed,
        )

        halt = Halt()

        async def run(send: MemoryObjectSendStream[Outcome]) -> None:
            if options.download is not None:  # first: the journal often lives in the same folder
                try:
                    options.download.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # a file of that name, no permission: before any POST
                    raise DownloadError(
                        f"download: cannot make the folder {options.download}: {exc.strerror or exc}"
                    ) from None
            if journal is None:
                await self._run_batch(requests, send, options, None, self._relay(self._sharing), halt)
                return
            async with (
                open_journal(journal, clock=self._clock) as opened,
                self._batch_sharing(journal) as sharing,
            ):
                await self._run_batch(requests, send, options, opened, self._relay(sharing), halt)

        return Batch(run, background=self._task_group, buffer=self._limiter.max_concurrency, halt=halt)

    async def _run_batch(
        self,
        requests: Iterable[Job | Request] | AsyncIterable[Job | Request],
        send: MemoryObjectSendStream[Outcome],
        options: BatchOptions,
        journal: BatchJournal | None,
        relay: SweepRelay | None,
        halt: Halt,
    ) -> None:
        run = BatchRun(
            registry=self._registry,
            creator=self._creator,
            pipeline=self._pipeline,
            slots=self._slots,
            prepare=self._prepare,
            download=self._download_item,
            send=send,
            journal=journal,
            options=options,
            settle_within=self._timeouts.total + _CLOSE_GRACE,
            relay=relay,
            halt=halt,
        )
        await run.run(requests, submitters=self._limiter.max_concurrency)

    async def gather(
        self,
        requests: Iterable[Job | Request] | AsyncIterable[Job | Request],
        *,
        journal: str | os.PathLike[str] | Journal | BatchJournal | None = None,
        download: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        batch_timeout: float | None = None,
        resubmit_uncertain: bool = False,
        resubmit_failed: bool = False,
    ) -> list[Outcome]:
        """Like ``map``, but return every outcome at the end, in input order (in the caller's scope).

        An error that ends the batch (its input's, or the client closing) is raised after the outcomes
        due by then, as ``map`` raises it, with a note naming the tasks they created (the whole list is
        logged at WARNING): they are paid for, and only their ids reach them again.
        """
        batch = self.map(
            requests,
            journal=journal,
            download=download,
            timeout=timeout,
            batch_timeout=batch_timeout,
            resubmit_uncertain=resubmit_uncertain,
            resubmit_failed=resubmit_failed,
        )
        collected: list[Outcome] = []
        try:
            async with batch as outcomes:
                async for outcome in outcomes:
                    collected.append(outcome)
        except Exception as exc:
            _note_created(exc, collected)
            raise
        collected.sort(key=lambda outcome: outcome.index)
        return collected

    def events(self) -> EventStream:
        """Every event from this call until the client closes: submissions, status changes, retries, 429s.

        ``async for event in client.events():`` ... Publishing never waits for a slow reader: past
        10,000 unread events the oldest are dropped for that reader.
        """
        self._require_open()
        return self._events.subscribe()
