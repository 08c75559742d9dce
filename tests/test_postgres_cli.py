"""``kling-async batch --journal postgresql://...``: the CLI runs a batch on the shared journal, and a
database it cannot use is a usage error that never shows the password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import psycopg
import pytest

from kling_async import OmniRequest
from kling_async._journal_pg import PostgresJournal
from kling_async._models import encode_request
from tests.postgres import database, postgres_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).parent.parent


def batch(tmp_path: Path, journal: str) -> subprocess.CompletedProcess[str]:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a fox in snow"}\n{"prompt": "a fox in rain"}\n')
    command = [sys.executable, "-m", "kling_async", "batch", str(rows), "--out", str(tmp_path / "out")]
    command += ["--simulate", "--journal", journal]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_a_batch_records_its_rows_in_a_postgresql_journal(database: str, tmp_path: Path) -> None:  # noqa: F811
    done = batch(tmp_path, database)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(database) as conn:
        states = conn.execute("SELECT state FROM kling_items").fetchall()
    assert states == [("downloaded",), ("downloaded",)]
    assert (tmp_path / "out" / "journal.db").exists() is False  # the shared journal, not a local file


def test_an_unreachable_database_is_a_usage_error_without_the_password(tmp_path: Path) -> None:
    done = batch(tmp_path, f"postgresql://kling:s3cret@/journal?host={tmp_path}")
    assert done.returncode == 2
    assert f"--journal: journal postgresql://kling@/journal?host={tmp_path}: cannot connect" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_journal_url_that_does_not_parse_is_a_usage_error_without_the_password(tmp_path: Path) -> None:
    done = batch(tmp_path, "postgresql://kling:s3cret@[::1/journal")
    assert done.returncode == 2
    assert "--journal: journal postgresql://...: not a valid URL: Invalid IPv6 URL" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.anyio
async def test_a_row_another_worker_holds_is_reported_elsewhere_and_is_not_a_failure(
    database: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "snow", "prompt": "a fox in snow"}\n{"id": "rain", "prompt": "a fox in rain"}\n')
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kling_async", "batch", str(rows), "--out", str(out), "--simulate"]
    async with PostgresJournal(database) as other:  # a live worker, its POST for "rain" on the wire
        await other.submitting(
            "rain", "kling-v3-omni-std", encode_request(OmniRequest(prompt="a fox in rain"))
        )
        done = await anyio.run_process([*command, "--journal", database], cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr.decode()
    report = (out / "report.json").read_text()
    assert '"status": "ELSEWHERE"' in report
    said = done.stderr.decode()
    assert "1 row(s) held by another worker" in said
    assert "0 failed" in said  # the progress line counts it apart, not as a failure
    assert "1 elsewhere" in said
