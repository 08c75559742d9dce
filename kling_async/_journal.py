"""The batch journal: what lets a re-run resume a batch without paying twice.

Each batch item is recorded just before its POST leaves (``submitting``), its task id right after
(``created``), then every status change, its result URLs and its downloaded file. What the server cannot tell
us again is committed before the call returns: ``submitting``, ``created``, ``uncertain``, ``unsent`` and a
failure before any task existed. The rest (statuses, results, task failures, downloads) is buffered: losing it
to a crash costs the re-run a status request (or a download) per item, never a task.

Two faces over one SQLite file (WAL mode):

- ``BatchJournal``, the async protocol the batch engine writes through, and ``SQLiteJournal``, its SQLite
  implementation: every SQLite call runs in a worker thread, one at a time, so a locked file, an fsync or a
  full disk never stalls the event loop; buffered writes wait in memory and a timer commits them within
  ``flush_interval``. A PostgreSQL journal shared by many workers is meant to implement the same protocol.
- ``Journal``, the synchronous class people and the CLI read journals with (``lookup``, ``entries``,
  ``counts``); ``SQLiteJournal`` drives one.

States (``docs/journal.md`` has the schema and what each crash window leaves behind)::

    submitting ─┬─> created ─┬─> completed ──> downloaded
                ├─> failed   └─> failed
                ├─> uncertain
                └─> unsent

``submitting`` again on an ``uncertain`` or ``failed`` entry is the deliberate resubmit, on an ``unsent`` one
the ordinary re-run; on an entry that has a live or finished task it is refused.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import sqlite3
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Generic, NamedTuple, Protocol, Self, TypeVar

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

import anyio
import anyio.abc
import anyio.to_thread
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import JournalError

__all__ = [
    "SCHEMA_VERSION",
    "BatchJournal",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalState",
    "Lifecycle",
    "SQLiteJournal",
    "WriteBuffer",
]

log = logging.getLogger("kling_async")

APPLICATION = "kling-async"
SCHEMA_VERSION = 2

# The items table of schema version 2. The v1 -> v2 migration builds exactly this, so a later version copies
# it into its own migration rather than editing it.
_ITEMS_V2 = """
CREATE TABLE items (
    key        TEXT PRIMARY KEY,
    position   INTEGER NOT NULL UNIQUE,
    model      TEXT NOT NULL,
    request    BLOB NOT NULL,
    state      TEXT NOT NULL CHECK (state IN
                   ('submitting', 'created', 'completed', 'downloaded', 'failed', 'uncertain', 'unsent')),
    task_id    TEXT,
    status     TEXT,
    urls       TEXT NOT NULL DEFAULT '[]',
    path       TEXT,
    error      TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)"""


def _add_unsent(db: sqlite3.Connection) -> None:
    """Version 1 -> 2: the state ``unsent``. SQLite cannot alter a CHECK constraint, so the table is rebuilt
    (foreign keys are not enforced yet while migrations run, so history's rows stay as they are)."""
    db.execute(_ITEMS_V2.replace("CREATE TABLE items", "CREATE TABLE items_v2", 1))
    db.execute("INSERT INTO items_v2 SELECT * FROM items")
    db.execute("DROP TABLE items")
    db.execute("ALTER TABLE items_v2 RENAME TO items")
    db.execute("CREATE INDEX items_task_id ON items (task_id)")


# _MIGRATIONS[v] upgrades a version-v journal to version v + 1; they run in one transaction on open.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _add_unsent}

_SCHEMA = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
{_ITEMS_V2};
CREATE INDEX items_task_id ON items (task_id);
CREATE TABLE history (
    key    TEXT NOT NULL REFERENCES items (key),
    at     REAL NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX history_key ON history (key, at);
"""

_COLUMNS = "key, model, request, state, task_id, status, urls, path, error"
# entries() reads this many rows at a time: requests may hold inline images, so never all at once.
_PAGE = 256
# Another process holding the write lock (a second run on the same file) is waited for this long.
_BUSY_TIMEOUT_MS = 5000

_urls_decoder = msgspec.json.Decoder(tuple[str, ...])
# SQLiteJournal runs at most this many queued calls per thread hop: each ends by waking its caller on the
# loop, and a bounded number of wake-ups keeps any one loop iteration short.
_JOBS_PER_HOP = 64


class JournalState(StrEnum):
    """Where a journal entry stands."""

    SUBMITTING = "submitting"  # recorded before the POST; on resume the POST may or may not have landed
    CREATED = "created"  # has a task id; the task runs (or ran) server-side
    COMPLETED = "completed"  # COMPLETED, with its result URLs
    DOWNLOADED = "downloaded"  # its video is saved at ``path``
    FAILED = "failed"  # FAILED / CANCELLED, or refused before a task was created
    UNCERTAIN = "uncertain"  # the POST's outcome is unknown; never resubmitted by default
    UNSENT = "unsent"  # the POST provably created nothing (429/503, no connection); a re-run sends it as new


# States from which a POST may (deliberately) go out again: none of them holds a task worth keeping.
_RESUBMITTABLE = frozenset(
    {JournalState.SUBMITTING, JournalState.UNCERTAIN, JournalState.FAILED, JournalState.UNSENT}
)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One batch item as the journal knows it."""

    key: str
    model: str
    request: bytes  # the encoded request JSON, exactly as it was (to be) POSTed
    state: JournalState
    task_id: str | None
    status: str | None  # the task's last known API status (CREATED, IN_PROGRESS, COMPLETED, ...)
    urls: tuple[str, ...]
    path: str | None
    error: str | None


class Journal:
    """A batch's crash-safe record in one SQLite file (WAL mode); opened, created or migrated on init.

    Its calls block the calling thread (on a locked file, up to 5 s). The batch engine goes through
    ``SQLiteJournal``, which makes them in a worker thread; this class is for reading a journal (``lookup``,
    ``entries``, ``counts``) and for synchronous programs. It is not safe to use from two threads at once.

    Args:
        path: the journal file; created when missing or empty.
        flush_every: buffered writes are committed once this many are pending.
        flush_interval: a write commits the buffer when this many seconds passed since the last commit.
        clock: where timestamps (``clock.wall()``) and the flush interval (``clock.now()``) are read.

    Raises:
        ValueError: ``flush_every`` is below 1 or ``flush_interval`` is negative or NaN.
        JournalError: the file cannot be opened, is not SQLite, is another application's database, or was
            written by a newer kling-async.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_every: int = 200,
        flush_interval: float = 0.2,
        clock: Clock | None = None,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every: at least 1, got {flush_every!r}")
        if not flush_interval >= 0:  # NaN fails this too
            raise ValueError(f"flush_interval: seconds, not negative, got {flush_interval!r}")
        self.path = os.fspath(path)
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._clock = clock or SYSTEM_CLOCK
        self._pending = 0
        self._committed_at = self._clock.now()
        self._closed = False
        with self._guard("cannot open"):
            # Autocommit mode: transactions are begun and committed here, explicitly. Any thread:
            # SQLiteJournal calls it from worker threads, one call at a time.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            with self._guard("cannot open"):
                self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        version = self._inspect()
        if version != SCHEMA_VERSION:
            with self._transaction():
                # Look again under the write lock: another process may have created or migrated it meanwhile.
                version = self._inspect()
                if version is None:
                    self._create()
                else:
                    self._migrate(version)
        # Only now, once the file is known to be ours: WAL changes the file, so a foreign one is left alone.
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"cannot use WAL mode (the file stays in {mode!r} mode)", path=self.path)
        # NORMAL in WAL mode: a commit is in the OS's hands on return, so it survives a killed process
        # (not a power cut) without an fsync per item.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")

    def _inspect(self) -> int | None:
        """The file's schema version, None for an empty database; JournalError for anything else."""
        try:
            tables = {
                row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
                raise JournalError(f"not an SQLite database ({exc})", path=self.path) from exc
            raise
        if not tables:
            return None
        if "meta" not in tables:
            raise JournalError(
                "not a kling-async journal (an SQLite file without its meta table)", path=self.path
            )
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("application") != APPLICATION:
            raise JournalError(
                f"not a kling-async journal (application {meta.get('application')!r})", path=self.path
            )
        raw = meta.get("schema_version")
        try:
            version = int(raw) if raw is not None else 0
        except ValueError:
            version = 0
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"written by a newer kling-async (schema version {version}; this one reads up to "
                f"{SCHEMA_VERSION}); upgrade kling-async",
                path=self.path,
            )
        if version < 1:
            raise JournalError(f"damaged: bad schema_version {raw!r}", path=self.path)
        return version

    def _create(self) -> None:
        # Statement by statement: executescript() would first commit the transaction this runs in.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
        )

    def _migrate(self, version: int) -> None:
        while version < SCHEMA_VERSION:
            _MIGRATIONS[version](self._db)
            version += 1
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))

    def close(self) -> None:
        """Commit what is buffered and close the file. Closing twice is harmless."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<Journal {self.path!r} closed>"
        return f"<Journal {self.path!r} pending={self._pending}>"

    # -- reading ---------------------------------------------------------------------------------------------

    def lookup(self, key: str) -> JournalEntry | None:
        """The entry recorded under ``key`` (buffered writes included), or None."""
        with self._guard(f"cannot read key {key!r}"):
            row = self._db.execute(f"SELECT {_COLUMNS} FROM items WHERE key = ?", (key,)).fetchone()
            return None if row is None else _entry(row)

    def entries(self) -> Iterator[JournalEntry]:
        """Every entry, in the order they were first recorded."""
        position = -1
        while True:
            with self._guard("cannot read the entries"):
                rows = self._db.execute(
                    f"SELECT {_COLUMNS}, position FROM items WHERE position > ? ORDER BY position LIMIT ?",
                    (position, _PAGE),
                ).fetchall()
                page = [_entry(row) for row in rows]
            yield from page
            if len(rows) < _PAGE:
                return
            position = rows[-1][-1]

    def counts(self) -> dict[str, int]:
        """The number of entries in each state (every state is present, zeros included)."""
        counts = {state.value: 0 for state in JournalState}
        with self._guard("cannot count the entries"):
            counts.update(self._db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
        return counts

    # -- writing ---------------------------------------------------------------------------------------------

    def submitting(self, key: str, model: str, request: bytes) -> None:
        """Record that the item's POST is about to go out; committed before it returns.

        A key already recorded with the same model and request is accepted when no task is attached to it
        (a re-run, or the deliberate resubmit of an uncertain or failed item). An ``unsent`` key is taken as
        never submitted: any model and request are accepted, and replace the recorded ones.

        Raises:
            JournalError: the key was recorded with another model or request, or already has a task.
        """
        with self._guard(f"cannot record key {key!r}"):
            now = self._clock.wall()
            row = self._db.execute(
                "SELECT model, request, state, task_id FROM items WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                old_model, old_request, state, task_id = row
                if state != JournalState.UNSENT and (old_model != model or old_request != request):
                    raise self._key_error(
                        key, "was recorded with another request; use a new journal or another id"
                    )
                if state not in _RESUBMITTABLE:
                    raise self._key_error(
                        key, f"is {state} with task {task_id}; re-attach to it instead of submitting again"
                    )
            with self._transaction():
                if row is None:
                    self._db.execute(
                        "INSERT INTO items (key, position, model, request, state, created_at, updated_at)"
                        " VALUES (?, (SELECT coalesce(max(position), -1) + 1 FROM items), ?, ?, ?, ?, ?)",
                        (key, model, request, JournalState.SUBMITTING.value, now, now),
                    )
                else:
                    self._db.execute(
                        "UPDATE items SET model = ?, request = ?, state = ?, task_id = NULL, status = NULL,"
                        " urls = '[]', path = NULL, error = NULL, updated_at = ? WHERE key = ?",
                        (model, request, JournalState.SUBMITTING.value, now, key),
                    )

    def created(self, key: str, task_id: str, status: str) -> None:
        """Record the task id the POST returned; committed before it returns (the id is what resumes).

        Raises:
            JournalError: the key is unknown, was not submitting, or already has another task id.
        """
        with self._guard(f"cannot record task {task_id} of key {key!r}"):
            state, old_status, old_task = self._current(key)
            if state == JournalState.CREATED and old_task != task_id:
                raise self._key_error(
                    key, f"already has task {old_task}; refusing to replace it by {task_id}"
                )
            if state not in (JournalState.SUBMITTING, JournalState.CREATED):
                raise self._key_error(key, f"is {state} and cannot become {JournalState.CREATED}")
            with self._transaction():
                self._set(key, old_status, status, state=JournalState.CREATED, task_id=task_id)

    def status(self, key: str, status: str) -> None:
        """Record a task's new status (buffered). Statuses of entries not ``created`` are ignored: a late or
        duplicate poll or webhook must not reopen a finished item.

        Raises:
            JournalError: the key is unknown.
        """
        with self._guard(f"cannot record status {status} of key {key!r}"):
            state, old_status, _ = self._current(key)
            if state == JournalState.CREATED and status != old_status:
                self._buffer(key, old_status, status)
            else:
                self._commit_if_due()

    def finished(self, key: str, status: str, urls: Sequence[str]) -> None:
        """Record a COMPLETED task and its result URLs (buffered).

        Raises:
            JournalError: the key is unknown or has no running task.
        """
        with self._guard(f"cannot record the result of key {key!r}"):
            # From DOWNLOADED too: a re-run whose saved file went missing fetches the video again.
            old_status = self._expect(
                key,
                JournalState.COMPLETED,
                JournalState.CREATED,
                JournalState.COMPLETED,
                JournalState.DOWNLOADED,
            )
            # Text, not bytes: a BLOB would defeat SQLite's json functions when the file is read by hand.
            encoded = msgspec.json.encode(tuple(urls)).decode()
            self._buffer(key, old_status, status, state=JournalState.COMPLETED, urls=encoded)

    def failed(self, key: str, status: str | None, error: str) -> None:
        """Record a task that ended FAILED or CANCELLED (buffered), or an item refused before a task existed
        (committed before it returns: a lost record would leave it ``submitting``, reported uncertain).

        Args:
            key: the item.
            status: the task's final status; None when no task was created (a 4xx answer).
            error: what went wrong, for the report.

        Raises:
            JournalError: the key is unknown or already finished.
        """
        with self._guard(f"cannot record the failure of key {key!r}"):
            state, old_status, _ = self._current(key)
            if state not in (JournalState.SUBMITTING, JournalState.CREATED, JournalState.FAILED):
                raise self._key_error(key, f"is {state} and cannot become {JournalState.FAILED}")
            if state == JournalState.SUBMITTING:
                with self._transaction():
                    self._set(key, old_status, status, state=JournalState.FAILED, error=error)
            else:
                self._buffer(key, old_status, status, state=JournalState.FAILED, error=error)

    def uncertain(self, key: str, error: str) -> None:
        """Record a POST whose outcome is unknown; committed before it returns.

        Raises:
            JournalError: the key is unknown or not submitting.
        """
        with self._guard(f"cannot record key {key!r} as uncertain"):
            old_status = self._expect(
                key, JournalState.UNCERTAIN, JournalState.SUBMITTING, JournalState.UNCERTAIN
            )
            with self._transaction():
                self._set(key, old_status, None, state=JournalState.UNCERTAIN, error=error)

    def unsent(self, key: str, error: str) -> None:
        """Record a POST that provably created nothing (answered 429 or 503, or its connection never opened);
        committed before it returns. A later run submits the item as if it had never been recorded.

        Raises:
            JournalError: the key is unknown or not submitting.
        """
        with self._guard(f"cannot record key {key!r} as unsent"):
            old_status = self._expect(key, JournalState.UNSENT, JournalState.SUBMITTING, JournalState.UNSENT)
            with self._transaction():
                self._set(key, old_status, None, state=JournalState.UNSENT, error=error)

    def downloaded(self, key: str, path: str) -> None:
        """Record where the item's video was saved (buffered).

        Raises:
            JournalError: the key is unknown or not completed.
        """
        with self._guard(f"cannot record the download of key {key!r}"):
            old_status = self._expect(
                key, JournalState.DOWNLOADED, JournalState.COMPLETED, JournalState.DOWNLOADED
            )
            self._buffer(key, old_status, None, state=JournalState.DOWNLOADED, path=path)

    def flush(self) -> None:
        """Commit the buffered writes."""
        with self._guard("cannot commit"):
            self._commit()

    # -- internals -------------------------------------------------------------------------------------------

    def _current(self, key: str) -> tuple[str, str | None, str | None]:
        row = self._db.execute("SELECT state, status, task_id FROM items WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise self._key_error(key, "is not in the journal")
        return row[0], row[1], row[2]

    def _expect(self, key: str, target: JournalState, *sources: JournalState) -> str | None:
        """The key's status, once its state is checked to be one that may become ``target``."""
        state, status, _ = self._current(key)
        if state not in sources:
            raise self._key_error(key, f"is {state} and cannot become {target}")
        return status

    def _set(self, key: str, old_status: str | None, status: str | None, **columns: str) -> None:
        """Update the key's columns and status; a status that changed goes to the history once."""
        now = self._clock.wall()
        names = [*columns, "updated_at"]
        values: list[str | float] = [*columns.values(), now]
        if status is not None and status != old_status:
            names.append("status")
            values.append(status)
            self._db.execute("INSERT INTO history (key, at, status) VALUES (?, ?, ?)", (key, now, status))
        assignments = ", ".join(f"{name} = ?" for name in names)
        self._db.execute(f"UPDATE items SET {assignments} WHERE key = ?", (*values, key))

    def _begin(self) -> None:
        if not self._db.in_transaction:
            # IMMEDIATE takes the write lock now (waiting up to the busy timeout), never half-way through.
            self._db.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._pending = 0
        self._committed_at = self._clock.now()

    def _rollback(self) -> None:
        """Drop the open transaction, if SQLite has not dropped it already (a full disk, an I/O error)."""
        with self._guard("cannot roll back"):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        self._pending = 0

    def _buffer(self, key: str, old_status: str | None, status: str | None, **columns: str) -> None:
        """``_set`` in the open transaction, committed when enough writes or time piled up."""
        self._begin()
        self._set(key, old_status, status, **columns)
        self._pending += 1
        self._commit_if_due()

    def _commit_if_due(self) -> None:
        if self._pending and (
            self._pending >= self._flush_every
            or self._clock.now() - self._committed_at >= self._flush_interval
        ):
            self._commit()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Commit at once, together with whatever was buffered; roll everything back on an error."""
        self._begin()
        try:
            yield
        except BaseException:
            # SQLite may already have rolled back (a full disk, an I/O error).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._pending = 0
            raise
        self._commit()

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn SQLite's errors (a locked, full, damaged or closed file) into JournalErrors naming it."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"{doing}: {exc}", path=self.path) from exc
        except msgspec.DecodeError as exc:
            raise JournalError(f"{doing}: damaged urls column: {exc}", path=self.path) from exc

    def _key_error(self, key: str, problem: str) -> JournalError:
        return JournalError(f"key {key!r} {problem}", path=self.path, key=key)


def _entry(row: Any) -> JournalEntry:
    key, model, request, state, task_id, status, urls, path, error = row[:9]
    return JournalEntry(
        key, model, request, JournalState(state), task_id, status, _urls_decoder.decode(urls), path, error
    )


# -- the async protocol and its SQLite implementation --------------------------------------------------------


class BatchJournal(Protocol):
    """What the batch engine records a batch through; SQLite (``SQLiteJournal``) or, later, PostgreSQL.

    Use it as ``async with journal:``; calls outside that block raise ``JournalError``. Durable calls are
    committed before they return; buffered ones within the journal's flush interval, and on exit. A durable
    call that was cancelled still runs to its end (committed or failed, never half done) before the
    cancellation reaches the caller. Every failure of the store (locked, full, closed) is a ``JournalError``
    raised by the call it hit, and later calls work again once the store does.
    """

    @property
    def path(self) -> str:
        """Where the journal is, for messages (never a secret)."""
        ...

    async def __aenter__(self) -> Self:
        """Open the store and start committing buffered writes on a timer."""
        ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Commit what is buffered and close the store."""
        ...

    async def lookup(self, key: str) -> JournalEntry | None:
        """The key's entry, buffered writes included; None when it was never submitted or is ``unsent``."""
        ...

    async def submitting(self, key: str, model: str, request: bytes) -> None:
        """The item's POST is about to leave (durable): only then may it go."""
        ...

    async def created(self, key: str, task_id: str, status: str) -> None:
        """The POST created ``task_id`` (durable)."""
        ...

    async def uncertain(self, key: str, error: str) -> None:
        """The POST left and its answer was lost (durable)."""
        ...

    async def unsent(self, key: str, error: str) -> None:
        """The POST provably created nothing (durable); a later run submits the key as never submitted."""
        ...

    async def failed(self, key: str, status: str | None, error: str) -> None:
        """The task ended FAILED or CANCELLED (buffered), or, status None, the POST was refused (durable)."""
        ...

    async def status(self, key: str, status: str) -> None:
        """The task's status changed (buffered; ignored unless the entry is ``created``)."""
        ...

    async def finished(self, key: str, status: str, urls: Sequence[str]) -> None:
        """The task COMPLETED with these result URLs (buffered)."""
        ...

    async def downloaded(self, key: str, path: str) -> None:
        """The item's video was saved at ``path`` (buffered)."""
        ...


class Lifecycle:
    """The ``async with`` life of a batch journal: not open yet, open (blocks counted), closed for good.

    A journal derives from it and provides ``_start`` (open the store, start its tasks) and ``_shut`` (stop
    them, close the store, set ``_closed``; also run when ``_start`` failed half way). Only the outermost
    block starts and shuts; every call checks ``_check_open`` first.

    Args:
        path: the journal, for messages.
    """

    _STORE = "store"  # what reopening means to the user, in the message of a closed journal

    def __init__(self, path: str) -> None:
        self._path = path
        self._depth = 0
        self._closed = False

    def _life(self) -> str:
        return "closed" if self._closed else "open" if self._depth else "not open"

    async def __aenter__(self) -> Self:
        if self._depth:
            self._depth += 1
            return self
        if self._closed:
            raise JournalError(f"closed; open the {self._STORE} again", path=self._path)
        try:
            await self._start()
        except BaseException:
            await self._shut()
            raise
        self._depth = 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._depth > 1:
            self._depth -= 1
            return
        self._depth = 0
        await self._shut()

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError("closed", path=self._path)
        if not self._depth:
            raise JournalError("not open: use it in `async with journal:`", path=self._path)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _shut(self) -> None:
        raise NotImplementedError


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


_W = TypeVar("_W", bound=_Keyed)


class WriteBuffer(Generic[_W]):
    """A journal's buffered writes, waiting in memory for their commit, and the timer that commits them.

    Each journal keeps its own kind of write (anything with a ``key``) and says how to commit a list of them;
    this keeps their order, which keys have writes waiting, and the bound: at most ``50 * flush_every``
    wait, beyond that the oldest are dropped and logged (a lost buffered write costs a re-run one status
    request or download, never a task).

    Args:
        path: the journal, for log lines.
        flush_every: commit as soon as this many writes wait.
        flush_interval: seconds a buffered write may wait for its commit.
        clock: the timer's clock.

    Raises:
        ValueError: ``flush_every`` is below 1, or ``flush_interval`` is not a positive number of seconds.
    """

    def __init__(self, path: str, *, flush_every: int, flush_interval: float, clock: Clock) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every: at least 1, got {flush_every!r}")
        if not 0 < flush_interval < math.inf:
            raise ValueError(f"flush_interval: a positive number of seconds, got {flush_interval!r}")
        self._path = path
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._clock = clock
        self._max = 50 * flush_every
        self._writes: collections.deque[_W] = collections.deque()
        self._waiting: collections.Counter[str] = collections.Counter()  # key -> its writes not committed
        self._due: anyio.Event | None = None  # set when a write is added: wakes the timer
        self._nap: anyio.CancelScope | None = None  # the timer's wait; cancelled when flush_every writes wait
        self._failing = False  # the last timed commit failed (logged once until one succeeds)
        self._dropping = False  # writes are being dropped (logged once until a commit succeeds)

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, write: _W) -> None:
        """Keep a write for the next commit; wake the timer, at once when ``flush_every`` writes wait."""
        self._writes.append(write)
        self._waiting[write.key] += 1
        self._trim()
        if self._due is not None:
            self._due.set()
        if len(self._writes) >= self._flush_every and self._nap is not None:
            self._nap.cancel()

    def take(self, key: str | None) -> list[_W]:
        """Every buffered write, for the next commit: all of them when ``key`` is None or has writes waiting
        (a key's writes are committed before its next read or durable write, in the order they were made).
        Hand them back to ``settle`` once the commit is over."""
        if key is not None and key not in self._waiting:
            return []
        writes = list(self._writes)
        self._writes.clear()
        return writes

    def settle(self, writes: list[_W], committed: bool) -> None:
        """The commit of ``writes`` (from ``take``) is over: forget them, or put them back for the next."""
        if committed:
            for write in writes:
                self._forget(write)
            self._dropping = False
        else:  # back to the front, in order, for the next commit
            self._writes.extendleft(reversed(writes))
            self._trim()

    def _forget(self, write: _W) -> None:
        self._waiting[write.key] -= 1
        if not self._waiting[write.key]:
            del self._waiting[write.key]

    def _trim(self) -> None:
        excess = len(self._writes) - self._max
        if excess <= 0:
            return
        for _ in range(excess):
            self._forget(self._writes.popleft())
        if not self._dropping:
            self._dropping = True
            log.warning(
                "journal %s: more than %d buffered writes wait for a commit; dropping the oldest (a re-run"
                " asks the API again for what they said)",
                self._path,
                self._max,
            )

    async def commit_on_time(self, commit: Callable[[list[_W]], Awaitable[None]]) -> None:
        """Run the timer (until cancelled): ``commit`` the writes ``flush_interval`` after the first of them,
        even if no call follows. ``commit`` settles them; a JournalError from it leaves them in the buffer,
        and the next round tries again."""
        while True:
            self._due = anyio.Event()
            if not self._writes:
                await self._due.wait()
            if len(self._writes) < self._flush_every:
                with anyio.CancelScope() as self._nap:
                    await self._clock.sleep(self._flush_interval)
                self._nap = None
            try:
                await commit(self.take(None))
            except JournalError as exc:
                if not self._failing:
                    log.warning("%s; buffered writes are kept and retried", exc)
                self._failing = True
            else:
                self._failing = False


class _Write(NamedTuple):
    """A buffered write, waiting in memory for its commit: ``method(journal, key, *args)``."""

    key: str
    method: Callable[..., None]
    args: tuple[Any, ...]


@dataclass(eq=False, slots=True)
class _Job:
    """One call for the worker thread: commit ``writes`` first (if any), then ``run`` (if any)."""

    run: Callable[[], Any] | None
    writes: list[_Write]
    done: anyio.Event = field(default_factory=anyio.Event)
    committed: bool = False  # set in the worker thread: the writes are committed
    result: Any = None
    error: Exception | None = None


class _RunLock:
    """One batch at a time on a journal file: an exclusive lock on ``FILE-lock`` beside it (the file a
    symbolic link leads to, as SQLite resolves it too), held while the batch has the journal open, and let
    go by the system if the process dies. Two batches at once on one file would each find an item unsent
    and both POST it. (The lock is not on the database file itself: closing another descriptor of it
    would drop SQLite's own locks. Hard links to a journal are not supported, as by SQLite.)"""

    __slots__ = ("__weakref__", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        _HELD_LOCKS.add(self)

    @classmethod
    def take(cls, path: str) -> _RunLock | None:
        """The lock, or None where the system has no ``flock`` (Windows: not guarded).

        Raises:
            JournalError: another batch holds it, or the lock file cannot be made.
        """
        if fcntl is None:
            return None
        try:
            fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot make its lock file: {exc.strerror or exc}", path=path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(
                "in use by another batch; two at once on one journal could both pay for the same item"
                " (many workers share a PostgreSQL journal instead)",
                path=path,
            ) from None
        return cls(fd)

    def release(self) -> None:
        _HELD_LOCKS.discard(self)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # closing the last descriptor of the open file lets the lock go


_HELD_LOCKS: weakref.WeakSet[_RunLock] = weakref.WeakSet()


def _drop_locks_in_child() -> None:
    # A forked child (a multiprocessing worker) shares the lock's open file, so the lock would outlive the
    # batch while the child lives: the child lets go of its copy, and the parent keeps the lock.
    for lock in list(_HELD_LOCKS):
        lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


class SQLiteJournal(Lifecycle):
    """``BatchJournal`` on an SQLite file, without ever blocking the event loop.

    Every SQLite call (opening, lookups, commits, and the waits for a lock another process holds, up to 5 s)
    runs in a worker thread, one at a time and in the order they were made. Buffered writes (statuses,
    results, task failures, downloads) wait in memory, cost the caller no thread hop, and are committed
    together by a timer ``flush_interval`` seconds after the first of them, sooner when ``flush_every`` wait;
    a commit that fails keeps them for the next attempt (at most ``50 * flush_every``; beyond that the oldest
    are dropped and logged: a lost buffered write costs a re-run one status request or download, never a
    task).

    Args:
        spec: the journal file (created when missing), or an open ``Journal`` to write through: it is flushed
            on exit but not closed.
        flush_every: commit the buffered writes as soon as this many wait.
        flush_interval: seconds a buffered write may wait for its commit.
        clock: the timer's clock, and the timestamps' when this opens the file.

    Raises:
        ValueError: ``flush_every`` is below 1, or ``flush_interval`` is not a positive number of seconds.
    """

    def __init__(
        self,
        spec: str | os.PathLike[str] | Journal,
        *,
        flush_every: int = 200,
        flush_interval: float = 0.2,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SYSTEM_CLOCK
        if isinstance(spec, Journal):
            self._journal: Journal | None = spec
            self._owned = False
            super().__init__(spec.path)
        else:
            self._journal = None
            self._owned = True
            super().__init__(os.fspath(spec))
        self._writes = WriteBuffer[_Write](
            self._path, flush_every=flush_every, flush_interval=flush_interval, clock=self._clock
        )
        self._jobs: MemoryObjectSendStream[_Job] | None = None
        self._queue: MemoryObjectReceiveStream[_Job] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._run_lock: _RunLock | None = None

    @property
    def path(self) -> str:
        """The journal file."""
        return self._path

    def __repr__(self) -> str:
        return f"<SQLiteJournal {self._path!r} {self._life()} buffered={len(self._writes)}>"

    # -- lifecycle -------------------------------------------------------------------------------------------

    _STORE = "file"

    async def _start(self) -> None:
        self._run_lock = _RunLock.take(os.path.realpath(self._path))
        self._limiter = anyio.CapacityLimiter(1)
        send, receive = anyio.create_memory_object_stream[_Job](math.inf)
        self._jobs, self._queue = send, receive
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._work, receive)
        if self._journal is None:
            await self._call(self._open)
        self._tg.start_soon(self._writes.commit_on_time, self._commit_buffered)

    async def _shut(self) -> None:
        """Commit what is buffered, close the file (if this opened it), stop the worker and the timer, then
        let another run have the file."""
        try:
            await self._stop()
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None

    async def _stop(self) -> None:
        if self._jobs is None:  # the file is another run's: nothing was started
            self._closed = True
            return
        assert self._tg is not None
        self._closed = True  # from here on, calls are refused
        self._tg.cancel_scope.cancel()  # stops the timer; the worker is shielded and drains the queue
        with anyio.CancelScope(shield=True):  # bounded: a commit waits for a lock at most the busy timeout
            if self._journal is not None:
                await self._call(None)  # the calls queued before (a timed commit among them) settle first
                writes = self._writes.take(None)
                try:
                    await self._call(None, writes)
                except JournalError as exc:
                    log.warning("%s; %d buffered writes are lost", exc, len(writes))
                try:
                    await self._call(self._close)
                except JournalError as exc:
                    log.warning("%s", exc)
        self._jobs.close()  # the worker ends once the queue is empty
        await self._tg.__aexit__(None, None, None)
        # The worker closes it when it ran; a worker cancelled before its first step never did.
        assert self._queue is not None
        self._queue.close()

    def _open(self) -> None:
        self._journal = Journal(
            self._path, flush_every=sys.maxsize, flush_interval=math.inf, clock=self._clock
        )

    def _close(self) -> None:
        journal = self._live()
        if self._owned:
            journal.close()
        else:
            journal.flush()

    # -- the protocol ----------------------------------------------------------------------------------------

    async def lookup(self, key: str) -> JournalEntry | None:
        """The key's entry, its buffered writes included; None when it was never submitted or is ``unsent``
        (a later run treats both alike: it submits the key).

        Raises:
            JournalError: the file cannot be read (or, when the key has buffered writes, committed).
        """
        entry: JournalEntry | None = await self._durable(key, Journal.lookup, key)
        return None if entry is None or entry.state == JournalState.UNSENT else entry

    async def submitting(self, key: str, model: str, request: bytes) -> None:
        """Record that the item's POST is about to leave; committed before it returns (see ``Journal``)."""
        await self._durable(key, Journal.submitting, key, model, request)

    async def created(self, key: str, task_id: str, status: str) -> None:
        """Record the task id the POST returned; committed before it returns."""
        await self._durable(key, Journal.created, key, task_id, status)

    async def uncertain(self, key: str, error: str) -> None:
        """Record a POST whose outcome is unknown; committed before it returns."""
        await self._durable(key, Journal.uncertain, key, error)

    async def unsent(self, key: str, error: str) -> None:
        """Record a POST that provably created nothing; committed before it returns. ``lookup`` then answers
        None for the key, and ``submitting`` accepts it with any request, as if it had never been recorded."""
        await self._durable(key, Journal.unsent, key, error)

    async def failed(self, key: str, status: str | None, error: str) -> None:
        """Record a task that ended FAILED or CANCELLED (buffered), or, status None, a POST refused before any
        task existed (committed before it returns: lost, it would leave the item ``submitting``)."""
        if status is None:
            await self._durable(key, Journal.failed, key, None, error)
        else:
            self._buffer(key, Journal.failed, status, error)

    async def status(self, key: str, status: str) -> None:
        """Record a task's new status (buffered)."""
        self._buffer(key, Journal.status, status)

    async def finished(self, key: str, status: str, urls: Sequence[str]) -> None:
        """Record a COMPLETED task and its result URLs (buffered)."""
        self._buffer(key, Journal.finished, status, tuple(urls))

    async def downloaded(self, key: str, path: str) -> None:
        """Record where the item's video was saved (buffered)."""
        self._buffer(key, Journal.downloaded, path)

    # -- buffering -------------------------------------------------------------------------------------------

    def _buffer(self, key: str, method: Callable[..., None], *args: Any) -> None:
        """Keep a write for the next commit. A write that no longer fits its entry when committed (a late
        status of a finished task) is dropped then, and logged: it was already harmless."""
        self._check_open()
        self._writes.add(_Write(key, method, args))

    async def _commit_buffered(self, writes: list[_Write]) -> None:
        await self._call(None, writes)

    # -- the worker thread -----------------------------------------------------------------------------------

    async def _durable(self, key: str, method: Callable[..., Any], *args: Any) -> Any:
        self._check_open()
        # Through the instance, so a Journal subclass given to open_journal keeps its overrides.
        return await self._call(lambda: getattr(self._live(), method.__name__)(*args), self._writes.take(key))

    async def _call(self, run: Callable[[], Any] | None, writes: list[_Write] | None = None) -> Any:
        """Run ``run`` (after committing ``writes``) in the worker thread and return its result.

        Cancelled, it still waits for the call to end before the cancellation goes on: a commit is never left
        half done, and the connection is free for the next call.
        """
        assert self._jobs is not None
        job = _Job(run, writes or [])
        self._jobs.send_nowait(job)
        try:
            await job.done.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await job.done.wait()
            raise
        if job.error is not None:
            raise job.error
        return job.result

    async def _work(self, receive: MemoryObjectReceiveStream[_Job]) -> None:
        """Run the jobs in order, those that queued up meanwhile in one thread hop."""
        # Shielded: a job runs to its end whatever cancels the journal's owner; the loop ends when the queue
        # is closed (on exit) and empty.
        with anyio.CancelScope(shield=True):
            async with receive:
                async for first in receive:
                    jobs = [first]
                    with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                        while len(jobs) < _JOBS_PER_HOP:
                            jobs.append(receive.receive_nowait())
                    await anyio.to_thread.run_sync(self._run, jobs, limiter=self._limiter)
                    for job in jobs:
                        if job.writes:
                            self._writes.settle(job.writes, job.committed)
                        job.done.set()

    def _run(self, jobs: list[_Job]) -> None:
        """In the worker thread: each job's outcome is its own."""
        for job in jobs:
            try:
                if job.writes:
                    self._commit(job.writes)
                    job.committed = True
                if job.run is not None:
                    job.result = job.run()
            except Exception as exc:
                job.error = exc

    def _commit(self, writes: list[_Write]) -> None:
        """Apply the buffered writes and commit them, or roll all of them back and raise."""
        journal = self._live()
        try:
            for write in writes:
                try:
                    getattr(journal, write.method.__name__)(write.key, *write.args)
                except JournalError as exc:
                    if isinstance(exc.__cause__, sqlite3.Error):
                        raise  # the file failed, not the write
                    log.warning("%s; the buffered write is dropped", exc)
            journal.flush()
        except BaseException:
            with contextlib.suppress(JournalError):
                journal._rollback()
            raise

    def _live(self) -> Journal:
        assert self._journal is not None
        return self._journal
