"""The ``kling-async`` command: bulk generation from a file, and a few single-task tools.

Exit codes: 0 everything succeeded; 1 some items failed; 2 usage error or invalid input; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import functools
import io
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn, cast

import anyio
import msgspec

try:
    import click
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - exercised only without the [cli] extra
    raise SystemExit(
        f"the kling-async command needs its extra: pip install 'kling-async[cli]' ({exc.name} is missing)"
    ) from exc

from ._batch import Batch, Job, Outcome, job_key, legacy_job_key
from ._client import KEY_VARIABLES, KlingClient
from ._clock import SYSTEM_CLOCK
from ._endpoints import DEFAULT_MODEL, ENDPOINTS, endpoint_for
from ._errors import (
    ClaimedElsewhere,
    DownloadError,
    InvalidRequestError,
    JournalError,
    KlingError,
    NotSubmittedError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
)
from ._events import Event, EventStream, RequestRetried, TaskSubmitted
from ._journal import BatchJournal, Journal
from ._journals import open_journal
from ._models import Kling3Request, encode_request, request_from_dict
from ._polling import PollPolicy
from ._progress import BatchProgress
from ._report import RunTimeline, write_reports
from ._transport import Timeouts
from ._webhooks import _signing_key

__all__ = ["cli", "load_jobs", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# A row's report status when another worker sharing a PostgreSQL journal holds it.
ELSEWHERE = "ELSEWHERE"

_EVENT_ENCODER = msgspec.json.Encoder()

# With --simulate, a 60 s generation takes 60 * SIMULATED_TIME_SCALE seconds.
SIMULATED_TIME_SCALE = 0.02

# After the first retry notice, at most one line this many seconds apart.
_RETRY_NOTICE_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    job: Job  # its id is always set: the row's ``id`` column, else a key derived from its content
    content_keyed: bool = False


@dataclass(frozen=True, slots=True)
class _RowError:
    line: int
    message: str


class _FileError(Exception):
    """The input cannot be read at all (not UTF-8, broken CSV quoting): a usage error naming the line."""


# A CSV cell may hold a long prompt or an inline list; the csv module's default cap (131,072 characters)
# would stop the file with a traceback instead of letting validation name the field and its limit.
_CSV_FIELD_LIMIT = 64 * 1024 * 1024


def _parse_json(text: str) -> Any:
    """json.loads, with every way it can fail as a ValueError (deep nesting and huge integers included)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ValueError("not valid JSON here: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ValueError(f"not valid JSON here: {exc}") from None


def _parse_cell(value: str) -> Any:
    text = value.strip()
    if text[:1] in "[{":
        try:
            return _parse_json(text)
        except ValueError:
            return text
    return text


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, the row's fields or what is wrong with it) for each non-empty row of a JSONL or CSV file.

    Raises:
        _FileError: the file is not UTF-8 text, or its CSV cannot be parsed.
    """
    line = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            if path.suffix.lower() == ".csv":
                csv.field_size_limit(_CSV_FIELD_LIMIT)
                reader = csv.reader(handle, strict=True)  # a stray quote is an error, not rows swallowed
                header = [name.strip() for name in next(reader, [])]
                _check_header(header)
                line = reader.line_num
                for record in reader:
                    # A record may span lines (a quoted newline): it is named by its first.
                    start, line = line + 1, reader.line_num
                    if len(record) > len(header):
                        yield start, f"{len(record)} cells, but the header names {len(header)} columns"
                        continue
                    fields = {
                        name: _parse_cell(cell)
                        for name, cell in zip(header, record, strict=False)
                        if name and cell.strip()
                    }
                    if fields:
                        yield start, fields
                return
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    data = _parse_json(text)
                except ValueError as exc:
                    yield line, str(exc)
                    continue
                if not isinstance(data, dict):
                    yield line, "each line must be a JSON object"
                    continue
                yield line, data
    except UnicodeDecodeError as exc:
        raise _FileError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} after line {line})") from None
    except csv.Error as exc:
        raise _FileError(f"line {line + 1}: not valid CSV: {exc}") from None


def _check_header(header: list[str]) -> None:
    """A CSV header names each column once: a cell under a nameless or repeated name would be lost."""
    seen: set[str] = set()
    for column, name in enumerate(header, start=1):
        if not name:
            raise _FileError(f"line 1: column {column} of the header has no name")
        if name in seen:
            raise _FileError(f"line 1: the header names {name!r} twice")
        seen.add(name)


def _to_job(fields: dict[str, Any], default_model: str, *, strict: bool = True) -> Job:
    fields = dict(fields)
    job_id = fields.pop("id", None)
    if job_id is not None and (isinstance(job_id, bool) or not isinstance(job_id, str | int) or job_id == ""):
        raise InvalidRequestError.for_field(
            "id", f"a non-empty string or a whole number, got {json.dumps(job_id)}"
        )
    model = str(fields.pop("model", None) or default_model)
    endpoint = endpoint_for(model)
    request = request_from_dict(fields, endpoint.request_type, strict=strict)
    return Job(request, id=str(job_id) if job_id is not None else None, model=endpoint.model)


def load_jobs(path: Path, default_model: str) -> tuple[list[_Row], list[_RowError]]:
    """Read and validate every row, giving each valid one its key; nothing is sent.

    Raises:
        _FileError: the file cannot be read as text rows at all.
    """
    rows: list[_Row] = []
    errors: list[_RowError] = []
    ids: dict[str, int] = {}
    occurrences: Counter[tuple[str, bytes]] = Counter()
    for line, fields in _read_rows(path):
        if isinstance(fields, str):
            errors.append(_RowError(line, fields))
            continue
        try:
            # CSV cells are all text: let "true" and "0.5" become a bool and a number.
            job = _to_job(fields, default_model, strict=path.suffix.lower() != ".csv")
        except InvalidRequestError as exc:
            errors.append(_RowError(line, str(exc)))
            continue
        if job.id is not None:
            if job.id in ids:
                errors.append(_RowError(line, f"id: {job.id!r} is already used on line {ids[job.id]}"))
                continue
            ids[job.id] = line
        else:
            model = job.model or default_model
            # The engine's key for a bare request (content + occurrence among identical rows), made
            # explicit here so that a journal lookup before the run sees the same keys.
            content = (model, encode_request(job.request))
            job = dataclasses.replace(job, id=job_key(job, model, occurrences[content]))
            occurrences[content] += 1
            rows.append(_Row(line, job, content_keyed=True))
            continue
        rows.append(_Row(line, job))
    return rows, errors


def _is_url(journal: str) -> bool:
    """A ``scheme://`` journal (PostgreSQL): read by the batch only, never as an SQLite file."""
    return "://" in journal


async def _check_journal(spec: str) -> None:
    """Open a shared journal and close it again: one that cannot be used is a usage error."""
    async with open_journal(spec):
        pass


def _honour_old_keys(rows: list[_Row], journal: Journal) -> list[_Row]:
    """Rows keyed as an earlier version keyed them (by position among valid rows) when only that key is
    in the journal, so a journal written before content keys still resumes instead of paying again."""
    kept = []
    for index, row in enumerate(rows):
        key = row.job.id
        if row.content_keyed and key is not None and journal.lookup(key) is None:
            model = row.job.model or DEFAULT_MODEL
            old = legacy_job_key(dataclasses.replace(row.job, id=None), model, index)
            if journal.lookup(old) is not None:
                row = _Row(row.line, dataclasses.replace(row.job, id=old), content_keyed=True)
        kept.append(row)
    return kept


@contextlib.asynccontextmanager
async def _client(simulate: bool, **options: Any) -> AsyncIterator[KlingClient]:
    """A client for the real API, or for the built-in simulator started in-process."""
    if not simulate:
        async with KlingClient(**options) as client:
            yield client
        return
    from .testing import Simulator

    scale = SIMULATED_TIME_SCALE
    policy = options.pop("poll", None) or PollPolicy()
    # Every duration shrinks with the simulator's clock; the shape (multiplier, jitter) stays.
    scaled = dataclasses.replace(
        policy,
        initial=policy.initial * scale,
        maximum=policy.maximum * scale,
        timeout=policy.timeout * scale if policy.timeout is not None else None,
        safety_interval=policy.safety_interval * scale,
    )
    async with (
        # A fresh seed per run, so task ids never repeat across runs that share a journal; adopting
        # unknown ids lets a resumed run find the tasks that the previous run's simulator created.
        Simulator(
            time_scale=scale, generation_seconds=(30.0, 120.0), seed=secrets.randbits(32), adopt_unknown=True
        ) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=scaled, **options) as client,
    ):
        yield client


def _options(
    rps: float | None,
    concurrency: int,
    in_flight: int | None,
    poll_initial: float,
    poll_maximum: float,
    timeout: float,
    download_timeout: float,
) -> dict[str, Any]:
    poll = PollPolicy(initial=poll_initial, maximum=poll_maximum, timeout=timeout)
    return {
        "requests_per_second": rps,
        "max_concurrency": concurrency,
        "max_in_flight": in_flight,
        "poll": poll,
        "timeouts": Timeouts(download_deadline=download_timeout),
    }


def _require_key() -> None:
    if not any(os.environ.get(name) for name in KEY_VARIABLES):
        _fail("no API key: set FREEPIK_API_KEY (or MAGNIFIC_API_KEY), or use --simulate where offered")


class _RetryNotices:
    """Tells the operator on stderr that the client is retrying, and why (a closed port is not silence).

    The first retry is shown at once; after it, at most one line every few seconds, with how many
    retries happened in between, so thousands of 503s do not flood the screen.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._shown_at = -math.inf
        self._hidden = 0

    def observe(self, event: Event) -> None:
        if not isinstance(event, RequestRetried):
            return
        now = SYSTEM_CLOCK.now()
        if now - self._shown_at < _RETRY_NOTICE_EVERY:
            self._hidden += 1
            return
        more = f" (+{self._hidden} more retries)" if self._hidden else ""
        self._shown_at, self._hidden = now, 0
        self._console.print(
            f"[yellow]retrying {event.method} {event.path} in {event.delay:.1f} s"
            f" (attempt {event.attempt}): {escape(event.error)}{more}[/yellow]",
            highlight=False,
        )

    async def follow(self, client: KlingClient) -> None:
        async for event in client.events():
            self.observe(event)


class _SingleTask:
    """One run of a single-task command (``generate``, ``status``, ``download``): it follows Ctrl-C,
    SIGTERM and a hangup as one stop, and remembers the tasks its client created, so that an interrupted
    run names them (a task created is paid for, whether or not its video was fetched)."""

    def __init__(self) -> None:
        self.created: list[TaskSubmitted] = []
        # The models of POSTs that got no answer after the command was interrupted: each may have created
        # a task, which only the list of the account's tasks can show.
        self.uncertain: list[str] = []
        self.simulated = False  # its tasks end with the in-process simulator: nothing to name

    def _not_about_a_task(self, record: logging.LogRecord) -> bool:
        # The library's warnings that a task was (or may have been) created for a cancelled caller name it
        # in Python terms (client.task(...), client.list_tasks()); the command names the commands instead.
        model = getattr(record, "uncertain_model", None)
        if model is not None:
            self.uncertain.append(model)
        return model is None and not hasattr(record, "task_id")

    @contextlib.asynccontextmanager
    async def client(self, client: AbstractAsyncContextManager[KlingClient]) -> AsyncIterator[KlingClient]:
        """The command's client, its retries shown on stderr while the body runs."""
        events: EventStream | None = None
        _LOG.addFilter(self._not_about_a_task)
        try:
            async with client as opened:
                events = opened.events()
                async with _retries_shown(opened):
                    yield opened
        finally:
            if events is not None:
                # Read once the client has closed, so that a POST answered while it closed (the caller
                # interrupted, the POST on the wire) is here too. A closed stream gives what it holds
                # without waiting, so this runs even in a cancelled scope.
                self.created += [event async for event in events if isinstance(event, TaskSubmitted)]
            _LOG.removeFilter(self._not_about_a_task)

    def interrupted(self) -> NoReturn:
        lines = ["interrupted"]
        for task in [] if self.simulated else self.created:
            lines.append(
                f"task {task.task_id} ({task.model}) was created and runs on:"
                f" `kling-async status {task.task_id} --model {task.model}` shows it,"
                f" `kling-async download {task.task_id} --model {task.model} --out DIR` fetches its video"
                " once it has completed"
            )
        for model in [] if self.simulated else self.uncertain:
            lines.append(f"a POST ({model}) got no answer: {_look_for_it(model)}")
        click.echo("\n".join(lines), err=True)
        sys.exit(EXIT_INTERRUPTED)


def _look_for_it(model: str) -> str:
    return (
        "it may have created a task, and been paid for; `kling-async list --model"
        f" {model}` shows the account's newest tasks of its family"
    )


def _followed_signals() -> list[signal.Signals]:
    """The signals a command stops on: SIGTERM, and Ctrl-C and a hangup unless it started with them
    ignored (a background job of a script, `cmd &`, ignores Ctrl-C; `nohup cmd` ignores the hangup)."""
    followed = [signal.SIGTERM]
    followed += [s for s in (signal.SIGINT, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    return followed


def _echo_result(
    run: Callable[[_SingleTask], Awaitable[object]], *, as_json: bool = False, needs_key: bool = True
) -> None:
    """Run a single-task command and print its result, or the error with exit code 1.

    Ctrl-C, SIGTERM or a hangup stops it with exit code 130, after a create POST on the wire has been
    answered, and names the task it created; one more at least ``_LEAVE_AFTER`` seconds later leaves at
    once. A missing API key is a usage error (exit 2), as in ``batch``.
    """
    if needs_key:
        _require_key()
    command = _SingleTask()

    async def follow(signals: AsyncIterator[int], run_scope: anyio.CancelScope) -> None:
        stopped = math.inf
        async for _ in signals:
            now = time.monotonic()
            if not run_scope.cancel_called:
                stopped = now
                run_scope.cancel()
            elif now - stopped >= _LEAVE_AFTER:
                click.echo("interrupted; left at once", err=True)
                os._exit(EXIT_INTERRUPTED)

    async def main() -> tuple[bool, object]:
        run_scope = anyio.CancelScope()
        with anyio.open_signal_receiver(*_followed_signals()) as signals, _unwrapped():
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, signals, run_scope)
                result: object = None
                with run_scope:
                    result = await run(command)
                tg.cancel_scope.cancel()
        return run_scope.cancelled_caught, result

    try:
        interrupted, result = anyio.run(main)
    except KeyboardInterrupt:  # a Ctrl-C before the signals were followed
        command.interrupted()
    except InvalidRequestError as exc:  # a bad task id or model: the input, checked before any request
        _fail(str(exc))
    except SubmitUncertainError as exc:
        click.echo(f"error: {exc}\n{_look_for_it(exc.model)}", err=True)
        sys.exit(EXIT_FAILED)
    except (KlingError, RuntimeError) as exc:  # RuntimeError: e.g. downloading a task not finished yet
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if interrupted:
        command.interrupted()
    if isinstance(result, list):  # JSON lines
        for item in result:
            click.echo(json.dumps(item))
    else:
        click.echo(json.dumps(result) if as_json else str(result))


@contextlib.asynccontextmanager
async def _retries_shown(client: KlingClient) -> AsyncIterator[None]:
    """Show the client's retries on stderr while the body runs (single-task commands)."""
    notices = _RetryNotices(_screen())
    with _unwrapped():
        async with anyio.create_task_group() as tg:
            tg.start_soon(notices.follow, client)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()


class _Stderr(io.TextIOBase):
    """stderr for the operator's screen. Once it cannot be written (a full disk, closed), nothing more is
    tried there: what the command does, and its exit code, do not depend on whether anyone can watch."""

    def __init__(self) -> None:
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                sys.stderr.write(text)
            except (OSError, AttributeError):  # AttributeError: no stderr at all
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                sys.stderr.flush()
            except (OSError, AttributeError):
                self.broken = True

    def isatty(self) -> bool:
        return not self.broken and sys.stderr is not None and sys.stderr.isatty()

    def fileno(self) -> int:
        return sys.stderr.fileno()


def _screen() -> Console:
    """The console on stderr: lines are not wrapped (a notice is one line, however long)."""
    return Console(file=cast(IO[str], _Stderr()), soft_wrap=True)


class _ConsoleLog(logging.Handler):
    """The library's warnings and errors, one line each, printed through the console the command draws
    on: above a live progress bar, which a line written to stderr beside it would be drawn over."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.console = _screen()

    def emit(self, record: logging.LogRecord) -> None:
        kind = "error" if record.levelno >= logging.ERROR else "warning"
        try:
            self.console.print(f"[yellow]{kind}:[/yellow] {escape(record.getMessage())}", highlight=False)
        except Exception:
            self.handleError(record)


_LOG = _ConsoleLog()


@contextlib.contextmanager
def _unwrapped() -> Iterator[None]:
    """A task group's body's own error as it was raised, not wrapped in the group it crossed."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _interruptible(command: Callable[..., None]) -> Callable[..., None]:
    """A command that a Ctrl-C, SIGTERM or hangup before its run follows signals itself (reading and
    checking a large file, opening the journal) ends with exit code 130 and one line, not click's
    "Aborted!" (exit 1) or death by the signal. Nothing was sent by then."""

    @functools.wraps(command)
    def interruptible(*args: Any, **kwargs: Any) -> None:
        followed = [s for s in _followed_signals() if s != signal.SIGINT]  # SIGINT raises it already
        previous = {signum: signal.signal(signum, _raise_interrupt) for signum in followed}
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return interruptible


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# After "stop now", a signal this much later leaves at once (one sooner is the same impatient burst).
_LEAVE_AFTER = 2.0


def _make_out(out: Path) -> None:
    """--out made, and checked writable, before anything is sent."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"--out {out}: {exc.strerror or exc}")
    if not os.access(out, os.W_OK | os.X_OK):
        _fail(f"--out {out}: not writable")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _load(file: Path, model: str) -> tuple[list[_Row], list[_RowError]]:
    try:
        return load_jobs(file, model)
    except _FileError as exc:
        _fail(f"{file.name}: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="kling-async")
def cli() -> None:
    """Generate videos with Freepik's Kling 3 API, one or thousands at a time.

    The API key comes from FREEPIK_API_KEY (or MAGNIFIC_API_KEY); --simulate needs none.
    """


_model_option = click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    type=click.Choice(sorted(ENDPOINTS)),
    help="Model (create endpoint).",
)
_simulate_option = click.option(
    "--simulate", is_flag=True, help="Use the built-in simulator in-process (no API key, nothing billed)."
)


class _FiniteRange(click.FloatRange):
    """A ``FloatRange`` that refuses ``nan`` and ``inf`` too: ``nan`` compares false with every bound, so
    a plain range lets it through, and ``inf`` passes any range open above."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return number


_POSITIVE = _FiniteRange(min=0, min_open=True)
# A rate below one request in 100 s: the next token hours away, and a 429's Retry-After hours long (at
# 1e-300, 300 digits).
_RATE = _FiniteRange(min=0.01)
_NOT_NEGATIVE = _FiniteRange(min=0)
_AT_LEAST_ONE = click.IntRange(min=1)
_SHARE = _FiniteRange(0, 1)


def _poll_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--poll-maximum",
        type=_POSITIVE,
        default=PollPolicy().maximum,
        show_default=True,
        help="Longest wait between two status checks, in seconds.",
    )(command)
    return click.option(
        "--poll-initial",
        type=_NOT_NEGATIVE,
        default=PollPolicy().initial,
        show_default=True,
        help="Seconds from submission to the first status check.",
    )(command)


def _download_timeout_option(command: Callable[..., None]) -> Callable[..., None]:
    # A file trickling in never stalls long enough for download_idle: without a deadline, the command
    # would never end.
    return click.option(
        "--download-timeout",
        type=_POSITIVE,
        default=1800.0,
        show_default=True,
        help="Seconds one video's download may take, retries and resumes included.",
    )(command)


@cli.command(short_help="A video for every row of a JSONL or CSV file, with a report.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for videos."
)
@_model_option
@_simulate_option
@click.option("--skip-invalid", is_flag=True, help="Run the valid rows even if some are invalid.")
@click.option(
    "--rps",
    type=_RATE,
    default=None,
    help="Requests per second ceiling, at least 0.01 (default: adapt to 429s).",
)
@click.option(
    "--concurrency", type=_AT_LEAST_ONE, default=16, show_default=True, help="Requests on the wire at once."
)
@click.option(
    "--max-in-flight", type=_AT_LEAST_ONE, default=None, help="Tasks generating at once (default: no cap)."
)
@_poll_options
@click.option(
    "--task-timeout", type=_POSITIVE, default=1800.0, show_default=True, help="Seconds to wait per task."
)
@_download_timeout_option
@click.option(
    "--journal",
    help="An SQLite file, or a postgresql:// URL that several workers share. Default: OUT/journal.db.",
)
@click.option(
    "--resubmit-uncertain", is_flag=True, help="Resend rows whose earlier POST got no answer (may pay twice)."
)
@click.option("--retry-failed", is_flag=True, help="Submit again the rows whose task ended FAILED.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print events and one record per finished row on stdout."
)
@_interruptible
def batch(
    file: Path,
    out: Path,
    model: str,
    simulate: bool,
    skip_invalid: bool,
    rps: float | None,
    concurrency: int,
    max_in_flight: int | None,
    poll_initial: float,
    poll_maximum: float,
    task_timeout: float,
    download_timeout: float,
    journal: str | None,
    resubmit_uncertain: bool,
    retry_failed: bool,
    as_json: bool,
) -> None:
    """Generate a video for every row of FILE (JSONL or CSV) into --out, with a report."""
    rows, errors = _load(file, model)
    console = _screen()
    for error in errors:
        console.print(f"[red]{file.name}:{error.line}[/red]: {escape(error.message)}", highlight=False)
    if errors and not skip_invalid:
        console.print(f"{len(errors)} invalid row(s); nothing was sent (use --skip-invalid to run the rest).")
        sys.exit(EXIT_USAGE)
    if not rows:
        _fail(f"{file.name}: no rows to run")
    if not simulate:
        _require_key()
    journal_spec = journal or str(out / "journal.db")
    if not _is_url(journal_spec) and not Path(journal_spec).exists() and (out / "report.json").is_file():
        # The report of an earlier run without its journal: every row would look new, and be paid again.
        _fail(
            f"{out / 'report.json'} is the report of an earlier run, but there is no journal at"
            f" {journal_spec}: this run would send every row again, paying twice for those it finished."
            " Point --journal at that run's journal (or put it back), use another --out, or delete the"
            " report to start over"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Opened here, before anything is sent: an unusable journal is a usage error, and the rows whose
        # key only an earlier version's journal knows keep that key (closed before the batch opens it).
        # A shared PostgreSQL journal never held such keys: it is only opened and closed, as that check.
        if not _is_url(journal_spec):
            with Journal(journal_spec) as existing:
                rows = _honour_old_keys(rows, existing)
        else:
            anyio.run(_check_journal, journal_spec)
    except OSError as exc:
        _fail(f"--out {out}: {exc.strerror or exc}")
    except JournalError as exc:
        _fail(f"--journal: {exc}")
    run = _BatchRun(
        rows,
        errors,
        out,
        console,
        journal=journal_spec,
        resubmit=resubmit_uncertain,
        retry_failed=retry_failed,
        as_json=as_json,
    )
    try:
        options = _options(
            rps, concurrency, max_in_flight, poll_initial, poll_maximum, task_timeout, download_timeout
        )
    except ValueError as exc:
        _fail(str(exc))
    try:
        anyio.run(run.execute, simulate, options)
    except KlingError as exc:
        _fail(str(exc))
    if run.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    # A row another worker of a shared journal holds is that worker's to finish: not a failure here.
    every_row_done = (
        not errors
        and not run.report_failed
        and len(run.outcomes) == len(rows)
        and all(o.ok or isinstance(o.error, ClaimedElsewhere) for o in run.outcomes.values())
    )
    sys.exit(EXIT_OK if every_row_done else EXIT_FAILED)


class _JsonLines:
    """JSON lines on stdout. A stdout that cannot take them (a reader that went away, ``--json | head -1``;
    a full disk; no stdout at all) ends the output, not the batch: report.json has every row."""

    def __init__(self, console: Console) -> None:
        self.closed = False
        self._console = console

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            if sys.stdout is None:
                raise OSError(errno.EBADF, "closed")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except OSError as exc:
            self.closed = True
            _silence_stdout()
            if not isinstance(exc, BrokenPipeError):  # a reader that left asked for no more
                reason = exc.strerror or exc
                self._console.print(
                    f"[yellow]stdout: {reason}: the JSON lines stop here (report.json has every row)[/yellow]"
                )


def _silence_stdout() -> None:
    """Python flushes stdout once more at exit: aim it at /dev/null, so that flush cannot fail."""
    with contextlib.suppress(OSError, AttributeError, ValueError):  # no stdout, or no descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class _BatchRun:
    """One ``batch`` command: feeds rows to ``client.map``, follows Ctrl-C, writes the reports.

    The first Ctrl-C (or SIGTERM) stops new submissions and lets the tasks in flight finish; the second
    cancels at once. Either way the report lists every row, and the same command resumes.
    """

    def __init__(
        self,
        rows: list[_Row],
        invalid: list[_RowError],
        out: Path,
        console: Console,
        *,
        journal: str,
        resubmit: bool,
        retry_failed: bool,
        as_json: bool,
    ) -> None:
        self.rows = rows
        self.invalid = invalid
        self.out = out
        self.journal = journal
        self.resubmit = resubmit
        self.retry_failed = retry_failed
        self.console = console
        self.as_json = as_json
        self.stdout = _JsonLines(console)
        self.outcomes: dict[int, Outcome] = {}
        self.draining = False
        self.batch: Batch | None = None
        self.progress: BatchProgress | None = None
        self.interrupted = False
        self.report_failed = False
        self.timeline = RunTimeline()

    def jobs(self) -> Iterator[Job]:
        """The rows as jobs, until a first Ctrl-C ends the input."""
        for row in self.rows:
            if self.draining:
                return
            yield row.job

    async def execute(self, simulate: bool, options: dict[str, Any]) -> None:
        # Signals are followed from the first step to the last, the report included: one that came while
        # the run was being torn down would otherwise be a KeyboardInterrupt anywhere in it.
        run = anyio.CancelScope()
        _LOG.console = self.console  # the console its live bar is drawn on
        # Started with SIGINT ignored (a background job of a script, `cmd &`), the command keeps ignoring
        # it, as Python did while it loaded: a Ctrl-C meant for the script's foreground is not for it.
        with anyio.open_signal_receiver(*_followed_signals()) as signals, _unwrapped():
            async with anyio.create_task_group() as watching:
                watching.start_soon(self._follow_signals, signals, run)
                await self._execute(simulate, options, run)
                watching.cancel_scope.cancel()

    async def _execute(self, simulate: bool, options: dict[str, Any], run: anyio.CancelScope) -> None:
        """``run`` (what "stop now" cancels) holds the batch only: the client and the journal around it
        close as usual, so the POSTs on the wire are answered and their task ids recorded."""
        started = False
        try:
            # Opened first, and held for the whole run: a journal another batch holds is refused here,
            # before anything is sent or any report is written (the batch re-enters it). Closed, so
            # committed, before the report reads it.
            async with (
                open_journal(self.journal) as journal,
                _client(simulate, **options) as client,
                anyio.create_task_group() as tg,
            ):
                started = True  # from here on every row gets a record, whatever happens
                self.timeline.start()
                tg.start_soon(self._follow_events, client)
                with run:
                    await self._run(client, journal)
                tg.cancel_scope.cancel()
        finally:
            if started:
                self._report()

    async def _run(self, client: KlingClient, journal: BatchJournal) -> None:
        # JSON lines drawn on the same terminal as a live bar would tear it: they are the display then.
        live = not (self.as_json and sys.stdout is not None and sys.stdout.isatty())
        self.progress = progress = BatchProgress(self.console, total=len(self.rows), live=live)
        async with progress.watching(client):
            self.batch = batch = client.map(
                self.jobs(),
                journal=journal,
                download=self.out,
                resubmit_uncertain=self.resubmit,
                resubmit_failed=self.retry_failed,
            )
            async for outcome in batch:
                self.outcomes[outcome.index] = outcome
                self.timeline.finished(outcome.task_id, _status_of(outcome))
                progress.finished(outcome)
                if self.as_json:
                    record = {"type": "outcome", **self._record(outcome.index)}
                    self.stdout.write(json.dumps(record, separators=(",", ":")))

    async def _follow_signals(self, signals: AsyncIterator[int], run: anyio.CancelScope) -> None:
        """First signal: no new rows, the tasks in flight finish. Second: stop the run now (the report is
        still written). One more, at least ``_LEAVE_AFTER`` seconds after that (those of an impatient
        burst are ignored): leave at once, as a kill would (the journal keeps every task id). A hangup
        stops the run now: the terminal is gone, and nobody is left to wait for the tasks in flight or to
        press Ctrl-C again (the POSTs on the wire are still answered and the report written)."""
        stopped = math.inf
        async for signum in signals:
            self.interrupted = True
            now = time.monotonic()
            if not self.draining:
                self.draining = True
                if self.batch is not None:
                    self.batch.stop_submitting()  # rows waiting for their turn on the wire too
                if self.progress is not None:
                    self.progress.stopped = True
                if signum != signal.SIGHUP:
                    self.console.print(
                        "[yellow]Interrupted: no new submissions; waiting for the tasks in flight."
                        " Ctrl-C again to stop now (running tasks stay reachable; rerun to resume).[/yellow]"
                    )
                    continue
            if not run.cancel_called:
                stopped = now
                self.console.print("[yellow]Stopping now, then writing the report.[/yellow]")
                run.cancel()
            elif now - stopped >= _LEAVE_AFTER:
                self.console.print("[yellow]Left without the report; rerun to resume.[/yellow]")
                self.console.file.flush()
                os._exit(EXIT_INTERRUPTED)  # no cleanup: the journal is committed as it goes

    async def _follow_events(self, client: KlingClient) -> None:
        notices = _RetryNotices(self.console)
        async for event in client.events():
            self.timeline.observe(event)
            notices.observe(event)
            if self.as_json:
                self.stdout.write(_EVENT_ENCODER.encode(event).decode())

    def _record(self, index: int, journal: Journal | None = None) -> dict[str, Any]:
        row = self.rows[index]
        outcome = self.outcomes.get(index)
        record: dict[str, Any] = {"id": row.job.id, "line": row.line, "task_id": None, "status": None}
        if outcome is None:
            # The journal knows the tasks this run (or an earlier one) created for the row.
            entry = journal.lookup(row.job.id) if journal is not None and row.job.id is not None else None
            task_id = entry.task_id if entry is not None else None
            record.update(
                task_id=task_id,
                status="NOT_RUN",
                path=None,
                error="interrupted before this row finished"
                if task_id is not None
                else "not sent: the run was interrupted before this row's POST left",
            )
            return record
        record.update(
            id=outcome.key,
            task_id=outcome.task_id,
            status=_status_of(outcome),
            path=str(outcome.path) if outcome.path is not None else None,
            error=None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}",
        )
        return record

    def _report(self) -> None:
        with contextlib.ExitStack() as stack:
            journal = None
            if len(self.outcomes) < len(self.rows) and not _is_url(self.journal):
                with contextlib.suppress(JournalError):
                    journal = stack.enter_context(Journal(self.journal))
            records = [self._record(index, journal) for index in range(len(self.rows))]
        records += [
            {
                "id": None,
                "line": bad.line,
                "task_id": None,
                "status": "INVALID",
                "path": None,
                "error": bad.message,
            }
            for bad in self.invalid
        ]
        records.sort(key=lambda record: record["line"])
        rows = {row.job.id: row.job for row in self.rows}
        report: Path | OSError
        try:
            report = write_reports(self.out, records, rows, self.timeline)
        except OSError as exc:  # a full disk: the summary, with every task id, is all there is then
            self.report_failed = True
            report = exc
        _summary(self.console, records, report, interrupted=self.interrupted, retrying=self.retry_failed)


def _status_of(outcome: Outcome) -> str:
    """A row's status in the report: the task's, or what kind of failure ended it."""
    error = outcome.error
    if error is None and outcome.result is not None:
        return outcome.result.status
    if isinstance(error, TaskFailedError):
        return error.status
    kinds: list[tuple[type[KlingError], str]] = [
        (ClaimedElsewhere, ELSEWHERE),
        (SubmitUncertainError, "UNCERTAIN"),
        (NotSubmittedError, "NOT_RUN"),
        (TaskTimeoutError, "TIMEOUT"),
        (DownloadError, "DOWNLOAD_FAILED"),
        (InvalidRequestError, "INVALID"),
    ]
    return next((name for kind, name in kinds if isinstance(error, kind)), "ERROR")


def _summary(
    console: Console,
    records: list[dict[str, Any]],
    report: Path | OSError,
    *,
    interrupted: bool,
    retrying: bool,
) -> None:
    """The table of statuses, the rows that did not complete (with their task ids), and what to do next;
    ``report`` is where the report went, or why it could not be written."""
    by_status = Counter(record["status"] for record in records)
    title = "kling-async batch (interrupted)" if interrupted else "kling-async batch"
    table = Table(title=title, show_header=True)
    table.add_column("status")
    table.add_column("rows", justify="right")
    for status, count in sorted(by_status.items(), key=lambda item: (item[0] != "COMPLETED", item[0])):
        style = "green" if status == "COMPLETED" else "yellow" if status == ELSEWHERE else "red"
        table.add_row(f"[{style}]{status}[/{style}]", str(count))
    console.print(table)
    # Rows an interruption left unsent are counted below, not listed: a rerun sends them, and hundreds of
    # them would hide the rows that need a look.
    problems = [
        record
        for record in records
        if record["status"] not in ("COMPLETED", ELSEWHERE)
        and not (interrupted and record["status"] == "NOT_RUN" and record["task_id"] is None)
    ]
    shown = problems if isinstance(report, OSError) else problems[:20]  # without a report: every one
    for record in shown:
        name = f"line {record['line']}" + (f" ({record['id']})" if record["id"] is not None else "")
        task = f" task {record['task_id']}" if record["task_id"] else ""
        console.print(f"  {name}{task}: {record['error']}", highlight=False, markup=False)
    if len(problems) > len(shown):
        console.print(f"  ... and {len(problems) - len(shown)} more in the report")
    if interrupted:
        unsent = sum(record["status"] == "NOT_RUN" and record["task_id"] is None for record in records)
        console.print(
            f"[yellow]interrupted: {by_status['NOT_RUN']} row(s) not run ({unsent} of them not sent); run"
            " the same command again to resume[/yellow]"
        )
    if by_status[ELSEWHERE]:
        console.print(
            f"{by_status[ELSEWHERE]} row(s) held by another worker of the shared journal: theirs to finish;"
            " the journal, or this command run again once they are done, shows how they end",
            highlight=False,
        )
    uncertain = by_status["UNCERTAIN"]
    if uncertain:
        console.print(
            f"{uncertain} row(s) UNCERTAIN: a POST went out and its answer was lost, so a task may exist (and"
            " be paid); look for it among the account's tasks (`kling-async list --model MODEL`) before you"
            " rerun with --resubmit-uncertain to send these again (that may pay twice)",
            highlight=False,
        )
    failed = by_status["FAILED"]
    if failed:
        again = "again " if retrying else ""
        console.print(
            f"{failed} row(s) ended FAILED; rerun with --retry-failed to submit {again}these {failed}"
            " (a rerun without it never does)",
            highlight=False,
        )
    if isinstance(report, OSError):
        where = f"{report.filename}: " if report.filename else ""
        console.print(
            f"[red]error: the report could not be written: {where}{report.strerror or report}[/red]"
        )
    else:
        console.print(f"report: {report} and {report.with_suffix('.html').name}", highlight=False)


@cli.command(short_help="One clip from PROMPT; prints the saved file's path.")
@click.argument("prompt")
@_model_option
@click.option("--duration", default=None, help='Seconds, "3".."15".')
@click.option("--image-url", default=None, help="Start frame (image-to-video).")
@click.option("--video-url", default=None, help="Reference video (the -reference models).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@_poll_options
@_download_timeout_option
@_simulate_option
def generate(
    prompt: str,
    model: str,
    duration: str | None,
    image_url: str | None,
    video_url: str | None,
    out: Path,
    poll_initial: float,
    poll_maximum: float,
    download_timeout: float,
    simulate: bool,
) -> None:
    """Generate one clip from PROMPT and print the saved file's path."""
    fields: dict[str, Any] = {"prompt": prompt}
    if duration is not None:
        fields["duration"] = duration
    if image_url is not None:
        # Kling 3 (non-omni) calls its start frame start_image_url; the others call it image_url.
        fields["start_image_url" if endpoint_for(model).request_type is Kling3Request else "image_url"] = (
            image_url
        )
    if video_url is not None:
        fields["video_url"] = video_url
    try:
        job = _to_job(fields, model)
        poll = PollPolicy(initial=poll_initial, maximum=poll_maximum)
    except (InvalidRequestError, ValueError) as exc:
        _fail(str(exc))
    _make_out(out)  # before the POST: a video must not be paid for where it cannot be saved

    async def run(command: _SingleTask) -> Path:
        timeouts = Timeouts(download_deadline=download_timeout)
        command.simulated = simulate
        async with command.client(_client(simulate, poll=poll, timeouts=timeouts)) as client:
            result = await client.generate(job.request, model=job.model)
            try:
                return await client.download(result, f"{out}{os.sep}")  # --out is always a folder
            except DownloadError as exc:
                again = f"kling-async download {result.task_id} --model {result.model} --out DIR"
                raise DownloadError(f"{exc}; the task completed: `{again}` fetches its video") from exc

    _echo_result(run, needs_key=not simulate)


@cli.command(short_help="A task's status (and result URLs) as JSON.")
@click.argument("task_id")
@_model_option
def status(task_id: str, model: str) -> None:
    """Print a task's status (and result URLs) as JSON."""

    async def run(command: _SingleTask) -> dict[str, Any]:
        async with command.client(KlingClient()) as client:
            current = await client.task(task_id, model=model).refresh()
            return {
                "task_id": current.task_id,
                "status": current.status,
                "generated": list(current.generated),
            }

    _echo_result(run, as_json=True)


@cli.command(name="list", short_help="The account's newest tasks of a model's family, as JSON lines.")
@_model_option
@click.option("--page", type=_AT_LEAST_ONE, default=1, show_default=True, help="Which page, newest first.")
@click.option(
    "--page-size", type=click.IntRange(1, 100), default=100, show_default=True, help="Tasks a page."
)
def list_tasks(model: str, page: int, page_size: int) -> None:
    """Print one page of the account's tasks of MODEL's family, newest first: one JSON object a line,
    with the task's id and status (the list has no result URLs: `status` shows them)."""

    async def run(command: _SingleTask) -> list[dict[str, str]]:
        async with command.client(KlingClient()) as client:
            tasks = await client.list_tasks(model=model, page=page, page_size=page_size)
            return [{"task_id": task.task_id, "status": task.status} for task in tasks]

    _echo_result(run)


@cli.command(short_help="A finished task's video into --out; prints its path.")
@click.argument("task_id")
@_model_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@_download_timeout_option
def download(task_id: str, model: str, out: Path, download_timeout: float) -> None:
    """Download a finished task's video into --out and print its path."""

    async def run(command: _SingleTask) -> Path:
        timeouts = Timeouts(download_deadline=download_timeout)
        async with command.client(KlingClient(timeouts=timeouts)) as client:
            handle = client.task(task_id, model=model)
            await handle.refresh()
            return await client.download(handle.result(), f"{out}{os.sep}")  # --out is always a folder

    _echo_result(run)


@cli.command(short_help="Check every row of a file as batch would; sends nothing.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_model_option
def validate(file: Path, model: str) -> None:
    """Check every row of FILE (JSONL or CSV) exactly as batch does; sends nothing."""
    rows, errors = _load(file, model)
    for error in errors:
        click.echo(f"{file.name}:{error.line}: {error.message}")
    click.echo(f"{len(rows)} valid, {len(errors)} invalid")
    if not rows and not errors:
        _fail(f"{file.name}: no rows to run")
    sys.exit(EXIT_USAGE if errors else EXIT_OK)


# A standalone simulator at most this much faster than real time: a 60 s generation then takes 60 ms and
# its 2 s queue 2 ms. Much faster, a task is over before its POST is answered (the create answer already
# says COMPLETED, which the API never does), and no client checks sooner than the 0.1 s the banner offers.
# At most this much slower: a 60 s generation then takes 17 hours.
_TIME_SCALE = _FiniteRange(0.001, 1000)


@cli.command(short_help="The API simulator, standalone, until Ctrl-C or SIGTERM.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8400, show_default=True, help="API port (0: any free)."
)
@click.option(
    "--cdn-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the file host serving the videos (0: any free).",
)
@click.option(
    "--time-scale",
    type=_TIME_SCALE,
    default=0.05,
    show_default=True,
    help="Real seconds per simulated second (0.05: a 60 s generation takes 3 s).",
)
@click.option(
    "--rate-limit",
    type=_RATE,
    default=None,
    help="Requests per second enforced with 429s, at least 0.01.",
)
@click.option(
    "--fail-rate", type=_SHARE, default=0.0, show_default=True, help="Share of tasks that end FAILED."
)
@click.option(
    "--error-rate",
    type=_SHARE,
    default=0.0,
    show_default=True,
    help="Share of status checks answered 5xx.",
)
@click.option("--api-key", default="sim-key", show_default=True, help="The key the simulator accepts.")
@click.option(
    "--webhook-secret",
    default=None,
    metavar="SECRET",
    # From the environment too: a secret on the command line shows in every user's `ps`.
    envvar="KLING_WEBHOOK_SECRET",
    show_envvar=True,
    help="Sign and send deliveries to each task's webhook_url (default: none are sent).",
)
@click.option(
    "--seed", type=int, default=None, help="Repeat a run's task ids, durations and faults (default: random)."
)
@_interruptible
def simulate(
    host: str,
    port: int,
    cdn_port: int,
    time_scale: float,
    rate_limit: float | None,
    fail_rate: float,
    error_rate: float,
    api_key: str,
    webhook_secret: str | None,
    seed: int | None,
) -> None:
    """Run the API simulator until Ctrl-C or SIGTERM (point KLING_BASE_URL at it)."""
    _check_simulate_options(port, cdn_port, api_key, webhook_secret)
    from .testing import Faults, Simulator

    # A fresh seed per run, as --simulate has: with a fixed one, every run and every instance hands out
    # the same task ids, and a client resuming a journaled id finds another job's task.
    seed = secrets.randbits(32) if seed is None else seed
    started = False

    async def run() -> None:
        nonlocal started
        # Followed before the servers start, so that a signal during the banner still closes them.
        # Started with SIGINT ignored (a background job, `kling-async simulate &`), the command keeps
        # ignoring it, as batch does: SIGTERM (`kill %1`) stops it then. A hangup stops it too.
        with anyio.open_signal_receiver(*_followed_signals()) as signals:
            faults = Faults(fail_rate=fail_rate, get_error_rate=error_rate)
            sim = Simulator(
                api_key=api_key,
                host=host,
                port=port,
                cdn_port=cdn_port,
                time_scale=time_scale,
                rate_limit=rate_limit,
                faults=faults,
                seed=seed,
                webhook_secret=webhook_secret,
            )
            async with sim:
                started = True
                click.echo(
                    _simulate_banner(sim.url, sim.cdn_url, api_key, time_scale, seed, webhook_secret),
                    err=True,
                )
                async for _ in signals:
                    break
        click.echo("simulator stopped", err=True)

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        # A Ctrl-C outside the signal receiver's reach: after the servers started, the usual stop; before,
        # nothing ran, and the command says "interrupted" as every command does.
        if not started:
            raise
    except OSError as exc:  # a busy port, an address this machine does not have
        if started:  # not the servers: stderr, say (main says so)
            raise
        where = f"--host {host} --port {port}" + (f" --cdn-port {cdn_port}" if cdn_port else "")
        _fail(f"{where}: cannot listen there: {exc.strerror or exc}")


def _check_simulate_options(port: int, cdn_port: int, api_key: str, webhook_secret: str | None) -> None:
    """The ``simulate`` options that click's types cannot check, refused before anything listens."""
    if not api_key:
        _fail("--api-key: must not be empty (every request would be answered 401)")
    if api_key.strip() != api_key or not (api_key.isascii() and api_key.isprintable()):
        _fail("--api-key: printable ASCII without spaces at either end, as an HTTP header carries it")
    if cdn_port and cdn_port == port:
        _fail(f"--cdn-port {cdn_port}: the same as --port; the file host needs a port of its own")
    if webhook_secret == "":
        _fail("--webhook-secret: must not be empty (leave the option out to send no deliveries)")
    if webhook_secret is not None:
        # The receiver's own rule (WebhookReceiver would refuse it the same way), so every secret the
        # simulator signs with is one the SDK can verify with.
        try:
            _signing_key(webhook_secret)
        except ValueError as exc:
            _fail(f"--webhook-secret: {exc}")


def _simulate_banner(
    url: str, cdn_url: str, api_key: str, time_scale: float, seed: int, webhook_secret: str | None
) -> str:
    """Where the simulator listens, how to use it, how to repeat the run, and whether webhooks are sent."""
    # The CLI's first status check comes 15 s after submission, tuned for real generations; simulated
    # ones are time_scale times shorter, so say how to check as early.
    first = max(PollPolicy().initial * time_scale, 0.1)
    if webhook_secret is None:
        webhooks = (
            "off: a task's webhook_url is accepted, but nothing is delivered"
            " (--webhook-secret SECRET turns deliveries on)"
        )
    else:
        webhooks = (
            "on: each task's webhook_url gets signed deliveries; verify them with"
            " WebhookReceiver(SECRET), SECRET the --webhook-secret string as given (a whsec_ one too)"
        )
    return (
        f"simulator on {url} (key {api_key!r}); files on {cdn_url}; Ctrl-C or SIGTERM stops\n"
        f"  use it: FREEPIK_API_KEY={api_key} KLING_BASE_URL={url} kling-async generate"
        f' "a fox in snow" --poll-initial {first:g} --poll-maximum {first * 2:g}\n'
        f"  seed {seed}: --seed {seed} repeats this run's task ids, durations and faults\n"
        f"  webhooks: {webhooks}"
    )


def main() -> None:
    """Console entry point."""
    library = logging.getLogger("kling_async")
    library.addHandler(_LOG)
    library.propagate = False  # the command owns its screen; nothing else configures logging here
    try:
        cli(prog_name="kling-async")
    except OSError as exc:  # its output could not be written: a full disk, a stdout closed
        _silence_stdout()
        with contextlib.suppress(OSError):
            print(f"error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
