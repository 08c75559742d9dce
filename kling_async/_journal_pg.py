"""The batch journal in PostgreSQL, shared by every worker that runs the same input.

``PostgresJournal`` implements ``BatchJournal`` over psycopg 3's async API (``pip install
'kling-async[postgres]'``); ``open_journal("postgresql://...")`` makes one. Its rows are SQLite's, plus the
worker that last claimed each item, so several processes (on several machines) can share one journal:

- **Claims.** ``submitting`` is a claim, committed before the POST: the row names this worker. Each worker
  has a row in ``kling_workers`` with a lease (``lease_until``, the database's clock) that a heartbeat
  renews while the journal is open. A claim whose worker is live belongs to that worker: ``lookup`` answers
  None for it and ``submitting`` raises ``ClaimedElsewhere``, which becomes that item's outcome.
- **Dead workers.** A worker is live while its lease runs by the database's clock, or by the clock of the
  worker judging it, counted from when that one saw the lease running (``_live``: a jump of the database's
  clock does not end every lease at once). A claim still ``submitting`` when its worker's lease ran out is
  ``uncertain``: its POST may have created a task, so it is never sent again by default (the heartbeat and
  ``lookup`` mark it). A ``created`` (or ``completed``) item whose worker died is adopted: ``lookup`` makes
  it this worker's and returns it, so the engine re-attaches to its task by id and follows it to its end.
- **Writes.** The same durable/buffered split as SQLite: ``submitting``, ``created``, ``uncertain``,
  ``unsent`` and a failure before any task are committed before the call returns; statuses, results, task
  failures and downloads are buffered and committed together by a timer. A cancelled call still ends
  (committed or failed) before its caller sees the cancellation, so a connection is never left half way
  through a transaction.
- **Connections.** Calls run on a small pool of connections (``connections``, 4 by default), so items do
  not wait for each other's round trips; the calls for one key (its buffered writes included) still run one
  after another, in the order they were made. The common calls that are ready while a connection is awaited
  (new keys' lookups, new keys' claims, task ids) go to the server as one statement per kind, the way
  SQLite's worker thread commits what queued up in one hop. A connection found dead (a failover, a killed
  backend) fails the call it was serving; the pool then replaces every dead one, so the next call
  reconnects. The heartbeat has a connection of its own: a busy pool never delays a lease.

The password in the URL never reaches a message, a log line or a repr: ``path`` shows the URL without it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import anyio.lowlevel

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import ClaimedElsewhere, JournalError
from ._journal import APPLICATION, JournalEntry, JournalState, Lifecycle, WriteBuffer

try:
    import psycopg
    import psycopg.conninfo
    from psycopg.rows import TupleRow
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError("a postgresql:// journal needs psycopg 3: pip install 'kling-async[postgres]'") from exc

__all__ = ["PG_SCHEMA_VERSION", "ClaimedElsewhere", "PostgresJournal"]

log = logging.getLogger("kling_async")

PG_SCHEMA_VERSION = 1

# Created once per database, under a transaction-scoped advisory lock so that workers starting together do
# not race on CREATE (PostgreSQL's IF NOT EXISTS is not safe against a concurrent CREATE).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kling_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS kling_workers (
    id          text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS kling_items (
    key        text PRIMARY KEY,
    position   bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    model      text NOT NULL,
    request    bytea NOT NULL,
    state      text NOT NULL CHECK (state IN
                   ('submitting', 'created', 'completed', 'downloaded', 'failed', 'uncertain', 'unsent')),
    task_id    text,
    status     text,
    urls       jsonb NOT NULL DEFAULT '[]',
    path       text,
    error      text,
    worker     text NOT NULL REFERENCES kling_workers (id),
    claims     integer NOT NULL DEFAULT 1,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS kling_items_task_id ON kling_items (task_id);
CREATE INDEX IF NOT EXISTS kling_items_claims ON kling_items (worker) WHERE state = 'submitting';
CREATE TABLE IF NOT EXISTS kling_history (
    key    text NOT NULL REFERENCES kling_items (key),
    at     double precision NOT NULL,
    status text NOT NULL
);
CREATE INDEX IF NOT EXISTS kling_history_key ON kling_history (key, at);
CREATE OR REPLACE FUNCTION kling_history_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kling_history (key, at, status) VALUES (NEW.key, NEW.updated_at, NEW.status);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER kling_items_status AFTER UPDATE OF status ON kling_items FOR EACH ROW
    WHEN (NEW.status IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION kling_history_write();
"""
# pg_advisory_xact_lock's key for schema creation: "kling-as" in ASCII.
_SCHEMA_LOCK = 0x6B6C696E672D6173

_COLUMNS = "i.key, i.model, i.request, i.state, i.task_id, i.status, i.urls, i.path, i.error"
# The claim's owner, how many claims the row has seen, the owner's lease and the time now (``_live``).
_OWNER = (
    "i.worker, i.claims, extract(epoch from w.lease_until)::double precision,"
    " extract(epoch from clock_timestamp())::double precision"
)
_FROM = "kling_items i LEFT JOIN kling_workers w ON w.id = i.worker"

# States a live worker holds: another worker must not POST for it nor follow its task.
_HELD = frozenset({JournalState.SUBMITTING, JournalState.CREATED, JournalState.COMPLETED})
# As in SQLite: states from which a POST may (deliberately) go out again.
_RESUBMITTABLE = frozenset(
    {JournalState.SUBMITTING, JournalState.UNCERTAIN, JournalState.FAILED, JournalState.UNSENT}
)

# The common case of three calls, as one statement for every key whose call is ready while a connection is
# awaited (as a batch's submitters make them): each returns the keys it settled; another key's call goes on
# alone. "absent": lookup's new keys (None). "claim": submitting's new keys, inserted in key order, so that
# workers claiming the same keys never wait for each other in a cycle. "created": the task ids of this
# worker's claims (the guard of ``created``). A call alone takes the plain statement (no arrays to build).
# Rows are stamped with the database's clock, the one clock every worker shares (a worker's own may be
# off): Unix time in seconds, as SQLite's journal stamps them. One statement stamps its rows alike.
_NOW = "extract(epoch from statement_timestamp())::double precision"
_TOGETHER = {
    "absent": "SELECT k FROM unnest(%s::text[]) AS k"
    " WHERE NOT EXISTS (SELECT FROM kling_items WHERE key = k)",
    "claim": "INSERT INTO kling_items (key, model, request, state, worker, created_at, updated_at)"
    f" SELECT v.key, v.model, v.request, 'submitting', %s, {_NOW}, {_NOW}"
    " FROM unnest(%s::text[], %s::text[], %s::bytea[]) AS v (key, model, request) ORDER BY v.key"
    " ON CONFLICT (key) DO NOTHING RETURNING key",
    "created": "UPDATE kling_items i SET state = 'created', task_id = v.task_id, status = v.status,"
    f" error = NULL, updated_at = {_NOW}"
    " FROM unnest(%s::text[], %s::text[], %s::text[]) AS v (key, task_id, status)"
    " WHERE i.key = v.key AND (i.state = 'created' AND i.task_id = v.task_id"
    " OR i.state IN ('submitting', 'uncertain') AND i.worker = %s) RETURNING i.key",
}
_ALONE = {
    "absent": "SELECT v.k FROM (SELECT %s::text AS k) AS v"
    " WHERE NOT EXISTS (SELECT FROM kling_items WHERE key = v.k)",
    "claim": "INSERT INTO kling_items (key, model, request, state, worker, created_at, updated_at)"
    f" VALUES (%s, %s, %s, 'submitting', %s, {_NOW}, {_NOW}) ON CONFLICT (key) DO NOTHING RETURNING key",
    "created": "UPDATE kling_items SET state = 'created', task_id = %s, status = %s, error = NULL,"
    f" updated_at = {_NOW} WHERE key = %s AND (state = 'created' AND task_id = %s"
    " OR state IN ('submitting', 'uncertain') AND worker = %s) RETURNING key",
}
# At most this many calls share one statement.
_TOGETHER_MAX = 64


_T = TypeVar("_T")

# Why a claim on the wire became uncertain: its worker died, or stopped after failing to record the answer.
_LEFT_UNRECORDED = "stopped while its POST was on the wire, without recording the answer; a task may exist"


class _BrokenConnection(JournalError):
    """A call failed because its connection died (the server restarted, a failover, a killed backend)."""


@dataclass(eq=False, slots=True)
class _Batch:
    """Calls of one kind that go to the database as one statement: what each brings, and what came back."""

    rows: list[tuple[Any, ...]]  # one per call, its key first
    done: anyio.Event = field(default_factory=anyio.Event)
    settled: frozenset[str] = frozenset()
    error: JournalError | None = None


class _Slots:
    """At most ``size`` calls on the pool at once, the others waiting in the order they came.

    A free slot is taken without a trip through the event loop (anyio's Semaphore yields first, which a
    call made one at a time pays for three times per item). Waiters are never cancelled: every call that
    takes a slot waits shielded.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    async def __aenter__(self) -> None:
        if self._free and not self._waiters:
            self._free -= 1
            return
        handed = anyio.Event()
        self._waiters.append(handed)
        await handed.wait()  # the slot of the call that set it

    async def __aexit__(self, *exc: object) -> None:
        if self._waiters:
            self._waiters.popleft().set()
        else:
            self._free += 1


@dataclass(frozen=True, slots=True)
class _Write:
    """A buffered write: ``sql`` guarded by the states it may apply to, and what it is, for the log."""

    key: str
    what: str
    target: JournalState | None  # None: a status, silently ignored when it does not fit
    sources: tuple[JournalState, ...]
    columns: dict[str, Any]


_Connection = psycopg.AsyncConnection[TupleRow]


def redact(url: str) -> str:
    """The URL or conninfo string without its password (for messages, logs and reprs)."""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:  # not a URL that parses: none of it is shown
            return url.partition("://")[0] + "://..."
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{hostinfo}" if user else hostinfo
        query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", "password=***", url)


class PostgresJournal(Lifecycle):
    """``BatchJournal`` in a PostgreSQL database that many workers share (see the module docs).

    Args:
        url: a libpq connection URL (``postgresql://user:password@host/db``) or conninfo string.
        lease: seconds a worker's claims stay its own without a heartbeat; the heartbeat renews them every
            third of it. A worker silent for longer is taken as dead: its claims on the wire become
            uncertain and its created tasks are adopted by other workers.
        flush_every: commit the buffered writes as soon as this many wait.
        flush_interval: seconds a buffered write may wait for its commit.
        connect_timeout: seconds to wait for the database when connecting (unless the URL says).
        connections: at most this many calls run at once, each on its own connection (the heartbeat has one
            more); the pool opens them as calls need them.
        clock: the timer's clock, and the rows' timestamps.

    Raises:
        ValueError: a bad ``lease``, ``flush_every``, ``flush_interval``, ``connect_timeout`` or
            ``connections``.
    """

    def __init__(
        self,
        url: str,
        *,
        lease: float = 30.0,
        flush_every: int = 200,
        flush_interval: float = 0.2,
        connect_timeout: float = 10.0,
        connections: int = 4,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < lease < math.inf:
            raise ValueError(f"lease: a positive number of seconds, got {lease!r}")
        if not 0 < connect_timeout < math.inf:
            raise ValueError(f"connect_timeout: a positive number of seconds, got {connect_timeout!r}")
        if connections < 1:
            raise ValueError(f"connections: at least 1, got {connections!r}")
        super().__init__(redact(url))
        if "://" in url:
            try:
                urlsplit(url)
            except ValueError as exc:  # libpq's own message would repeat the URL, password and all
                raise JournalError(f"not a valid URL: {exc}", path=self._path) from None
        self._url = url
        self._lease = lease
        self._connect_timeout = connect_timeout
        self._connections = connections
        self._clock = clock or SYSTEM_CLOCK
        self._writes = WriteBuffer[_Write](
            self._path, flush_every=flush_every, flush_interval=flush_interval, clock=self._clock
        )
        self.worker = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        # Keys whose resubmittable entry lookup handed to the engine, with the row's claim count then: a
        # submitting on such a row is the engine's own decision only while nobody claimed it since.
        self._offered: dict[str, int] = {}
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._slots = _Slots(connections)  # calls beyond the pool's size wait here, in order
        # Per key, the end of its newest call: the key's next call waits for it (its order must hold).
        self._last: dict[str, anyio.Event] = {}
        self._running: set[anyio.Event] = set()  # the ends of the calls under way, waited for on exit
        self._gathering: dict[str, _Batch] = {}  # per kind, the batch that calls may still join
        self._tg: anyio.abc.TaskGroup | None = None
        self._heartbeat_failing = False
        self._registered = False  # this worker's row exists: its lease is given up on exit
        # Per other worker, the lease it last showed this one, and when that lease ends by this worker's
        # own clock: see ``_live``.
        self._leases: dict[str, tuple[float, float]] = {}

    @property
    def path(self) -> str:
        """The database's URL without its password."""
        return self._path

    def __repr__(self) -> str:
        buffered = len(self._writes)
        return f"<PostgresJournal {self._path!r} {self._life()} worker={self.worker!r} buffered={buffered}>"

    # -- lifecycle -------------------------------------------------------------------------------------------

    _STORE = "database"

    async def _start(self) -> None:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        # On a connection of its own, so that a database that cannot be reached fails here, saying why;
        # it then serves the heartbeat. Shielded: a cancelled open still ends, registered or not.
        with anyio.CancelScope(shield=True):
            conn = await self._connect()
            try:
                await self._open(conn)
            except psycopg.Error as exc:
                raise JournalError(f"database error: {_reason(exc)}", path=self._path) from None
            finally:
                if not self._registered:
                    await conn.close()
        self._tg.start_soon(self._heartbeat, conn)  # closes it in the end
        self._pool = AsyncConnectionPool(
            self._url,
            kwargs=self._options(),
            min_size=1,
            max_size=self._connections,
            open=False,
            name="kling-async journal",
            timeout=self._connect_timeout,
        )
        await self._pool.open()
        self._tg.start_soon(self._writes.commit_on_time, self._commit_buffered)

    async def _shut(self) -> None:
        """Let the calls under way end, commit what is buffered, give up the lease, close the connections."""
        assert self._tg is not None
        self._closed = True
        self._tg.cancel_scope.cancel()  # the timer and the heartbeat (a commit under way still ends)
        with anyio.CancelScope(shield=True):
            with self._clock.move_on_after(self._connect_timeout + self._lease):
                for running in list(self._running):
                    await running.wait()
                if self._registered:
                    writes = self._writes.take(None)
                    try:
                        await self._call(self._release, writes)
                    except JournalError as exc:
                        log.warning("%s; %d buffered writes are lost", exc, len(writes))
            if self._pool is not None:
                await self._pool.close()
        await self._tg.__aexit__(None, None, None)

    def _options(self) -> dict[str, Any]:
        """What every connection is opened with, besides the URL."""
        options: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(self._url):
            options["connect_timeout"] = max(1, round(self._connect_timeout))
        return options

    async def _connect(self) -> _Connection:
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, **self._options())
        except psycopg.Error as exc:
            raise JournalError(f"cannot connect: {_reason(exc)}", path=self._path) from None
        return conn

    async def _open(self, conn: _Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            tables = {
                row[0]
                for row in await (
                    await conn.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                        " AND tablename LIKE 'kling\\_%%'"
                    )
                ).fetchall()
            }
            if "kling_meta" in tables:
                meta: dict[str, str] = dict(
                    await (await conn.execute("SELECT key, value FROM kling_meta")).fetchall()
                )
                if meta.get("application") != APPLICATION:
                    raise JournalError(
                        f"not a kling-async journal (application {meta.get('application')!r})",
                        path=self._path,
                    )
                version = meta.get("schema_version", "")
                if not version.isdigit() or int(version) < 1:
                    raise JournalError(f"damaged: bad schema_version {version!r}", path=self._path)
                if int(version) > PG_SCHEMA_VERSION:
                    raise JournalError(
                        f"written by a newer kling-async (schema version {version}; this one reads up to"
                        f" {PG_SCHEMA_VERSION}); upgrade kling-async",
                        path=self._path,
                    )
            else:
                await conn.execute(_SCHEMA)
                await conn.execute(
                    "INSERT INTO kling_meta (key, value) VALUES ('application', %s), ('schema_version', %s)",
                    (APPLICATION, str(PG_SCHEMA_VERSION)),
                )
            await conn.execute(
                "INSERT INTO kling_workers (id, host, pid, lease_until)"
                " VALUES (%s, %s, %s, clock_timestamp() + make_interval(secs => %s))",
                (self.worker, socket.gethostname(), os.getpid(), self._lease),
            )
        self._registered = True

    async def _release(self, conn: _Connection) -> None:
        """End the lease: this worker's created tasks are free to adopt at once. ``-infinity`` (not the
        time now) tells the others the lease was given up, not merely renewed late (see ``_live``)."""
        await conn.execute("UPDATE kling_workers SET lease_until = '-infinity' WHERE id = %s", (self.worker,))

    def _live(self, worker: str, lease_until: float | None, now: float) -> bool:
        """Whether ``worker`` is live to this one, its lease read (``lease_until``) at the database's time
        ``now``: its lease runs by the database's clock, or by this worker's own clock, counted from
        when this worker first saw that lease (what was left of it then).

        The second rule holds a live worker live through a jump of the database's clock (NTP stepping its
        host forward past the leases): its lease looks over until its next renewal, a third of a lease
        later, and meanwhile another worker would mark its claims on the wire uncertain (and with
        ``resubmit_uncertain``, send them again). A worker that stopped renewing is dead once both clocks
        say its last lease is over; a lease first seen over (a run started after its worker died), given
        up (``-infinity``) or moved back is over by both at once."""
        if lease_until is None:  # no such worker row
            return False
        seen = self._leases.get(worker)
        if seen is None or seen[0] != lease_until:
            seen = self._leases[worker] = (lease_until, self._clock.now() + (lease_until - now))
        return lease_until > now or self._clock.now() < seen[1]

    # -- the protocol ----------------------------------------------------------------------------------------

    async def lookup(self, key: str) -> JournalEntry | None:
        """The key's entry for this worker: None when it was never submitted, is ``unsent``, or is held by
        another live worker (``submitting`` then raises ``ClaimedElsewhere``). A dead worker's claim on the
        wire is returned ``uncertain``; a dead worker's created task becomes this worker's (adopted)."""
        # Most keys of a new batch are not there: one statement says so for all that ask together, with no
        # transaction around it; a key that is there is read and decided on under its row lock.
        entry: JournalEntry | None = await self._durable(
            key, lambda conn: self._lookup(conn, key), together=("absent", (key,))
        )
        return entry

    async def _lookup(self, conn: _Connection, key: str) -> JournalEntry | None:
        async with conn.transaction():
            row = await self._row(conn, key, lock=True)
            if row is None:
                return None
            entry, worker, live, claims = row
            if entry.state == JournalState.UNSENT:
                return None
            if worker != self.worker:
                if live and entry.state in _HELD:
                    return None
                if entry.state == JournalState.SUBMITTING:
                    error = f"worker {worker} {_LEFT_UNRECORDED}"
                    await self._set(conn, key, state=JournalState.UNCERTAIN, error=error)
                    entry = dataclasses.replace(entry, state=JournalState.UNCERTAIN, error=error)
                elif entry.state in _HELD:
                    await conn.execute(
                        "UPDATE kling_items SET worker = %s WHERE key = %s", (self.worker, key)
                    )
                    log.info("adopted item %s (task %s) from worker %s", key, entry.task_id, worker)
            if entry.state in _RESUBMITTABLE:
                self._offered[key] = claims
            return entry

    async def submitting(self, key: str, model: str, request: bytes) -> None:
        """Claim the item for this worker; committed before it returns, and only then may its POST leave.

        Raises:
            ClaimedElsewhere: another worker holds it, or claimed or finished it since ``lookup``.
            JournalError: the key was recorded with another request or model, or already has a task.
        """
        offered = self._offered.pop(key, None)
        # A new key is claimed by one statement (committed on its own, with those of the keys claimed
        # together); a known one is read and decided on under its row lock.
        await self._durable(
            key,
            lambda conn: self._claim(conn, key, model, request, offered),
            together=("claim", (key, model, request)),
            otherwise=lambda conn: self._reclaim(conn, key, model, request, offered),
        )

    async def _claim(
        self, conn: _Connection, key: str, model: str, request: bytes, offered: int | None
    ) -> None:
        inserted = await conn.execute(
            "INSERT INTO kling_items (key, model, request, state, worker, created_at, updated_at)"
            f" VALUES (%s, %s, %s, 'submitting', %s, {_NOW}, {_NOW}) ON CONFLICT (key) DO NOTHING",
            (key, model, request, self.worker),
        )
        if inserted.rowcount != 1:
            await self._reclaim(conn, key, model, request, offered)

    async def _reclaim(
        self, conn: _Connection, key: str, model: str, request: bytes, offered: int | None
    ) -> None:
        """Claim a key that is already recorded, if this worker may."""
        async with conn.transaction():
            row = await self._row(conn, key, lock=True)
            assert row is not None  # the conflict was on this key, and rows are never deleted
            entry, worker, live, claims = row
            if entry.state != JournalState.UNSENT:
                if worker != self.worker and (entry.state not in _RESUBMITTABLE or live or offered != claims):
                    raise self._elsewhere(key, entry, worker, live)
                if (entry.model, entry.request) != (model, request):
                    raise self._key_error(
                        key, "was recorded with another request; use a new journal or another id"
                    )
                if entry.state not in _RESUBMITTABLE:
                    raise self._key_error(
                        key,
                        f"is {entry.state} with task {entry.task_id}; re-attach to it instead of submitting"
                        " again",
                    )
            await conn.execute(
                "UPDATE kling_items SET model = %s, request = %s, state = 'submitting', task_id = NULL,"
                " status = NULL, urls = '[]', path = NULL, error = NULL, worker = %s, claims = claims + 1,"
                f" updated_at = {_NOW} WHERE key = %s",
                (model, request, self.worker, key),
            )

    async def created(self, key: str, task_id: str, status: str) -> None:
        """Record the task id the POST returned; committed before it returns."""

        async def run(conn: _Connection) -> None:
            done = await self._guarded(
                conn,
                key,
                "state = 'created' AND task_id = %s OR state IN ('submitting', 'uncertain') AND worker = %s",
                (task_id, self.worker),
                state=JournalState.CREATED,
                task_id=task_id,
                status=status,
                error=None,
            )
            if not done:
                await refuse(conn)

        async def refuse(conn: _Connection) -> None:
            raise await self._refusal(conn, key, JournalState.CREATED, task_id=task_id)

        await self._durable(key, run, together=("created", (key, task_id, status)), otherwise=refuse)

    async def uncertain(self, key: str, error: str) -> None:
        """Record a POST whose outcome is unknown; committed before it returns."""
        await self._own_claim(key, JournalState.UNCERTAIN, ("submitting", "uncertain"), error=error)

    async def unsent(self, key: str, error: str) -> None:
        """Record a POST that provably created nothing; committed before it returns."""
        await self._own_claim(key, JournalState.UNSENT, ("submitting", "uncertain", "unsent"), error=error)

    async def failed(self, key: str, status: str | None, error: str) -> None:
        """Record a task that ended FAILED or CANCELLED (buffered), or, status None, a POST refused before any
        task existed (committed before it returns)."""
        if status is None:
            await self._own_claim(key, JournalState.FAILED, ("submitting", "uncertain"), error=error)
        else:
            self._buffer(
                _Write(
                    key,
                    "failure",
                    JournalState.FAILED,
                    (JournalState.SUBMITTING, JournalState.CREATED, JournalState.FAILED),
                    {"state": JournalState.FAILED.value, "status": status, "error": error},
                )
            )

    async def status(self, key: str, status: str) -> None:
        """Record a task's new status (buffered; ignored unless the entry is ``created``)."""
        self._buffer(_Write(key, f"status {status}", None, (JournalState.CREATED,), {"status": status}))

    async def finished(self, key: str, status: str, urls: Sequence[str]) -> None:
        """Record a COMPLETED task and its result URLs (buffered)."""
        columns = {"state": JournalState.COMPLETED.value, "status": status, "urls": list(urls)}
        sources = (JournalState.CREATED, JournalState.COMPLETED, JournalState.DOWNLOADED)
        self._buffer(_Write(key, "the result", JournalState.COMPLETED, sources, columns))

    async def downloaded(self, key: str, path: str) -> None:
        """Record where the item's video was saved (buffered)."""
        columns = {"state": JournalState.DOWNLOADED.value, "path": path}
        sources = (JournalState.COMPLETED, JournalState.DOWNLOADED)
        self._buffer(_Write(key, "the download", JournalState.DOWNLOADED, sources, columns))

    # -- reading and writing rows ----------------------------------------------------------------------------

    async def _row(
        self, conn: _Connection, key: str, *, lock: bool
    ) -> tuple[JournalEntry, str, bool, int] | None:
        suffix = " FOR UPDATE OF i" if lock else ""
        cursor = await conn.execute(
            f"SELECT {_COLUMNS}, {_OWNER} FROM {_FROM} WHERE i.key = %s{suffix}", (key,)
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        return _entry(row), row[9], self._live(row[9], row[11], row[12]), row[10]

    async def _set(self, conn: _Connection, key: str, **columns: Any) -> None:
        await self._guarded(conn, key, "true", (), **columns)

    async def _guarded(
        self,
        conn: _Connection,
        key: str,
        condition: str,
        params: tuple[Any, ...],
        **columns: Any,
    ) -> bool:
        """Update the key's columns where ``condition`` holds; whether a row was updated."""
        cursor = await self._update(conn, key, condition, params, **columns)
        return cursor.rowcount == 1

    async def _update(
        self,
        conn: _Connection,
        key: str,
        condition: str,
        params: tuple[Any, ...],
        **columns: Any,
    ) -> psycopg.AsyncCursor[TupleRow]:
        values = [_sql_value(value) for value in columns.values()]
        assignments = ", ".join([*(f"{name} = %s" for name in columns), f"updated_at = {_NOW}"])
        return await conn.execute(
            f"UPDATE kling_items SET {assignments} WHERE key = %s AND ({condition})", (*values, key, *params)
        )

    async def _own_claim(self, key: str, target: JournalState, sources: tuple[str, ...], error: str) -> None:
        """A durable write that only the claim's worker may make (it alone knows what its POST did)."""

        async def run(conn: _Connection) -> None:
            done = await self._guarded(
                conn,
                key,
                "state = ANY(%s) AND worker = %s",
                (list(sources), self.worker),
                state=target,
                error=error,
            )
            if not done:
                raise await self._refusal(conn, key, target)

        await self._durable(key, run)

    async def _refusal(
        self,
        conn: _Connection,
        key: str,
        target: JournalState,
        *,
        task_id: str | None = None,
    ) -> JournalError:
        """Why a guarded write to ``key`` did not apply."""
        row = await self._row(conn, key, lock=False)
        if row is None:
            return self._key_error(key, "is not in the journal")
        entry, worker, live, _ = row
        if target == JournalState.CREATED and entry.state == JournalState.CREATED:
            return self._key_error(
                key, f"already has task {entry.task_id}; refusing to replace it by {task_id}"
            )
        if worker != self.worker and entry.state in (JournalState.SUBMITTING, JournalState.UNCERTAIN):
            return self._elsewhere(key, entry, worker, live)
        return self._key_error(key, f"is {entry.state} and cannot become {target}")

    def _elsewhere(self, key: str, entry: JournalEntry, worker: str, live: bool) -> ClaimedElsewhere:
        who = f"worker {worker}" + ("" if live else " (no longer live)")
        task = f" with task {entry.task_id}" if entry.task_id else ""
        return ClaimedElsewhere(
            f"key {key!r} is {entry.state}{task}, claimed by {who}", path=self._path, key=key
        )

    def _key_error(self, key: str, problem: str) -> JournalError:
        return JournalError(f"key {key!r} {problem}", path=self._path, key=key)

    # -- buffering -------------------------------------------------------------------------------------------

    def _buffer(self, write: _Write) -> None:
        self._check_open()
        self._writes.add(write)

    async def _commit(self, conn: _Connection, writes: list[_Write]) -> None:
        async with conn.transaction():
            # Pipelined: the updates go out together and their answers come back together (one round
            # trip, not one per write); a failing one aborts the transaction, and the writes are kept.
            async with conn.pipeline():
                cursors = []
                for write in writes:
                    sources = [state.value for state in write.sources]
                    condition = "state = ANY(%s)"
                    params: tuple[Any, ...] = (sources,)
                    if write.target is None:  # a status: only a change is a write (and a history row)
                        condition += " AND status IS DISTINCT FROM %s"
                        params += (write.columns["status"],)
                    cursors.append(await self._update(conn, write.key, condition, params, **write.columns))
            for write, cursor in zip(writes, cursors, strict=True):
                # A status that no longer fits is a late or repeated one of an item that moved on: harmless.
                if cursor.rowcount != 1 and write.target is not None:
                    refusal = await self._refusal(conn, write.key, write.target)
                    log.warning("%s; the buffered write is dropped", refusal)

    async def _commit_buffered(self, writes: list[_Write]) -> None:
        await self._call(None, writes)

    async def _heartbeat(self, conn: _Connection | None) -> None:
        """Renew this worker's lease every third of it; mark the claims of dead workers uncertain. The
        first beat is at once: it reads the other workers' leases while they run (``_live``)."""
        try:
            first = True
            while True:
                if not first:
                    await self._clock.sleep(self._lease / 3)
                first = False
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                    await self._beat(conn)
                except (JournalError, psycopg.Error) as exc:
                    if not self._heartbeat_failing:
                        log.warning(
                            "journal %s: cannot renew the lease of worker %s (%s); other workers may take"
                            " its items as dead",
                            self._path,
                            self.worker,
                            _reason(exc) if isinstance(exc, psycopg.Error) else exc,
                        )
                    self._heartbeat_failing = True
                    if conn is not None:
                        await conn.close()
                        conn = None
                else:
                    self._heartbeat_failing = False
        finally:
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await conn.close()

    async def _beat(self, conn: _Connection) -> None:
        async with conn.transaction():
            await conn.execute(
                "UPDATE kling_workers SET lease_until = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = %s",
                (self._lease, self.worker),
            )
            # The other workers' leases are read, each to be counted on this worker's clock too (``_live``):
            # those of the last hour, and those of workers with claims on the wire.
            cursor = await conn.execute(
                "SELECT w.id, extract(epoch from w.lease_until)::double precision,"
                " extract(epoch from clock_timestamp())::double precision FROM kling_workers w"
                " WHERE w.id <> %s AND (w.lease_until > clock_timestamp() - interval '1 hour'"
                " OR EXISTS (SELECT FROM kling_items i WHERE i.worker = w.id AND i.state = 'submitting'))",
                (self.worker,),
            )
            dead = [
                worker for worker, lease, now in await cursor.fetchall() if not self._live(worker, lease, now)
            ]
            if dead:
                await conn.execute(
                    f"UPDATE kling_items i SET state = 'uncertain', updated_at = {_NOW},"
                    " error = 'worker ' || i.worker || %s"
                    " FROM kling_workers w WHERE i.state = 'submitting' AND w.id = i.worker"
                    " AND i.worker = ANY(%s) AND w.lease_until < clock_timestamp()",
                    (f" {_LEFT_UNRECORDED}", dead),
                )

    # -- running calls --------------------------------------------------------------------------------------

    async def _durable(
        self,
        key: str,
        run: Callable[[_Connection], Awaitable[Any]],
        *,
        together: tuple[str, tuple[Any, ...]] | None = None,
        otherwise: Callable[[_Connection], Awaitable[Any]] | None = None,
    ) -> Any:
        """Run a durable call for ``key``: ``run``, or, when the key has no buffered writes to commit first
        and ``together`` is given (a kind of ``_TOGETHER`` and this call's row), that statement, gathered
        with the calls of the same kind; then, unless it settled the key, ``otherwise`` (``run`` if None)."""
        self._check_open()
        return await self._call(run, self._writes.take(key), key, together, otherwise or run)

    async def _call(
        self,
        run: Callable[[_Connection], Awaitable[Any]] | None,
        writes: list[_Write],
        key: str | None = None,
        together: tuple[str, tuple[Any, ...]] | None = None,
        otherwise: Callable[[_Connection], Awaitable[Any]] | None = None,
    ) -> Any:
        """Commit ``writes`` (if any), then run ``run`` (if any) on a pooled connection; return its result.

        It first waits for the calls made earlier for ``key`` and for the keys of ``writes``, so each key's
        calls keep their order while other keys' run at the same time. Cancelled, it still ends (committed
        or failed) before the cancellation goes on.
        """
        keys = {write.key for write in writes}
        if key is not None:
            keys.add(key)
        done = anyio.Event()
        earlier = {self._last[k] for k in keys if k in self._last}
        for k in keys:
            self._last[k] = done
        self._running.add(done)
        committed = False
        try:
            try:
                with anyio.CancelScope(shield=True):
                    for event in earlier:
                        await event.wait()
                    if together is not None and not writes:
                        if await self._together(*together):
                            return None
                        run = otherwise
                    if not writes and run is None:
                        return None

                    async def work(conn: _Connection) -> Any:
                        nonlocal committed
                        if writes:
                            await self._commit(conn, writes)
                            committed = True
                        return None if run is None else await run(conn)

                    async with self._slots:
                        return await self._on_connection(work)
            finally:
                if writes:
                    self._writes.settle(writes, committed)
                for k in keys:
                    if self._last.get(k) is done:
                        del self._last[k]
                self._running.discard(done)
                done.set()
        finally:
            await anyio.lowlevel.checkpoint_if_cancelled()  # the caller's cancellation, now that all is over

    async def _together(self, kind: str, row: tuple[Any, ...]) -> bool:
        """Whether the statement of ``kind`` settled ``row``'s key: run once for every call of that kind that
        joined while the first one waited for a connection."""
        batch = self._gathering.get(kind)
        if batch is not None and len(batch.rows) < _TOGETHER_MAX:
            batch.rows.append(row)
            await batch.done.wait()
        else:
            batch = self._gathering[kind] = _Batch([row])
            try:
                if len(self._running) > 1:
                    # Other calls are under way: let those that are ready join before the statement goes.
                    # Alone (one item after another), nobody would: no trip through the event loop then.
                    await anyio.lowlevel.checkpoint()

                async def work(conn: _Connection) -> frozenset[str]:
                    if self._gathering.get(kind) is batch:  # closed: later calls gather in the next one
                        del self._gathering[kind]
                    cursor = await conn.execute(*self._together_statement(kind, batch.rows))
                    return frozenset(found[0] for found in await cursor.fetchall())

                async with self._slots:
                    batch.settled = await self._on_connection(work)
            except JournalError as exc:
                batch.error = exc
            finally:
                if self._gathering.get(kind) is batch:
                    del self._gathering[kind]
                batch.done.set()
        if batch.error is not None:
            raise batch.error
        return row[0] in batch.settled

    def _together_statement(self, kind: str, rows: list[tuple[Any, ...]]) -> tuple[str, tuple[Any, ...]]:
        if len(rows) == 1:
            row = rows[0]
            if kind == "claim":
                return _ALONE[kind], (*row, self.worker)
            if kind == "created":
                key, task_id, status = row
                return _ALONE[kind], (task_id, status, key, task_id, self.worker)
            return _ALONE[kind], row
        columns = [list(column) for column in zip(*rows, strict=True)]
        if kind == "claim":
            return _TOGETHER[kind], (self.worker, *columns)
        if kind == "created":
            return _TOGETHER[kind], (*columns, self.worker)
        return _TOGETHER[kind], tuple(columns)

    async def _on_connection(self, work: Callable[[_Connection], Awaitable[_T]]) -> _T:
        """``work`` on a pooled connection, and once more on a fresh one when that connection proves dead.

        A restarted server or a failover leaves the pool's idle connections dead, and the first call on
        one fails before the server ran any of it. Running a call again is safe even when the connection
        broke after its commit: a task id, an uncertain or an unsent claim applied again changes nothing; a
        claim counts once more; a buffered write that no longer fits is dropped with a warning; a refusal
        recorded twice fails the second time, as any second one does.
        """
        try:
            async with self._connection() as conn:
                return await work(conn)
        except _BrokenConnection as exc:
            log.warning("%s; trying again on a new connection", exc)
        async with self._connection() as conn:
            return await work(conn)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        """A pooled connection; the database's errors become JournalErrors (``_BrokenConnection`` when
        the connection died)."""
        assert self._pool is not None
        conn: _Connection | None = None
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise JournalError(
                f"cannot connect: no connection within {self._connect_timeout:g} s", path=self._path
            ) from None
        except psycopg.Error as exc:
            broken = conn is not None and conn.broken
            error = _BrokenConnection if broken else JournalError
            raise error(f"database error: {_reason(exc)}", path=self._path) from None
        finally:
            if conn is not None and conn.broken:
                # A failover or a killed backend leaves the pool's idle connections dead too: replace them
                # now, so that only this call fails.
                with self._clock.move_on_after(self._connect_timeout):
                    await self._pool.check()


def _reason(exc: psycopg.Error) -> str:
    """psycopg's message, first line only (libpq repeats context lines; none holds the password)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _sql_value(value: Any) -> Any:
    if isinstance(value, list):
        return Jsonb(value)
    return value


def _entry(row: Sequence[Any]) -> JournalEntry:
    key, model, request, state, task_id, status, urls, path, error = row[:9]
    return JournalEntry(
        key, model, bytes(request), JournalState(state), task_id, status, tuple(urls), path, error
    )
