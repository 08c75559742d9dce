"""The batch command's reports: ``report.json`` for programs and ``report.html`` for people.

The page is one self-contained file (inline CSS and SVG; no script, font or image from anywhere): a gallery
of the clips, playable in place, the rows that did not complete with their errors, and two charts drawn
from the client's events: each task's life on one timeline, and requests per second with 429s.
Everything that came from the input file or the API is escaped: a prompt is hostile text.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ._batch import Job
from ._clock import SYSTEM_CLOCK
from ._events import Event, RateLimited, StatusChanged, TaskSubmitted
from ._models import TERMINAL_STATUSES

__all__ = ["RunTimeline", "write_reports"]

# Bounds that keep collecting cheap in a long run: tasks remembered, and bars drawn per chart.
_MAX_TASKS = 100_000
_MAX_LIVES_DRAWN = 200
_MAX_RATE_BARS = 150


class RunTimeline:
    """Times of a run's events, for the report's charts: one entry per task, one counter per second."""

    def __init__(self) -> None:
        self._t0 = SYSTEM_CLOCK.now()
        # task id -> [first seen, finished (None: not yet), final status]
        self.lives: dict[str, list[Any]] = {}
        self.requests: list[int] = []
        self.rate_limited: list[int] = []

    def start(self) -> None:
        """Count the run's time from now."""
        self._t0 = SYSTEM_CLOCK.now()

    def _now(self) -> float:
        return SYSTEM_CLOCK.now() - self._t0

    def _count(self, series: list[int], at: float) -> None:
        second = int(at)
        if second >= len(series):
            series.extend([0] * (second + 1 - len(series)))
        series[second] += 1

    def _life(self, task_id: str, at: float) -> list[Any] | None:
        life = self.lives.get(task_id)
        if life is None and len(self.lives) < _MAX_TASKS:
            life = self.lives[task_id] = [at, None, None]
        return life

    def observe(self, event: Event) -> None:
        """Take in one client event."""
        at = self._now()
        # Every event stands for one request (a submission, a changed status, a retry, a 429), except
        # sweeps that change several statuses at once: close enough for a chart.
        self._count(self.requests, at)
        if isinstance(event, RateLimited):
            self._count(self.rate_limited, at)
        elif isinstance(event, TaskSubmitted):
            self._life(event.task_id, at)
        elif isinstance(event, StatusChanged):
            life = self._life(event.task_id, at)  # a resumed task is first seen by a status check
            if life is not None and event.status in TERMINAL_STATUSES and life[1] is None:
                life[1], life[2] = at, event.status

    def finished(self, task_id: str | None, status: str) -> None:
        """A row's outcome arrived (after its download): its task's life ends here.

        Rows settled from the journal alone (no event of this run named their task) have no life to end.
        """
        life = self.lives.get(task_id) if task_id is not None else None
        if life is not None:
            life[1] = self._now()
            life[2] = status


def write_reports(
    out: Path, records: Sequence[dict[str, Any]], jobs: Mapping[str | None, Job], timeline: RunTimeline
) -> Path:
    """Write ``out/report.json`` and ``out/report.html``; returns the JSON report's path."""
    report = out / "report.json"
    _replace(report, json.dumps(list(records), indent=2) + "\n")
    _replace(out / "report.html", render_html(out, records, jobs, timeline))
    return report


def _replace(path: Path, text: str) -> None:
    # A reader (a browser reloading the page) never sees half a file. The part is made anew, never opened
    # through what is there: a symbolic link planted at its name would have the report written elsewhere.
    part = path.with_name(path.name + ".part")
    try:
        part.unlink(missing_ok=True)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with open(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(part, path)
    except OSError:
        part.unlink(missing_ok=True)  # a full disk: no half-written file left behind
        raise


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _prompt(job: Job | None) -> str:
    if job is None:
        return ""
    request = job.request
    prompt = getattr(request, "prompt", None)
    if prompt:
        return str(prompt)
    shots = getattr(request, "multi_prompt", None) or []
    return " | ".join(str(getattr(shot, "prompt", shot)) for shot in shots)


def _duration(job: Job | None) -> str:
    duration = getattr(job.request, "duration", None) if job is not None else None
    return f"{duration} s" if duration else "default length"


def _video_src(out: Path, path: str) -> str | None:
    """The video's address relative to the page, or None when the file is not there."""
    absolute = Path(path) if Path(path).is_absolute() else Path.cwd() / path
    if not absolute.is_file():
        return None
    relative = os.path.relpath(absolute, out.resolve())
    return quote(Path(relative).as_posix())


_CSS = """
:root { color-scheme: light dark; --ok: #1f9d55; --bad: #d64545; --warn: #c77c02; --mute: #888; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 24px; }
h1 { margin: 0 0 4px; font-size: 24px; } h2 { font-size: 18px; margin: 32px 0 12px; }
.sub { color: var(--mute); margin: 0 0 12px; }
.counts { display: flex; flex-wrap: wrap; gap: 8px; list-style: none; padding: 0; margin: 0; }
.counts li { border-radius: 999px; padding: 2px 12px; background: rgba(127,127,127,.15); }
.badge { font-size: 12px; font-weight: 600; border-radius: 4px; padding: 1px 6px; color: #fff;
  background: var(--bad); }
.badge.COMPLETED { background: var(--ok); }
.badge.NOT_RUN, .badge.UNCERTAIN, .badge.ELSEWHERE { background: var(--warn); }
.badge.INVALID { background: var(--mute); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 16px; }
.clip { margin: 0; border-radius: 8px; overflow: hidden; background: rgba(127,127,127,.08); }
.clip video { width: 100%; aspect-ratio: 16 / 9; background: #000; display: block; }
.clip figcaption { padding: 8px 10px 10px; }
.clip .head { display: flex; justify-content: space-between; gap: 8px; align-items: baseline; }
.clip .id { font-weight: 600; overflow-wrap: anywhere; } .meta { color: var(--mute); font-size: 13px; }
.prompt { margin: 4px 0 0; font-size: 13px; max-height: 5.8em; overflow: auto; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid rgba(127,127,127,.25);
  vertical-align: top; overflow-wrap: anywhere; }
.chart { width: 100%; height: auto; } .chart text { font-size: 11px; fill: var(--mute); }
.none { color: var(--mute); }
"""

_FILL = {"COMPLETED": "#1f9d55", None: "#3b82f6"}


def render_html(
    out: Path, records: Sequence[dict[str, Any]], jobs: Mapping[str | None, Job], timeline: RunTimeline
) -> str:
    """The report page: the clips, the rows that did not complete, and the two charts."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    clips: list[str] = []
    problems: list[str] = []
    for record in records:
        job = jobs.get(record["id"]) if record["id"] is not None else None
        src = _video_src(out, record["path"]) if record["path"] else None
        status = str(record["status"])
        if src is not None:
            model = job.model if job is not None and job.model else ""
            clips.append(
                f'<figure class="clip" data-line="{_e(record["line"])}" data-id="{_e(record["id"])}">'
                f'<video controls preload="metadata" src="{_e(src)}"></video><figcaption>'
                f'<div class="head"><span class="id">{_e(record["id"])}</span>'
                f'<span class="badge {_e(status)}">{_e(status)}</span></div>'
                f'<div class="meta">{_e(model)} · {_e(_duration(job))} · line {_e(record["line"])}</div>'
                f'<p class="prompt">{_e(_prompt(job))}</p></figcaption></figure>'
            )
        else:
            problems.append(
                f'<tr class="problem" data-line="{_e(record["line"])}"><td>{_e(record["line"])}</td>'
                f"<td>{_e(record['id'] if record['id'] is not None else '')}</td>"
                f'<td><span class="badge {_e(status)}">{_e(status)}</span></td>'
                f"<td>{_e(record['task_id'] or '')}</td><td>{_e(record['error'] or '')}</td></tr>"
            )
    keys = {record["task_id"]: record["id"] for record in records if record["task_id"]}
    summary = "".join(f"<li>{_e(status)} <b>{count}</b></li>" for status, count in sorted(counts.items()))
    problem_table = (
        "<table><thead><tr><th>line</th><th>id</th><th>status</th><th>task</th><th>error</th></tr></thead>"
        f"<tbody>{''.join(problems)}</tbody></table>"
        if problems
        else '<p class="none">Every row completed.</p>'
    )
    written = datetime.fromtimestamp(SYSTEM_CLOCK.wall()).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>kling-async report: {_e(out.name)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>kling-async batch</h1><p class="sub">{len(records)} rows · written {_e(written)}'
        f" · report.json has the same rows</p>"
        f'<ul class="counts">{summary}</ul></header>'
        f'<section id="clips"><h2>Clips ({len(clips)})</h2>'
        + (f'<div class="grid">{"".join(clips)}</div>' if clips else '<p class="none">No clips yet.</p>')
        + "</section>"
        f'<section id="problems"><h2>Not completed ({len(problems)})</h2>{problem_table}</section>'
        f'<section id="charts"><h2>Task lives</h2>{_lives_chart(timeline, keys)}'
        f"<h2>Requests per second</h2>{_rate_chart(timeline)}</section></body></html>\n"
    )


def _lives_chart(timeline: RunTimeline, keys: Mapping[str, str]) -> str:
    lives = sorted(timeline.lives.items(), key=lambda item: item[1][0])
    if not lives:
        return '<p class="none">No task was submitted or checked in this run.</p>'
    end_of_run = max([life[1] or life[0] for _, life in lives] + [timeline._now()])
    step = max(1, -(-len(lives) // _MAX_LIVES_DRAWN))  # every step-th task, in submission order
    drawn = lives[::step]
    # A small chart whatever the batch: rows share at most 260 units of height (12 each for a few tasks).
    width, left = 800.0, 10.0
    pitch = min(12.0, 260.0 / len(drawn))
    bar = pitch * 0.75
    height = len(drawn) * pitch + 30
    scale = (width - 2 * left) / max(end_of_run, 1e-9)
    shapes = []
    for row, (task_id, (start, end, status)) in enumerate(drawn):
        finish = end if end is not None else end_of_run
        fill = _FILL.get(status, "#d64545")
        label = f"{keys.get(task_id, task_id)}: {start:.1f} s to {finish:.1f} s, {status or 'still running'}"
        shapes.append(
            f'<rect x="{left + start * scale:.1f}" y="{row * pitch + 4:.2f}"'
            f' width="{max((finish - start) * scale, 1.5):.1f}" height="{bar:.2f}" fill="{fill}">'
            f"<title>{_e(label)}</title></rect>"
        )
    note = f" ({len(lives)} tasks, 1 in {step} drawn)" if step > 1 else f" ({len(lives)} tasks)"
    return (
        f'<svg class="chart" viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
        f' aria-label="task lives">{"".join(shapes)}'
        f'<text x="{left}" y="{height - 6:.0f}">0 s</text>'
        f'<text x="{width - left}" y="{height - 6:.0f}" text-anchor="end">{end_of_run:.1f} s{_e(note)}</text>'
        '</svg><p class="sub">One bar per task, from its submission (or first check, when resumed)'
        " to its outcome: green completed, red failed, blue still running.</p>"
    )


def _rate_chart(timeline: RunTimeline) -> str:
    seconds = len(timeline.requests)
    if not seconds:
        return '<p class="none">No requests were seen.</p>'
    per = max(1, -(-seconds // _MAX_RATE_BARS))  # seconds per bar
    sent = [sum(timeline.requests[i : i + per]) / per for i in range(0, seconds, per)]
    limited = [sum(timeline.rate_limited[i : i + per]) / per for i in range(0, seconds, per)]
    width, height, left, bottom = 800.0, 160.0, 10.0, 20.0
    top = max(sent) or 1.0
    slot = (width - 2 * left) / len(sent)
    bars = []
    for index, (rate, rejected) in enumerate(zip(sent, limited, strict=True)):
        x = left + index * slot
        for value, fill in ((rate, "#3b82f6"), (rejected, "#d64545")):
            if value:
                h = value / top * (height - bottom - 24)  # room above for the peak label
                bars.append(
                    f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{max(slot - 1, 1):.1f}"'
                    f' height="{h:.1f}" fill="{fill}"><title>{index * per} s: {value:.1f}/s</title></rect>'
                )
    return (
        f'<svg class="chart" viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
        ' aria-label="requests per second">'
        f'{"".join(bars)}<text x="{left}" y="{height - 4:.0f}">0 s</text>'
        f'<text x="{width - left}" y="{height - 4:.0f}" text-anchor="end">{seconds} s</text>'
        f'<text x="{left}" y="12">peak {top:.1f}/s</text></svg>'
        f'<p class="sub">Blue: requests per second that the client\'s events show (submissions, status'
        f" changes, retries, 429s; checks that saw no change are not counted). Red: answers 429"
        f" ({sum(timeline.rate_limited)} in all).</p>"
    )
