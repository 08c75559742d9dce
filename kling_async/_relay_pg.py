"""Workers that share a PostgreSQL database share what they learn about tasks, through LISTEN/NOTIFY.

``StatusRelay`` does three things for the workers of one database (``pip install 'kling-async[postgres]'``):

- **Fan-out of statuses.** ``forward(status)`` (a webhook receiver's listener) publishes a status on the
  ``kling_status`` channel; every other worker's relay hands it to its listeners (the registry's
  ``observe``), so a webhook delivered to any worker resolves the handle in the worker that waits. A worker
  ignores its own echo. A status too big for a notification (8000 bytes) goes out as its id and status
  only: a COMPLETED one then reaches the sweep listeners as a summary, and the owner fetches the detail.
- **One sweeper per family.** ``leads(family)`` says whether this worker holds the family's session
  advisory lock; asking registers the wish, and a lock not held is tried again every ``retry`` seconds. A
  dead worker's lock goes with its connection, so another worker takes over; ``resign`` gives it up.
- **What a sweep saw, for everyone.** ``publish_sweep`` sends every listed task (the whole account's page,
  not only the leader's tasks) and when the next sweep is due; the followers' trackers hear it through
  ``add_sweep_listener`` and check their own tasks only where the sweep did not cover them.

Nothing here may stop the client: ``forward`` and ``publish_sweep`` only queue (a bounded queue, the
oldest dropped first), the database is reached by background tasks that log a WARNING and reconnect with
backoff when it fails, and the tasks' own status checks remain the safety net. Two connections per relay:
one iterates ``notifies()`` (psycopg cannot run queries on it meanwhile), the other sends and locks.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import msgspec

from ._clock import SYSTEM_CLOCK, Clock, grown
from ._journal_pg import _reason, redact
from ._models import COMPLETED, TaskStatus, TaskSummary

try:
    import psycopg
    import psycopg.conninfo
    from psycopg.rows import TupleRow
except ImportError as exc:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(
        "a shared PostgreSQL database needs psycopg 3: pip install 'kling-async[postgres]'"
    ) from exc

__all__ = ["CHANNEL", "StatusRelay", "SweepListener", "sweep_lock_key"]

log = logging.getLogger("kling_async")

CHANNEL = "kling_status"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more (in its default build); a margin for safety.
_MAX_PAYLOAD = 7900
# Notifications sent by one statement at most (one round trip for a burst of deliveries).
_SEND_BATCH = 200
# Reconnection waits: doubled after each failure, from the first up to the last.
_BACKOFF_FIRST = 0.1
_BACKOFF_LAST = 10.0

SweepListener = Callable[[str | None, Sequence[TaskSummary], float | None], None]
"""``(family, tasks, next_in)``: a sweep of ``family`` by another worker listed ``tasks`` and plans its next
in ``next_in`` seconds (a sweep too long for one notification arrives in parts: ``next_in`` is None but
on its last). ``family`` None: statuses relayed without their detail, outside any sweep."""


class _Status(msgspec.Struct, tag="s", array_like=True, gc=False):
    """A task status from a worker (``generated`` left out when it does not fit: ``brief``)."""

    worker: str
    task_id: str
    status: str
    generated: tuple[str, ...] = ()
    brief: bool = False


class _Sweep(msgspec.Struct, tag="w", array_like=True, gc=False):
    """One part of what a worker's sweep of ``family`` listed; the last part says when the next is due."""

    worker: str
    family: str
    tasks: list[tuple[str, str]]
    next_in: float | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Status | _Sweep)


def sweep_lock_key(family: str, scope: str = "") -> int:
    """The 64-bit advisory lock key of a family's sweeper (a hash of ``"kling-sweep:" + family``, with
    the scope before the family when there is one)."""
    name = f"kling-sweep:{scope}:{family}" if scope else f"kling-sweep:{family}"
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StatusRelay:
    """Statuses and sweeps shared by the workers of one PostgreSQL database (see the module docs).

    Use it as ``async with StatusRelay(url) as relay:``. Entering waits for the first try of both its
    connections, the listening and the sending one (up to ``connect_timeout``); when the database cannot
    be reached it logs a WARNING and keeps trying in the background instead of failing.

    Args:
        url: a libpq connection URL (``postgresql://user:password@host/db``) or conninfo string.
        clock: where the relay waits (backoff, lock retries).
        retry: seconds between two tries of a family lock held by another worker.
        max_queued: notifications waiting for the database at most; past it the oldest are dropped.
        connect_timeout: seconds to wait for the database when connecting (unless the URL says).
        scope: keeps these workers apart from others of the same database: what an API key's workers
            share (its list shows its own account only), so the client passes a fingerprint of the key.
            Letters, digits and ``_`` only.

    Raises:
        ValueError: the URL is not a connection string, or a bad ``retry``, ``max_queued``,
            ``connect_timeout`` or ``scope``.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        retry: float = 5.0,
        max_queued: int = 10_000,
        connect_timeout: float = 10.0,
        scope: str = "",
    ) -> None:
        if not all(c.isascii() and (c.isalnum() or c == "_") for c in scope) or len(scope) > 40:
            raise ValueError(f"scope: letters, digits and '_', at most 40, got {scope!r}")
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            # libpq's message may quote the URL, password and all: name it without.
            raise ValueError(
                f"url: not a PostgreSQL connection URL or conninfo string: {redact(url)!r}"
            ) from None
        if not 0 < retry < math.inf:
            raise ValueError(f"retry: a positive number of seconds, got {retry!r}")
        if max_queued < 1:
            raise ValueError(f"max_queued: at least 1, got {max_queued!r}")
        if not 0 < connect_timeout < math.inf:
            raise ValueError(f"connect_timeout: a positive number of seconds, got {connect_timeout!r}")
        self._url = url
        self._path = redact(url)
        self._scope = scope
        self._channel = f"{CHANNEL}_{scope}" if scope else CHANNEL
        self._options: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._options["connect_timeout"] = max(1, round(connect_timeout))
        self._clock = clock
        self._retry = retry
        self._connect_timeout = connect_timeout
        self.worker = uuid.uuid4().hex
        # Each connection names its worker, so an operator (or a test) can tell whose it is.
        self._options["application_name"] = f"kling-relay {self.worker[:12]}"
        self._queue: collections.deque[str] = collections.deque()
        self._max_queued = max_queued
        self._dropping = False
        self._listeners: list[Callable[[TaskStatus], None]] = []
        self._sweep_listeners: list[SweepListener] = []
        self._wanted: set[str] = set()
        self._held: set[str] = set()
        self._tried: dict[str, float] = {}
        self._wake = anyio.Event()
        self._listen_tried = anyio.Event()
        self._send_tried = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def path(self) -> str:
        """The database's URL without its password."""
        return self._path

    def __repr__(self) -> str:
        return (
            f"<StatusRelay {self._path!r} worker={self.worker[:12]} leads={sorted(self._held)}"
            f" queued={len(self._queue)}>"
        )

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("the relay is already open")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read)
        self._tg.start_soon(self._control)
        try:
            with self._clock.move_on_after(self._connect_timeout):
                await self._listen_tried.wait()
                await self._send_tried.wait()
        except BaseException:
            # Cancelled while its connections open: ``__aexit__`` will not run, so close the task group
            # here (left entered, its cancel scope would break every scope around the caller).
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        self._held.clear()
        self._listen_tried = anyio.Event()
        self._send_tried = anyio.Event()

    # -- listeners -----------------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[TaskStatus], None]) -> None:
        """Call ``listener`` with every status another worker forwards (quick and synchronous, like a
        webhook listener). A COMPLETED status that came without its result URLs goes to the sweep
        listeners instead: handing it on as it is would end the task with no video."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[TaskStatus], None]) -> None:
        """Stop calling ``listener`` (ignored when it is not registered)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add_sweep_listener(self, listener: SweepListener) -> None:
        """Call ``listener(family, tasks, next_in)`` with what other workers' sweeps listed (see
        ``SweepListener``)."""
        self._sweep_listeners.append(listener)

    def remove_sweep_listener(self, listener: SweepListener) -> None:
        """Stop calling ``listener`` (ignored when it is not registered)."""
        if listener in self._sweep_listeners:
            self._sweep_listeners.remove(listener)

    # -- sending -------------------------------------------------------------------------------------------

    def forward(self, status: TaskStatus) -> None:
        """Publish a status for every other worker; returns at once and never raises."""
        payload = _encoder.encode(
            _Status(self.worker, status.task_id, status.status, tuple(status.generated))
        )
        if len(payload) > _MAX_PAYLOAD:
            payload = _encoder.encode(_Status(self.worker, status.task_id, status.status, brief=True))
        self._send(payload)

    def publish_sweep(self, family: str, tasks: Sequence[TaskSummary], next_in: float) -> None:
        """Publish what a sweep of ``family`` listed and when the next one is due; returns at once."""
        part: list[tuple[str, str]] = []
        size = len(_encoder.encode(_Sweep(self.worker, family, [], next_in)))
        for task in tasks:
            entry = (task.task_id, task.status)
            grows = len(_encoder.encode(entry)) + 1
            if part and size + grows > _MAX_PAYLOAD:
                self._send(_encoder.encode(_Sweep(self.worker, family, part)))
                part, size = [], len(_encoder.encode(_Sweep(self.worker, family, [], next_in)))
            part.append(entry)
            size += grows
        self._send(_encoder.encode(_Sweep(self.worker, family, part, next_in)))

    def _send(self, payload: bytes) -> None:
        if len(payload) > _MAX_PAYLOAD:
            log.warning(
                "status relay %s: a notification of %d bytes is too big; dropped", self._path, len(payload)
            )
            return
        if len(self._queue) >= self._max_queued:
            self._queue.popleft()
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "status relay %s: more than %d notifications wait for the database; dropping the oldest"
                    " (the workers' own status checks find what they said)",
                    self._path,
                    self._max_queued,
                )
        self._queue.append(payload.decode())
        self._wake.set()

    # -- the sweeper election ------------------------------------------------------------------------------

    def leads(self, family: str) -> bool:
        """Whether this worker sweeps ``family`` now; asking makes it try for the family's lock (in the
        background, then every ``retry`` seconds while another worker holds it)."""
        if family not in self._wanted:
            self._wanted.add(family)
            self._wake.set()
        return family in self._held

    def resign(self, family: str) -> None:
        """This worker no longer sweeps ``family``: its lock is given up for another worker to take."""
        if family in self._wanted:
            self._wanted.discard(family)
            self._wake.set()

    # -- the background tasks ------------------------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[TupleRow]:
        return await psycopg.AsyncConnection.connect(self._url, autocommit=True, **self._options)

    async def _read(self) -> None:
        """Listen, hand each notification to the listeners; reconnect with backoff when the link fails."""
        failures = 0
        while True:
            conn: psycopg.AsyncConnection[TupleRow] | None = None
            try:
                conn = await self._connect()
                await conn.execute(f"LISTEN {self._channel}")
                self._listen_tried.set()
                if failures:
                    log.info("status relay %s: listening again", self._path)
                failures = 0
                async for note in conn.notifies():
                    self._heard(note.payload)
            except psycopg.Error as exc:
                if not failures:
                    log.warning(
                        "status relay %s: cannot listen (%s); reconnecting, status checks go on meanwhile",
                        self._path,
                        _reason(exc),
                    )
                failures += 1
                self._listen_tried.set()
            finally:
                if conn is not None:
                    with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error):
                        await conn.close()
            await self._clock.sleep(_backoff(failures))

    def _heard(self, payload: str) -> None:
        try:
            message = _decoder.decode(payload)
        except msgspec.DecodeError:
            log.debug(
                "status relay %s: ignored a notification that is not a relay's: %.80r", self._path, payload
            )
            return
        if message.worker == self.worker:
            return  # this worker's own echo
        if isinstance(message, _Status):
            if message.brief and message.status == COMPLETED:
                self._tell_sweep(None, [TaskSummary(task_id=message.task_id, status=message.status)], None)
                return
            status = TaskStatus(task_id=message.task_id, status=message.status, generated=message.generated)
            for listener in tuple(self._listeners):
                try:
                    listener(status)
                except Exception:  # one listener's bug must not hide the status from the others
                    log.exception("status relay listener %r failed on task %s", listener, status.task_id)
        else:
            tasks = [TaskSummary(task_id=task_id, status=status) for task_id, status in message.tasks]
            self._tell_sweep(message.family, tasks, message.next_in)

    def _tell_sweep(self, family: str | None, tasks: Sequence[TaskSummary], next_in: float | None) -> None:
        for listener in tuple(self._sweep_listeners):
            try:
                listener(family, tasks, next_in)
            except Exception:
                log.exception("status relay sweep listener %r failed on family %s", listener, family)

    async def _control(self) -> None:
        """Send the queued notifications and keep the wanted family locks; reconnect with backoff."""
        conn: psycopg.AsyncConnection[TupleRow] | None = None
        failures = 0
        try:
            while True:
                self._wake = anyio.Event()
                try:
                    if conn is None:
                        self._held.clear()  # a new session holds no lock
                        conn = await self._connect()
                        self._send_tried.set()
                    await self._flush(conn)
                    await self._elect(conn)
                except psycopg.Error as exc:
                    self._held.clear()  # the session's locks may be gone with it: claim nothing
                    self._send_tried.set()
                    if not failures:
                        log.warning(
                            "status relay %s: cannot reach the database (%s); %d notifications wait, status"
                            " checks go on meanwhile",
                            self._path,
                            _reason(exc),
                            len(self._queue),
                        )
                    failures += 1
                    if conn is not None:
                        with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error):
                            await conn.close()
                        conn = None
                    await self._clock.sleep(_backoff(failures))
                    continue
                if failures:
                    log.info("status relay %s: the database is back", self._path)
                failures = 0
                with self._clock.move_on_after(self._next_try()):
                    await self._wake.wait()
        finally:
            self._held.clear()
            if conn is not None:
                with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error):
                    await conn.close()

    async def _flush(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Send what is queued, a batch a statement, in order; a batch leaves the queue once sent."""
        while self._queue:
            batch = list(itertools.islice(self._queue, _SEND_BATCH))
            await conn.execute(
                "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) WITH ORDINALITY AS t(payload, n)"
                " ORDER BY n",
                (self._channel, batch),
            )
            for _ in batch:
                self._queue.popleft()
            self._dropping = False

    async def _elect(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Try the wanted locks not held (each at most every ``retry`` seconds), release the unwanted."""
        for family in sorted(self._held - self._wanted):
            await conn.execute("SELECT pg_advisory_unlock(%s)", (sweep_lock_key(family, self._scope),))
            self._held.discard(family)
            log.info("status relay %s: no longer sweeps %s", self._path, family)
        now = self._clock.now()
        for family in sorted(self._wanted - self._held):
            if now < self._tried.get(family, -math.inf) + self._retry:
                continue
            self._tried[family] = now
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (sweep_lock_key(family, self._scope),)
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                self._held.add(family)
                log.info("status relay %s: sweeps %s for every worker", self._path, family)
        if self._held:
            # A lock lives as long as its session: a session that died unnoticed must not claim it.
            await conn.execute("SELECT 1")

    def _next_try(self) -> float:
        """Seconds until a lock is due for another try, or the held ones for a check."""
        now = self._clock.now()
        waits = [
            self._tried.get(family, -math.inf) + self._retry - now for family in self._wanted - self._held
        ]
        if self._held:
            waits.append(self._retry)
        return max(0.0, min(waits)) if waits else math.inf


def _backoff(failures: int) -> float:
    if not failures:
        return 0.0
    return grown(_BACKOFF_FIRST, 2.0, failures - 1, _BACKOFF_LAST)
