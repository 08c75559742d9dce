"""Batches with a journal: a re-run pays for nothing twice and loses nothing, even after SIGKILL."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from anyio.abc import Process

from kling_async import (
    Job,
    JournalError,
    KlingClient,
    OmniRequest,
    SubmitUncertainError,
    TaskTimeoutError,
)
from kling_async._journal import Journal, JournalState, SQLiteJournal
from kling_async._models import encode_request
from kling_async.testing import Faults, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY

pytestmark = pytest.mark.anyio


def jobs(n: int, prefix: str = "clip") -> list[Job]:
    return [Job(OmniRequest(prompt=f"{prefix} {i}"), id=f"{prefix}-{i}") for i in range(n)]


def _client(sim: Simulator, key: str = "sim-key") -> KlingClient:
    return KlingClient(key, sim.url, poll=FAST_POLL, retry=FAST_RETRY)


async def test_a_rerun_of_a_finished_batch_sends_nothing(sim: Simulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    async with _client(sim) as client:
        first = await client.gather(jobs(5), journal=journal)
    requests_after_first = sum(sim.counters.responses_by_status.values())
    async with _client(sim) as client:
        second = await client.gather(jobs(5), journal=journal)
    assert [o.task_id for o in second] == [o.task_id for o in first]
    assert all(o.ok for o in second)
    assert sum(sim.counters.responses_by_status.values()) == requests_after_first


@pytest.mark.parametrize("name", ["run.db", "link.db"], ids=["the same name", "a symbolic link"])
async def test_a_second_batch_on_a_journal_in_use_is_refused_before_it_sends(
    sim: Simulator, tmp_path: Path, name: str
) -> None:
    """Two batches at once on one file would each find an item unsent and both pay for it, however the
    second names the file."""
    (tmp_path / "link.db").symlink_to(tmp_path / "run.db")
    async with SQLiteJournal(tmp_path / "run.db"), _client(sim) as client:  # the first batch's
        with pytest.raises(JournalError, match="in use by another batch"):
            await client.gather(jobs(3), journal=tmp_path / name)
    assert sim.counters.posts == 0


async def test_a_journal_is_free_for_the_next_batch_once_the_last_one_closed_it(
    sim: Simulator, tmp_path: Path
) -> None:
    async with _client(sim) as client:
        await client.gather(jobs(2), journal=tmp_path / "run.db")
        outcomes = await client.gather(jobs(3), journal=tmp_path / "run.db")
    assert [o.ok for o in outcomes] == [True, True, True]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
async def test_a_journal_is_free_for_the_next_batch_while_a_child_forked_during_the_last_one_lives(
    sim: Simulator, tmp_path: Path
) -> None:
    """A multiprocessing worker forked while a batch had the journal open does not keep it locked."""
    go_on, hold = os.pipe()
    async with SQLiteJournal(tmp_path / "run.db"):
        child = os.fork()
        if child == 0:  # the child only waits to be told to leave
            try:
                os.read(go_on, 1)
            finally:
                os._exit(0)
    try:
        async with _client(sim) as client:
            outcomes = await client.gather(jobs(1), journal=tmp_path / "run.db")
    finally:
        os.write(hold, b"x")
        await anyio.to_thread.run_sync(os.waitpid, child, 0)
        os.close(go_on)
        os.close(hold)
    assert [o.ok for o in outcomes] == [True]


async def test_a_rerun_from_another_working_directory_finds_the_videos_saved(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run saved into a relative folder; the rerun, elsewhere, names the same folder absolutely
    and fetches nothing again."""
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    async with _client(sim) as client:
        await client.gather(jobs(2), journal=tmp_path / "run.db", download="videos")
    monkeypatch.chdir(tmp_path)
    before = sim.counters.downloads
    async with _client(sim) as client:
        outcomes = await client.gather(
            jobs(2), journal=tmp_path / "run.db", download=tmp_path / "first" / "videos"
        )
    assert all(o.ok for o in outcomes)
    assert sim.counters.downloads == before


async def test_a_rerun_reattaches_to_running_tasks_by_id_without_a_post(
    sim: Simulator, tmp_path: Path
) -> None:
    journal = tmp_path / "run.db"
    never = [Job(OmniRequest(prompt=f"[never] clip {i}"), id=f"n-{i}") for i in range(3)]
    async with _client(sim) as client:
        first = await client.gather(never, journal=journal, timeout=0.1)
    assert all(isinstance(o.error, TaskTimeoutError) for o in first)
    for outcome in first:
        assert outcome.task_id is not None
        sim.finish(outcome.task_id)
    async with _client(sim) as client:
        second = await client.gather(never, journal=journal)
    assert all(o.ok for o in second)
    assert [o.task_id for o in second] == [o.task_id for o in first]
    assert sim.counters.posts == 3


async def test_an_uncertain_post_is_reported_again_and_not_resent(sim: Simulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    sim.queue_fault("drop_after_create", method="POST")
    async with _client(sim) as client:
        first = await client.gather(jobs(1), journal=journal)
    async with _client(sim) as client:
        second = await client.gather(jobs(1), journal=journal)
    assert isinstance(first[0].error, SubmitUncertainError)
    assert isinstance(second[0].error, SubmitUncertainError)
    assert sim.counters.posts == 1


async def test_resubmit_uncertain_sends_the_uncertain_items_again(sim: Simulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    sim.queue_fault("drop_before", method="POST")
    async with _client(sim) as client:
        await client.gather(jobs(1), journal=journal)
        again = await client.gather(jobs(1), journal=journal, resubmit_uncertain=True)
    assert again[0].ok
    assert sim.counters.posts == 2


async def test_an_item_refused_before_creation_is_tried_again(sim: Simulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    async with _client(sim, key="wrong") as client:
        refused = await client.gather(jobs(1), journal=journal)
    async with _client(sim) as client:
        again = await client.gather(jobs(1), journal=journal)
    assert not refused[0].ok
    assert again[0].ok


async def test_downloaded_items_are_not_fetched_again(sim: Simulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    async with _client(sim) as client:
        first = await client.gather(jobs(2), journal=journal, download=tmp_path / "videos")
    downloads = sim.counters.downloads
    async with _client(sim) as client:
        second = await client.gather(jobs(2), journal=journal, download=tmp_path / "videos")
    assert [o.path for o in second] == [o.path for o in first]
    assert sim.counters.downloads == downloads


async def test_a_deleted_video_is_downloaded_again_from_a_fresh_url(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    async with Simulator(time_scale=0.001, url_ttl=0.05) as sim:
        async with _client(sim) as client:
            (first,) = await client.gather(jobs(1), journal=journal, download=tmp_path)
        assert first.path is not None
        first.path.unlink()
        await anyio.sleep(0.1)  # the recorded URL has expired by now
        async with _client(sim) as client:
            (second,) = await client.gather(jobs(1), journal=journal, download=tmp_path)
    assert second.path == first.path
    assert second.path is not None
    assert second.path.exists()


async def test_a_key_reused_for_another_request_is_a_journal_error(sim: Simulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    async with _client(sim) as client:
        await client.gather([Job(OmniRequest(prompt="one"), id="k")], journal=journal)
        (clash,) = await client.gather([Job(OmniRequest(prompt="two"), id="k")], journal=journal)
    assert isinstance(clash.error, JournalError)
    assert sim.counters.posts == 1


async def test_the_journal_records_each_item_state(sim: Simulator, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    async with _client(sim) as client:
        await client.gather([*jobs(1), Job(OmniRequest(prompt="[fail] x"), id="bad")], journal=journal)
    with Journal(journal) as opened:
        states = {entry.key: entry.state for entry in opened.entries()}
    assert states == {"clip-0": JournalState.COMPLETED, "bad": JournalState.FAILED}


async def _run_client(
    sim: Simulator, journal: Path, out: Path, count: int, *, kill_after: int | None
) -> list[str]:
    """Run the batch client process; SIGKILL it once `kill_after` outcomes were printed."""
    command = [
        sys.executable,
        "-m",
        "tests.scripts.batch_client",
        sim.url,
        str(journal),
        str(out),
        str(count),
    ]
    lines: list[str] = []
    process: Process = await anyio.open_process(command, cwd=Path(__file__).parent.parent)
    async with process:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
            if kill_after is not None and len(lines) >= kill_after:
                process.send_signal(signal.SIGKILL)
                break
        await process.wait()
    return lines


@pytest.mark.parametrize("kill_after", [1, 60])
async def test_a_batch_killed_mid_run_resumes_without_paying_twice(tmp_path: Path, kill_after: int) -> None:
    """SIGKILL while POSTs are going out (1) and while videos download (60), then run again."""
    count = 200
    faults = Faults(latency=0.002)
    async with Simulator(time_scale=0.002, generation_seconds=(30.0, 60.0), faults=faults) as sim:
        killed = await _run_client(
            sim, tmp_path / "run.db", tmp_path / "videos", count, kill_after=kill_after
        )
        assert len(killed) < count
        second = await _run_client(sim, tmp_path / "run.db", tmp_path / "videos", count, kill_after=None)
    assert len(second) == count
    assert sim.counters.duplicate_payloads() == []
    uncertain = [line for line in second if "SubmitUncertainError" in line]
    assert [line for line in second if not line.startswith("ok") and line not in uncertain] == []
    # Each uncertain item is a POST that was on the wire at the kill: at most the client's 8 connections.
    assert len(uncertain) <= 8
    assert count - len(uncertain) <= sim.counters.tasks_created <= count
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert len([name for name in videos if name.endswith(".mp4")]) == count - len(uncertain)
    assert [name for name in videos if name.endswith(".part")] == []


async def test_two_journal_entries_naming_one_task_end_the_second_item_with_an_error(tmp_path: Path) -> None:
    """A journal that gives two items one task id: one item follows the task, the other ends at once
    with a SubmitUncertainError naming the clash, and nothing is sent again."""
    journal = tmp_path / "run.db"
    async with Simulator(generation_seconds=600.0) as slow:  # the task runs all along
        async with _client(slow) as client:
            handle = await client.submit(OmniRequest(prompt="one"))
        both = [Job(OmniRequest(prompt="one"), id="a"), Job(OmniRequest(prompt="two"), id="b")]
        with Journal(journal) as opened:
            for job in both:
                assert job.id is not None
                opened.submitting(job.id, "kling-v3-omni-std", encode_request(job.request))
                opened.created(job.id, handle.task_id, "CREATED")
        async with _client(slow) as client, client.map(both, journal=journal) as outcomes:
            outcome = await anext(outcomes)
        assert outcome.key in {"a", "b"}
        assert isinstance(outcome.error, SubmitUncertainError)
        assert f"task {handle.task_id} is already followed" in str(outcome.error)
        assert slow.counters.posts == 1
