"""The ``kling-async`` command: bulk generation from a file, and a few single-task tools.

Exit codes: 0 everything succeeded; 1 some items failed; 2 usage error or invalid input; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import secrets
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import msgspec

try:
    import click
    from rich.console import Console
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - exercised only without the [cli] extra
    raise SystemExit(
        f"the kling-async command needs its extra: pip install 'kling-async[cli]' ({exc.name} is missing)"
    ) from exc

from ._batch import Job, Outcome, job_key
from ._client import KEY_VARIABLES, KlingClient
from ._endpoints import DEFAULT_MODEL, ENDPOINTS, endpoint_for
from ._errors import (
    DownloadError,
    InvalidRequestError,
    KlingError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
)
from ._models import Kling3Request, request_from_dict
from ._polling import PollPolicy
from ._progress import BatchProgress

__all__ = ["cli", "load_jobs", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_EVENT_ENCODER = msgspec.json.Encoder()

# With --simulate, a 60 s generation takes 60 * SIMULATED_TIME_SCALE seconds.
SIMULATED_TIME_SCALE = 0.02


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    job: Job


@dataclass(frozen=True, slots=True)
class _RowError:
    line: int
    message: str


def _parse_cell(value: str) -> Any:
    text = value.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, the row's fields or a parse error) for each non-empty row of a JSONL or CSV file."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            for record in reader:
                fields = {
                    k.strip(): _parse_cell(v) for k, v in record.items() if k and v is not None and v.strip()
                }
                if fields:
                    yield reader.line_num, fields
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON: {exc.msg} (column {exc.colno})"
                continue
            if not isinstance(data, dict):
                yield number, "each line must be a JSON object"
                continue
            yield number, data


def _to_job(fields: dict[str, Any], default_model: str, *, strict: bool = True) -> Job:
    fields = dict(fields)
    job_id = fields.pop("id", None)
    model = str(fields.pop("model", None) or default_model)
    endpoint = endpoint_for(model)
    request = request_from_dict(fields, endpoint.request_type, strict=strict)
    return Job(request, id=str(job_id) if job_id is not None else None, model=model)


def load_jobs(path: Path, default_model: str) -> tuple[list[_Row], list[_RowError]]:
    """Read and validate every row; nothing is sent."""
    rows: list[_Row] = []
    errors: list[_RowError] = []
    ids: dict[str, int] = {}
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
        rows.append(_Row(line, job))
    return rows, errors


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
) -> dict[str, Any]:
    poll = PollPolicy(initial=poll_initial, maximum=poll_maximum, timeout=timeout)
    return {
        "requests_per_second": rps,
        "max_concurrency": concurrency,
        "max_in_flight": in_flight,
        "poll": poll,
    }


def _echo_result(
    run: Callable[[], Awaitable[object]], *, as_json: bool = False, needs_key: bool = True
) -> None:
    """Run a single-task command and print its result, or the error with exit code 1 (130 on Ctrl-C).

    A missing API key is a usage error (exit 2), as in ``batch``.
    """
    if needs_key and not any(os.environ.get(name) for name in KEY_VARIABLES):
        _fail("no API key: set FREEPIK_API_KEY (or MAGNIFIC_API_KEY), or use --simulate where offered")
    try:
        result = anyio.run(run)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (KlingError, RuntimeError) as exc:  # RuntimeError: e.g. downloading a task not finished yet
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(json.dumps(result) if as_json else str(result))


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for videos."
)
@_model_option
@_simulate_option
@click.option("--skip-invalid", is_flag=True, help="Run the valid rows even if some are invalid.")
@click.option("--rps", type=float, default=None, help="Requests per second ceiling (default: adapt to 429s).")
@click.option("--concurrency", type=int, default=16, show_default=True, help="Requests on the wire at once.")
@click.option("--max-in-flight", type=int, default=None, help="Tasks generating at once (default: no cap).")
@click.option(
    "--poll-initial",
    type=float,
    default=PollPolicy().initial,
    show_default=True,
    help="Seconds to 1st check.",
)
@click.option(
    "--poll-maximum", type=float, default=PollPolicy().maximum, show_default=True, help="Longest check gap."
)
@click.option(
    "--task-timeout", type=float, default=1800.0, show_default=True, help="Seconds to wait per task."
)
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path), help="Default: OUT/journal.db.")
@click.option(
    "--resubmit-uncertain", is_flag=True, help="Resend rows whose earlier POST got no answer (may pay twice)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print events and one record per finished row on stdout."
)
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
    journal: Path | None,
    resubmit_uncertain: bool,
    as_json: bool,
) -> None:
    """Generate a video for every row of FILE (JSONL or CSV) into --out, with a report."""
    rows, errors = load_jobs(file, model)
    console = Console(stderr=True, soft_wrap=True)
    for error in errors:
        console.print(f"[red]{file.name}:{error.line}[/red]: {error.message}", highlight=False, markup=True)
    if errors and not skip_invalid:
        console.print(f"{len(errors)} invalid row(s); nothing was sent (use --skip-invalid to run the rest).")
        sys.exit(EXIT_USAGE)
    if not rows:
        _fail(f"{file}: no jobs to run")
    out.mkdir(parents=True, exist_ok=True)
    run = _BatchRun(
        rows,
        errors,
        out,
        console,
        journal=journal or out / "journal.db",
        resubmit=resubmit_uncertain,
        as_json=as_json,
    )
    try:
        options = _options(rps, concurrency, max_in_flight, poll_initial, poll_maximum, task_timeout)
        anyio.run(run.execute, simulate, options)
    except KlingError as exc:
        _fail(str(exc))
    if run.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    every_row_done = (
        not errors and len(run.outcomes) == len(rows) and all(o.ok for o in run.outcomes.values())
    )
    sys.exit(EXIT_OK if every_row_done else EXIT_FAILED)


class _BatchRun:
    """One ``batch`` command: feeds rows to ``client.map``, follows Ctrl-C, writes the report.

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
        journal: Path,
        resubmit: bool,
        as_json: bool,
    ) -> None:
        self.rows = rows
        self.invalid = invalid
        self.out = out
        self.journal = journal
        self.resubmit = resubmit
        self.console = console
        self.as_json = as_json
        self.outcomes: dict[int, Outcome] = {}
        self.draining = False
        self.interrupted = False

    def jobs(self) -> Iterator[Job]:
        """The rows as jobs, until a first Ctrl-C ends the input."""
        for row in self.rows:
            if self.draining:
                return
            yield row.job

    async def execute(self, simulate: bool, options: dict[str, Any]) -> None:
        started = False
        try:
            async with _client(simulate, **options) as client, anyio.create_task_group() as tg:
                started = True  # from here on every row gets a record, whatever happens
                tg.start_soon(self._follow_signals, tg.cancel_scope)
                if self.as_json:
                    tg.start_soon(self._print_events, client)
                await self._run(client)
                tg.cancel_scope.cancel()
        finally:
            if started:
                self._report()

    async def _run(self, client: KlingClient) -> None:
        progress = BatchProgress(self.console, total=len(self.rows))
        async with progress.watching(client):
            batch = client.map(
                self.jobs(), journal=self.journal, download=self.out, resubmit_uncertain=self.resubmit
            )
            async for outcome in batch:
                self.outcomes[outcome.index] = outcome
                progress.finished(outcome)
                if self.as_json:
                    print(
                        json.dumps({"type": "outcome", **self._record(outcome.index)}, separators=(",", ":")),
                        flush=True,
                    )

    async def _follow_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.interrupted = True
                if not self.draining:
                    self.draining = True
                    self.console.print(
                        "[yellow]Interrupted: no new submissions; waiting for the tasks in flight."
                        " Ctrl-C again to stop now (running tasks stay reachable; rerun to resume).[/yellow]"
                    )
                else:
                    self.console.print("[yellow]Stopping now.[/yellow]")
                    scope.cancel()

    async def _print_events(self, client: KlingClient) -> None:
        async for event in client.events():
            print(_EVENT_ENCODER.encode(event).decode(), flush=True)

    def _record(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        outcome = self.outcomes.get(index)
        record: dict[str, Any] = {"id": None, "line": row.line, "task_id": None, "status": None}
        if outcome is None:
            key = job_key(row.job, row.job.model or DEFAULT_MODEL, index)
            record.update(id=key, status="NOT_RUN", path=None, error="interrupted before this row finished")
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
        report = self.out / "report.json"
        records = [self._record(index) for index in range(len(self.rows))]
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
        report.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
        _summary(self.console, records, report)


def _status_of(outcome: Outcome) -> str:
    """A row's status in the report: the task's, or what kind of failure ended it."""
    error = outcome.error
    if error is None and outcome.result is not None:
        return outcome.result.status
    if isinstance(error, TaskFailedError):
        return error.status
    kinds: list[tuple[type[KlingError], str]] = [
        (SubmitUncertainError, "UNCERTAIN"),
        (TaskTimeoutError, "TIMEOUT"),
        (DownloadError, "DOWNLOAD_FAILED"),
        (InvalidRequestError, "INVALID"),
    ]
    return next((name for kind, name in kinds if isinstance(error, kind)), "ERROR")


def _summary(console: Console, records: list[dict[str, Any]], report: Path) -> None:
    by_status = Counter(record["status"] for record in records)
    table = Table(title="kling-async batch", show_header=True)
    table.add_column("status")
    table.add_column("rows", justify="right")
    for status, count in sorted(by_status.items(), key=lambda item: (item[0] != "COMPLETED", item[0])):
        style = "green" if status == "COMPLETED" else "red"
        table.add_row(f"[{style}]{status}[/{style}]", str(count))
    console.print(table)
    problems = [record for record in records if record["status"] != "COMPLETED"]
    for record in problems[:20]:
        console.print(f"  line {record['line']} ({record['id']}): {record['error']}", highlight=False)
    if len(problems) > 20:
        console.print(f"  ... and {len(problems) - 20} more in the report")
    console.print(f"report: {report}")


@cli.command()
@click.argument("prompt")
@_model_option
@click.option("--duration", default=None, help='Seconds, "3".."15".')
@click.option("--image-url", default=None, help="Start frame (image-to-video).")
@click.option("--video-url", default=None, help="Reference video (the -reference models).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@_simulate_option
def generate(
    prompt: str,
    model: str,
    duration: str | None,
    image_url: str | None,
    video_url: str | None,
    out: Path,
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
    except InvalidRequestError as exc:
        _fail(str(exc))

    async def run() -> Path:
        async with _client(simulate) as client:
            result = await client.generate(job.request, model=model)
            return await client.download(result, f"{out}{os.sep}")  # --out is always a folder

    _echo_result(run, needs_key=not simulate)


@cli.command()
@click.argument("task_id")
@_model_option
def status(task_id: str, model: str) -> None:
    """Print a task's status (and result URLs) as JSON."""

    async def run() -> dict[str, Any]:
        async with KlingClient() as client:
            current = await client.task(task_id, model=model).refresh()
            return {
                "task_id": current.task_id,
                "status": current.status,
                "generated": list(current.generated),
            }

    _echo_result(run, as_json=True)


@cli.command()
@click.argument("task_id")
@_model_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
def download(task_id: str, model: str, out: Path) -> None:
    """Download a finished task's video into --out and print its path."""

    async def run() -> Path:
        async with KlingClient() as client:
            handle = client.task(task_id, model=model)
            await handle.refresh()
            return await client.download(handle.result(), f"{out}{os.sep}")  # --out is always a folder

    _echo_result(run)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_model_option
def validate(file: Path, model: str) -> None:
    """Check every row of FILE (JSONL or CSV) against the API's limits; sends nothing."""
    rows, errors = load_jobs(file, model)
    for error in errors:
        click.echo(f"{file.name}:{error.line}: {error.message}")
    click.echo(f"{len(rows)} valid, {len(errors)} invalid")
    sys.exit(EXIT_USAGE if errors else EXIT_OK)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8400, show_default=True)
@click.option(
    "--time-scale", type=float, default=0.05, show_default=True, help="Simulated seconds per real second."
)
@click.option("--rate-limit", type=float, default=None, help="Requests per second enforced with 429s.")
@click.option(
    "--fail-rate", type=float, default=0.0, show_default=True, help="Share of tasks that end FAILED."
)
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="Share of GETs answered 5xx.")
@click.option("--api-key", default="sim-key", show_default=True, help="The key the simulator accepts.")
def simulate(
    host: str,
    port: int,
    time_scale: float,
    rate_limit: float | None,
    fail_rate: float,
    error_rate: float,
    api_key: str,
) -> None:
    """Run the API simulator until interrupted (point KLING_BASE_URL at it)."""
    from .testing import Faults, Simulator

    async def run() -> None:
        faults = Faults(fail_rate=fail_rate, get_error_rate=error_rate)
        sim = Simulator(
            api_key=api_key, host=host, port=port, time_scale=time_scale, rate_limit=rate_limit, faults=faults
        )
        async with sim:
            click.echo(
                f"simulator on {sim.url} (key {api_key!r}); files on {sim.cdn_url}; Ctrl-C stops", err=True
            )
            await anyio.sleep_forever()

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run)


def main() -> None:
    """Console entry point."""
    cli(prog_name="kling-async")
