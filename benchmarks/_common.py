"""What every benchmark shares: the simulator (in another process or in this one) and a client scaled to
it, result rows and the table, small statistics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from kling_async import KlingClient, OmniRequest, PollPolicy, WebhookReceiver
from kling_async.testing import Simulator

from ._server import ServerLimit

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sim-key"
# Where the simulator's tasks are read back (the Omni family: std and pro share it).
OMNI_CREATE = "/v1/ai/video/kling-v3-omni-std"
OMNI_FAMILY = "/v1/ai/video/kling-v3-omni"
# Every client (ours and the baselines) may have this many requests on the wire: our default.
WIRE = 16


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries results."""
    print(message, file=sys.stderr, flush=True)


def request_for(index: int) -> OmniRequest:
    """The request every benchmark sends (the baselines send the same JSON)."""
    return OmniRequest(prompt=f"a red fox in fresh snow, shot {index}", duration="5")


def body_for(index: int) -> dict[str, str]:
    """``request_for(index)`` as the JSON object the baselines send."""
    return {"prompt": f"a red fox in fresh snow, shot {index}", "duration": "5"}


def scaled_policy(scale: float) -> PollPolicy:
    """Our default PollPolicy with every duration multiplied by the simulator's time scale."""
    default = PollPolicy()
    assert default.timeout is not None
    return PollPolicy(
        initial=default.initial * scale,
        maximum=default.maximum * scale,
        multiplier=default.multiplier,
        timeout=default.timeout * scale,
        jitter=default.jitter,
        safety_interval=default.safety_interval * scale,
    )


def scaled_client(
    url: str,
    scale: float,
    *,
    requests_per_second: float | None = None,
    burst: int | None = None,
    webhooks: WebhookReceiver | None = None,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> KlingClient:
    """Our client for a simulator at ``url``, its poll policy scaled like the simulator's time."""
    return KlingClient(
        api_key=API_KEY,
        base_url=url,
        poll=scaled_policy(scale),
        requests_per_second=requests_per_second,
        burst=burst,
        webhooks=webhooks,
        trace_configs=trace_configs,
    )


@contextlib.asynccontextmanager
async def simulated(
    limit: ServerLimit,
    *,
    scale: float,
    generation: float | tuple[float, float],
    seed: int,
    requests_per_second: float | None = None,
    burst: int | None = None,
) -> AsyncIterator[tuple[Simulator, KlingClient]]:
    """An in-process simulator enforcing ``limit``, and our client for it (told the given rate, if any)."""
    options = limit.simulator_options()
    async with (
        Simulator(time_scale=scale, generation_seconds=generation, seed=seed, **options) as sim,
        scaled_client(sim.url, scale, requests_per_second=requests_per_second, burst=burst) as client,
    ):
        yield sim, client


# -- the simulator in another process ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimAddress:
    url: str
    control: str


@contextlib.asynccontextmanager
async def sim_process(
    *,
    time_scale: float,
    generation: str,
    queue_seconds: float = 2.0,
    limit: ServerLimit | None = None,
    webhook_secret: str | None = None,
    seed: int = 0,
) -> AsyncIterator[SimAddress]:
    """Start ``benchmarks._server`` and yield its addresses once it listens; stop it on exit."""
    args = [
        "-m",
        "benchmarks._server",
        "--time-scale",
        str(time_scale),
        "--generation",
        generation,
        "--queue-seconds",
        str(queue_seconds),
        "--seed",
        str(seed),
        *(limit or ServerLimit()).arguments(),
    ]
    if webhook_secret is not None:
        args += ["--webhook-secret", webhook_secret]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the simulator process exited before listening")
        info = json.loads(line)
        yield SimAddress(info["url"], info["control"])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def fetch_counters(control: str) -> dict[str, Any]:
    """The remote simulator's counters (its control port: not counted as API traffic)."""
    async with aiohttp.ClientSession() as session, session.get(control + "/counters") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def fetch_tasks(control: str) -> dict[str, tuple[float, float]]:
    """The remote simulator's tasks: ``(created_at, finishes_at)`` by id, on ``time.monotonic()``."""
    async with aiohttp.ClientSession() as session, session.get(control + "/tasks") as resp:
        data: dict[str, list[float]] = await resp.json()
        return {task_id: (times[0], times[1]) for task_id, times in data.items()}


async def run_worker(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args...`` (a measurement in a fresh process) and parse its last stdout line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited {proc.returncode}")
    lines = out.decode().strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def emit(result: dict[str, Any]) -> None:
    """A worker's result: one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# -- process memory ------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_bytes() -> int:
    """Resident set size now."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or ``reset_peak_rss``."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Make VmHWM start again from the current RSS (Linux: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# -- statistics ----------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    data = [v for v in values if not math.isnan(v)]
    return statistics.median(data) if data else math.nan


def mean(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.fmean(data) if data else math.nan


class Stopwatch:
    """Wall and process CPU time of a block."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        return self

    def elapsed(self) -> float:
        """Wall seconds since the block started (while it runs)."""
        return time.perf_counter() - self._wall0

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0


# -- results -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One line of the results table: our number, a baseline's number (if any) and the target.

    ``ratio`` is ours / baseline unless the row says otherwise (``ratio_inverted``: baseline / ours,
    used where the target is "N times less than the baseline").
    """

    bench: str
    metric: str
    unit: str
    ours: float
    baseline: str = ""
    base: float = math.nan
    target: str = ""
    met: bool | None = None
    ratio_inverted: bool = False

    @property
    def ratio(self) -> float:
        if math.isnan(self.base) or math.isnan(self.ours):
            return math.nan
        num, den = (self.base, self.ours) if self.ratio_inverted else (self.ours, self.base)
        return num / den if den else math.inf

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        fixed: dict[str, Any] = {
            k: (math.nan if v is None and k in ("ours", "base") else v) for k, v in data.items()
        }
        return cls(**fixed)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the rows."""
    header = ["bench", "metric", "unit", "ours", "baseline", "baseline value", "ratio", "target", "met"]
    lines = [header]
    for row in rows:
        ratio = _fmt(row.ratio)
        if ratio != "-":
            ratio = ("base/ours " if row.ratio_inverted else "") + ratio + "x"
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            [
                row.bench,
                row.metric,
                row.unit,
                _fmt(row.ours),
                row.baseline or "-",
                _fmt(row.base),
                ratio,
                row.target or "-",
                met,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def arguments(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its module docstring as help, ``--quick`` (what it shrinks to) and
    ``--json`` (rows for run.py); a benchmark adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", action="store_true", help="print result rows as JSON (for run.py)")
    return parser


def finish(rows: Sequence[Row], as_json: bool) -> None:
    """Print the rows: as JSON lines for run.py, else as a table."""
    if as_json:
        emit({"rows": [row.to_json() for row in rows]})
    else:
        print(format_table(rows))
