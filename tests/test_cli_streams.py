"""The batch command's streams as an operator meets them: terminals, pipes, Ctrl-C, retries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from kling_async.testing import Simulator
from tests.scripts.terminal import Terminal
from tests.test_cli import FAST, ROOT, _env, _write_jobs

pytestmark = pytest.mark.anyio

# A hang guard only (a broken CLI must not stall the suite); no assertion depends on it.
GUARD = 120


def _command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "kling_async", *args]


def _outcomes(text: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in text.replace("\r", "").splitlines() if line.strip()]
    return [record for record in records if record["type"] == "outcome"]


async def test_json_reaches_a_piped_stdout_while_stderr_is_a_terminal(tmp_path: Path) -> None:
    """--json > file works when the progress bar is live on a terminal (stderr)."""
    async with Simulator(time_scale=0.001) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
        stderr = Terminal()
        args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--json", *FAST]
        env = {**_env(sim), "COLUMNS": "120"}
        with anyio.fail_after(GUARD):
            async with await anyio.open_process(
                _command(args), stdout=subprocess.PIPE, stderr=stderr.child, env=env, cwd=ROOT
            ) as process:
                stderr.release_child_end()
                assert process.stdout is not None
                stdout = b"".join([chunk async for chunk in process.stdout])
                await stderr.read_to_end()
                assert await process.wait() == 0
    assert "\x1b[" in stderr.text  # the bar was drawn live on the terminal
    assert len(_outcomes(stdout.decode())) == 2


async def test_json_lines_go_to_stdout_when_both_streams_are_terminals(tmp_path: Path) -> None:
    """With stdout and stderr on (separate) terminals, every JSON line is on stdout, whole."""
    async with Simulator(time_scale=0.001) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
        stdout, stderr = Terminal(), Terminal()
        args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--json", *FAST]
        env = {**_env(sim), "COLUMNS": "120"}
        with anyio.fail_after(GUARD):
            async with await anyio.open_process(
                _command(args), stdout=stdout.child, stderr=stderr.child, env=env, cwd=ROOT
            ) as process:
                stdout.release_child_end()
                stderr.release_child_end()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stdout.read_to_end)
                    tg.start_soon(stderr.read_to_end)
                assert await process.wait() == 0
    assert len(_outcomes(stdout.text)) == 2
    assert "COMPLETED" in stderr.text


async def test_a_reader_that_goes_away_does_not_stop_the_batch(tmp_path: Path) -> None:
    """``--json | head -1``: the pipe breaks after one line; every row still completes, exit 0."""
    async with Simulator(time_scale=0.01) as sim:  # generations outlast the reader (0.3 s or more)
        jobs = _write_jobs(
            tmp_path / "jobs.jsonl", [{"id": f"c{i}", "prompt": f"clip {i}"} for i in range(8)]
        )
        args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--json", *FAST]
        reader, writer = os.pipe()
        with anyio.fail_after(GUARD):
            async with await anyio.open_process(
                _command(args), stdout=writer, env=_env(sim), cwd=ROOT
            ) as process:
                os.close(writer)
                assert process.stderr is not None
                await anyio.to_thread.run_sync(os.read, reader, 1)  # the first output...
                os.close(reader)  # ...then the reader is gone, as head is after its first line
                stderr = b"".join([chunk async for chunk in process.stderr]).decode()
                assert await process.wait() == 0, stderr
    assert "Traceback" not in stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {record["status"] for record in report} == {"COMPLETED"}


async def _double_ctrl_c(tmp_path: Path, sim: Simulator, *, burst: bool = False) -> tuple[int, str]:
    """Run a slow batch on one terminal (stdout and stderr), Ctrl-C twice (the second once the first is
    acknowledged), or, ``burst``, four times 2 ms apart; (exit code, screen)."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(6)])
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST]
    screen = Terminal()
    env = {**_env(sim), "COLUMNS": "120"}
    with anyio.fail_after(GUARD):
        async with await anyio.open_process(
            _command(args), stdin=screen.child, stdout=screen.child, stderr=screen.child, env=env, cwd=ROOT
        ) as process:
            screen.release_child_end()
            assert await screen.read_until(b"6 generating")  # every row submitted, none can finish yet
            if burst:
                for _ in range(4):
                    process.send_signal(signal.SIGINT)
                    await anyio.sleep(0.002)
            else:
                process.send_signal(signal.SIGINT)
                assert await screen.read_until(b"Ctrl-C again")
                process.send_signal(signal.SIGINT)
            await screen.read_to_end()
            return await process.wait(), screen.plain


async def test_a_second_ctrl_c_leaves_the_summary_last_and_says_interrupted(tmp_path: Path) -> None:
    """After the second Ctrl-C nothing is drawn over the summary, which says the run was interrupted."""
    async with Simulator(time_scale=1.0) as sim:  # generations take 30 s or more: still running at Ctrl-C
        code, screen = await _double_ctrl_c(tmp_path, sim)
    assert code == 130
    summary = screen[screen.rindex("kling-async batch") :]
    assert "interrupted: 6 row(s) not run" in summary
    after_report = screen[screen.rindex("report: ") :]
    assert "\n" not in after_report.rstrip(), repr(after_report)  # no bar redrawn after it
    assert "eta" not in summary


async def test_a_burst_of_ctrl_c_stops_the_run_and_still_writes_the_report(tmp_path: Path) -> None:
    """An impatient operator's four Ctrl-Cs at once: exit 130, no traceback, the report written (the
    signals after "stop now" are followed to the end, not a KeyboardInterrupt in the teardown)."""
    async with Simulator(time_scale=1.0) as sim:
        code, screen = await _double_ctrl_c(tmp_path, sim, burst=True)
    assert code == 130
    assert "Traceback" not in screen
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())) == 6


async def test_rows_not_run_keep_the_task_ids_the_journal_holds(tmp_path: Path) -> None:
    """After a double Ctrl-C, report.json gives each NOT_RUN row the task its POST created."""
    async with Simulator(time_scale=1.0) as sim:
        code, _ = await _double_ctrl_c(tmp_path, sim)
        created = set(sim.tasks)
    assert code == 130
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {record["status"] for record in report} == {"NOT_RUN"}
    assert {record["task_id"] for record in report} == created


async def test_retries_against_a_closed_port_are_shown_while_they_happen(tmp_path: Path) -> None:
    """A closed API port: stderr says what is retried and why long before the client gives up."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    env = {**_env(), "FREEPIK_API_KEY": "k", "KLING_BASE_URL": f"http://127.0.0.1:{port}"}
    args = ["batch", str(jobs), "--out", str(tmp_path / "out")]
    seen = b""
    with anyio.fail_after(GUARD):
        async with await anyio.open_process(_command(args), env=env, cwd=ROOT) as process:
            assert process.stderr is not None
            async for chunk in process.stderr:
                seen += chunk
                if b"retrying POST" in seen:
                    break
            process.kill()
    line = next(line for line in seen.decode().splitlines() if "retrying POST" in line)
    assert "/v1/ai/video/kling-v3-omni-std" in line
    assert "(attempt 1)" in line


async def test_the_counts_line_ends_with_an_ellipsis_on_a_narrow_terminal(tmp_path: Path) -> None:
    """At 50 columns the progress counts are cut visibly (…), not silently."""
    screen = Terminal()
    args = ["batch", "examples/jobs.jsonl", "--out", str(tmp_path), "--simulate"]
    with anyio.fail_after(GUARD):
        async with await anyio.open_process(
            _command(args),
            stdin=screen.child,
            stdout=screen.child,
            stderr=screen.child,
            env={**_env(), "COLUMNS": "50"},
            cwd=ROOT,
        ) as process:
            screen.release_child_end()
            await screen.read_to_end()
            assert await process.wait() == 0
    assert "…" in screen.text


def test_output_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    """validate's stdout on a full device: one line on stderr, exit 1, no traceback."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            _command(["validate", str(jobs)]), stdout=full, stderr=subprocess.PIPE, cwd=ROOT, check=False
        )
    assert done.returncode == 1
    assert done.stderr.decode() == "error: cannot write the output: No space left on device\n"


async def test_a_closed_stdout_ends_the_json_lines_not_the_batch(tmp_path: Path) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    args = _command(["batch", str(jobs), "--out", str(tmp_path / "out"), "--json", *FAST])
    closed = ["sh", "-c", 'exec "$@" >&-', "sh", *args]  # started with no stdout at all
    async with Simulator(time_scale=0.001) as sim:
        done = await anyio.run_process(closed, env=_env(sim), cwd=ROOT, check=False)
    assert done.returncode == 0
    assert "the JSON lines stop here" in done.stderr.decode()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [record["status"] for record in report] == ["COMPLETED", "COMPLETED"]


async def test_a_stderr_that_cannot_be_written_changes_nothing_in_the_batch_or_its_exit_code(
    tmp_path: Path,
) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    args = _command(["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST])
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        async with Simulator(time_scale=0.001) as sim:
            done = await anyio.run_process(args, stderr=full, env=_env(sim), cwd=ROOT, check=False)
    finally:
        os.close(full)
    assert done.returncode == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [record["status"] for record in report] == ["COMPLETED"]


async def test_stopping_now_still_records_the_tasks_of_the_posts_on_the_wire(tmp_path: Path) -> None:
    """A second Ctrl-C while POSTs are on the wire (each answered after 1 s): they are answered, not cut
    off, so every task the server created is in report.json with its id (a rerun re-attaches to it)."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": f"r{i}", "prompt": f"clip {i}"} for i in range(8)])
    args = _command(["batch", str(jobs), "--out", str(tmp_path / "out"), "--rps", "4", *FAST])
    async with Simulator(time_scale=1.0) as sim:
        sim.faults.latency = 1.0
        with anyio.fail_after(30):  # a hang guard: the POSTs' answers come within 1 s
            async with await anyio.open_process(args, env=_env(sim), cwd=ROOT) as process:
                while sim.counters.posts < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                process.send_signal(signal.SIGINT)
                await anyio.sleep(0.1)
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 130
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert {record["task_id"] for record in report} - {None} == set(sim.tasks)
