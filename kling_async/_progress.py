"""The batch command's live display: one consumer of the client's events.

On a terminal it is a rich progress bar redrawn in place; elsewhere (a pipe, a CI log) it prints a plain
status line every few seconds, with no control codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from ._batch import Outcome
from ._client import KlingClient
from ._clock import SYSTEM_CLOCK
from ._errors import ClaimedElsewhere, NotSubmittedError, SubmitUncertainError
from ._events import RateLimited, RequestRetried, StatusChanged, TaskSubmitted
from ._models import COMPLETED

__all__ = ["BatchProgress"]

_PLAIN_EVERY = 5.0


class BatchProgress:
    """Counts of queued (or not run, once stopped) / generating / done / failed / uncertain (/ elsewhere)
    rows, request rate, 429s, ETA.

    Args:
        console: where to draw (stderr).
        total: the number of rows.
        live: redraw a bar in place when the console is a terminal (else print plain lines).
    """

    def __init__(self, console: Console, *, total: int, live: bool = True) -> None:
        self._console = console
        self._live_wanted = live
        self.total = total
        self.done = 0
        self.failed = 0
        self.uncertain = 0
        self.rejected = 0
        self.elsewhere = 0  # rows another worker sharing the journal holds
        self.not_sent = 0  # rows a Ctrl-C stopped before their POST left
        self.stopped = False  # no more rows are sent: the queued ones will not run
        self.generating: set[str] = set()
        self.downloading: set[str] = set()  # completed, their videos on the way
        self.rate_limited = 0
        self.retries = 0
        self._client: KlingClient | None = None
        self._started = SYSTEM_CLOCK.now()
        self._progress: Progress | None = None
        self._bar: TaskID | None = None
        self._live: Live | None = None

    def counts(self) -> str:
        """Where the rows stand, in one short line."""
        started = len(self.generating) + len(self.downloading)
        queued = max(self.total - self.finished_count - started, 0)
        downloading = f" · {len(self.downloading)} downloading" if self.downloading else ""
        elsewhere = f" · {self.elsewhere} elsewhere" if self.elsewhere else ""
        waiting = f"{queued + self.not_sent} not run" if self.stopped else f"{queued} queued"
        return (
            f"{self.done} done · {self.failed + self.rejected} failed · {self.uncertain} uncertain"
            f" · {len(self.generating)} generating{downloading} · {waiting}{elsewhere}"
        )

    def traffic(self) -> str:
        """Request rate, 429s and retries."""
        rate = self._client._limiter.sending_rate() if self._client is not None else None
        pace = f"{rate:.1f} req/s" if rate else "- req/s"
        return f"{pace} · {self.rate_limited} answered 429 · {self.retries} retries"

    def line(self) -> str:
        """Everything as one plain line (logs, pipes)."""
        return f"{self.finished_count}/{self.total} finished · {self.counts()} · {self.traffic()}"

    def __rich__(self) -> Text:
        # Cut with an ellipsis on a narrow terminal, never wrapped (a wrapped line breaks the redraw).
        return Text(f"  {self.counts()}\n  {self.traffic()}", style="dim", no_wrap=True, overflow="ellipsis")

    @property
    def finished_count(self) -> int:
        """Items with an outcome."""
        return self.done + self.failed + self.uncertain + self.rejected + self.elsewhere + self.not_sent

    @asynccontextmanager
    async def watching(self, client: KlingClient) -> AsyncIterator[None]:
        """Follow the client's events while the body runs."""
        self._client = client
        self._started = SYSTEM_CLOCK.now()
        if self._console.is_terminal and self._live_wanted:
            # A bar line and two lines of counts, redrawn in place four times a second (no flicker:
            # rich rewrites the same three lines).
            self._progress = Progress(
                TextColumn("[bold]kling-async"),
                BarColumn(bar_width=40),
                MofNCompleteColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self._console,
                auto_refresh=False,
            )
            self._bar = self._progress.add_task("batch", total=self.total)
            # stdout stays the program's own: rich would otherwise route it to the terminal, taking
            # --json away from a pipe or a file whenever stderr is a terminal.
            self._live = Live(
                Group(self._progress, self),
                console=self._console,
                refresh_per_second=4,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow, client)
                if self._progress is None:
                    tg.start_soon(self._print_plain)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            # Also when cancelled (a second Ctrl-C): a Live left running redraws over the summary.
            self._redraw()
            if self._live is not None:
                self._live.refresh()
                self._live.stop()
            else:
                self._console.print(self.line(), highlight=False)

    def finished(self, outcome: Outcome) -> None:
        """Count a finished item."""
        if outcome.task_id is not None:
            self.generating.discard(outcome.task_id)
            self.downloading.discard(outcome.task_id)
        if outcome.ok:
            self.done += 1
        elif isinstance(outcome.error, SubmitUncertainError):
            self.uncertain += 1
        elif isinstance(outcome.error, ClaimedElsewhere):
            self.elsewhere += 1
        elif isinstance(outcome.error, NotSubmittedError):
            self.not_sent += 1
        elif outcome.task_id is None:
            self.rejected += 1
        else:
            self.failed += 1
        self._redraw()

    async def _follow(self, client: KlingClient) -> None:
        async for event in client.events():
            if isinstance(event, TaskSubmitted):
                self.generating.add(event.task_id)
            elif isinstance(event, StatusChanged) and event.status == COMPLETED:
                if event.task_id in self.generating:
                    self.generating.discard(event.task_id)
                    self.downloading.add(event.task_id)
            elif isinstance(event, RateLimited):
                self.rate_limited += 1
            elif isinstance(event, RequestRetried):
                self.retries += 1
            self._redraw()

    def _redraw(self) -> None:
        if self._progress is not None and self._bar is not None:
            self._progress.update(self._bar, completed=self.finished_count)

    async def _print_plain(self) -> None:
        while True:
            await SYSTEM_CLOCK.sleep(_PLAIN_EVERY)
            elapsed = SYSTEM_CLOCK.now() - self._started
            self._console.print(f"[{elapsed:5.0f}s] {self.line()}", highlight=False)
