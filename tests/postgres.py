"""A real PostgreSQL for the tests: the one CI started, or a throwaway server started here.

``.ci/run`` starts a server and exports ``KLING_TEST_POSTGRES_DSN`` (a ``postgresql://`` URL). Without
it (the README's plain test command on a developer machine), the ``postgres_server`` fixture starts its
own, once per session, the same way: ``initdb`` and ``pg_ctl`` (from PATH or
``/usr/lib/postgresql/*/bin``) in a temporary directory, listening on a unix socket only, as the
``postgres`` user when run as root; it is stopped at the end. When no server can be had, the PostgreSQL
tests fail saying why: a journal shared by workers that was never tested against a database is no pass.

Import the fixtures into a test module: ``from tests.postgres import database, postgres_server``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

DSN_VARIABLE = "KLING_TEST_POSTGRES_DSN"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is not None:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    pytest.fail(
        f"PostgreSQL's {name} was not found (PATH, /usr/lib/postgresql/*/bin): install PostgreSQL"
        f" (Debian: apt-get install postgresql) or set {DSN_VARIABLE} to a server the tests may use",
        pytrace=False,
    )


def _as_server_user(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: as root, run them as ``postgres``."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a PostgreSQL on a unix socket in a temporary directory; yield its DSN; stop and delete it."""
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="kling-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    log = root / "server.log"
    started = False
    try:
        _run([*_as_server_user([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"])])
        options = f"-k {sockets} -c listen_addresses='' -c fsync=off"
        _run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]))
        started = True
        yield f"postgresql://postgres@/postgres?host={sockets}"
    finally:
        if started:
            subprocess.run(
                _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(
            f"PostgreSQL could not be started for the tests ({' '.join(command[:3])}... exited"
            f" {done.returncode}): {done.stderr.strip() or done.stdout.strip()}",
            pytrace=False,
        )


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The DSN of a PostgreSQL server: CI's (``KLING_TEST_POSTGRES_DSN``), or a throwaway one started here
    and stopped on exit. The benchmarks use it too."""
    given = os.environ.get(DSN_VARIABLE)
    if given:
        yield given
        return
    with throwaway_server() as dsn:
        yield dsn


@contextlib.contextmanager
def fresh_database(server: str, prefix: str = "kling_test") -> Iterator[str]:
    """A new, empty database on ``server``, dropped (its sessions ended) on exit: its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The DSN of a PostgreSQL server for this session: CI's, or one started here."""
    with server() as dsn:
        yield dsn


@pytest.fixture
def database(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test: its DSN."""
    with fresh_database(postgres_server) as dsn:
        yield dsn


def with_database(url: str, name: str) -> str:
    """The ``postgresql://`` URL with its database name replaced."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def _worker(base_url: str, dsn: str, count: int, lease: float) -> None:
    """One worker process of the multi-worker tests: the shared input, the shared journal, one line per
    outcome (``ok KEY TASK`` or ``error KEY ErrorType``)."""
    from kling_async import Job, KlingClient, OmniRequest, PollPolicy, RetryPolicy
    from kling_async._journal_pg import PostgresJournal

    jobs = [Job(OmniRequest(prompt=f"shared clip {i}"), id=f"clip-{i:03d}") for i in range(count)]
    poll = PollPolicy(initial=0.02, maximum=0.05, timeout=60.0)
    retry = RetryPolicy(initial=0.01, maximum=0.05)
    journal = PostgresJournal(dsn, lease=lease)
    async with KlingClient("sim-key", base_url, poll=poll, retry=retry, max_concurrency=16) as client:
        # map() is typed for paths and URLs; it takes any BatchJournal (open_journal passes one through).
        async for outcome in client.map(jobs, journal=journal):
            if outcome.ok:
                print("ok", outcome.key, outcome.task_id, flush=True)
            else:
                print("error", outcome.key, type(outcome.error).__name__, flush=True)


if __name__ == "__main__":
    import sys

    import anyio

    anyio.run(_worker, sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
