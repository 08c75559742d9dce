"""The kling-async command, run as a user runs it: a subprocess against the simulator."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream
from rich.console import Console

from kling_async import KlingClient, NotSubmittedError, OmniRequest, Outcome
from kling_async._journal import SQLiteJournal
from kling_async._progress import BatchProgress
from kling_async.testing import Faults, Simulator
from tests.conftest import FAST_POLL

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
FAST = ["--poll-initial", "0.02", "--poll-maximum", "0.05"]
# `python -m kling_async`, as a terminal's foreground job runs it: Ctrl-C and a hangup at their defaults,
# whatever this test run inherited (under `nohup`, or as a script's `&` job, it ignores one or both).
FOREGROUND = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
    " signal.signal(signal.SIGHUP, signal.SIG_DFL);"
    " os.execv(sys.executable, [sys.executable, '-m', 'kling_async', *sys.argv[1:]])",
]


def _env(sim: Simulator | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPIK", "MAGNIFIC", "KLING"))}
    if sim is not None:
        env.update(FREEPIK_API_KEY="sim-key", KLING_BASE_URL=sim.url)
    return env


async def _cli(args: Sequence[str], sim: Simulator | None = None) -> subprocess.CompletedProcess[str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "kling_async", *args], env=_env(sim), cwd=ROOT, check=False
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def _write_jobs(path: Path, rows: Sequence[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(time_scale=0.001) as simulator:
        yield simulator


async def test_validate_lists_every_bad_row_with_line_field_and_rule(tmp_path: Path) -> None:
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [{"prompt": "ok"}, {"prompt": "x", "duration": 5}, {"prompt": "y", "colour": "red"}, {"prompt": "z"}],
    )
    done = await _cli(["validate", str(jobs)])
    assert done.returncode == 2
    assert "jobs.jsonl:2: duration:" in done.stdout
    assert "jobs.jsonl:3: colour: unknown field" in done.stdout
    assert "2 valid, 2 invalid" in done.stdout


async def test_validate_accepts_the_examples() -> None:
    for example in ("examples/jobs.jsonl", "examples/jobs.csv"):
        done = await _cli(["validate", example])
        assert done.returncode == 0, done.stdout
        assert " 0 invalid" in done.stdout


async def test_a_batch_with_an_invalid_row_sends_nothing(sim: Simulator, tmp_path: Path) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "ok"}, {"prompt": "x" * 2501}])
    done = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST], sim)
    assert done.returncode == 2
    assert "jobs.jsonl:2: prompt: at most 2500 characters" in done.stderr
    assert sim.counters.posts == 0


async def test_skip_invalid_runs_the_valid_rows_and_reports_the_invalid_ones(
    sim: Simulator, tmp_path: Path
) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "ok"}, {"prompt": "x" * 2501}])
    out = tmp_path / "out"
    done = await _cli(["batch", str(jobs), "--out", str(out), "--skip-invalid", *FAST], sim)
    assert done.returncode == 1, done.stderr
    assert sim.counters.posts == 1
    report = json.loads((out / "report.json").read_text())
    assert [(r["line"], r["status"]) for r in report] == [(1, "COMPLETED"), (2, "INVALID")]


async def test_a_batch_with_faults_ends_with_every_video_and_a_full_report(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.faults = Faults(get_error_rate=0.2, post_error_rate=0.2)
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": f"c{i}", "prompt": f"clip {i}"} for i in range(20)])
    out = tmp_path / "out"
    done = await _cli(["batch", str(jobs), "--out", str(out), *FAST], sim)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["id"] for r in report] == [f"c{i}" for i in range(20)]
    assert {r["status"] for r in report} == {"COMPLETED"}
    assert all(Path(r["path"]).exists() for r in report)
    assert sim.counters.duplicate_payloads() == []


async def test_a_failed_row_makes_exit_code_1_and_is_named_in_the_report(
    sim: Simulator, tmp_path: Path
) -> None:
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "good", "prompt": "a"}, {"id": "bad", "prompt": "[fail] b"}]
    )
    out = tmp_path / "out"
    done = await _cli(["batch", str(jobs), "--out", str(out), *FAST], sim)
    assert done.returncode == 1
    report = {r["id"]: r for r in json.loads((out / "report.json").read_text())}
    assert report["bad"]["status"] == "FAILED"
    assert report["bad"]["error"].startswith("TaskFailedError")
    assert "line 2 (bad)" in done.stderr


async def test_json_mode_prints_one_parseable_record_per_line(sim: Simulator, tmp_path: Path) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    done = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), "--json", *FAST], sim)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = {record["type"] for record in records}
    assert {"submitted", "status", "outcome"} <= kinds
    assert len([r for r in records if r["type"] == "outcome"]) == 2


async def test_running_the_same_command_again_resumes_and_sends_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(5)])
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST]
    assert (await _cli(args, sim)).returncode == 0
    requests = sum(sim.counters.responses_by_status.values())
    assert (await _cli(args, sim)).returncode == 0
    assert sum(sim.counters.responses_by_status.values()) == requests


async def _ctrl_c_at(
    marker: bytes, command: list[str], sim: Simulator, stderr: bytearray | None = None
) -> int:
    """Run ``command`` (a ``batch ... --json``) against ``sim``, send it a Ctrl-C as the first line holding
    ``marker`` is printed, and return its exit code once it ends (what it wrote on stderr into ``stderr``)."""
    errors = bytearray() if stderr is None else stderr
    async with await anyio.open_process(command, env=_env(sim), cwd=ROOT) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        async with anyio.create_task_group() as tg:

            async def read_stderr(stream: ByteReceiveStream) -> None:
                async for chunk in stream:
                    errors.extend(chunk)

            tg.start_soon(read_stderr, process.stderr)
            async for chunk in process.stdout:
                if marker in chunk:
                    process.send_signal(signal.SIGINT)
                    break
            async for _ in process.stdout:
                pass
        return await process.wait()


async def test_ctrl_c_drains_exits_130_and_the_same_command_resumes(tmp_path: Path) -> None:
    async with Simulator(time_scale=0.005) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(30)])
        args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--json", "--max-in-flight", "3", *FAST]
        assert await _ctrl_c_at(b'"outcome"', [sys.executable, "-m", "kling_async", *args], sim) == 130
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert "NOT_RUN" in {r["status"] for r in report}
        again = await _cli(args, sim)
        assert again.returncode == 0, again.stderr
        assert sim.counters.tasks_created == 30
        assert sim.counters.duplicate_payloads() == []


async def test_a_first_ctrl_c_sends_no_post_for_the_rows_waiting_for_the_rate(tmp_path: Path) -> None:
    # At 2 requests a second the rows its 4 submitters took wait 0.5 s a POST: the Ctrl-C comes as the
    # first task's id is printed, while the others wait (and end NOT_RUN, unsent).
    async with Simulator(time_scale=0.005) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(30)])
        out = tmp_path / "out"
        args = ["batch", str(jobs), "--out", str(out), "--json", "--rps", "2", "--concurrency", "4", *FAST]
        assert await _ctrl_c_at(b'"submitted"', [sys.executable, "-m", "kling_async", *args], sim) == 130
        assert sim.counters.posts == 1
        report = json.loads((out / "report.json").read_text())
        assert {r["status"] for r in report if r["task_id"] is None} == {"NOT_RUN"}


async def test_after_a_first_ctrl_c_the_summary_counts_the_unsent_rows_instead_of_listing_them(
    tmp_path: Path,
) -> None:
    async with Simulator(time_scale=0.005) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(30)])
        args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--json", "--rps", "2", *FAST]
        stderr = bytearray()
        command = [sys.executable, "-m", "kling_async", *args]
        assert await _ctrl_c_at(b'"submitted"', command, sim, stderr) == 130
    summary = stderr.decode()
    assert "interrupted: 29 row(s) not run (29 of them not sent)" in summary
    assert "not sent:" not in summary  # no row listed one by one
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    unsent = [r["error"] for r in report if r["task_id"] is None]
    assert len(unsent) == 29
    assert all(error.startswith(("NotSubmittedError: not sent:", "not sent:")) for error in unsent)


async def test_a_batch_started_with_sigint_ignored_runs_on_through_a_ctrl_c(tmp_path: Path) -> None:
    # A background job of a script (`kling-async batch ... &`) inherits SIGINT ignored: a Ctrl-C at the
    # script's terminal is not for it. exec keeps the disposition, as a shell does.
    async with Simulator(time_scale=0.005) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(10)])
        out = tmp_path / "out"
        args = ["batch", str(jobs), "--out", str(out), "--json", *FAST]
        start = (
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN);"
            " os.execv(sys.executable, [sys.executable, '-m', 'kling_async', *sys.argv[1:]])"
        )
        assert await _ctrl_c_at(b'"submitted"', [sys.executable, "-c", start, *args], sim) == 0
        report = json.loads((out / "report.json").read_text())
        assert {r["status"] for r in report} == {"COMPLETED"}


async def _signal_when(
    ready: Callable[[], bool], signum: signal.Signals, command: list[str], sim: Simulator
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` against ``sim``, send it ``signum`` once ``ready()`` holds, and return how it ended."""
    async with await anyio.open_process(command, env=_env(sim), cwd=ROOT) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        streams = {"stdout": bytearray(), "stderr": bytearray()}

        async def read(stream: ByteReceiveStream, into: bytearray) -> None:
            async for chunk in stream:
                into.extend(chunk)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, process.stdout, streams["stdout"])
                tg.start_soon(read, process.stderr, streams["stderr"])
                while not ready():
                    assert process.returncode is None, streams["stderr"].decode()
                    await anyio.sleep(0.01)
                process.send_signal(signum)
                code = await process.wait()
    return subprocess.CompletedProcess(command, code, streams["stdout"].decode(), streams["stderr"].decode())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_an_interrupted_generate_names_the_task_it_created_and_how_to_fetch_it(
    signum: signal.Signals, tmp_path: Path
) -> None:
    async with Simulator(time_scale=1.0) as sim:  # a generation of a minute
        command = [*FOREGROUND, "generate", "a fox", "--out", str(tmp_path)]
        done = await _signal_when(lambda: bool(sim.tasks), signum, command, sim)
    (task_id,) = sim.tasks
    assert done.returncode == 130, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("interrupted\n")
    assert f"`kling-async download {task_id} --model kling-v3-omni-std --out DIR`" in done.stderr


async def test_a_generate_interrupted_while_its_post_is_on_the_wire_names_the_task_the_post_created(
    tmp_path: Path,
) -> None:
    async with Simulator(time_scale=1.0) as sim:
        sim.queue_fault("latency", seconds=1.0)  # the POST arrives, and its task is created a second later
        command = [*FOREGROUND, "generate", "a fox", "--out", str(tmp_path)]
        done = await _signal_when(lambda: sim.counters.posts == 1, signal.SIGTERM, command, sim)
    (task_id,) = sim.tasks
    assert done.returncode == 130, done.stderr
    assert f"`kling-async download {task_id} --model kling-v3-omni-std --out DIR`" in done.stderr
    assert "client.task(" not in done.stderr  # the library's words for it are not the command's


async def test_a_hangup_stops_a_batch_without_waiting_for_the_tasks_in_flight_and_writes_the_report(
    tmp_path: Path,
) -> None:
    # Generations of 30-60 s: a first Ctrl-C would wait for them; with its terminal gone nobody would.
    async with Simulator(time_scale=1.0, generation_seconds=(30.0, 60.0)) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(6)])
        command = [*FOREGROUND, "batch", str(jobs), "--out", str(tmp_path / "out")]
        done = await _signal_when(lambda: sim.counters.tasks_created == 6, signal.SIGHUP, command, sim)
    assert done.returncode == 130, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(r["task_id"] for r in report) == sorted(sim.tasks)
    assert {r["status"] for r in report} == {"NOT_RUN"}


async def test_a_batch_started_with_hangups_ignored_runs_on_through_one(tmp_path: Path) -> None:
    # `nohup kling-async batch ...`: the terminal closing is not for it.
    async with Simulator(time_scale=0.005) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(10)])
        out = tmp_path / "out"
        start = (
            "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN);"
            " os.execv(sys.executable, [sys.executable, '-m', 'kling_async', *sys.argv[1:]])"
        )
        command = [sys.executable, "-c", start, "batch", str(jobs), "--out", str(out), *FAST]
        done = await _signal_when(lambda: sim.counters.tasks_created > 0, signal.SIGHUP, command, sim)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert {r["status"] for r in report} == {"COMPLETED"}


async def test_a_download_slower_than_the_download_timeout_ends_its_row_download_failed(
    tmp_path: Path,
) -> None:
    # The sample video in 1 KiB pieces half a second apart takes about 1.5 s, never silent for long.
    async with Simulator(time_scale=0.005, faults=Faults(download_pace=0.5)) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": "slow", "prompt": "a"}])
        args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "--download-timeout", "0.4", *FAST]
        done = await _cli(args, sim)
    assert done.returncode == 1, done.stderr
    [row] = json.loads((tmp_path / "out" / "report.json").read_text())
    assert row["status"] == "DOWNLOAD_FAILED"
    assert "deadline" in row["error"]


async def test_generate_gives_up_a_download_slower_than_the_download_timeout_and_says_how_to_fetch_it(
    tmp_path: Path,
) -> None:
    async with Simulator(time_scale=0.005, faults=Faults(download_pace=0.5)) as sim:
        args = ["generate", "a fox", "--out", str(tmp_path), "--download-timeout", "0.4", *FAST]
        done = await _cli(args, sim)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "deadline" in done.stderr
    (task_id,) = sim.tasks
    assert f"kling-async download {task_id}" in done.stderr


async def test_the_download_command_gives_up_a_download_slower_than_the_download_timeout(
    tmp_path: Path,
) -> None:
    async with Simulator(time_scale=0.005, faults=Faults(download_pace=0.5)) as sim:
        jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
        await _cli(
            ["batch", str(jobs), "--out", str(tmp_path / "out"), "--download-timeout", "0.4", *FAST], sim
        )
        (task_id,) = sim.tasks
        done = await _cli(
            ["download", task_id, "--out", str(tmp_path / "dl"), "--download-timeout", "0.4"], sim
        )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "deadline" in done.stderr


async def test_a_batch_that_cannot_start_writes_no_report(tmp_path: Path) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    done = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out")])  # no API key anywhere
    assert done.returncode == 2
    assert "FREEPIK_API_KEY" in done.stderr
    assert not (tmp_path / "out" / "report.json").exists()


async def test_a_single_task_command_without_an_api_key_is_a_usage_error() -> None:
    done = await _cli(["status", "some-task-id"])
    assert done.returncode == 2
    assert "FREEPIK_API_KEY" in done.stderr


async def test_usage_errors_exit_with_2() -> None:
    done = await _cli(["batch", "examples/jobs.jsonl"])
    assert done.returncode == 2
    assert "--out" in done.stderr


async def test_generate_saves_into_the_out_folder_even_a_new_one(tmp_path: Path) -> None:
    done = await _cli(["generate", "a fox in snow", "--out", str(tmp_path / "new"), "--simulate"])
    assert done.returncode == 0, done.stderr
    saved = Path(done.stdout.strip())
    assert saved.parent == tmp_path / "new"
    assert saved.read_bytes()[4:8] == b"ftyp"


async def test_generate_sends_a_reference_video_to_the_reference_models(tmp_path: Path) -> None:
    args = ["generate", "@Video1 in snow", "--model", "kling-v3-omni-std-reference", "--out", str(tmp_path)]
    done = await _cli([*args, "--video-url", "https://example.com/v.mp4", "--simulate"])
    assert done.returncode == 0, done.stderr
    missing = await _cli([*args, "--simulate"])
    assert missing.returncode == 2
    assert "video_url: required" in missing.stderr


async def test_status_and_download_work_on_a_task_id(sim: Simulator, tmp_path: Path) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST], sim)
    (task_id,) = sim.tasks
    status = await _cli(["status", task_id], sim)
    assert json.loads(status.stdout)["status"] == "COMPLETED"
    saved = await _cli(["download", task_id, "--out", str(tmp_path / "dl")], sim)
    assert Path(saved.stdout.strip()).exists()


async def test_the_list_command_prints_the_familys_newest_tasks_as_json_lines(
    sim: Simulator, tmp_path: Path
) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(3)])
    await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST], sim)
    done = await _cli(["list", "--page-size", "2"], sim)
    assert done.returncode == 0, done.stderr
    newest_first = list(reversed(sim.tasks))[:2]
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"task_id": task_id, "status": "COMPLETED"} for task_id in newest_first
    ]


async def test_the_list_command_refuses_a_page_size_the_api_does_not_take(sim: Simulator) -> None:
    done = await _cli(["list", "--page-size", "101"], sim)
    assert done.returncode == 2
    assert "'--page-size'" in done.stderr
    assert sim.counters.lists == 0


async def test_a_generate_whose_post_got_no_answer_says_how_to_look_for_its_task(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.queue_fault("drop_after_create")  # the task is created, the answer lost
    done = await _cli(["generate", "a fox", "--out", str(tmp_path)], sim)
    assert done.returncode == 1, done.stderr
    assert "`kling-async list --model kling-v3-omni-std`" in done.stderr
    listed = await _cli(["list"], sim)
    assert [json.loads(line)["task_id"] for line in listed.stdout.splitlines()] == list(sim.tasks)


async def test_an_interrupted_generate_whose_post_gets_no_answer_says_how_to_look_for_its_task(
    tmp_path: Path,
) -> None:
    # The POST arrives, waits a second, creates its task and loses the answer: the interrupted command
    # waits for it, and can only say where the task may be.
    async with Simulator(time_scale=1.0, faults=Faults(latency=1.0)) as sim:
        sim.queue_fault("drop_after_create")
        command = [*FOREGROUND, "generate", "a fox", "--out", str(tmp_path)]
        done = await _signal_when(lambda: sim.counters.posts == 1, signal.SIGTERM, command, sim)
    assert len(sim.tasks) == 1
    assert done.returncode == 130, done.stderr
    assert "a POST (kling-v3-omni-std) got no answer" in done.stderr
    assert "`kling-async list --model kling-v3-omni-std`" in done.stderr
    assert "client.list_tasks()" not in done.stderr  # the library's words for it are not the command's


async def test_a_batch_on_an_out_folder_another_batch_is_running_in_is_refused(
    sim: Simulator, tmp_path: Path
) -> None:
    """Two runs at once on one --out would both pay for every row: the second stops before sending, and
    leaves the first run's report alone."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    out = tmp_path / "out"
    out.mkdir()
    async with SQLiteJournal(out / "journal.db"):  # the batch already running
        done = await _cli(["batch", str(jobs), "--out", str(out), *FAST], sim)
    assert done.returncode == 2
    assert "journal.db: in use by another batch" in done.stderr
    assert "Traceback" not in done.stderr
    assert sim.counters.posts == 0
    assert not (out / "report.json").exists()


async def test_a_report_that_cannot_be_written_leaves_the_summary_with_every_task_id(
    sim: Simulator, tmp_path: Path
) -> None:
    """The report's place is taken (as a full disk would refuse it): no traceback, the summary still
    names each row that did not complete with its task id, and the exit code says not all is well."""
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "ok", "prompt": "a"}, {"id": "bad", "prompt": "b [fail]"}]
    )
    out = tmp_path / "out"
    (out / "report.json").mkdir(parents=True)
    done = await _cli(["batch", str(jobs), "--out", str(out), *FAST], sim)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    failed = next(task_id for task_id, task in sim.tasks.items() if "[fail]" in task.payload["prompt"])
    assert f"line 2 (bad) task {failed}:" in done.stderr
    assert "error: the report could not be written" in done.stderr
    assert not (out / "report.json.part").exists()


async def test_a_link_planted_at_the_reports_part_file_is_replaced_not_written_through(
    sim: Simulator, tmp_path: Path
) -> None:
    """Whoever can write into --out cannot have the report overwrite a file elsewhere."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": "ok", "prompt": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("ORIGINAL")
    (out / "report.json.part").symlink_to(victim)
    done = await _cli(["batch", str(jobs), "--out", str(out), *FAST], sim)
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "ORIGINAL"
    assert not (out / "report.json").is_symlink()
    assert json.loads((out / "report.json").read_text())[0]["status"] == "COMPLETED"


async def test_the_summary_says_what_to_do_about_an_uncertain_row_in_command_line_terms(
    sim: Simulator, tmp_path: Path
) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": "lost", "prompt": "a"}])
    sim.queue_fault("drop_after_create")  # the task is created, its answer lost
    await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST], sim)
    again = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST], sim)
    assert again.returncode == 1
    assert "1 row(s) UNCERTAIN" in again.stderr
    assert "--resubmit-uncertain" in again.stderr
    assert sim.counters.posts == 1


async def test_a_rerun_whose_journal_was_deleted_is_refused_rather_than_paying_again(
    sim: Simulator, tmp_path: Path
) -> None:
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}])
    out = tmp_path / "out"
    await _cli(["batch", str(jobs), "--out", str(out), *FAST], sim)
    (out / "journal.db").unlink()
    again = await _cli(["batch", str(jobs), "--out", str(out), *FAST], sim)
    assert again.returncode == 2
    assert "is the report of an earlier run, but there is no journal at" in again.stderr
    assert "Point --journal at that run's journal" in again.stderr
    assert sim.counters.posts == 2


async def test_a_task_that_fails_is_one_error_line_from_generate(sim: Simulator, tmp_path: Path) -> None:
    done = await _cli(["generate", "a fox [fail]", "--out", str(tmp_path), *FAST], sim)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: task ")


async def test_generate_into_an_out_folder_that_cannot_be_made_sends_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    done = await _cli(["generate", "a fox", "--out", str(tmp_path / "a-file" / "sub"), *FAST], sim)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: --out {tmp_path / 'a-file' / 'sub'}: ")
    assert sim.counters.posts == 0


async def test_a_video_generate_cannot_save_names_the_command_that_fetches_it(
    sim: Simulator, tmp_path: Path
) -> None:
    """The task was paid for: the error says how to get its video without paying again."""
    sim.faults = Faults(cut_download_after=1000, no_range=True)  # every transfer is cut, none resumes
    done = await _cli(["generate", "a fox", "--out", str(tmp_path), *FAST], sim)
    [task_id] = sim.tasks
    assert done.returncode == 1
    assert f"kling-async download {task_id} --model kling-v3-omni-std --out DIR" in done.stderr


async def test_an_unknown_task_is_one_error_line_from_status(sim: Simulator) -> None:
    done = await _cli(["status", "00000000-0000-4000-8000-000000000000"], sim)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: ")


async def test_a_task_id_that_cannot_be_one_is_a_usage_error_from_download(sim: Simulator) -> None:
    done = await _cli(["download", "../x"], sim)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: task_id: ")


def test_the_progress_display_redraws_in_place_on_a_terminal(tmp_path: Path) -> None:
    """On a pseudo-terminal the bar uses control codes and ends with the summary table."""
    controller, terminal = pty.openpty()
    command = [
        sys.executable,
        "-m",
        "kling_async",
        "batch",
        "examples/jobs.jsonl",
        "--out",
        str(tmp_path),
        "--simulate",
    ]
    process = subprocess.Popen(
        command, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env={**_env(), "COLUMNS": "120"}
    )
    os.close(terminal)
    output = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=30) == 0
    os.close(controller)
    text = output.decode(errors="replace")
    assert "\x1b[" in text
    assert "12/12" in text
    assert "COMPLETED" in text


async def test_a_wrong_key_sends_no_doomed_post_for_the_other_rows(sim: Simulator, tmp_path: Path) -> None:
    """A batch run with a key the API refuses stops posting at the first 401 and says to fix the key."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"clip {i}"} for i in range(40)])
    env = {**_env(sim), "FREEPIK_API_KEY": "not-the-key"}
    done = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "kling_async",
            "batch",
            str(jobs),
            "--out",
            str(tmp_path / "out"),
            "--concurrency",
            "2",
        ],
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert sim.counters.posts <= 2  # only what was already on the wire with the first refusal
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report) == 40
    assert all("fix the API key" in record["error"] for record in report[2:])


async def test_the_progress_counts_a_completed_task_whose_video_is_on_its_way_as_downloading(
    sim: Simulator,
) -> None:
    """Not as generating: a slow file host must not look like a slow generation."""
    progress = BatchProgress(Console(file=io.StringIO()), total=2, live=False)
    async with KlingClient("sim-key", sim.url, poll=FAST_POLL) as client, progress.watching(client):
        handle = await client.submit(OmniRequest(prompt="a fox"))
        await handle.wait()
        await anyio.wait_all_tasks_blocked()  # the progress has taken every event
        counts = progress.counts()
    assert "0 generating · 1 downloading · 1 queued" in counts


def test_once_stopped_the_progress_counts_the_rows_left_and_those_stopped_unsent_as_not_run() -> None:
    """After a first Ctrl-C no row waits to be sent: "queued" would say they will run."""
    progress = BatchProgress(Console(file=io.StringIO()), total=5, live=False)
    progress.finished(Outcome(index=0, key="a", error=NotSubmittedError("not sent")))
    progress.stopped = True
    assert "· 5 not run" in progress.counts()
    assert "queued" not in progress.counts()


async def test_the_librarys_warnings_are_lines_of_the_commands_screen(sim: Simulator, tmp_path: Path) -> None:
    """Printed through the console the progress is drawn on (a raw line beside a live bar is drawn over),
    each one line saying what it is."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a fox"}])
    done = await anyio.run_process(
        [sys.executable, "-m", "kling_async", "batch", str(jobs), "--out", str(tmp_path / "out"), *FAST],
        env={**_env(sim), "FREEPIK_API_KEY": "not-the-key"},
        cwd=ROOT,
        check=False,
    )
    assert "error: the API refused the key (HTTP 401: Invalid API key)" in done.stderr.decode()
