"""Makespan: how long a large batch takes under a server's rate limit, against its floor (issue 16 item 5).

N tasks (2,000) with generations of 30-120 s at time scale 0.05 (1.5-6 s), every poll policy scaled alike,
against a simulator in its own process that allows R = 100 requests/s with a burst of 20 (a token bucket
over every API request; 429s carry ``Retry-After`` in whole seconds). At 2N/R = 40 s against generations
of at most 6 s, the rate binds: the batch can go no faster than the server lets its requests through.

The floor is ``(POSTs + one status GET per task) / R + the last generation``: every task created and
checked once at the server's rate, then the generation of the task created last (from its creation to
its completion, read from the simulator). With webhooks no status GET is needed: ``POSTs / R + the last
generation``. For webhooks the table also shows the wall time over ``reachable``, the least any client
could reach on the run's generation times: the floor takes the generation of the task created last, but a
task created a little earlier may run longer, and then the floor lies below every client. Contenders,
alternating (the order rotates each round, and every contender of a round meets a simulator with the
same seed, so the same generation times), ``--rounds`` runs each:

  polling, told       ``client.map``, ``requests_per_second=100, burst=20``
  polling, not told   ``client.map``, ``requests_per_second=None``: unpaced until the first 429
  webhooks, told      ``client.map`` with a ``WebhookReceiver`` (deliveries resolve tasks, polling is a
                      slow safety net: ``PollPolicy.safety_interval``, scaled), told the rate
  webhooks, not told  the same, not told
  C                   baseline C: each task POSTed then polled every 5 s (scaled: 0.25 s), the pattern of
                      Freepik's own client, at most 16 requests on the wire; a 429 waits its Retry-After
                      and sends the same request again

Reported: wall time (from the first request to the last result in hand) over the floor, and over C's wall
time in the same round (medians and ranges); 429s and status requests per task. For the diagnosis, every
request's answer is logged with its time (an aiohttp ``TraceConfig`` on our client's session, the same
record in C), and each run's log on stderr splits the wall time into the submission (until the last POST
was accepted: its length, the share of the server's rate used meanwhile, the 429s) and the tail (after
it: the requests, and how late the last results were seen after the server finished them), with a trace
per 5 s of accepted requests by kind and our limiter's rate.
``--latency SECONDS`` puts the server that far away (each request waits that long there first).
Run alone: ``python -m benchmarks.bench_makespan [--quick] [--n N] [--rounds N] [--only NAME ...]
[--latency SECONDS]``.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp
import anyio

from kling_async import KlingClient, WebhookReceiver

from ._common import (
    OMNI_FAMILY,
    Row,
    SimAddress,
    arguments,
    fetch_counters,
    fetch_tasks,
    finish,
    log,
    median,
    request_for,
    scaled_client,
    sim_process,
)
from ._server import ServerLimit
from .baselines import AiohttpJsonClient, fixed_schedule

LIMIT = 100.0
BURST = 20
SERVER = ServerLimit(LIMIT, burst=BURST)
SCALE = 0.05
GENERATION = "30,120"
C_PERIOD = 5.0
SECRET = "whsec_YmVuY2htYXJrLW1ha2VzcGFuLXNlY3JldA=="
TARGET = 1.10  # of the floor
SLICE = 5.0  # seconds, for the per-run trace
PAUSE = 0.25  # seconds without an accepted answer while submitting: a pause, listed in the run's log

Kind = Literal["create", "status", "list"]
# Our limiter's rate over time: (time.monotonic(), requests/s, or None while unpaced).
Rates = list[tuple[float, float | None]]


@dataclass(frozen=True, slots=True)
class Contender:
    """A client in the race: how it learns of results, and the rate it is told (None: not told)."""

    name: str
    style: Literal["polling", "webhooks", "fixed"]
    rps: float | None = None
    burst: int | None = None


CONTENDERS = (
    Contender("polling, told", "polling", LIMIT, BURST),
    Contender("polling, not told", "polling"),
    Contender("webhooks, told", "webhooks", LIMIT, BURST),
    Contender("webhooks, not told", "webhooks"),
    Contender("C", "fixed"),
)
C_NAME = CONTENDERS[-1].name
# Where the floor can lie below what any client reaches (see ``reachable``), the bound is shown beside it.
BOUNDED = {contender.name for contender in CONTENDERS if contender.style == "webhooks"}


@dataclass(slots=True)
class RequestLog:
    """Every answer a client got: ``(time.monotonic(), kind, HTTP status)``, in the order they came."""

    entries: list[tuple[float, Kind, int]] = field(default_factory=list)

    def add(self, method: str, path: str, status: int) -> None:
        kind: Kind = "create" if method == "POST" else "status"
        if method == "GET" and path.rstrip("/") == OMNI_FAMILY:
            kind = "list"
        self.entries.append((time.monotonic(), kind, status))

    def trace_config(self) -> aiohttp.TraceConfig:
        """An aiohttp hook that records each answer of a session."""
        config = aiohttp.TraceConfig()

        async def on_end(
            _: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestEndParams
        ) -> None:
            self.add(params.method, params.url.path, params.response.status)

        config.on_request_end.append(on_end)
        return config


class FixedPolling(AiohttpJsonClient):
    """Baseline C under a rate limit: a 429 waits its ``Retry-After`` and sends the same request again."""

    def __init__(self, base_url: str, period: float, requests: RequestLog) -> None:
        super().__init__(base_url, fixed_schedule(period))
        self._requests = requests

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        while True:
            async with self._wire, self._session.request(method, self._base + path, json=body) as resp:
                self._requests.add(method, path, resp.status)
                if resp.status != 429:
                    resp.raise_for_status()
                    data: dict[str, Any] = (await resp.json())["data"]
                    return data
                wait = _retry_after(resp.headers.get("Retry-After"))
            await asyncio.sleep(wait)


def _retry_after(value: str | None) -> float:
    """Seconds to wait after a 429: its ``Retry-After`` in seconds, else one second."""
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


@dataclass(slots=True)
class Run:
    """One contender's batch and what the server and the request log say about it."""

    name: str
    n: int
    wall: float
    floor: float
    # The least wall time any client could reach on this run's generation times (see ``reachable``).
    bound: float
    last_generation: float
    # The longest any task ran past the last creation: the tail the generation times impose.
    generations_tail: float
    accepted: Counter[str]
    rejected: Counter[str]
    submitted: float  # seconds from the start to the last accepted POST's answer
    used_submitting: float  # accepted requests while submitting, as a share of what the server allowed
    delay_mean: float  # seconds from a task's completion (server) to its result in the client's hands
    delay_last: float  # the same for the task that finished last
    tail_requests: Counter[str]
    # When 429s came back (seconds from the start), and the pauses: gaps of over PAUSE seconds between
    # two accepted answers while submitting, as (start, length).
    limited_at: list[float]
    pauses: list[tuple[float, float]]
    trace: str

    @property
    def ratio(self) -> float:
        return self.wall / self.floor

    @property
    def ratio_bound(self) -> float:
        return self.wall / self.bound

    @property
    def status_per_task(self) -> float:
        return (self.accepted["status"] + self.accepted["list"]) / self.n

    @property
    def share_429(self) -> float:
        answered = sum(self.accepted.values()) + sum(self.rejected.values())
        return 100.0 * sum(self.rejected.values()) / max(1, answered)


async def _run_ours(
    contender: Contender,
    sim: SimAddress,
    n: int,
    requests: RequestLog,
    rates: Rates,
) -> tuple[float, float, dict[str, float]]:
    """Our client's batch: (start, wall, when each task's result was in hand by id)."""
    receiver = WebhookReceiver(SECRET) if contender.style == "webhooks" else None
    known: dict[str, float] = {}
    client = scaled_client(
        sim.url,
        SCALE,
        requests_per_second=contender.rps,
        burst=contender.burst,
        webhooks=receiver,
        trace_configs=[requests.trace_config()],
    )
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(_sample_rate, client, rates)
        start = time.monotonic()
        async for outcome in client.map(request_for(i) for i in range(n)):
            if not outcome.ok or outcome.task_id is None:
                raise RuntimeError(f"item {outcome.index} failed: {outcome.error!r}")
            known[outcome.task_id] = time.monotonic()
        wall = time.monotonic() - start
        tg.cancel_scope.cancel()
    return start, wall, known


async def _sample_rate(client: KlingClient, rates: Rates) -> None:
    # The limiter's rate is private: read here for the diagnosis only.
    while True:
        rates.append((time.monotonic(), client._limiter.rate))
        await anyio.sleep(0.25)


async def _run_fixed(sim: SimAddress, n: int, requests: RequestLog) -> tuple[float, float, dict[str, float]]:
    """Baseline C's batch: (start, wall, when each task's result was in hand by id)."""
    async with FixedPolling(sim.url, C_PERIOD * SCALE, requests) as baseline:
        start = time.monotonic()
        finished = await asyncio.gather(*(baseline.run_task(i) for i in range(n)))
        wall = time.monotonic() - start
    return start, wall, {f.task_id: f.known_at for f in finished}


async def run_once(contender: Contender, n: int, seed: int, limit: ServerLimit = SERVER) -> Run:
    requests = RequestLog()
    rates: Rates = []
    webhooks = contender.style == "webhooks"
    async with sim_process(
        time_scale=SCALE,
        generation=GENERATION,
        limit=limit,
        webhook_secret=SECRET if webhooks else None,
        seed=seed,
    ) as sim:
        if contender.style == "fixed":
            start, wall, known = await _run_fixed(sim, n, requests)
        else:
            start, wall, known = await _run_ours(contender, sim, n, requests, rates)
        tasks = await fetch_tasks(sim.control)
        counters = await fetch_counters(sim.control)
    if len(tasks) != n or set(known) != set(tasks):
        raise RuntimeError(f"{contender.name}: {len(tasks)} tasks created for {n} items")
    logged = sum(1 for _, _, status in requests.entries if status == 429)
    if counters["rate_limited"] != logged:
        log(f"  note: the server sent {counters['rate_limited']} 429s, the request log holds {logged}")
    return analyse(contender, n, start, wall, known, tasks, requests, rates)


def analyse(
    contender: Contender,
    n: int,
    start: float,
    wall: float,
    known: dict[str, float],
    tasks: dict[str, tuple[float, float]],
    requests: RequestLog,
    rates: Rates,
) -> Run:
    """Split one run's wall time into its submission and its tail, from the request log."""
    created_last, finishes_last_created = max(tasks.values())
    last_generation = finishes_last_created - created_last
    status_gets = 0 if contender.style == "webhooks" else n
    floor = (n + status_gets) / LIMIT + last_generation
    bound = reachable(sorted(tasks.values()), status_gets)
    entries = [(t - start, kind, status) for t, kind, status in requests.entries]
    accepted: Counter[str] = Counter(kind for _, kind, status in entries if status != 429)
    rejected: Counter[str] = Counter(kind for _, kind, status in entries if status == 429)
    submitted = max(t for t, kind, status in entries if kind == "create" and status != 429)
    early = sum(1 for t, _, status in entries if t <= submitted and status != 429)
    tail: Counter[str] = Counter(
        f"{kind} {'429' if status == 429 else 'ok'}" for t, kind, status in entries if t > submitted
    )
    delays = {task_id: known[task_id] - finishes for task_id, (_, finishes) in tasks.items()}
    answered = [t for t, _, status in entries if status != 429 and t <= submitted]
    pauses = [(a, b - a) for a, b in itertools.pairwise([0.0, *answered]) if b - a > PAUSE]
    last_done = max(tasks, key=lambda task_id: tasks[task_id][1])
    return Run(
        name=contender.name,
        n=n,
        wall=wall,
        floor=floor,
        bound=bound,
        last_generation=last_generation,
        generations_tail=max(finishes for _, finishes in tasks.values()) - created_last,
        accepted=accepted,
        rejected=rejected,
        submitted=submitted,
        used_submitting=early / (submitted * LIMIT + BURST),
        delay_mean=sum(delays.values()) / len(delays),
        delay_last=delays[last_done],
        tail_requests=tail,
        limited_at=[t for t, _, status in entries if status == 429],
        pauses=pauses,
        trace=_trace(entries, [(t - start, rate) for t, rate in rates], wall),
    )


def reachable(tasks: Sequence[tuple[float, float]], status_gets: int) -> float:
    """The least wall time any client could reach: a lower bound, unlike the floor.

    ``tasks`` are (created, finishes) in creation order. The simulator draws a task's generation when it
    is created, so the k-th task created (from 0) runs as long whoever sends it, and no earlier than the
    server's bucket allows: ``(k + 1 - BURST) / LIMIT`` after the start. Every request of the run also
    takes a token: ``(n + status_gets - BURST) / LIMIT``. The floor's "last generation" is the generation
    of the task created last only, so a task created a little earlier and running longer (1.5-6 s here)
    can put the floor below what any client reaches; this bound takes the longest of them.
    """
    n = len(tasks)
    latest = max(
        max(0.0, (k + 1 - BURST) / LIMIT) + finishes - created for k, (created, finishes) in enumerate(tasks)
    )
    return max(latest, (n + status_gets - BURST) / LIMIT)


def _trace(entries: list[tuple[float, Kind, int]], rates: Rates, end: float) -> str:
    """Per slice: accepted POSTs, status GETs and list GETs, 429s, and our limiter's rate at its end."""
    parts = []
    times = [t for t, _ in rates]
    t0 = 0.0
    while t0 < end:
        t1 = t0 + SLICE
        inside = [(kind, status) for t, kind, status in entries if t0 <= t < t1]
        ok = Counter(kind for kind, status in inside if status != 429)
        limited = sum(1 for _, status in inside if status == 429)
        part = f"{t0:.0f}s P{ok['create']} S{ok['status']} L{ok['list']} x{limited}"
        at = bisect.bisect_right(times, min(t1, end)) - 1
        if at >= 0:
            rate = rates[at][1]
            part += " r-" if rate is None else f" r{rate:.0f}"
        parts.append(part)
        t0 = t1
    return " | ".join(parts)


def _describe(run: Run) -> str:
    tail = ", ".join(f"{count} {what}" for what, count in sorted(run.tail_requests.items())) or "none"
    pauses = " ".join(f"{start:.2f}+{length:.2f}" for start, length in run.pauses) or "none"
    return (
        f"  {run.name:20s} {run.wall:6.1f} s = {run.ratio:.2f}x floor {run.floor:.1f} s,"
        f" {run.ratio_bound:.2f}x the bound {run.bound:.1f} s (last generation"
        f" {run.last_generation:.2f} s); submitting {run.submitted:.1f} s at {100 * run.used_submitting:.0f}%"
        f" of the rate; tail {run.wall - run.submitted:.1f} s ({tail}), the generations'"
        f" {run.generations_tail:.2f} s; accepted"
        f" {dict(run.accepted)}, 429 {dict(run.rejected)}; result seen {run.delay_mean:.2f} s after"
        f" completion on average, the last task's {run.delay_last:.2f} s; 429s at {_times(run.limited_at)};"
        f" pauses while submitting (start+length) {pauses}"
    )


def _times(values: list[float]) -> str:
    shown = " ".join(f"{t:.2f}" for t in values[:12])
    return (shown + f" ... ({len(values)} in all)" if len(values) > 12 else shown) or "none"


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}x"


def rows_of(runs: dict[str, list[Run]], n: int, rounds: int, away: str = "") -> list[Row]:
    bench = f"makespan ({n} tasks, {LIMIT:.0f}/s burst {BURST}{away}, median of {rounds})"
    rows: list[Row] = []
    c_runs = runs.get(C_NAME, [])
    for name, own in runs.items():
        ratios = [run.ratio for run in own]
        is_c = name == C_NAME
        rows.append(
            Row(
                bench,
                f"wall, {name}",
                "s",
                median(run.wall for run in own),
                baseline="floor",
                base=median(run.floor for run in own),
            )
        )
        rows.append(
            Row(
                bench,
                f"wall / floor, {name} (runs {_spread(ratios)})",
                "x",
                median(ratios),
                target="" if is_c else f"<= {TARGET:.2f}",
                met=None if is_c else median(ratios) <= TARGET,
            )
        )
        if name in BOUNDED:
            bounded = [run.ratio_bound for run in own]
            rows.append(
                Row(
                    bench,
                    f"wall / reachable bound, {name} (runs {_spread(bounded)})",
                    "x",
                    median(bounded),
                    target=f"<= {TARGET:.2f}",
                    met=median(bounded) <= TARGET,
                )
            )
        if not is_c and len(c_runs) == len(own):
            versus = [run.wall / c.wall for run, c in zip(own, c_runs, strict=True)]
            rows.append(
                Row(
                    bench,
                    f"wall / C's wall, same round, {name} (runs {_spread(versus)})",
                    "x",
                    median(versus),
                    target="<= 1.00",
                    met=median(versus) <= 1.0,
                )
            )
        rows.append(Row(bench, f"429 share, {name}", "%", median(run.share_429 for run in own)))
        rows.append(Row(bench, f"status req/task, {name}", "req", median(run.status_per_task for run in own)))
    return rows


async def measure(n: int, rounds: int, contenders: Sequence[Contender], latency: float = 0.0) -> list[Row]:
    away = f", the server {latency:g} s away" if latency else ""
    log(
        f"bench_makespan: {n} tasks, limit {LIMIT:.0f}/s burst {BURST}{away}, scale {SCALE}, {rounds} rounds"
        f" of {', '.join(c.name for c in contenders)}"
    )
    limit = dataclasses.replace(SERVER, latency=latency)
    runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        order = [*contenders[r % len(contenders) :], *contenders[: r % len(contenders)]]
        for contender in order:
            run = await run_once(contender, n, seed=r, limit=limit)
            runs[contender.name].append(run)
            log(f"round {r + 1}: {_describe(run)}")
            log(
                f"    per {SLICE:.0f} s (accepted: P POST, S status, L list; x 429; r limiter at the end):"
                f" {run.trace}"
            )
    return rows_of(runs, n, rounds, away)


def main() -> None:
    parser = arguments(__doc__, "300 tasks, one round")
    parser.add_argument("--n", type=int, default=None, help="tasks per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=None, help="runs of each contender (default 3)")
    parser.add_argument(
        "--only", nargs="+", choices=[c.name for c in CONTENDERS], help="these contenders only"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each request waits at the server")
    args = parser.parse_args()
    n = args.n or (300 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 3)
    contenders = [c for c in CONTENDERS if args.only is None or c.name in args.only]
    # A status check that met 429 on every retry logs a warning; hundreds of them would bury the results.
    logging.getLogger("kling_async").setLevel(logging.ERROR)
    finish(asyncio.run(measure(n, rounds, contenders, args.latency)), args.json)


if __name__ == "__main__":
    main()
