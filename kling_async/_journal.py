"""The batch journal: one SQLite file that lets a re-run resume a batch without paying twice.

Each batch item is recorded *before* its POST (``submitting``), its task id right after (``created``), then
every status change, its result URLs and its downloaded file. What the server cannot tell us again is
committed before the call returns: ``submitting``, ``created``, ``uncertain`` and a failure before any task
existed. The rest (statuses, results, task failures, downloads) is buffered and committed by ``flush()``,
every ``flush_every`` writes, or by the first write once ``flush_interval`` seconds passed since the last
commit: losing it to a crash costs the re-run a status request (or a download) per item, never a task.

States (``docs/journal.md`` has the schema and what each crash window leaves behind)::

    submitting ─┬─> created ─┬─> completed ──> downloaded
                ├─> failed   └─> failed
                └─> uncertain

``submitting`` again on an ``uncertain`` or ``failed`` entry is the deliberate resubmit; on an entry that has
a live or finished task it is refused.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol

import msgspec

from ._errors import JournalError

__all__ = [
    "SCHEMA_VERSION",
    "BatchJournal",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalState",
    "open_journal",
]

APPLICATION = "kling-async"
SCHEMA_VERSION = 1

# _MIGRATIONS[v] upgrades a version-v journal to version v + 1; they run in one transaction on open.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE items (
    key        TEXT PRIMARY KEY,
    position   INTEGER NOT NULL UNIQUE,
    model      TEXT NOT NULL,
    request    BLOB NOT NULL,
    state      TEXT NOT NULL CHECK (state IN
                   ('submitting', 'created', 'completed', 'downloaded', 'failed', 'uncertain')),
    task_id    TEXT,
    status     TEXT,
    urls       TEXT NOT NULL DEFAULT '[]',
    path       TEXT,
    error      TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
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


class JournalState(StrEnum):
    """Where a journal entry stands."""

    SUBMITTING = "submitting"  # recorded before the POST; on resume the POST may or may not have landed
    CREATED = "created"  # has a task id; the task runs (or ran) server-side
    COMPLETED = "completed"  # COMPLETED, with its result URLs
    DOWNLOADED = "downloaded"  # its video is saved at ``path``
    FAILED = "failed"  # FAILED / CANCELLED, or refused before a task was created
    UNCERTAIN = "uncertain"  # the POST's outcome is unknown; never resubmitted by default


# States from which a POST may (deliberately) go out again: none of them holds a task worth keeping.
_RESUBMITTABLE = frozenset({JournalState.SUBMITTING, JournalState.UNCERTAIN, JournalState.FAILED})


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

    Args:
        path: the journal file; created when missing or empty.
        flush_every: buffered writes are committed once this many are pending.
        flush_interval: a write commits the buffer when this many seconds passed since the last commit.

    Raises:
        JournalError: the file cannot be opened, is not SQLite, is another application's database, or was
            written by a newer kling-async.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, flush_every: int = 200, flush_interval: float = 0.2
    ) -> None:
        self.path = os.fspath(path)
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._pending = 0
        self._committed_at = time.monotonic()
        self._closed = False
        with self._guard("cannot open"):
            # Autocommit mode: transactions are begun and committed here, explicitly.
            self._db = sqlite3.connect(self.path, isolation_level=None)
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
        (a re-run, or the deliberate resubmit of an uncertain or failed item).

        Raises:
            JournalError: the key was recorded with another model or request, or already has a task.
        """
        with self._guard(f"cannot record key {key!r}"):
            now = time.time()
            row = self._db.execute(
                "SELECT model, request, state, task_id FROM items WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                old_model, old_request, state, task_id = row
                if old_model != model or old_request != request:
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
                        "UPDATE items SET state = ?, task_id = NULL, status = NULL, urls = '[]', path = NULL,"
                        " error = NULL, updated_at = ? WHERE key = ?",
                        (JournalState.SUBMITTING.value, now, key),
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
        now = time.time()
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
        self._committed_at = time.monotonic()

    def _buffer(self, key: str, old_status: str | None, status: str | None, **columns: str) -> None:
        """``_set`` in the open transaction, committed when enough writes or time piled up."""
        self._begin()
        self._set(key, old_status, status, **columns)
        self._pending += 1
        self._commit_if_due()

    def _commit_if_due(self) -> None:
        if self._pending and (
            self._pending >= self._flush_every
            or time.monotonic() - self._committed_at >= self._flush_interval
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


class BatchJournal(Protocol):
    """What the batch engine needs from a journal (placeholder until the async journal lands)."""

    path: str

    async def lookup(self, key: str) -> JournalEntry | None: ...
    async def submitting(self, key: str, model: str, request: bytes) -> None: ...
    async def created(self, key: str, task_id: str, status: str) -> None: ...
    async def uncertain(self, key: str, error: str) -> None: ...
    async def unsent(self, key: str, error: str) -> None: ...
    async def failed(self, key: str, status: str | None, error: str) -> None: ...
    async def status(self, key: str, status: str) -> None: ...
    async def finished(self, key: str, status: str, urls: Sequence[str]) -> None: ...
    async def downloaded(self, key: str, path: str) -> None: ...


class _SyncBacked:
    def __init__(self, journal: Journal, *, owned: bool) -> None:
        self._journal = journal
        self._owned = owned
        self.path = journal.path

    async def __aenter__(self) -> _SyncBacked:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owned:
            self._journal.close()
        else:
            self._journal.flush()

    async def lookup(self, key: str) -> JournalEntry | None:
        return self._journal.lookup(key)

    async def submitting(self, key: str, model: str, request: bytes) -> None:
        self._journal.submitting(key, model, request)

    async def created(self, key: str, task_id: str, status: str) -> None:
        self._journal.created(key, task_id, status)

    async def uncertain(self, key: str, error: str) -> None:
        self._journal.uncertain(key, error)

    async def unsent(self, key: str, error: str) -> None:
        self._journal.failed(key, None, error)

    async def failed(self, key: str, status: str | None, error: str) -> None:
        self._journal.failed(key, status, error)

    async def status(self, key: str, status: str) -> None:
        self._journal.status(key, status)

    async def finished(self, key: str, status: str, urls: Sequence[str]) -> None:
        self._journal.finished(key, status, urls)

    async def downloaded(self, key: str, path: str) -> None:
        self._journal.downloaded(key, path)


def open_journal(spec: str | os.PathLike[str] | Journal) -> _SyncBacked:
    """The batch engine's view of a journal file or ``Journal``."""
    if isinstance(spec, Journal):
        return _SyncBacked(spec, owned=False)
    return _SyncBacked(Journal(spec), owned=True)
