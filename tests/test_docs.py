"""The documentation tells the truth: every Python sample runs, and the API reference is complete.

Fenced code blocks in ``README.md`` and ``docs/**/*.md`` follow one convention:

- `` ```python `` is a complete program. Each one runs as a script, in a fresh process and an empty
  working directory, with ``FREEPIK_API_KEY=sim-key`` and ``KLING_BASE_URL`` pointing at a
  ``Simulator`` that the test started, and must exit with status 0. Samples therefore build their client
  as a reader would, ``KlingClient()``, with the key and the address from the environment (or start a
  ``Simulator`` of their own, where the page is about the simulator).
- `` ```py `` is a fragment: a signature, or code that needs an application around it. It is compiled
  (top-level ``await`` allowed) so that a typo still fails, but not run.
- Any other language (``bash``, ``console``, ``json``, ``sql``, ...) is not checked here.

Samples keep the library's defaults: a handle's first status check comes 15 s after submission. Rather
than bend what the reader sees, each program runs on a fast clock: ``time.monotonic`` (which the event
loop and kling-async read) runs ``SPEED`` times faster than the wall clock, and the event loop's waits
for I/O shrink by the same factor, so 15 s of the program's time pass in 0.3 s. Nothing in the library
or the sample changes; the test's simulator, on the real clock, finishes a 60 s generation in 120 ms,
before the program's first check. A program that starts a ``Simulator`` of its own runs it on the same
fast clock, so its own time scale still holds.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import kling_async
import kling_async.testing
from kling_async import KlingClient, PollPolicy, RetryPolicy, Timeouts
from kling_async.testing import Faults, Simulator, SimulatorCounters

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
SPEED = 50.0
# Programs run at once (each with its own simulator).
PARALLEL = 3
# The test's simulator, on the real clock: a 60 s generation takes 120 ms, well before a program's first
# check (15 s of its fast clock, 0.3 s of real time).
TIME_SCALE = 0.002
# Seconds of real time a sample may take before it counts as hung.
SAMPLE_DEADLINE = 60.0

# Run as `python -c HARNESS SPEED SCRIPT`: make the library's clock fast, then run SCRIPT as __main__. Only
# the library's waits (polling, backoff, pacing) run fast; HTTP timeouts stay in real seconds, so a loaded
# machine cannot make a sample's request time out (at 50x, the 30 s read timeout was 0.6 s).
HARNESS = textwrap.dedent(
    """
    import runpy, sys, time

    import anyio

    from kling_async._clock import SystemClock

    speed = float(sys.argv[1])
    origin = time.monotonic()

    def fast_now(self):
        return origin + (time.monotonic() - origin) * speed

    async def fast_sleep(self, seconds):
        await anyio.sleep(max(0.0, seconds) / speed)

    def fast_move_on_after(self, seconds):
        return anyio.move_on_after(seconds / speed)

    SystemClock.now = fast_now
    SystemClock.sleep = fast_sleep
    SystemClock.move_on_after = fast_move_on_after
    script = sys.argv[2]
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")
    """
)

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, and its code."""

    where: str
    lang: str
    code: str


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _blocks() -> list[Block]:
    blocks = []
    for path in _markdown_files():
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            body = textwrap.dedent(match["body"]) if match["indent"] else match["body"]
            blocks.append(Block(f"{path.relative_to(ROOT)}:{line}", match["lang"], body))
    return blocks


def _programs() -> dict[str, list[str]]:
    """Each distinct ``python`` program and every place it appears (the README's is on the home page too)."""
    programs: dict[str, list[str]] = {}
    for block in _blocks():
        if block.lang == "python":
            programs.setdefault(block.code, []).append(block.where)
    return programs


PROGRAMS = _programs()
FRAGMENTS = [block for block in _blocks() if block.lang == "py"]


def _env(sim: Simulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPIK", "MAGNIFIC", "KLING"))}
    env.update(FREEPIK_API_KEY="sim-key", KLING_BASE_URL=sim.url, PYTHONPATH=str(ROOT))
    return env


@dataclass(frozen=True)
class Run:
    """How one sample program ended."""

    returncode: int
    output: str
    duplicate_payloads: int


async def _run_program(code: str, where: Path) -> Run:
    """Run one program in ``where`` against a simulator of its own, on the fast clock."""
    script = where / "sample.py"
    script.write_text(code, encoding="utf-8")
    work = where / "work"
    work.mkdir()
    async with Simulator(time_scale=TIME_SCALE) as sim:
        with anyio.move_on_after(SAMPLE_DEADLINE) as deadline:
            done = await anyio.run_process(
                [sys.executable, "-c", HARNESS, str(SPEED), str(script)], env=_env(sim), cwd=work, check=False
            )
        if deadline.cancelled_caught:
            return Run(-1, f"still running after {SAMPLE_DEADLINE:g} s", 0)
        output = done.stdout.decode() + done.stderr.decode()
        return Run(done.returncode, output, len(sim.counters.duplicate_payloads()))


_PROGRAM_TEST = "test_the_sample_program_runs_against_the_simulator"


@pytest.fixture(scope="module")
def program_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every selected sample program, a few at a time: they mostly wait, so this saves most of the time."""
    selected = [
        str(item.callspec.params["code"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == _PROGRAM_TEST
        and hasattr(item, "callspec")
    ]
    runs: dict[str, Run] = {}

    async def run_all() -> None:
        slots = anyio.Semaphore(PARALLEL)

        async def run_one(code: str) -> None:
            async with slots:
                runs[code] = await _run_program(code, tmp_path_factory.mktemp("sample"))

        async with anyio.create_task_group() as tg:
            for code in dict.fromkeys(selected):
                tg.start_soon(run_one, code)

    anyio.run(run_all)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("code", list(PROGRAMS), ids=[places[0] for places in PROGRAMS.values()])
def test_the_sample_program_runs_against_the_simulator(code: str, program_runs: dict[str, Run]) -> None:
    """A ```python block runs unchanged, with the library's defaults, and exits 0; no task is paid twice."""
    run = program_runs[code]
    places = ", ".join(PROGRAMS[code])
    assert run.returncode == 0, f"{places} exited {run.returncode}\n{run.output}"
    assert run.duplicate_payloads == 0, f"{places} created a task twice"


@pytest.mark.parametrize("block", FRAGMENTS, ids=[block.where for block in FRAGMENTS])
def test_the_fragment_compiles(block: Block) -> None:
    """A ```py fragment is at least valid Python (top-level await allowed)."""
    compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


def test_the_docs_have_a_runnable_program_on_every_page_that_promises_one() -> None:
    """The quickstart and the batch, reliability, webhooks, resume and testing guides each run a program."""
    pages = {place.split(":")[0] for places in PROGRAMS.values() for place in places}
    for page in ("quickstart.md", "batch.md", "webhooks.md", "resume.md", "testing.md", "reliability.md"):
        assert any(p.endswith("/" + page) for p in pages), page


def test_every_python_block_is_a_program_or_a_fragment() -> None:
    """No Python hides under another tag (``python3``, ``pycon``) where it would escape both checks."""
    stray = [b.where for b in _blocks() if b.lang.lower() in {"python3", "py3", "pycon", "pyi", "ipython"}]
    assert stray == []


# -- the API reference ---------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^::: *(?P<name>[\w.]+) *$", re.MULTILINE)


def _documented() -> list[str]:
    return [
        match["name"]
        for page in sorted((DOCS / "reference").glob("*.md"))
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8"))
    ]


def test_the_api_reference_documents_exactly_the_public_names() -> None:
    """One mkdocstrings directive per name of ``__all__`` (package and simulator), and nothing else."""
    public = [f"kling_async.{name}" for name in kling_async.__all__]
    public += [f"kling_async.testing.{name}" for name in kling_async.testing.__all__]
    documented = _documented()
    assert sorted(documented) == sorted(set(documented)), "a name is documented twice"
    assert set(documented) == set(public)


def test_directives_appear_only_on_reference_pages() -> None:
    """Guides link to the reference instead of rendering (and so duplicating) API entries."""
    elsewhere = [
        str(page.relative_to(ROOT))
        for page in DOCS.rglob("*.md")
        if page.parent.name != "reference" and _DIRECTIVE.search(page.read_text(encoding="utf-8"))
    ]
    assert elsewhere == []


def test_every_page_is_in_the_navigation() -> None:
    """mkdocs.yml's nav lists every page, and nothing that does not exist."""
    nav = set(
        re.findall(r"([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.MULTILINE)
    )
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert nav == pages


# -- the numbers in the guides are the code's -----------------------------------------------------------


def _section(page: str, heading: str) -> str:
    """One ``## heading`` section of a page, up to the next."""
    text = (DOCS / page).read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _cell(section: str, name: str) -> str:
    """The second cell of the table row that documents ``name`` (its default, in these tables)."""
    match = re.search(rf"^\| `{re.escape(name)}` \| ([^|]*) \|", section, re.MULTILINE)
    assert match is not None, f"no table row for {name!r}"
    return match[1]


def _shown(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.mark.parametrize(
    ("heading", "policy"), [("Polling", PollPolicy()), ("Retries", RetryPolicy()), ("Timeouts", Timeouts())]
)
def test_the_policy_tables_show_the_code_defaults(heading: str, policy: object) -> None:
    """Each field of PollPolicy, RetryPolicy and Timeouts has a row with its default in bold."""
    section = _section("guides/reliability.md", heading)
    assert dataclasses.is_dataclass(policy)
    for field in dataclasses.fields(policy):
        assert f"**{_shown(getattr(policy, field.name))}**" in _cell(section, field.name), field.name


@pytest.mark.parametrize(
    ("page", "heading", "signature"),
    [
        ("configuration.md", "Client options", inspect.signature(KlingClient)),
        ("guides/testing.md", "Options", inspect.signature(Simulator)),
    ],
)
def test_the_option_tables_list_every_parameter_with_its_default(
    page: str, heading: str, signature: inspect.Signature
) -> None:
    """KlingClient's and Simulator's tables have a row per parameter, starting with its real default."""
    section = _section(page, heading)
    for name, parameter in signature.parameters.items():
        assert _cell(section, name).startswith(f"`{_shown(parameter.default)}`"), name


def test_the_faults_and_counters_tables_are_complete() -> None:
    """Every Faults field (with its default) and every counter has a row in the testing guide."""
    faults, counters = Faults(), SimulatorCounters()
    section = _section("guides/testing.md", "Faults")
    for name in faults.__struct_fields__:
        assert _cell(section, name).startswith(f"`{_shown(getattr(faults, name))}`"), name
    section = _section("guides/testing.md", "Counters")
    for name in counters.__struct_fields__:
        _cell(section, name)


def test_the_guides_state_the_engines_constants() -> None:
    """The limiter's AIMD numbers, the poll schedule, sweeping and --simulate's scale are the code's."""
    from kling_async import _cli, _limits, _tracker

    def words(page: str, heading: str) -> str:
        return " ".join(_section(page, heading).split())

    limiter = words("guides/reliability.md", "The limiter")
    assert f"**{_limits.DECREASE:g} times**" in limiter
    assert f"probes upwards by {_limits._PROBE * 100:g}% per second" in limiter
    assert f"never goes below {_limits._MIN_RATE:g} requests per second" in limiter
    policy, delays, elapsed = PollPolicy(), [], 0.0
    for checks in range(5):
        step = (
            policy.initial if checks == 0 else min(policy.maximum, policy.initial * policy.multiplier**checks)
        )
        elapsed += step
        delays.append(f"{elapsed:g}")
    assert ", ".join(delays) in words("guides/reliability.md", "Polling")
    assert f"Once {_tracker.SWEEP_MIN_TASKS} or more tasks" in words(
        "guides/batch.md", "How a batch checks statuses"
    )
    assert f"at {_cli.SIMULATED_TIME_SCALE:g} real seconds per simulated second" in words("cli.md", "batch")


# -- the command line page -------------------------------------------------------------------------------


def test_the_cli_page_names_every_command_and_option() -> None:
    """Each command of ``kling-async`` and each of its options appears in docs/cli.md."""
    from kling_async._cli import cli

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = []
    for name, command in cli.commands.items():
        if f"kling-async {name}" not in page:
            missing.append(name)
        for param in command.params:
            missing += [f"{name} {flag}" for flag in param.opts if flag.startswith("--") and flag not in page]
    assert missing == []


# -- the site builds -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no broken link, no unknown name, no page left out."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
