"""Bad input and bad options: exit code 2 and one line naming the option or field and the rule."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kling_async._cli import cli
from kling_async.testing import Simulator
from tests.test_cli import FAST, _cli, _write_jobs

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(time_scale=0.001) as simulator:
        yield simulator


def _error_line(stderr: str) -> str:
    """The one line that says what is wrong (click puts its usage lines before it)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, stderr
    return lines[0]


FILES = {
    "not UTF-8": ("jobs.csv", b"id,prompt\nc1,caf\xe9\n", "not UTF-8 text"),
    "a CSV cell over 131,072 characters": (
        "jobs.csv",
        b"id,prompt\nc1," + b"x" * 140_000 + b"\n",
        "jobs.csv:2: prompt: at most 2500 characters",
    ),
    "a deeply nested JSON line": ("jobs.jsonl", b'{"prompt": ' + b"[" * 100_000 + b"\n", "nested too deeply"),
    "a number where a string is due": (
        "jobs.jsonl",
        b'{"prompt": "a", "duration": 5}\n',
        "jobs.jsonl:1: duration",
    ),
    "a 5,000-digit integer": (
        "jobs.jsonl",
        b'{"prompt": "a", "cfg_scale": ' + b"9" * 5000 + b"}\n",
        "jobs.jsonl:1",
    ),
    "a stray CSV quote that would swallow the rows after it": (
        "jobs.csv",
        b'id,prompt\na,"x\nb,y\nc,z\n',
        "line 2: not valid CSV: unexpected end of data",
    ),
    "a CSV header naming a column twice": ("jobs.csv", b"id,prompt,prompt\nb,x,y\n", "names 'prompt' twice"),
    "a CSV header with a nameless column": (
        "jobs.csv",
        b",prompt\na,x\n",
        "column 1 of the header has no name",
    ),
    "an id that is a JSON list": (
        "jobs.jsonl",
        b'{"id": ["a"], "prompt": "x"}\n',
        "jobs.jsonl:1: id: a non-empty string",
    ),
    "an id that is a JSON boolean": (
        "jobs.jsonl",
        b'{"id": true, "prompt": "x"}\n',
        "jobs.jsonl:1: id: a non-empty string",
    ),
    "an empty id": ("jobs.jsonl", b'{"id": "", "prompt": "x"}\n', "jobs.jsonl:1: id: a non-empty string"),
}


@pytest.mark.parametrize("case", FILES, ids=list(FILES))
async def test_a_broken_row_is_named_with_its_line_by_batch_and_validate_alike(
    case: str, tmp_path: Path
) -> None:
    """Each kind of broken file is a usage error that says where and what, in batch and validate alike."""
    name, content, message = FILES[case]
    jobs = tmp_path / name
    jobs.write_bytes(content)
    for command in (
        ["batch", str(jobs), "--out", str(tmp_path / "out"), "--simulate"],
        ["validate", str(jobs)],
    ):
        done = await _cli(command)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert message in done.stdout + done.stderr


BATCH_OPTIONS = {
    "--rps 0": (["--rps", "0"], "'--rps'"),
    "--concurrency 0": (["--concurrency", "0"], "'--concurrency'"),
    "--max-in-flight 0": (["--max-in-flight", "0"], "'--max-in-flight'"),
    "--task-timeout 0": (["--task-timeout", "0"], "'--task-timeout'"),
    "--poll-initial -1": (["--poll-initial", "-1"], "'--poll-initial'"),
    "--poll-maximum 0": (["--poll-maximum", "0"], "'--poll-maximum'"),
    "--rps nan": (["--rps", "nan"], "'--rps'"),
    "--rps 1e-300": (["--rps", "1e-300"], "'--rps'"),
    "--task-timeout inf": (["--task-timeout", "inf"], "'--task-timeout'"),
    "--poll-initial nan": (["--poll-initial", "nan"], "'--poll-initial'"),
    "--download-timeout inf": (["--download-timeout", "inf"], "'--download-timeout'"),
    "--journal in a missing folder": (["--journal", "/nonexistent/x.db"], "--journal"),
}


@pytest.mark.parametrize("case", BATCH_OPTIONS, ids=list(BATCH_OPTIONS))
async def test_a_bad_batch_option_is_one_line_naming_it(case: str, tmp_path: Path) -> None:
    """An out-of-range batch option exits 2 before anything runs, with one line naming it and its rule."""
    options, name = BATCH_OPTIONS[case]
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    done = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), "--simulate", *options])
    assert done.returncode == 2
    assert name in _error_line(done.stderr)
    assert not (tmp_path / "out" / "report.json").exists()


SIMULATE_OPTIONS = {
    "--port 70000": (["--port", "70000"], "'--port'"),
    "--fail-rate 2": (["--fail-rate", "2"], "'--fail-rate'"),
    "--error-rate -1": (["--error-rate", "-1"], "'--error-rate'"),
    "--time-scale -1": (["--time-scale", "-1"], "'--time-scale'"),
    "--rate-limit 0": (["--rate-limit", "0"], "'--rate-limit'"),
    "--host 999.1.1.1": (["--host", "999.1.1.1", "--port", "0"], "--host 999.1.1.1"),
}


@pytest.mark.parametrize("case", SIMULATE_OPTIONS, ids=list(SIMULATE_OPTIONS))
async def test_a_bad_simulate_option_is_one_line_naming_it(case: str) -> None:
    """``simulate`` refuses an impossible option with one line naming it, instead of a traceback."""
    options, name = SIMULATE_OPTIONS[case]
    done = await _cli(["simulate", *options])
    assert done.returncode == 2
    assert name in _error_line(done.stderr)


async def test_simulate_on_a_busy_port_says_so(sim: Simulator) -> None:
    """A port already in use is a usage error naming the port, not a traceback."""
    port = sim.url.rsplit(":", 1)[1]
    done = await _cli(["simulate", "--port", port])
    assert done.returncode == 2
    line = _error_line(done.stderr)
    assert f"--port {port}" in line
    assert "in use" in line


async def test_validate_and_batch_both_refuse_an_empty_file(tmp_path: Path) -> None:
    """A file without rows is the same usage error for validate and batch."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n")
    checked = await _cli(["validate", str(jobs)])
    ran = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), "--simulate"])
    assert checked.returncode == ran.returncode == 2
    assert "jobs.jsonl: no rows to run" in checked.stderr
    assert "jobs.jsonl: no rows to run" in ran.stderr


async def test_a_csv_row_with_more_cells_than_columns_is_invalid(tmp_path: Path) -> None:
    """Extra CSV cells are not dropped silently: the row is invalid, named by its line."""
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("id,prompt\nc1,a fox,in snow\nc2,a cat\n")
    done = await _cli(["validate", str(jobs)])
    assert done.returncode == 2
    assert "jobs.csv:2: 3 cells, but the header names 2 columns" in done.stdout
    assert "1 valid, 1 invalid" in done.stdout


async def test_a_csv_row_spanning_lines_is_named_by_its_first_line(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text('id,prompt\nc1,"a fox\n' + "x" * 2501 + '"\nc2,a cat\n')
    done = await _cli(["validate", str(jobs)])
    assert "jobs.csv:2: prompt: at most 2500 characters" in done.stdout


async def test_the_summary_names_an_invalid_row_by_its_line_alone(sim: Simulator, tmp_path: Path) -> None:
    """A row without a key is `line 2: ...` in the summary, never `line 2 (None)`."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "ok"}, {"prompt": "x" * 2501}])
    done = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), "--skip-invalid", *FAST], sim)
    assert "line 2: prompt: at most 2500 characters" in done.stderr
    assert "None" not in done.stderr


async def test_a_batch_without_ids_prints_no_library_advice(sim: Simulator, tmp_path: Path) -> None:
    """Rows without ids get content keys: no warning about positions or `Job` reaches the operator."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    done = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out"), *FAST], sim)
    assert done.returncode == 0, done.stderr
    assert "Job" not in done.stderr
    assert "position" not in done.stderr


async def test_a_missing_api_key_speaks_the_commands_language(tmp_path: Path) -> None:
    """No API key: the message names the variables and --simulate, not a Python argument."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
    done = await _cli(["batch", str(jobs), "--out", str(tmp_path / "out")])
    assert done.returncode == 2
    assert "api_key=" not in done.stderr
    assert "FREEPIK_API_KEY" in _error_line(done.stderr)


async def test_simulate_help_says_real_seconds_per_simulated_second() -> None:
    """--time-scale is explained the right way round."""
    done = await _cli(["simulate", "--help"])
    assert "Real seconds per simulated second" in " ".join(done.stdout.split())


async def test_command_summaries_in_help_are_whole() -> None:
    """`kling-async --help` lists each command with a whole summary, not one cut with '...'."""
    done = await _cli(["--help"])
    commands = done.stdout.split("Commands:", 1)[1]
    assert "..." not in commands
    assert len(commands.strip().splitlines()) == len(cli.commands)  # one line each


async def test_generate_takes_the_poll_options_for_a_fast_server(sim: Simulator, tmp_path: Path) -> None:
    """generate --poll-initial/--poll-maximum: against a simulator, check as early as tasks finish."""
    done = await _cli(["generate", "a fox", "--out", str(tmp_path), *FAST], sim)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).exists()
    assert json.loads((await _cli(["status", Path(done.stdout.strip()).stem], sim)).stdout)["status"] == (
        "COMPLETED"
    )
