"""One request rate for an API key, shared by every worker through a PostgreSQL row.

Workers that share a database share one budget for the key. Its row holds a token schedule (the generic
cell rate algorithm's "theoretical arrival time", ``tat``): each request any worker sends takes the next
slot, so N workers together send at the row's rate, never N times it. The row is keyed by a fingerprint of
the key (a salted SHA-256), never the key. Times are the database's clock, so workers on machines whose
clocks disagree still agree on the schedule.

The rate itself moves by the same rule as a lone client's (``_limits.Pace``), with its state in the row:

* not told a rate, the workers open together at 50 requests a second, doubling four times a second (a
  lone client's pace before its first answer: the row cannot see the workers' wires) until the first
  429, so that few requests are on the wire, at any worker, to be refused when the server's bucket runs
  dry;
* a 429 seen by any worker lowers the rate once for everyone: the 429s that come within a second of a
  cut (requests already on the wire then, at any worker) belong to the same event;
* every 429 pushes ``blocked_until`` to its Retry-After for every worker;
* what the server accepted is counted in the row (every slot taken, less the 429s), so a cut is set from
  what all the workers together got through, as a lone client's is from its own answers. Those counts
  span whole windows, a Retry-After's pause included, so not told a rate, a bound up to 12% below the
  last one confirms it (``_FELL``; a lone client's must be within 3%).

The per-process cap on requests on the wire, and the lanes, stay local (``_limits.Limiter``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Self

import anyio
import psycopg
from psycopg.rows import TupleRow

from ._errors import JournalError
from ._journal_pg import redact
from ._limits import Pace

__all__ = ["SharedRate", "key_fingerprint"]

log = logging.getLogger("kling_async")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kling_key_rates (
    fingerprint   text PRIMARY KEY,
    ceiling       double precision,           -- a rate a worker was given: never exceeded
    rate          double precision,           -- requests per second now; NULL: not paced yet
    target        double precision,           -- where the rate recovers to after a cut
    searching     boolean NOT NULL,
    probe         double precision NOT NULL,
    bound         double precision,           -- the last lower bound on the server's rate
    opening       boolean NOT NULL DEFAULT false,  -- no rate given, no 429 yet: the opening's pace
    burst         double precision NOT NULL,  -- slots that may go at once after a quiet spell
    tat           double precision NOT NULL,  -- the schedule: the theoretical arrival time, epoch seconds
    stamp         double precision NOT NULL,  -- when the rate last grew
    blocked_until double precision NOT NULL,  -- a Retry-After, for every worker
    cut_at        double precision,           -- the last 429 event
    server_burst  double precision,           -- what the server let through before its first 429
    window_at     double precision NOT NULL,  -- the window the accepted requests are counted over
    window_empty  boolean NOT NULL,           -- it started at a 429 (the server's bucket was empty)
    granted       integer NOT NULL,           -- slots taken in the window
    refused       integer NOT NULL,           -- 429s in the window
    prev_at       double precision,           -- the window before, and what it accepted
    prev_accepted integer NOT NULL,
    prev_empty    boolean NOT NULL
)"""
# A table made by an earlier version lacks the opening's column.
_MIGRATE = "ALTER TABLE kling_key_rates ADD COLUMN IF NOT EXISTS opening boolean NOT NULL DEFAULT false"
_SCHEMA_LOCK = 0x6B6C696E672D7274  # "kling-rt"
_NOW = "extract(epoch from clock_timestamp())::double precision"
# As in _limits: the 429s of one event come within this long of its first; a bound on the server's rate
# is taken over at least _MIN_SPAN seconds; counting windows slide every _WINDOW seconds.
_EVENT = 1.0
_MIN_SPAN = 0.5
_WINDOW = 30.0
# A bound up to this share below the last one confirms it (a lone client's must be within 3%): the row's
# bounds are counted over whole windows since a cut, the Retry-After's pause and the climb back included,
# with the server's refill during the pause only estimated, so two bounds on one server's rate differ by
# more (on a 10/s server, 9.99 then 9.51, and 10.62 then 9.50: three workers, bench_workers). The new bound
# is kept (the lower one), so a server whose rate did fall is followed all the same.
_FELL = 0.12
# A statement sequence is not cancelled half-way (the connection would be left unusable), but neither may
# a database that stopped answering hold the client: it fails after this long.
_STATEMENT_DEADLINE = 10.0
# The database's clock stepping back by at least this much moves the row's times back with it.
_STEP = 1.0


_Connection = psycopg.AsyncConnection[TupleRow]


def key_fingerprint(api_key: str) -> str:
    """What the database stores for a key: a salted digest, from which the key cannot be read back."""
    return hashlib.sha256(b"kling-async shared rate\0" + api_key.encode()).hexdigest()[:32]


def _stepped_back(stamp: float, now: float) -> float:
    """How far the database's clock stepped back since the row's last write at ``stamp``; 0.0 for less
    than ``_STEP``: a statement that waited for the row's lock reads the clock before the lock, so ``now``
    trails the last writer's by that wait."""
    step = stamp - now
    return step if step >= _STEP else 0.0


@dataclass(slots=True)
class _Row:
    """The key's row, read under its lock and written back: the rate's ``Pace``, and the schedule."""

    pace: Pace
    burst: float
    tat: float
    stamp: float
    blocked_until: float
    cut_at: float | None
    server_burst: float | None
    window_at: float
    window_empty: bool
    granted: int
    refused: int
    prev_at: float | None
    prev_accepted: int
    prev_empty: bool

    @classmethod
    def fresh(cls, now: float, ceiling: float | None, burst: int) -> _Row:
        return cls(
            pace=Pace.given(ceiling),
            burst=float(burst),
            tat=now,
            stamp=now,
            blocked_until=0.0,
            cut_at=None,
            server_burst=None,
            window_at=now,
            window_empty=False,
            granted=0,
            refused=0,
            prev_at=None,
            prev_accepted=0,
            prev_empty=False,
        )

    @classmethod
    def read(cls, columns: Sequence[Any]) -> _Row:
        """The row from its columns in ``_COLUMNS``' order."""
        split = len(_PACE_COLUMNS)
        return cls(Pace(*columns[:split]), *columns[split:])

    def columns(self) -> dict[str, object]:
        """The row's columns by name, for ``_INSERT`` and ``_UPDATE``."""
        return {name: getattr(self.pace, name) for name in _PACE_COLUMNS} | {
            name: getattr(self, name) for name in _ROW_COLUMNS
        }

    def rebase(self, now: float) -> None:
        """Move the row's times back with the database's clock when it stepped back (NTP correcting its
        host): the schedule keeps its shape, where it would wait out the step (every worker held for as
        long)."""
        step = _stepped_back(self.stamp, now)
        if not step:
            return
        self.tat -= step
        self.stamp -= step
        self.blocked_until -= step
        self.window_at -= step
        if self.cut_at is not None:
            self.cut_at -= step
        if self.prev_at is not None:
            self.prev_at -= step

    def take(self, now: float) -> float:
        """Take the next slot of the schedule; the seconds to wait before sending."""
        # The pace held requests back (see ``Pace.grow``) when this slot must be waited for by the
        # schedule: it was booked since the last one was taken. One free now means the workers asked for
        # no more than the pace meanwhile (idle, or their wires full). A Retry-After's pause is ``paused``.
        rate = self.pace.rate
        held = rate is not None and max(self.tat, now) + (1.0 - self.burst) / rate > now
        paused = max(0.0, min(now, self.blocked_until) - self.stamp)
        self.pace.grow(now - self.stamp, held=held, paused=paused)
        self.stamp = now
        if now - self.window_at > _WINDOW:
            self.prev_at, self.prev_empty = self.window_at, self.window_empty
            self.prev_accepted = self.granted - self.refused
            self.window_at, self.window_empty, self.granted, self.refused = now, False, 0, 0
        self.granted += 1
        rate = self.pace.rate
        if rate is None:
            return max(0.0, self.blocked_until - now)
        interval = 1.0 / rate
        start = max(self.tat, now, self.blocked_until)
        self.tat = start + interval
        return max(0.0, self.blocked_until - now, self.tat - self.burst * interval - now)

    def accepted_rate(self, now: float) -> float | None:
        """A lower bound on the server's rate from what every worker got through (see ``_limits``)."""
        accepted = self.granted - self.refused
        bounds = []
        span = now - self.window_at
        if self.window_empty and span >= _MIN_SPAN:
            bounds.append(accepted / span)
        if self.prev_at is not None and (self.prev_empty or self.server_burst is not None):
            saved = 0.0 if self.prev_empty else (self.server_burst or 0.0)
            bounds.append((self.prev_accepted + accepted - saved) / (now - self.prev_at))
        best = max(bounds, default=0.0)
        return best if best > 0 else None

    def refuse(self, now: float, retry_after: float | None) -> bool:
        """A request was answered 429; True when it starts a new event (the rate was cut)."""
        if retry_after is not None:
            self.blocked_until = max(self.blocked_until, now + retry_after)
        self.refused += 1
        if self.cut_at is not None and now - self.cut_at < _EVENT:
            return False
        span = max(now - self.window_at, 1e-3)
        paced = self.pace.rate if self.pace.rate is not None else self.granted / span
        bound = self.accepted_rate(now)
        if self.server_burst is None:
            self.server_burst = float(max(1, self.granted - self.refused))
        self.pace.after_429(
            paced=paced,
            bound=bound,
            paused=retry_after is not None,
            start=self.server_burst,
            fell=_FELL,
        )
        self.cut_at = self.stamp = now
        # The server's bucket is empty now: count what it accepts from here. The burst was spent once.
        self.prev_at, self.prev_accepted, self.prev_empty = None, 0, False
        self.window_at, self.window_empty, self.granted, self.refused = now, True, 0, 0
        self.burst = 1.0
        self.tat = max(self.tat, now)
        return True


_PACE_COLUMNS = [field.name for field in fields(Pace)]
_ROW_COLUMNS = [field.name for field in fields(_Row) if field.name != "pace"]
_COLUMNS = _PACE_COLUMNS + _ROW_COLUMNS
_SELECT = f"SELECT {_NOW}, {', '.join(_COLUMNS)} FROM kling_key_rates WHERE fingerprint = %s FOR UPDATE"
_HELD = f"SELECT blocked_until, stamp, {_NOW} FROM kling_key_rates WHERE fingerprint = %s"
_UPDATE = (
    f"UPDATE kling_key_rates SET {', '.join(f'{name} = %({name})s' for name in _COLUMNS)}"
    " WHERE fingerprint = %(fingerprint)s"
)
_INSERT = (
    f"INSERT INTO kling_key_rates (fingerprint, {', '.join(_COLUMNS)})"
    f" VALUES (%(fingerprint)s, {', '.join(f'%({name})s' for name in _COLUMNS)})"
    " ON CONFLICT (fingerprint) DO NOTHING"
)


class SharedRate:
    """The key's shared request rate in PostgreSQL; use it as ``async with SharedRate(...) as rate:``.

    Args:
        url: the database (the journal's, typically).
        api_key: the key whose budget this is; only its fingerprint is stored.
        requests_per_second: a rate the account allows (never exceeded); None: find it from the 429s.
            A worker given one sets it on the row for all.
        burst: requests that may go at once after a quiet spell (the first worker's wins).
        max_pause: the longest a Retry-After holds the workers.

    Raises:
        ValueError: a rate or burst that is not positive.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        requests_per_second: float | None = None,
        burst: int = 1,
        max_pause: float = 120.0,
    ) -> None:
        if requests_per_second is not None and not 0 < requests_per_second < math.inf:
            raise ValueError(f"requests_per_second: a positive number, got {requests_per_second!r}")
        if burst < 1:
            raise ValueError(f"burst: at least 1, got {burst!r}")
        self._url = url
        self._path = redact(url)
        self.fingerprint = key_fingerprint(api_key)
        self._ceiling = requests_per_second
        self._burst = burst
        self._max_pause = max_pause
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        # One statement sequence at a time on the connection (a take and a 429 may come together).
        self._lock = anyio.Lock()
        self.rate: float | None = requests_per_second

    def __repr__(self) -> str:
        rate = "unpaced" if self.rate is None else f"{self.rate:.2f}/s"
        return f"<SharedRate {self._path!r} key={self.fingerprint[:8]}... rate={rate}>"

    async def __aenter__(self) -> Self:
        try:
            with anyio.fail_after(_STATEMENT_DEADLINE):
                conn = await self._connect()
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    await conn.execute(_SCHEMA)
                    await conn.execute(_MIGRATE)
                    cursor = await conn.execute(f"SELECT {_NOW}")
                    now_row = await cursor.fetchone()
                    assert now_row is not None
                    row = _Row.fresh(now_row[0], self._ceiling, self._burst)
                    await conn.execute(_INSERT, {"fingerprint": self.fingerprint, **row.columns()})
                    if self._ceiling is not None:
                        # The latest given rate is the account's: a redeploy with a new one takes effect.
                        await conn.execute(
                            "UPDATE kling_key_rates SET ceiling = %s, rate = least(coalesce(rate, %s), %s),"
                            " target = least(coalesce(target, %s), %s), opening = false"
                            " WHERE fingerprint = %s",
                            (self._ceiling,) * 5 + (self.fingerprint,),
                        )
        except (psycopg.Error, TimeoutError) as exc:
            await self._close()
            raise JournalError(f"shared rate: {exc or 'no answer'}", path=self._path) from None
        return self

    async def _connect(self) -> psycopg.AsyncConnection[TupleRow]:
        self._conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=int(_STATEMENT_DEADLINE)
        )
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def take(self) -> float:
        """Reserve the next slot of the key's schedule (one request); the seconds to wait before sending.

        Raises:
            JournalError: the database cannot be used.
        """
        return await self._update(lambda row, now: row.take(now))

    async def throttled(self, retry_after: float | None) -> None:
        """A request was answered 429: hold every worker for ``retry_after`` seconds (capped), and lower the
        shared rate once per 429 event, however many workers saw it.

        Raises:
            JournalError: the database cannot be used.
        """
        pause = min(retry_after, self._max_pause) if retry_after is not None else None
        if await self._update(lambda row, now: float(row.refuse(now, pause))):
            log.info("a 429 lowered the shared rate of key %s... to %s", self.fingerprint[:8], self.rate)

    async def held(self) -> float:
        """The seconds a Retry-After that any worker got still holds every worker (0.0: none).

        Raises:
            JournalError: the database cannot be used.
        """

        async def read(conn: _Connection) -> float:
            cursor = await conn.execute(_HELD, (self.fingerprint,))
            found = await cursor.fetchone()
            if found is None:
                return 0.0
            blocked_until, stamp, now = found
            # As ``_Row.rebase`` reads the row: after the clock stepped back, the pause counts from the
            # row's last write, not from a ``now`` the step put before it.
            return max(0.0, float(blocked_until - now) - _stepped_back(stamp, now))

        return await self._run(read)

    async def _update(self, change: Callable[[_Row, float], float]) -> float:
        """Read the row under its lock, ``change`` it and write it back, in one transaction."""

        async def update(conn: _Connection) -> float:
            async with conn.transaction():
                cursor = await conn.execute(_SELECT, (self.fingerprint,))
                found = await cursor.fetchone()
                if found is None:
                    missing = f"shared rate: no row for key {self.fingerprint[:8]}..."
                    raise JournalError(missing, path=self._path)
                row = _Row.read(found[1:])
                row.rebase(found[0])
                result = change(row, found[0])
                await conn.execute(_UPDATE, {"fingerprint": self.fingerprint, **row.columns()})
            self.rate = row.pace.rate
            return result

        return await self._run(update)

    async def _run(self, statements: Callable[[_Connection], Awaitable[float]]) -> float:
        """Run ``statements`` on the connection (reconnecting if it was lost), one sequence at a time, and
        not cut half-way by a cancellation."""
        if self._conn is None:
            raise JournalError("shared rate: not open: use it in `async with`", path=self._path)
        try:
            async with self._lock:
                with anyio.fail_after(_STATEMENT_DEADLINE, shield=True):
                    conn = self._conn
                    if conn.closed or conn.broken:
                        conn = await self._connect()  # a restarted database, or a killed connection
                    return await statements(conn)
        except (psycopg.Error, TimeoutError) as exc:
            raise JournalError(f"shared rate: {exc or 'no answer'}", path=self._path) from None
