"""Row keys that survive edits to the file, and retrying the rows that failed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kling_async import Job, JournalState, KlingClient, OmniRequest
from kling_async._batch import legacy_job_key
from kling_async._journal import Journal
from kling_async.testing import Simulator
from tests.conftest import FAST_POLL
from tests.test_cli import FAST, _cli, _write_jobs

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(time_scale=0.001) as simulator:
        yield simulator


async def test_fixing_an_invalid_row_sends_only_that_row(sim: Simulator, tmp_path: Path) -> None:
    """Run with --skip-invalid, fix the bad row, run again: one new POST, for the fixed row only."""
    rows: list[dict[str, object]] = [{"prompt": f"clip {i}"} for i in range(5)]
    rows[1] = {"prompt": "x" * 2501}
    jobs = _write_jobs(tmp_path / "jobs.jsonl", rows)
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--skip-invalid", *FAST]
    assert (await _cli(args, sim)).returncode == 1
    assert sim.counters.posts == 4
    rows[1] = {"prompt": "clip 1, fixed"}
    _write_jobs(jobs, rows)
    again = await _cli(args, sim)
    assert again.returncode == 0, again.stderr
    assert sim.counters.posts == 5


async def test_inserting_and_removing_rows_keeps_the_other_rows_keys(sim: Simulator, tmp_path: Path) -> None:
    """A row's key is its content and occurrence: rows added above it or removed below it change nothing."""
    jobs = tmp_path / "jobs.jsonl"
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST]
    _write_jobs(jobs, [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}])
    assert (await _cli(args, sim)).returncode == 0
    first = {r["line"]: r["id"] for r in json.loads((tmp_path / "out" / "report.json").read_text())}
    _write_jobs(jobs, [{"prompt": "new"}, {"prompt": "a"}, {"prompt": "b"}])
    assert (await _cli(args, sim)).returncode == 0
    second = {r["line"]: r["id"] for r in json.loads((tmp_path / "out" / "report.json").read_text())}
    assert (second[2], second[3]) == (first[1], first[2])
    assert sim.counters.posts == 4


async def test_identical_rows_are_separate_videos_and_resume_as_such(sim: Simulator, tmp_path: Path) -> None:
    """Two identical rows are two tasks with two keys; running again sends neither."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "same"}, {"prompt": "same"}])
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST]
    assert (await _cli(args, sim)).returncode == 0
    assert (await _cli(args, sim)).returncode == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len({record["id"] for record in report}) == 2
    assert sim.counters.posts == 2


async def test_a_journal_keyed_by_position_still_resumes(sim: Simulator, tmp_path: Path) -> None:
    """A journal written with the earlier positional keys is honoured: its rows are not paid again."""
    journal = tmp_path / "out" / "journal.db"
    rows: list[dict[str, object]] = [{"prompt": "a"}, {"prompt": "b"}]
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as client:
        bare = [Job(OmniRequest(prompt=str(row["prompt"])), model="kling-v3-omni-std") for row in rows]
        # The keys kling-async 0.1 derived from each row's position among the valid rows.
        jobs = [
            dataclasses.replace(job, id=legacy_job_key(job, "kling-v3-omni-std", index))
            for index, job in enumerate(bare)
        ]
        outcomes = await client.gather(jobs, journal=journal, download=tmp_path / "out")
    assert all(outcome.ok for outcome in outcomes)
    file = _write_jobs(tmp_path / "jobs.jsonl", rows)
    done = await _cli(["batch", str(file), "--out", str(tmp_path / "out"), *FAST], sim)
    assert done.returncode == 0, done.stderr
    assert sim.counters.posts == 2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [record["id"] for record in report] == [outcome.key for outcome in outcomes]


async def test_a_rerun_without_retry_failed_never_resubmits_and_says_how(
    sim: Simulator, tmp_path: Path
) -> None:
    """A FAILED row stays failed on a plain rerun; the summary says what --retry-failed would send."""
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "good", "prompt": "a"}, {"id": "bad", "prompt": "[fail] b"}]
    )
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST]
    assert (await _cli(args, sim)).returncode == 1
    again = await _cli(args, sim)
    assert again.returncode == 1
    assert sim.counters.posts == 2
    assert "1 row(s) ended FAILED; rerun with --retry-failed to submit these 1" in again.stderr


async def test_retry_failed_submits_again_exactly_the_failed_rows(sim: Simulator, tmp_path: Path) -> None:
    """--retry-failed sends a new POST for each FAILED row only, and journals its new task."""
    rows: list[dict[str, object]] = [
        {"id": "good", "prompt": "a"},
        {"id": "bad", "prompt": "[fail] b"},
        {"id": "bad2", "prompt": "[fail] c"},
    ]
    jobs = _write_jobs(tmp_path / "jobs.jsonl", rows)
    journal = tmp_path / "out" / "journal.db"
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST]
    assert (await _cli(args, sim)).returncode == 1
    with Journal(journal) as before:
        old = {key: before.lookup(key) for key in ("good", "bad", "bad2")}
    assert (await _cli([*args, "--retry-failed"], sim)).returncode == 1  # they fail again, as [fail] does
    assert sim.counters.posts == 5
    with Journal(journal) as after:
        new = {key: after.lookup(key) for key in ("good", "bad", "bad2")}
    for key in ("bad", "bad2"):
        entry, previous = new[key], old[key]
        assert entry is not None
        assert previous is not None
        assert entry.state == JournalState.FAILED
        assert entry.task_id is not None
        assert entry.task_id != previous.task_id
    assert new["good"] == old["good"]
