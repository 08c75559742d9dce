"""One request rate for an API key, shared by every worker through a PostgreSQL row (GCRA).

Workers that share a database share one budget for the key: its row holds a token schedule (the generic
cell rate algorithm's "theoretical arrival time", ``tat``), so each request a worker takes moves one
schedule and N workers together stay within the rate. The row is keyed by a fingerprint of the key (a
salted SHA-256), never the key. Times are the database's clock, so workers on machines whose clocks
disagree still agree on the schedule.

A 429 seen by any worker lowers the shared rate once, not once per worker: every permit carries the rate's
``generation``, and only the first 429 under a generation halves the rate (and starts a new generation);
every 429 pushes ``blocked_until`` to its Retry-After for all workers. The rate climbs back by a tenth of the
ceiling every ``recover_after`` seconds without a 429. The per-process wire cap and lanes stay local.

Not wired into the limiter yet: ``Limiter._take_token`` would call ``SharedRate.take()`` and sleep the
returned ``Permit.wait``, and its 429 handling would call ``SharedRate.throttled(permit, retry_after)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import psycopg
from psycopg.rows import TupleRow

from ._errors import JournalError
from ._journal_pg import redact

__all__ = ["Permit", "SharedRate", "key_fingerprint"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kling_rates (
    fingerprint   text PRIMARY KEY,
    ceiling       double precision NOT NULL,  -- requests per second, at most
    rate          double precision NOT NULL,  -- requests per second now (lowered by 429s)
    burst         integer NOT NULL,
    tat           double precision NOT NULL,  -- the schedule: the theoretical arrival time, epoch seconds
    blocked_until double precision NOT NULL,  -- a Retry-After, for every worker
    generation    integer NOT NULL,           -- bumped each time a 429 lowers the rate
    lowered_at    double precision NOT NULL   -- when the rate last changed
)"""
_SCHEMA_LOCK = 0x6B6C696E672D7274  # "kling-rt"
_NOW = "extract(epoch from clock_timestamp())::double precision"

# One statement: take the next slot of the schedule, after any Retry-After block, and climb back toward the
# ceiling when no 429 came for a while. Returns how long to wait for the slot, and the rate's generation.
_TAKE = f"""
WITH now AS (SELECT {_NOW} AS t),
recovered AS (
    SELECT r.fingerprint,
           CASE WHEN r.rate < r.ceiling AND now.t - r.lowered_at >= %(recover_after)s
                THEN least(r.ceiling, r.rate + r.ceiling / 10) ELSE r.rate END AS rate,
           CASE WHEN r.rate < r.ceiling AND now.t - r.lowered_at >= %(recover_after)s
                THEN now.t ELSE r.lowered_at END AS lowered_at,
           greatest(r.tat, now.t, r.blocked_until) AS start,
           r.burst, r.blocked_until, now.t AS now
    FROM kling_rates r, now WHERE r.fingerprint = %(fingerprint)s FOR UPDATE OF r
)
UPDATE kling_rates r SET
    rate = c.rate,
    lowered_at = c.lowered_at,
    tat = c.start + 1 / c.rate
FROM recovered c WHERE r.fingerprint = c.fingerprint
RETURNING greatest(c.now, c.blocked_until, c.start + 1 / c.rate - c.burst / c.rate) - c.now, r.generation
"""

_THROTTLED = f"""
UPDATE kling_rates SET
    rate = CASE WHEN generation = %(generation)s THEN greatest(rate / 2, %(floor)s) ELSE rate END,
    lowered_at = CASE WHEN generation = %(generation)s THEN {_NOW} ELSE lowered_at END,
    generation = CASE WHEN generation = %(generation)s THEN generation + 1 ELSE generation END,
    blocked_until = greatest(blocked_until, {_NOW} + %(retry_after)s)
WHERE fingerprint = %(fingerprint)s
RETURNING rate
"""


def key_fingerprint(api_key: str) -> str:
    """What the database stores for a key: a salted digest, from which the key cannot be read back."""
    return hashlib.sha256(b"kling-async shared rate\0" + api_key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Permit:
    """A slot of the shared schedule: sleep ``wait`` seconds, then send; ``generation`` is the rate's then."""

    wait: float
    generation: int


class SharedRate:
    """The key's shared request rate in PostgreSQL; use it as ``async with SharedRate(...) as rate:``.

    Args:
        url: the database (the journal's, typically).
        api_key: the key whose budget this is; only its fingerprint is stored.
        requests_per_second: the ceiling, set on the row when this creates it (the first worker's wins).
        burst: requests that may go at once after a quiet spell.
        recover_after: seconds without a 429 before the rate climbs a tenth of the ceiling back.

    Raises:
        ValueError: a rate, burst or recovery that is not positive.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        requests_per_second: float,
        burst: int = 1,
        recover_after: float = 10.0,
    ) -> None:
        if not 0 < requests_per_second < math.inf:
            raise ValueError(f"requests_per_second: a positive number, got {requests_per_second!r}")
        if burst < 1:
            raise ValueError(f"burst: at least 1, got {burst!r}")
        if not 0 < recover_after < math.inf:
            raise ValueError(f"recover_after: a positive number of seconds, got {recover_after!r}")
        self._url = url
        self._path = redact(url)
        self.fingerprint = key_fingerprint(api_key)
        self._ceiling = requests_per_second
        self._burst = burst
        self._recover_after = recover_after
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None

    def __repr__(self) -> str:
        return f"<SharedRate {self._path!r} key={self.fingerprint[:8]}...>"

    async def __aenter__(self) -> Self:
        try:
            self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            async with self._conn.transaction():
                await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await self._conn.execute(_SCHEMA)
                await self._conn.execute(
                    "INSERT INTO kling_rates (fingerprint, ceiling, rate, burst, tat, blocked_until,"
                    f" generation, lowered_at) VALUES (%s, %s, %s, %s, {_NOW}, 0, 0, {_NOW})"
                    " ON CONFLICT (fingerprint) DO NOTHING",
                    (self.fingerprint, self._ceiling, self._ceiling, self._burst),
                )
        except psycopg.Error as exc:
            await self._close()
            raise JournalError(f"shared rate: {exc}", path=self._path) from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def take(self) -> Permit:
        """Reserve the next slot of the key's schedule (one request); the caller sleeps ``wait``, then sends.

        Raises:
            JournalError: the database cannot be used.
        """
        row = await self._one(_TAKE, {"fingerprint": self.fingerprint, "recover_after": self._recover_after})
        return Permit(wait=max(0.0, row[0]), generation=row[1])

    async def throttled(self, permit: Permit, retry_after: float | None) -> float:
        """A request sent under ``permit`` was answered 429: block every worker for ``retry_after`` seconds
        and halve the rate, once per generation however many workers saw it. Returns the rate now.

        Raises:
            JournalError: the database cannot be used.
        """
        params = {
            "fingerprint": self.fingerprint,
            "generation": permit.generation,
            "retry_after": retry_after or 0.0,
            "floor": self._ceiling / 64,
        }
        row = await self._one(_THROTTLED, params)
        rate: float = row[0]
        return rate

    async def _one(self, sql: str, params: dict[str, object]) -> TupleRow:
        if self._conn is None:
            raise JournalError("shared rate: not open: use it in `async with`", path=self._path)
        try:
            async with self._conn.transaction():
                cursor = await self._conn.execute(sql, params)
                row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise JournalError(f"shared rate: {exc}", path=self._path) from None
        if row is None:
            raise JournalError(f"shared rate: no row for key {self.fingerprint[:8]}...", path=self._path)
        return row
