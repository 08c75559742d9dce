"""The journal records each batch item durably, resumes from its file, and refuses files it cannot trust;
its async face never blocks the event loop, never hangs, and commits buffered writes on a timer."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from kling_async import JournalError, KlingError
from kling_async._journal import (
    SCHEMA_VERSION,
    BatchJournal,
    Journal,
    JournalEntry,
    JournalState,
    SQLiteJournal,
)
from kling_async._journals import open_journal
from tests.fakes import FakeClock

MODEL = "kling-v3-omni-std"
REQUEST = b'{"prompt":"a fox in snow","duration":"5"}'
OTHER_REQUEST = b'{"prompt":"a fox in rain","duration":"5"}'


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run.db"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal(path) as opened:
        yield opened


def peek(path: Path, sql: str, *params: object) -> list[Any]:
    """Read the file through a second connection: it sees committed data only."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, params).fetchall()


def state_on_disk(path: Path, key: str) -> str | None:
    rows = peek(path, "SELECT state FROM items WHERE key = ?", key)
    return rows[0][0] if rows else None


def entry_of(journal: Journal, key: str = "a") -> JournalEntry:
    found = journal.lookup(key)
    assert found is not None
    return found


def running(journal: Journal, key: str = "a", task_id: str = "t-a") -> None:
    journal.submitting(key, MODEL, REQUEST)
    journal.created(key, task_id, "CREATED")


# -- opening -------------------------------------------------------------------------------------------------


def test_new_path_becomes_an_empty_journal_with_its_meta(journal: Journal, path: Path) -> None:
    assert list(journal.entries()) == []
    assert dict(peek(path, "SELECT key, value FROM meta")) == {
        "application": "kling-async",
        "schema_version": str(SCHEMA_VERSION),
    }


def test_an_empty_file_becomes_a_journal(path: Path) -> None:
    path.touch()
    with Journal(path) as journal:
        journal.submitting("a", MODEL, REQUEST)
    assert state_on_disk(path, "a") == "submitting"


def test_wal_mode_is_on(journal: Journal, path: Path) -> None:
    assert peek(path, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_keeps_every_field(path: Path) -> None:
    with Journal(path) as journal:
        running(journal)
        journal.finished("a", "COMPLETED", ["https://cdn.example/a.mp4", "https://cdn.example/a2.mp4"])
        journal.downloaded("a", "videos/a.mp4")
        journal.submitting("b", "kling-v3-omni-pro", OTHER_REQUEST)
        journal.failed("b", None, "BadRequestError: HTTP 400: prompt: too long")
    with Journal(path) as journal:
        assert list(journal.entries()) == [
            JournalEntry(
                key="a",
                model=MODEL,
                request=REQUEST,
                state=JournalState.DOWNLOADED,
                task_id="t-a",
                status="COMPLETED",
                urls=("https://cdn.example/a.mp4", "https://cdn.example/a2.mp4"),
                path="videos/a.mp4",
                error=None,
            ),
            JournalEntry(
                key="b",
                model="kling-v3-omni-pro",
                request=OTHER_REQUEST,
                state=JournalState.FAILED,
                task_id=None,
                status=None,
                urls=(),
                path=None,
                error="BadRequestError: HTTP 400: prompt: too long",
            ),
        ]


def test_urls_and_request_read_by_hand_as_json(journal: Journal, path: Path) -> None:
    running(journal)
    journal.finished("a", "COMPLETED", ["https://cdn.example/a.mp4"])
    journal.flush()
    assert peek(
        path, "SELECT json_extract(urls, '$[0]'), json_extract(CAST(request AS TEXT), '$.prompt') FROM items"
    ) == [("https://cdn.example/a.mp4", "a fox in snow")]


def test_a_garbage_file_is_refused_naming_the_path(path: Path) -> None:
    path.write_bytes(b"these are not the bytes of a database\n" * 100)
    with pytest.raises(JournalError, match="not an SQLite database") as caught:
        Journal(path)
    assert str(path) in str(caught.value)
    assert caught.value.path == str(path)
    assert isinstance(caught.value, KlingError)


def test_another_applications_sqlite_file_is_refused_and_left_untouched(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
        db.commit()
    with pytest.raises(JournalError, match="not a kling-async journal") as caught:
        Journal(path)
    assert str(path) in str(caught.value)
    # Never switched to WAL: that would rewrite the other application's file header.
    assert peek(path, "PRAGMA journal_mode") == [("delete",)]


def test_a_meta_table_of_another_application_is_refused(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('application', 'photo-album')")
        db.commit()
    with pytest.raises(JournalError, match=r"not a kling-async journal \(application 'photo-album'\)"):
        Journal(path)


def test_a_newer_schema_is_refused_naming_the_path(path: Path) -> None:
    Journal(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        db.commit()
    with pytest.raises(JournalError, match="written by a newer kling-async") as caught:
        Journal(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("version", ["0", "one"])
def test_a_nonsense_schema_version_is_refused(path: Path, version: str) -> None:
    Journal(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        db.commit()
    with pytest.raises(JournalError, match="bad schema_version"):
        Journal(path)


def test_an_older_schema_is_migrated_on_open(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal(path) as journal:
        journal.submitting("a", MODEL, REQUEST)

    def add_note(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE items ADD COLUMN note TEXT")

    monkeypatch.setattr("kling_async._journal.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr("kling_async._journal._MIGRATIONS", {SCHEMA_VERSION: add_note})
    with Journal(path) as journal:
        assert journal.lookup("a") is not None
    assert peek(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION + 1),)]
    assert peek(path, "SELECT key, note FROM items") == [("a", None)]


def test_an_unopenable_path_raises_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open"):
        Journal(tmp_path / "missing-folder" / "run.db")


def test_sqlite_errors_become_journal_errors(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kling_async._journal._BUSY_TIMEOUT_MS", 20)
    with Journal(path) as journal, closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(JournalError, match="cannot record key 'a': database is locked") as caught:
            journal.submitting("a", MODEL, REQUEST)
        other.execute("ROLLBACK")
        assert str(path) in str(caught.value)
        journal.submitting("a", MODEL, REQUEST)
        assert state_on_disk(path, "a") == "submitting"


def test_a_closed_journal_raises_a_journal_error(journal: Journal) -> None:
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.lookup("a")


# -- durability ----------------------------------------------------------------------------------------------


def test_submitting_is_committed_before_it_returns(journal: Journal, path: Path) -> None:
    journal.submitting("a", MODEL, REQUEST)
    assert peek(path, "SELECT state, model, request FROM items") == [("submitting", MODEL, REQUEST)]


def test_created_is_committed_before_it_returns(journal: Journal, path: Path) -> None:
    running(journal)
    assert peek(path, "SELECT state, task_id, status FROM items") == [("created", "t-a", "CREATED")]


def test_uncertain_is_committed_before_it_returns(journal: Journal, path: Path) -> None:
    journal.submitting("a", MODEL, REQUEST)
    journal.uncertain("a", "SubmitUncertainError: HTTP 502 after the POST left")
    assert state_on_disk(path, "a") == "uncertain"


def test_a_failure_before_any_task_is_committed_before_it_returns(path: Path) -> None:
    with Journal(path, flush_interval=60) as journal:
        journal.submitting("a", MODEL, REQUEST)
        journal.failed("a", None, "BadRequestError: HTTP 400")
        assert state_on_disk(path, "a") == "failed"


def test_buffered_writes_become_visible_on_flush(path: Path) -> None:
    with Journal(path, flush_interval=60) as journal:
        running(journal)
        journal.finished("a", "COMPLETED", ["https://cdn.example/a.mp4"])
        assert state_on_disk(path, "a") == "created"
        assert entry_of(journal).state == JournalState.COMPLETED
        journal.flush()
        assert state_on_disk(path, "a") == "completed"


def test_buffered_writes_become_visible_on_close(path: Path) -> None:
    journal = Journal(path, flush_interval=60)
    running(journal)
    journal.status("a", "IN_PROGRESS")
    assert peek(path, "SELECT status FROM items") == [("CREATED",)]
    journal.close()
    assert peek(path, "SELECT status FROM items") == [("IN_PROGRESS",)]


def test_buffered_writes_are_committed_every_flush_every_writes(path: Path) -> None:
    with Journal(path, flush_every=3, flush_interval=60) as journal:
        for key in "abc":
            running(journal, key, f"t-{key}")
        journal.status("a", "IN_PROGRESS")
        journal.status("b", "IN_PROGRESS")
        assert peek(path, "SELECT count(*) FROM items WHERE status = 'IN_PROGRESS'") == [(0,)]
        journal.status("c", "IN_PROGRESS")
        assert peek(path, "SELECT count(*) FROM items WHERE status = 'IN_PROGRESS'") == [(3,)]


def test_a_write_commits_the_buffer_once_the_interval_passed(path: Path) -> None:
    with Journal(path) as journal:  # the default interval, 0.2 s
        running(journal, "a", "t-a")
        running(journal, "b", "t-b")
        journal.status("a", "IN_PROGRESS")
        assert state_on_disk(path, "a") == "created"
        assert peek(path, "SELECT status FROM items WHERE key = 'a'") == [("CREATED",)]
        time.sleep(0.25)
        # A repeated status writes nothing, yet still commits what waited too long.
        journal.status("b", "CREATED")
        assert peek(path, "SELECT status FROM items WHERE key = 'a'") == [("IN_PROGRESS",)]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_journal_survives_a_sigkill_of_its_writer(path: Path) -> None:
    writer = (
        "import os, signal, sys\n"
        "from kling_async._journal import Journal\n"
        "journal = Journal(sys.argv[1])\n"
        "for i in range(50):\n"
        "    journal.submitting(f'k{i}', 'kling-v3-omni-std', b'{}')\n"
        "    journal.created(f'k{i}', f'task-{i}', 'CREATED')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", writer, str(path)], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    # The killed process never checkpointed: what it committed lives in the write-ahead log.
    assert path.with_name(path.name + "-wal").stat().st_size > 0
    with Journal(path) as journal:
        entries = list(journal.entries())
    assert [(e.key, e.state, e.task_id) for e in entries] == [
        (f"k{i}", JournalState.CREATED, f"task-{i}") for i in range(50)
    ]


# -- keys and states -----------------------------------------------------------------------------------------


def test_an_unknown_key_looks_up_as_none(journal: Journal) -> None:
    assert journal.lookup("nope") is None


def test_the_same_key_and_request_is_accepted_on_a_rerun(path: Path) -> None:
    with Journal(path) as journal:
        journal.submitting("a", MODEL, REQUEST)
    with Journal(path) as journal:
        journal.submitting("a", MODEL, REQUEST)
        assert [e.key for e in journal.entries()] == ["a"]


@pytest.mark.parametrize(("model", "request_"), [(MODEL, OTHER_REQUEST), ("kling-v3-omni-pro", REQUEST)])
def test_another_request_or_model_under_a_recorded_key_is_refused(
    journal: Journal, model: str, request_: bytes
) -> None:
    journal.submitting("a", MODEL, REQUEST)
    with pytest.raises(JournalError, match="key 'a' was recorded with another request") as caught:
        journal.submitting("a", model, request_)
    assert caught.value.key == "a"
    assert entry_of(journal).request == REQUEST


@pytest.mark.parametrize("finish", ["created", "completed", "downloaded"])
def test_submitting_again_is_refused_once_a_task_exists(journal: Journal, finish: str) -> None:
    running(journal)
    if finish != "created":
        journal.finished("a", "COMPLETED", ["u"])
    if finish == "downloaded":
        journal.downloaded("a", "a.mp4")
    with pytest.raises(JournalError, match="with task t-a; re-attach"):
        journal.submitting("a", MODEL, REQUEST)


@pytest.mark.parametrize("end", ["uncertain", "failed"])
def test_an_uncertain_or_failed_item_may_be_resubmitted_deliberately(journal: Journal, end: str) -> None:
    journal.submitting("a", MODEL, REQUEST)
    if end == "uncertain":
        journal.uncertain("a", "no answer")
    else:
        journal.created("a", "t-old", "CREATED")
        journal.failed("a", "FAILED", "TaskFailedError")
    journal.submitting("a", MODEL, REQUEST)
    journal.created("a", "t-new", "CREATED")
    entry = entry_of(journal)
    assert (entry.state, entry.task_id, entry.status, entry.error) == (
        JournalState.CREATED,
        "t-new",
        "CREATED",
        None,
    )


def test_an_item_goes_submitting_created_completed_downloaded(journal: Journal) -> None:
    def seen() -> tuple[object, ...]:
        entry = entry_of(journal)
        return entry.state, entry.task_id, entry.status, entry.urls, entry.path

    journal.submitting("a", MODEL, REQUEST)
    assert seen() == (JournalState.SUBMITTING, None, None, (), None)
    journal.created("a", "t-a", "CREATED")
    assert seen() == (JournalState.CREATED, "t-a", "CREATED", (), None)
    journal.status("a", "IN_PROGRESS")
    assert seen() == (JournalState.CREATED, "t-a", "IN_PROGRESS", (), None)
    journal.finished("a", "COMPLETED", ["https://cdn.example/a.mp4"])
    assert seen() == (JournalState.COMPLETED, "t-a", "COMPLETED", ("https://cdn.example/a.mp4",), None)
    journal.downloaded("a", "videos/a.mp4")
    assert seen() == (
        JournalState.DOWNLOADED,
        "t-a",
        "COMPLETED",
        ("https://cdn.example/a.mp4",),
        "videos/a.mp4",
    )


def test_a_failed_task_keeps_its_id_status_and_error(journal: Journal) -> None:
    running(journal)
    journal.failed("a", "CANCELLED", "TaskFailedError: task t-a ended CANCELLED")
    entry = entry_of(journal)
    assert (entry.state, entry.task_id, entry.status, entry.error) == (
        JournalState.FAILED,
        "t-a",
        "CANCELLED",
        "TaskFailedError: task t-a ended CANCELLED",
    )


def test_an_uncertain_post_keeps_its_error_and_no_task(journal: Journal) -> None:
    journal.submitting("a", MODEL, REQUEST)
    journal.uncertain("a", "SubmitUncertainError: timeout")
    entry = entry_of(journal)
    assert (entry.state, entry.task_id, entry.error) == (
        JournalState.UNCERTAIN,
        None,
        "SubmitUncertainError: timeout",
    )


def test_created_twice_with_the_same_task_id_is_harmless(journal: Journal) -> None:
    running(journal)
    journal.created("a", "t-a", "IN_PROGRESS")
    entry = entry_of(journal)
    assert (entry.state, entry.task_id, entry.status) == (JournalState.CREATED, "t-a", "IN_PROGRESS")


def test_a_second_task_id_for_a_created_item_is_refused(journal: Journal) -> None:
    running(journal)
    with pytest.raises(JournalError, match="already has task t-a; refusing to replace it by t-b"):
        journal.created("a", "t-b", "CREATED")


def test_a_transition_out_of_order_is_refused(journal: Journal) -> None:
    journal.submitting("a", MODEL, REQUEST)
    with pytest.raises(JournalError, match="key 'a' is submitting and cannot become completed"):
        journal.finished("a", "COMPLETED", ["u"])
    with pytest.raises(JournalError, match="key 'a' is submitting and cannot become downloaded"):
        journal.downloaded("a", "a.mp4")
    journal.created("a", "t-a", "CREATED")
    with pytest.raises(JournalError, match="key 'a' is created and cannot become uncertain"):
        journal.uncertain("a", "?")


def test_a_write_for_an_unknown_key_is_refused(journal: Journal) -> None:
    with pytest.raises(JournalError, match="key 'nope' is not in the journal"):
        journal.created("nope", "t-1", "CREATED")


def test_a_late_status_does_not_reopen_a_finished_item(journal: Journal) -> None:
    running(journal)
    journal.finished("a", "COMPLETED", ["u"])
    journal.status("a", "IN_PROGRESS")
    entry = entry_of(journal)
    assert (entry.state, entry.status) == (JournalState.COMPLETED, "COMPLETED")


def test_history_records_each_status_change_once(journal: Journal, path: Path) -> None:
    running(journal)
    for status in ["CREATED", "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "COMPLETED"]:
        journal.status("a", status)
    journal.finished("a", "COMPLETED", ["u"])
    journal.flush()
    rows = peek(path, "SELECT status FROM history WHERE key = 'a' ORDER BY rowid")
    assert [status for (status,) in rows] == ["CREATED", "IN_PROGRESS", "COMPLETED"]


def test_counts_has_every_state(journal: Journal) -> None:
    journal.submitting("s", MODEL, REQUEST)
    running(journal, "c1", "t-1")
    running(journal, "c2", "t-2")
    running(journal, "f", "t-f")
    journal.failed("f", "FAILED", "TaskFailedError")
    assert journal.counts() == {
        "submitting": 1,
        "created": 2,
        "completed": 0,
        "downloaded": 0,
        "failed": 1,
        "uncertain": 0,
        "unsent": 0,
    }


def test_entries_come_in_insertion_order_across_pages(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kling_async._journal._PAGE", 2)
    keys = ["e", "b", "d", "a", "c"]
    for key in keys:
        journal.submitting(key, MODEL, REQUEST)
    journal.uncertain("b", "?")
    journal.submitting("b", MODEL, REQUEST)  # a resubmit keeps the item's place
    assert [entry.key for entry in journal.entries()] == keys


def test_repr_shows_the_path_and_pending_writes(path: Path) -> None:
    journal = Journal(path, flush_interval=60)
    running(journal)
    journal.status("a", "IN_PROGRESS")
    assert repr(journal) == f"<Journal {str(path)!r} pending=1>"
    journal.close()
    assert repr(journal) == f"<Journal {str(path)!r} closed>"


def test_timestamps_are_read_from_the_clock(path: Path) -> None:
    clock = FakeClock()
    with Journal(path, clock=clock) as journal:
        journal.submitting("a", MODEL, REQUEST)
        clock.time += 30
        journal.created("a", "t-a", "CREATED")
    assert peek(path, "SELECT created_at, updated_at FROM items") == [(clock.wall() - 30, clock.wall())]
    assert peek(path, "SELECT at FROM history") == [(clock.wall(),)]


@pytest.mark.parametrize(
    ("option", "value"), [("flush_every", 0), ("flush_interval", -1.0), ("flush_interval", math.nan)]
)
def test_a_bad_flush_option_is_refused_naming_it(path: Path, option: str, value: float) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(ValueError, match=f"^{option}: "):
        Journal(path, **options)
    with pytest.raises(ValueError, match=f"^{option}: "):
        SQLiteJournal(path, **options)


# -- unsent: a POST that provably created nothing ------------------------------------------------------------


def test_unsent_is_committed_before_it_returns_and_kept_for_reading(journal: Journal, path: Path) -> None:
    journal.submitting("a", MODEL, REQUEST)
    journal.unsent("a", "RateLimitError: HTTP 429")
    assert peek(path, "SELECT state, task_id, error FROM items") == [
        ("unsent", None, "RateLimitError: HTTP 429")
    ]
    assert entry_of(journal).state == JournalState.UNSENT
    assert journal.counts()["unsent"] == 1


def test_unsent_is_refused_once_a_task_exists(journal: Journal) -> None:
    running(journal)
    with pytest.raises(JournalError, match="key 'a' is created and cannot become unsent"):
        journal.unsent("a", "RateLimitError: HTTP 429")


@pytest.mark.anyio
async def test_a_later_run_treats_an_unsent_key_as_never_submitted(path: Path) -> None:
    async with open_journal(path) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.unsent("a", "ServerError: HTTP 503")
    async with open_journal(path) as journal:  # the next run
        assert await journal.lookup("a") is None
        # A never-submitted key takes any request: so does an unsent one.
        await journal.submitting("a", MODEL, OTHER_REQUEST)
        await journal.created("a", "t-a", "CREATED")
        entry = await journal.lookup("a")
    assert entry is not None
    assert (entry.state, entry.request, entry.task_id, entry.error) == (
        JournalState.CREATED,
        OTHER_REQUEST,
        "t-a",
        None,
    )


# The items table as version 1 wrote it: its CHECK has no 'unsent'.
_V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
CREATE TABLE history (key TEXT NOT NULL REFERENCES items (key), at REAL NOT NULL, status TEXT NOT NULL);
CREATE INDEX history_key ON history (key, at);
INSERT INTO meta VALUES ('application', 'kling-async'), ('schema_version', '1');
INSERT INTO items VALUES
    ('a', 0, 'kling-v3-omni-std', X'7B7D', 'created', 't-a', 'IN_PROGRESS', '[]', NULL, NULL, 1, 2),
    ('b', 1, 'kling-v3-omni-std', X'7B7D', 'submitting', NULL, NULL, '[]', NULL, NULL, 3, 3);
INSERT INTO history VALUES ('a', 1, 'CREATED'), ('a', 2, 'IN_PROGRESS');
"""


def test_a_version_1_journal_opens_keeps_its_rows_and_accepts_unsent(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_V1_SCHEMA)
    with Journal(path) as journal:
        assert [(e.key, e.state, e.task_id, e.status) for e in journal.entries()] == [
            ("a", JournalState.CREATED, "t-a", "IN_PROGRESS"),
            ("b", JournalState.SUBMITTING, None, None),
        ]
        journal.unsent("b", "TransportError: connection refused")
        journal.finished("a", "COMPLETED", ["u"])
    assert peek(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert peek(path, "SELECT key, at, status FROM history ORDER BY rowid") == [
        ("a", 1.0, "CREATED"),
        ("a", 2.0, "IN_PROGRESS"),
        ("a", peek(path, "SELECT updated_at FROM items WHERE key = 'a'")[0][0], "COMPLETED"),
    ]
    assert peek(path, "PRAGMA foreign_key_check") == []
    assert peek(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'items'") == [
        ("sqlite_autoindex_items_1",),
        ("sqlite_autoindex_items_2",),
        ("items_task_id",),
    ]
    with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute("UPDATE items SET state = 'lost' WHERE key = 'a'")


# -- the async journal: never blocks the loop, never hangs, fails per call -----------------------------------


async def eventually(path: Path, sql: str, expected: list[Any]) -> None:
    """Wait until another connection reads ``expected``: 10 s is generous, so only a write that is never
    committed fails this."""
    with anyio.fail_after(10):
        # Polling: nothing signals a commit to another connection.
        while peek(path, sql) != expected:  # noqa: ASYNC110
            await anyio.sleep(0.01)


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection (a second process, say) that takes the journal's write lock and keeps it."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


@pytest.mark.anyio
async def test_the_event_loop_runs_on_while_a_write_waits_for_a_lock(path: Path) -> None:
    """While another connection holds the write lock, a write waits in a thread: the loop keeps running, so
    here a coroutine on the same loop can release the lock and let the write through (a write waiting on
    the loop would block that coroutine until the 5 s busy timeout failed it)."""
    async with open_journal(path) as journal:
        other = hold_write_lock(path)
        ticks_while_waiting = 0
        writing = True

        async def write() -> None:
            nonlocal writing
            try:
                await journal.submitting("a", MODEL, REQUEST)
            finally:
                writing = False

        async def tick_then_release() -> None:
            nonlocal ticks_while_waiting
            for _ in range(5):
                await anyio.sleep(0.01)
                ticks_while_waiting += writing
            other.execute("ROLLBACK")
            other.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            tg.start_soon(tick_then_release)
        assert ticks_while_waiting == 5
        assert state_on_disk(path, "a") == "submitting"


@pytest.mark.anyio
async def test_a_lock_held_past_the_busy_timeout_fails_that_call_and_later_calls_work(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kling_async._journal._BUSY_TIMEOUT_MS", 50)
    async with open_journal(path) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        with closing(hold_write_lock(path)) as other:
            with pytest.raises(JournalError, match="cannot record task t-a of key 'a': database is locked"):
                await journal.created("a", "t-a", "CREATED")
            other.execute("ROLLBACK")
        await journal.created("a", "t-a", "CREATED")
    assert state_on_disk(path, "a") == "created"


def page_limit(journal: Journal, pages: int | None) -> None:
    """Make the journal's connection see a full disk past ``pages`` pages (SQLITE_FULL, as on a full disk).

    Test-only: the connection is private; callers make sure no commit runs meanwhile.
    """
    if pages is None:
        pages = 1 << 30
    journal._db.execute(f"PRAGMA max_page_count = {pages}")


@pytest.mark.anyio
async def test_a_full_disk_fails_the_write_it_hits_and_the_journal_recovers(path: Path) -> None:
    big = b'{"prompt":"' + b"x" * 100_000 + b'"}'
    with Journal(path) as sync:
        async with SQLiteJournal(sync, flush_interval=3600) as journal:  # no timed commit meanwhile
            await journal.submitting("a", MODEL, REQUEST)
            page_limit(sync, sync._db.execute("PRAGMA page_count").fetchone()[0])
            with pytest.raises(JournalError, match="cannot record key 'b': database or disk is full"):
                await journal.submitting("b", MODEL, big)
            await journal.created("a", "t-a", "CREATED")  # small enough to fit: the journal is usable
            page_limit(sync, None)
            await journal.submitting("b", MODEL, big)
    assert peek(path, "SELECT key, state FROM items ORDER BY position") == [
        ("a", "created"),
        ("b", "submitting"),
    ]


@pytest.mark.anyio
async def test_buffered_writes_whose_commit_failed_are_kept_and_committed_later(path: Path) -> None:
    with Journal(path) as sync:
        async with SQLiteJournal(sync, flush_interval=3600) as journal:  # no timed commit meanwhile
            running_async = [("a", "t-a"), ("b", "t-b")]
            for key, task_id in running_async:
                await journal.submitting(key, MODEL, REQUEST)
                await journal.created(key, task_id, "CREATED")
            page_limit(sync, sync._db.execute("PRAGMA page_count").fetchone()[0])
            await journal.status("a", "IN_PROGRESS")
            await journal.finished("b", "COMPLETED", ["https://cdn.example/" + "b" * 100_000])
            with pytest.raises(JournalError, match="database or disk is full"):
                await journal.lookup("a")  # its buffered write must be committed first, and cannot be
            page_limit(sync, None)
            entry = await journal.lookup("b")
    assert entry is not None
    assert entry.state == JournalState.COMPLETED
    assert peek(path, "SELECT key, state, status FROM items ORDER BY position") == [
        ("a", "created", "IN_PROGRESS"),
        ("b", "completed", "COMPLETED"),
    ]


@pytest.mark.anyio
async def test_calls_on_a_closed_or_unopened_journal_raise_at_once(path: Path) -> None:
    journal = open_journal(path)
    with pytest.raises(JournalError, match="not open: use it in `async with journal:`"):
        await journal.lookup("a")
    async with journal:
        await journal.submitting("a", MODEL, REQUEST)
    for call in (
        journal.lookup("a"),
        journal.created("a", "t-a", "CREATED"),
        journal.status("a", "IN_PROGRESS"),
        journal.failed("a", None, "BadRequestError"),
    ):
        with pytest.raises(JournalError, match="closed") as caught:
            await call
        assert caught.value.path == str(path)
    with pytest.raises(JournalError, match="closed; open the file again"):
        await journal.__aenter__()


@pytest.mark.anyio
@pytest.mark.parametrize("cancel_by", ["asyncio.timeout", "anyio scope"])
async def test_a_cancelled_durable_write_ends_before_the_cancellation_reaches_its_caller(
    path: Path, cancel_by: str
) -> None:
    """Cancelled while it waits for a lock, ``created`` still runs to its commit; only then does the caller
    see the cancellation (so nothing is half done, and the connection is free for the next call)."""
    async with open_journal(path) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        other = hold_write_lock(path)
        cancelled = anyio.Event()
        caller_done = False
        saw_cancellation = False

        async def caller() -> None:
            nonlocal caller_done, saw_cancellation
            if cancel_by == "asyncio.timeout":
                try:
                    async with asyncio.timeout(0.02):
                        await journal.created("a", "t-a", "CREATED")
                except TimeoutError:
                    saw_cancellation = True
            else:
                with anyio.move_on_after(0.02) as scope:
                    await journal.created("a", "t-a", "CREATED")
                saw_cancellation = scope.cancelled_caught
            caller_done = True

        async def release_later() -> None:
            await anyio.sleep(0.2)  # long after the 0.02 s cancellation
            assert not caller_done  # still waiting for its write, not abandoned
            cancelled.set()
            other.execute("ROLLBACK")
            other.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            tg.start_soon(release_later)
        assert cancelled.is_set()
        assert saw_cancellation
        assert state_on_disk(path, "a") == "created"
        await journal.status("a", "IN_PROGRESS")  # the journal goes on
        assert (await journal.lookup("a")) is not None


@pytest.mark.anyio
async def test_a_buffered_write_is_committed_by_the_timer_with_no_later_call(path: Path) -> None:
    """Defect 12: a buffered status was committed only by some later write; now the timer commits it."""
    async with open_journal(path) as journal:  # the default interval, 0.2 s
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.status("a", "IN_PROGRESS")
        assert peek(path, "SELECT status FROM items") == [("CREATED",)]  # buffered
        await eventually(path, "SELECT status FROM items", [("IN_PROGRESS",)])
        # Committed: another writer gets the lock, so nothing holds it between commits.
        with closing(hold_write_lock(path)) as other:
            other.execute("ROLLBACK")


@pytest.mark.anyio
async def test_the_timer_sleeps_on_the_journals_clock(path: Path) -> None:
    clock = FakeClock()
    async with open_journal(path, clock=clock) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.status("a", "IN_PROGRESS")
        await eventually(path, "SELECT status FROM items", [("IN_PROGRESS",)])
    assert clock.slept == [0.2]


@pytest.mark.anyio
async def test_flush_every_buffered_writes_are_committed_without_waiting_for_the_interval(
    path: Path,
) -> None:
    async with SQLiteJournal(path, flush_every=3, flush_interval=3600) as journal:
        for key in "abc":
            await journal.submitting(key, MODEL, REQUEST)
            await journal.created(key, f"t-{key}", "CREATED")
        await journal.status("a", "IN_PROGRESS")
        await journal.status("b", "IN_PROGRESS")
        await anyio.sleep(0.05)
        assert peek(path, "SELECT count(*) FROM items WHERE status = 'IN_PROGRESS'") == [(0,)]
        await journal.status("c", "IN_PROGRESS")
        await eventually(path, "SELECT count(*) FROM items WHERE status = 'IN_PROGRESS'", [(3,)])


@pytest.mark.anyio
async def test_buffered_writes_are_committed_on_exit_even_when_the_block_is_cancelled(path: Path) -> None:
    # Cancelled once the writes are buffered, not after a fixed time: a loaded machine could take longer.
    with anyio.CancelScope() as scope:
        async with SQLiteJournal(path, flush_interval=3600) as journal:
            await journal.submitting("a", MODEL, REQUEST)
            await journal.created("a", "t-a", "CREATED")
            await journal.finished("a", "COMPLETED", ["https://cdn.example/a.mp4"])
            await journal.downloaded("a", "videos/a.mp4")
            scope.cancel()
            await anyio.sleep_forever()
    assert peek(path, "SELECT state, path FROM items") == [("downloaded", "videos/a.mp4")]
    assert repr(journal) == f"<SQLiteJournal {str(path)!r} closed buffered=0>"


@pytest.mark.anyio
async def test_lookup_sees_the_keys_buffered_writes(path: Path) -> None:
    async with SQLiteJournal(path, flush_interval=3600) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.status("a", "IN_PROGRESS")
        entry = await journal.lookup("a")
        assert entry is not None
        assert entry.status == "IN_PROGRESS"


@pytest.mark.anyio
async def test_a_buffered_write_that_no_longer_fits_is_dropped_and_logged_not_raised(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kling_async")
    async with open_journal(path) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.downloaded("a", "a.mp4")  # not completed yet: refused when committed
        await journal.status("a", "IN_PROGRESS")
    assert peek(path, "SELECT state, status, path FROM items") == [("created", "IN_PROGRESS", None)]
    assert [r.getMessage() for r in caplog.records] == [
        f"journal {path}: key 'a' is created and cannot become downloaded; the buffered write is dropped"
    ]


@pytest.mark.anyio
async def test_many_tasks_writing_at_once_all_land(path: Path) -> None:
    async def item(journal: BatchJournal, i: int) -> None:
        key = f"k{i}"
        await journal.submitting(key, MODEL, REQUEST)
        await journal.created(key, f"t-{i}", "CREATED")
        await journal.status(key, "IN_PROGRESS")
        await journal.finished(key, "COMPLETED", [f"https://cdn.example/{i}.mp4"])
        await journal.downloaded(key, f"{i}.mp4")

    async with open_journal(path) as journal, anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(item, journal, i)
    assert peek(path, "SELECT state, count(*) FROM items GROUP BY state") == [("downloaded", 300)]
    assert peek(path, "SELECT count(*) FROM history") == [(900,)]


@pytest.mark.anyio
async def test_open_journal_wraps_a_journal_without_closing_it(path: Path) -> None:
    with Journal(path, flush_interval=3600) as sync:
        async with open_journal(sync) as journal:
            await journal.submitting("a", MODEL, REQUEST)
            await journal.created("a", "t-a", "CREATED")
            await journal.status("a", "IN_PROGRESS")
        assert state_on_disk(path, "a") == "created"
        assert peek(path, "SELECT status FROM items") == [("IN_PROGRESS",)]  # flushed on exit
        assert entry_of(sync).task_id == "t-a"  # still open


@pytest.mark.anyio
async def test_open_journal_returns_a_batch_journal_as_it_is_and_nests(path: Path) -> None:
    journal = open_journal(path)
    assert open_journal(journal) is journal
    async with journal:
        async with journal:  # a caller's open journal, entered again by the batch
            await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")  # the inner exit did not close it
    assert state_on_disk(path, "a") == "created"


def test_open_journal_refuses_a_url_without_showing_it() -> None:
    with pytest.raises(JournalError, match="only SQLite journal files and postgresql:// URLs") as caught:
        open_journal("mysql://kling:s3cret@db.example/journal")
    assert "s3cret" not in str(caught.value)
    assert caught.value.path == "mysql://..."


@pytest.mark.anyio
async def test_an_unusable_file_fails_on_entering_naming_it(path: Path) -> None:
    path.write_bytes(b"these are not the bytes of a database\n" * 100)
    journal = open_journal(path)
    with pytest.raises(JournalError, match="not an SQLite database") as caught:
        async with journal:
            pass
    assert caught.value.path == str(path)


@pytest.mark.anyio
async def test_the_buffer_keeps_the_newest_writes_when_it_overflows(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kling_async")
    keys = [f"k{i}" for i in range(60)]
    async with SQLiteJournal(path, flush_every=1, flush_interval=3600) as journal:  # holds 50 writes
        for key in keys:
            await journal.submitting(key, MODEL, REQUEST)
            await journal.created(key, f"t-{key}", "CREATED")
        # Buffered calls never suspend: all 60 are buffered before any commit can start.
        for key in keys:
            await journal.status(key, "IN_PROGRESS")
        assert "buffered=50" in repr(journal)
    assert peek(path, "SELECT key FROM items WHERE status = 'CREATED' ORDER BY position") == [
        (key,) for key in keys[:10]
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"journal {path}: more than 50 buffered writes wait for a commit; dropping the oldest (a re-run asks"
        " the API again for what they said)"
    ]


@pytest.mark.anyio
async def test_a_timed_commit_that_failed_is_retried_by_the_timer(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("kling_async._journal._BUSY_TIMEOUT_MS", 20)
    caplog.set_level(logging.WARNING, logger="kling_async")
    async with SQLiteJournal(path, flush_interval=0.05) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        with closing(hold_write_lock(path)) as other:
            await journal.status("a", "IN_PROGRESS")
            with anyio.fail_after(10):
                while not caplog.records:  # noqa: ASYNC110 - polling the log: it has no event to wait on
                    await anyio.sleep(0.01)
            other.execute("ROLLBACK")
        await eventually(path, "SELECT status FROM items", [("IN_PROGRESS",)])
    assert caplog.records[0].getMessage() == (
        f"journal {path}: cannot record status IN_PROGRESS of key 'a': database is locked; buffered writes"
        " are kept and retried"
    )


@pytest.mark.anyio
async def test_a_final_commit_that_fails_is_logged_and_the_file_still_closed(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("kling_async._journal._BUSY_TIMEOUT_MS", 20)
    caplog.set_level(logging.WARNING, logger="kling_async")
    async with SQLiteJournal(path, flush_interval=3600) as journal:
        await journal.submitting("a", MODEL, REQUEST)
        await journal.created("a", "t-a", "CREATED")
        await journal.status("a", "IN_PROGRESS")
        other = hold_write_lock(path)
    other.execute("ROLLBACK")
    other.close()
    assert peek(path, "SELECT status FROM items") == [("CREATED",)]
    assert [r.getMessage() for r in caplog.records] == [
        f"journal {path}: cannot record status IN_PROGRESS of key 'a': database is locked; 1 buffered writes"
        " are lost"
    ]
    # The last connection to close removes the write-ahead log: the journal's own was closed too.
    assert not path.with_name(path.name + "-wal").exists()
