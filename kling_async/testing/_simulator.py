"""The simulator: a real aiohttp server on loopback that imitates the Kling 3 API, faults included."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import math
import random
import re
import time
import uuid
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

import anyio
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from ._faults import (
    AFTER_KINDS,
    Faults,
    QueuedFault,
    error_response,
    json_response,
    parse_fault_kind,
    status_kind,
)
from ._media import UrlSigner, file_response, sample_video
from ._state import TERMINAL, SimulatedTask, SimulatorCounters
from ._validation import InvalidParams, validate
from ._webhooks import WebhookSender

__all__ = ["Simulator"]

_KEY_HEADERS = ("x-freepik-api-key", "x-magnific-api-key")
_INVALID_MESSAGE = "Your request parameters didn't validate."
_MAX_PAGE_SIZE = 100
_DEFAULT_PAGE_SIZE = 20
# In-flight handlers (say, sleeping injected latency) get this long to finish when the simulator stops.
_SHUTDOWN_TIMEOUT = 0.25
# Idle connections, and ones that never finish a request head, are closed after this long (aiohttp's own
# default is an hour: a client holding many would use up the server's file descriptors). Longer than a
# client pool keeps an idle connection (aiohttp's 15 s), so a client never reuses one being closed.
_IDLE_SECONDS = 75.0
_QUERY_INT = re.compile(r"-?[0-9]{1,18}")
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}

_JSON = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder()


class _Model(NamedTuple):
    """One create endpoint and where its tasks are read back."""

    name: str
    create_path: str
    family: str
    schema: str


_MODELS = (
    _Model("kling-v3-omni-std", "/v1/ai/video/kling-v3-omni-std", "/v1/ai/video/kling-v3-omni", "omni"),
    _Model("kling-v3-omni-pro", "/v1/ai/video/kling-v3-omni-pro", "/v1/ai/video/kling-v3-omni", "omni"),
    _Model("kling-v3-std", "/v1/ai/video/kling-v3-std", "/v1/ai/video/kling-v3", "kling3"),
    _Model("kling-v3-pro", "/v1/ai/video/kling-v3-pro", "/v1/ai/video/kling-v3", "kling3"),
    _Model(
        "kling-v3-omni-std",
        "/v1/ai/reference-to-video/kling-v3-omni-std",
        "/v1/ai/reference-to-video/kling-v3-omni",
        "reference",
    ),
    _Model(
        "kling-v3-omni-pro",
        "/v1/ai/reference-to-video/kling-v3-omni-pro",
        "/v1/ai/reference-to-video/kling-v3-omni",
        "reference",
    ),
)
_FAMILIES = tuple(dict.fromkeys(model.family for model in _MODELS))


class _Route(NamedTuple):
    """What a matched API route is, for counting and dispatch."""

    kind: Literal["create", "status", "list"]
    family: str
    model: _Model | None = None


_ROUTES = {
    **{family: _Route("list", family) for family in _FAMILIES},
    **{family + "/{task_id}": _Route("status", family) for family in _FAMILIES},
    **{model.create_path: _Route("create", model.family, model) for model in _MODELS},
}


class _Post(NamedTuple):
    """A create body, decoded once by the middleware: `body` is None when it was not JSON."""

    body: object
    key: bytes


_POST = web.RequestKey("post", _Post)


def _payload_key(raw: bytes, body: object) -> bytes:
    """The payload identity: sorted-key JSON without `webhook_url` (the raw bytes when not a JSON object)."""
    if not isinstance(body, dict):
        return raw
    return msgspec.json.encode({k: v for k, v in body.items() if k != "webhook_url"}, order="sorted")


def _prompt_text(body: dict[str, Any]) -> str:
    """Every prompt of a body joined, to look for the test markers."""
    parts = [body.get("prompt")]
    shots = body.get("multi_prompt")
    for shot in shots if isinstance(shots, list) else ():  # not a list: an unknown field of this model
        parts.append(shot.get("prompt") if isinstance(shot, dict) else shot)
    return " ".join(part for part in parts if isinstance(part, str))


class _TokenBucket:
    """The server's rate limit: token buckets of `(rate, capacity)`; a request needs a token from each."""

    def __init__(self, buckets: Sequence[tuple[float, float]]) -> None:
        self._rates = [rate for rate, _ in buckets]
        self._capacities = [float(capacity) for _, capacity in buckets]
        self._tokens = list(self._capacities)
        self._updated = time.monotonic()

    def take(self) -> float:
        """Take a token from every bucket: 0.0 on success, else the seconds until all have one."""
        now = time.monotonic()
        elapsed = now - self._updated
        self._updated = now
        wait = 0.0
        for i, rate in enumerate(self._rates):
            self._tokens[i] = min(self._capacities[i], self._tokens[i] + elapsed * rate)
            if self._tokens[i] < 1:
                wait = max(wait, (1 - self._tokens[i]) / rate)
        if wait > 0:
            return wait
        for i in range(len(self._tokens)):
            self._tokens[i] -= 1
        return 0.0


class Simulator:
    """A local stand-in for the Freepik Kling 3 API: a real HTTP server on loopback, with fault injection.

    The API and the CDN that serves result files listen on different ports, as a third-party file host would.
    Use it as `async with Simulator(...) as sim:` and point a client at `sim.url`.

    Args:
        api_key: The key the API accepts; None accepts any non-empty key.
        time_scale: Multiplies every simulated duration (0.001 turns a 60 s generation into 60 ms).
        generation_seconds: Generation time, fixed or drawn uniformly from (low, high) per task.
        queue_seconds: Time a task stays CREATED before IN_PROGRESS.
        rate_limit: Requests a second allowed over all API requests (a token bucket); None for no limit.
        burst: The bucket's capacity; default `max(1, int(rate_limit))`.
        rate_windows: More limits enforced at once, each `(requests_per_second, seconds)`: that rate on
            average over the window, as a token bucket holding `rate * seconds`. Freepik publishes bursts
            of 50/s over 5 s and 10/s averaged over 2 minutes: `rate_windows=((50, 5), (10, 120))`.
        retry_after: The Retry-After of a 429: True for seconds, "date" for an HTTP date, False for none.
        faults: Fault injection settings, also changeable later through `sim.faults`.
        seed: Seeds task ids, durations and every random fault, so a run can be repeated.
        webhook_secret: When set, each task with a `webhook_url` gets signed deliveries on status changes.
        url_ttl: Result URLs expire this many real seconds after a status response issued them (403 after).
        adopt_unknown: A status request for a task id never seen (a well-formed UUID) creates that task
            instead of answering 404, as if it had been created just now. The real API remembers tasks
            across runs; a simulator started afresh cannot, so a resumed demo run (`batch --simulate`
            after Ctrl-C) would otherwise find its tasks gone. Off by default: it is not the API's behaviour.
        host: The address both servers listen on.
        port: The API's port; 0 picks a free one.
        cdn_port: The CDN's port; 0 picks a free one.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "sim-key",
        time_scale: float = 1.0,
        generation_seconds: float | tuple[float, float] = 60.0,
        queue_seconds: float = 2.0,
        rate_limit: float | None = None,
        burst: int | None = None,
        rate_windows: Sequence[tuple[float, float]] = (),
        retry_after: bool | Literal["date"] = True,
        faults: Faults | None = None,
        seed: int = 0,
        webhook_secret: str | None = None,
        url_ttl: float | None = None,
        adopt_unknown: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
    ) -> None:
        if retry_after not in (True, False, "date"):
            raise ValueError(f"retry_after must be True, False or 'date', got {retry_after!r}")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        if any(rate <= 0 or rate * seconds < 1 for rate, seconds in rate_windows):
            raise ValueError("rate_windows: each (rate, seconds) must be positive and allow one request")
        if time_scale < 0 or queue_seconds < 0:
            raise ValueError("time_scale and queue_seconds must not be negative")
        self.faults = faults if faults is not None else Faults()
        self.counters = SimulatorCounters()
        self.tasks: dict[str, SimulatedTask] = {}
        self._api_key = api_key
        self._time_scale = time_scale
        self._generation_seconds = generation_seconds
        self._queue_seconds = queue_seconds
        self._retry_after = retry_after
        buckets = [(rate, rate * seconds) for rate, seconds in rate_windows]
        if rate_limit is not None:
            buckets.append((rate_limit, burst or max(1, int(rate_limit))))
        self._bucket = _TokenBucket(buckets) if buckets else None
        # Separate streams, so that turning one fault on does not reshuffle task ids or durations.
        self._id_rng = random.Random(f"{seed}:ids")
        self._task_rng = random.Random(f"{seed}:tasks")
        self._fault_rng = random.Random(f"{seed}:faults")
        self._adopt_unknown = adopt_unknown
        self._signer = UrlSigner(hashlib.sha256(f"kling-sim-urls:{seed}".encode()).digest(), url_ttl)
        self._webhooks = None if webhook_secret is None else WebhookSender(webhook_secret, seed)
        self._host, self._port, self._cdn_port = host, port, cdn_port
        self._by_family: dict[str, list[SimulatedTask]] = {family: [] for family in _FAMILIES}
        self._queued: list[QueuedFault] = []
        self._wakeups: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._runners: list[web.AppRunner] = []
        self._url: str | None = None
        self._cdn_url: str | None = None
        self._in_flight = 0

    def __repr__(self) -> str:
        where = self._url or "not running"
        return f"<Simulator {where} tasks={len(self.tasks)} posts={self.counters.posts}>"

    @property
    def running(self) -> bool:
        """Whether the servers are listening."""
        return self._url is not None

    @property
    def url(self) -> str:
        """The API base URL, e.g. `http://127.0.0.1:PORT`."""
        if self._url is None:
            raise RuntimeError("the simulator is not running")
        return self._url

    @property
    def cdn_url(self) -> str:
        """The base of result file URLs: another origin than the API."""
        if self._cdn_url is None:
            raise RuntimeError("the simulator is not running")
        return self._cdn_url

    # lifecycle

    async def start(self) -> None:
        """Start the API and CDN servers (and the webhook sender)."""
        if self._runners:
            raise RuntimeError("the simulator is already running")
        try:
            self._url = await self._listen(self._api_app(), self._port)
            cdn = web.Application()
            cdn.router.add_get("/files/{task_id}.mp4", self._serve_file)
            self._cdn_url = await self._listen(cdn, self._cdn_port)
            if self._webhooks is not None:
                await self._webhooks.open()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop serving, cancel pending webhook deliveries and close every connection; safe to call twice."""
        # Shielded: under an anyio cancel scope every await would be cancelled again, leaving servers open.
        with anyio.CancelScope(shield=True):
            for runner in reversed(self._runners):
                await runner.cleanup()
            self._runners.clear()
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            self._background.clear()
            if self._webhooks is not None:
                await self._webhooks.close()
        self._url = self._cdn_url = None

    async def serve_forever(self) -> None:
        """Serve until cancelled, starting and stopping the servers unless they are already running."""
        owned = not self.running
        if owned:
            await self.start()
        try:
            await anyio.sleep_forever()
        finally:
            if owned:
                await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _listen(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT, keepalive_timeout=_IDLE_SECONDS
        )
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self._host, port).start()
        # Listening on every interface, it is reached on this machine through loopback; an IPv6 address
        # goes in brackets (result URLs are built from this one).
        host = _WILDCARDS.get(self._host, self._host)
        return f"http://{f'[{host}]' if ':' in host else host}:{runner.addresses[0][1]}"

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for path, route in _ROUTES.items():
            if route.kind == "create":
                app.router.add_post(path, self._create)
            else:
                app.router.add_get(
                    path, self._list if route.kind == "list" else self._status, allow_head=False
                )
        return app

    # driving tasks by hand

    def queue_fault(self, kind: str, *, method: str = "POST", count: int = 1, seconds: float = 1.0) -> None:
        """Give the next `count` API requests of `method` ("GET", "POST" or "*") the fault `kind`.

        Kinds: a status ("503", "500", "429", "404", ...) answered with its documented JSON body, or with
        `_html` ("502_html") as a proxy's HTML page; "429-no-retry-after"; "drop_before" (close the
        connection, nothing handled); "drop_after_create" and "500_after_create" (handle the request, so a
        POST creates its task, then close the connection or answer 500); "latency" (wait `seconds` first).
        """
        method = method.upper()
        if method not in ("GET", "POST", "*"):
            raise ValueError(f"method must be 'GET', 'POST' or '*', got {method!r}")
        self._queued.extend([QueuedFault(parse_fault_kind(kind), method, seconds)] * count)

    def set_status(self, task_id: str, status: str) -> None:
        """Force a task's status from now on, whatever the clock says; webhooks report the change."""
        self.tasks[task_id].forced = status
        wakeup = self._wakeups.get(task_id)
        if wakeup is not None:
            wakeup.set()

    def finish(self, task_id: str, status: str = "COMPLETED") -> None:
        """End a task now, as COMPLETED, FAILED or CANCELLED (not in the vendor's enum, but seen)."""
        if status not in TERMINAL:
            raise ValueError(f"finish() takes a final status ({', '.join(sorted(TERMINAL))}), got {status!r}")
        self.set_status(task_id, status)

    # the API

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._in_flight += 1
        counters = self.counters
        counters.max_concurrent_requests = max(counters.max_concurrent_requests, self._in_flight)
        try:
            return await self._handle(request, handler)
        finally:
            self._in_flight -= 1

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request, apply faults and the rate limit, check the key, then dispatch."""
        try:
            await self._count(request)
        except web.HTTPRequestEntityTooLarge as exc:  # a body over aiohttp's client_max_size
            self.counters.responses_by_status[exc.status] += 1
            return error_response(str(exc.status))
        queued = self._take_queued(request.method)
        delay = self.faults.latency + (queued.seconds if queued and queued.kind == "latency" else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        fault, wait = self._fault_before(request.method, queued)
        if fault == "drop_before":
            return self._drop(request)
        response: web.StreamResponse
        if fault is not None:
            response = self._fault_response(fault, wait)
        else:
            response = await self._authorized(request, handler)
            after = self._fault_after(request.method, queued)
            if after == "drop_after_create":
                return self._drop(request)
            if after == "500_after_create":
                response = error_response("500")
        self.counters.responses_by_status[response.status] += 1
        if response.status == 429:
            self.counters.rate_limited += 1
        return response

    def _route(self, request: web.Request) -> _Route | None:
        resource = request.match_info.route.resource
        return None if resource is None else _ROUTES.get(resource.canonical)

    async def _count(self, request: web.Request) -> None:
        route = self._route(request)
        if route is None:
            return
        counters = self.counters
        # What is kept per payload or per task id is kept only for a caller with the key: anybody else
        # could grow it without bound on a long-running server.
        keyed = self._key_problem(request) is None
        if route.kind == "create":
            raw = await request.read()
            try:
                body = _DECODE.decode(raw)
            except (msgspec.DecodeError, RecursionError):
                body = None
            post = _Post(body, _payload_key(raw, body))
            request[_POST] = post
            counters.posts += 1
            if keyed:
                counters.posts_by_payload[post.key] += 1
        elif route.kind == "status":
            counters.status_gets += 1
            if keyed:
                counters.gets_by_task[request.match_info["task_id"]] += 1
        else:
            counters.lists += 1

    def _take_queued(self, method: str) -> QueuedFault | None:
        for index, fault in enumerate(self._queued):
            if fault.method in (method, "*"):
                return self._queued.pop(index)
        return None

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._fault_rng.random() < rate

    def _fault_before(self, method: str, queued: QueuedFault | None) -> tuple[str | None, float]:
        """The fault answered instead of handling the request, if any, and the wait a 429 asks for."""
        if queued is not None and queued.kind not in AFTER_KINDS and queued.kind != "latency":
            return queued.kind, 1.0
        if self._bucket is not None and (wait := self._bucket.take()) > 0:
            return "429", wait
        faults = self.faults
        if self._chance(faults.drop_before_rate):
            return "drop_before", 0.0
        if self._chance(faults.rate_limit_429_rate):
            return "429", 1.0
        if method == "GET":
            rate, statuses = faults.get_error_rate, faults.get_error_statuses
        elif method == "POST":
            rate, statuses = faults.post_error_rate, faults.post_error_statuses
        else:
            return None, 0.0
        if statuses and self._chance(rate):
            return status_kind(self._fault_rng.choice(statuses)), 1.0
        return None, 0.0

    def _fault_after(self, method: str, queued: QueuedFault | None) -> str | None:
        """The fault applied once the request was handled (a POST's task exists by now), if any."""
        if queued is not None and queued.kind in AFTER_KINDS:
            return queued.kind
        if method == "POST":
            if self._chance(self.faults.drop_after_create_rate):
                return "drop_after_create"
            if self._chance(self.faults.post_500_after_create_rate):
                return "500_after_create"
        return None

    def _fault_response(self, kind: str, wait: float) -> web.Response:
        if kind == "429-no-retry-after":
            return error_response("429")
        if kind == "429":
            return error_response("429", self._retry_after_headers(wait))
        return error_response(kind)

    def _retry_after_headers(self, wait: float) -> dict[str, str]:
        if self._retry_after is False:
            return {}
        if self._retry_after == "date":
            # HTTP dates have whole seconds: round up so that a client honouring it is never early.
            return {"Retry-After": email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)}
        return {"Retry-After": str(math.ceil(wait))}

    def _drop(self, request: web.Request) -> web.Response:
        """Close the connection without an answer; aiohttp then discards the response returned here."""
        self.counters.connections_dropped += 1
        if request.transport is not None:
            request.transport.close()
        return web.Response()

    def _key_problem(self, request: web.Request) -> str | None:
        """Why the request's key is refused (the 401's message), or None when it is accepted."""
        keys = [key for header in _KEY_HEADERS if (key := request.headers.get(header))]
        if not keys:
            return "Missing API key"
        if self._api_key is not None and self._api_key not in keys:
            return "Invalid API key"
        return None

    async def _authorized(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        problem = self._key_problem(request)
        if problem is not None:
            return json_response({"message": problem}, 401)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            # Unknown paths and methods get a JSON body like every other API error; a 405 names the allowed.
            allow = exc.headers.get("Allow")
            return error_response(str(exc.status), None if allow is None else {"Allow": allow})

    def _invalid(self, problems: InvalidParams) -> web.Response:
        body: dict[str, object] = {"message": _INVALID_MESSAGE, "invalid_params": problems}
        if self.faults.wrap_problem:
            # The vendor documents the wrapped form under this content type only.
            return json_response({"problem": body}, 400, content_type="application/problem+json")
        return json_response(body, 400)

    def _view(self, task: SimulatedTask) -> dict[str, object]:
        """A task as the status endpoint shows it (inside `data`) and as a webhook delivers it."""
        status = task.status
        generated = []
        if status == "COMPLETED":
            generated.append(f"{self.cdn_url}/files/{task.task_id}.mp4{self._signer.query(task.task_id)}")
        return {"task_id": task.task_id, "status": status, "generated": generated}

    async def _create(self, request: web.Request) -> web.Response:
        route = self._route(request)
        # Only create routes lead here.
        assert route is not None
        assert route.model is not None
        post = request[_POST]
        if not isinstance(post.body, dict):
            return self._invalid([{"name": "body", "reason": "must be a JSON object"}])
        problems = validate(route.model.schema, post.body)
        if problems:
            return self._invalid(problems)
        task = self._new_task(route.model, post.body)
        self.counters.tasks_created += 1
        self.counters.tasks_by_payload[post.key] += 1
        webhook_url = post.body.get("webhook_url")
        # Any URI is a valid webhook_url; only an http(s) one can be delivered to.
        if self._webhooks is not None and isinstance(webhook_url, str) and _is_http(webhook_url):
            self._spawn(self._watch(task, webhook_url))
        view = self._view(task)
        return json_response(view if self.faults.bare_create else {"data": view})

    def _new_task(self, model: _Model, body: dict[str, Any], *, task_id: str | None = None) -> SimulatedTask:
        task_id = task_id or str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
        seconds = self._generation_seconds
        generation = self._task_rng.uniform(*seconds) if isinstance(seconds, tuple) else seconds
        roll = self._task_rng.random()
        text = _prompt_text(body)
        if "[slow]" in text:
            generation *= 3
        outcome, never = "COMPLETED", "[never]" in text
        faults = self.faults
        if "[fail]" in text or roll < faults.fail_rate:
            outcome = "FAILED"
        elif roll < faults.fail_rate + faults.cancel_rate:
            outcome = "CANCELLED"
        elif roll < faults.fail_rate + faults.cancel_rate + faults.never_finish_rate:
            never = True
        now = time.monotonic()
        started = now + self._queue_seconds * self._time_scale
        task = SimulatedTask(
            task_id=task_id,
            model=model.name,
            create_path=model.create_path,
            family=model.family,
            payload=body,
            created_at=now,
            started_at=started,
            finishes_at=math.inf if never else started + generation * self._time_scale,
            outcome=outcome,
        )
        self.tasks[task_id] = task
        self._by_family[model.family].append(task)
        return task

    async def _status(self, request: web.Request) -> web.Response:
        route = self._route(request)
        task_id = request.match_info["task_id"]
        task = self.tasks.get(task_id)
        if task is None and route is not None and self._adopt_unknown and _is_uuid(task_id):
            model = next(model for model in _MODELS if model.family == route.family)
            task = self._new_task(model, {}, task_id=task_id)
        if route is None or task is None or task.family != route.family:
            return error_response("404")
        return json_response({"data": self._view(task)})

    async def _list(self, request: web.Request) -> web.Response:
        route = self._route(request)
        assert route is not None  # only list routes lead here
        problems: InvalidParams = []
        page = _query_int(request, "page", 1)
        if page is None or page < 1:
            problems.append({"name": "page", "reason": "must be an integer of at least 1"})
        if self.faults.ignore_page_size:
            page_size: int | None = _DEFAULT_PAGE_SIZE
        else:
            page_size = _query_int(request, "page_size", _DEFAULT_PAGE_SIZE)
            if page_size is None or not 1 <= page_size <= _MAX_PAGE_SIZE:
                reason = f"must be an integer from 1 to {_MAX_PAGE_SIZE}"
                problems.append({"name": "page_size", "reason": reason})
        if page is None or page_size is None or problems:
            return self._invalid(problems)
        tasks = self._by_family[route.family]
        # Newest first: page 1 is the end of the creation-ordered list.
        stop = max(0, len(tasks) - (page - 1) * page_size)
        items = [
            {"task_id": t.task_id, "status": t.status}
            for t in reversed(tasks[max(0, stop - page_size) : stop])
        ]
        return json_response({"data": items})

    # webhooks and the CDN

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _watch(self, task: SimulatedTask, url: str) -> None:
        """Deliver each status change of one task to its webhook URL, sleeping until the next is due."""
        assert self._webhooks is not None  # only spawned when webhooks are on
        wakeup = self._wakeups[task.task_id] = asyncio.Event()
        delivered, held = "CREATED", None
        try:
            while True:
                view = self._view(task)
                status = view["status"]
                if status != delivered:
                    delivered = str(status)
                    body = _JSON.encode(view)
                    if status == "IN_PROGRESS" and self.faults.webhook_reorder:
                        held = body
                    else:
                        await self._webhooks.send(url, body, self.faults, self.counters)
                    if status in TERMINAL:
                        if held is not None:
                            await self._webhooks.send(url, held, self.faults, self.counters)
                        return
                due = task.next_change()
                if due is None and self._view(task)["status"] != delivered:
                    continue  # it changed while that delivery was on its way
                timeout = None if due is None else max(0.0, due - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await wakeup.wait()
                wakeup.clear()
        finally:
            del self._wakeups[task.task_id]

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        if any(header in request.headers for header in _KEY_HEADERS):
            counters.cdn_requests_with_key += 1
        task_id = request.match_info["task_id"]
        task = self.tasks.get(task_id)
        if task is None or task.status != "COMPLETED":
            return web.Response(status=404, text="Not Found")
        if not self._signer.allows(task_id, request.query):
            return web.Response(
                status=403,
                text="<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                "<Message>Request has expired</Message></Error>",
                content_type="application/xml",
            )
        response = await file_response(
            request,
            sample_video(),
            ranges=not self.faults.no_range,
            cut_after=self.faults.cut_download_after,
            pace=self.faults.download_pace,
        )
        counters.downloads += 1
        return response


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _query_int(request: web.Request, name: str, default: int) -> int | None:
    """An integer query parameter, its default when absent, or None when it is not an integer."""
    value = request.query.get(name)
    if value is None:
        return default
    # Plain ASCII digits only: int() would also take " 1 ", "1_0" and other scripts' digits.
    return int(value) if _QUERY_INT.fullmatch(value) else None
