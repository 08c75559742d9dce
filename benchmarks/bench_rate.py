"""Behaviour under server-enforced rate limits that sustain 10 requests per second.

Each configuration gets its own in-process simulator and its own client running ``client.map`` over an
endless stream of requests: 16 submitters POST as fast as the client lets them and the tracker checks the
created tasks (generations 30-120 s at time scale 0.05), so the client always wants far more than 10
requests per second. After ``DURATION`` seconds the batch is cancelled.

Servers (every one sustains 10/s over every API request; the bursts differ):
  burst 1         ``rate_limit=10, burst=1``: no burst (nginx's ``limit_req`` without ``burst=``): two
                  requests less than 0.1 s apart draw a 429
  burst 3         ``rate_limit=10, burst=3``: a burst below the per-second rate
  burst 10        ``rate_limit=10, burst=10``: equal to it
  burst 30        ``rate_limit=10, burst=30``: above it
  two windows     ``rate_windows=((50, 0.5), (10, 12))``: Freepik's published shape (50/s over 5 s and 10/s
                  averaged over 2 minutes) with its windows scaled by 1/10
Each server is run with the client told ``requests_per_second=10`` and not told (``None``: it finds the
limit from 429s), with 429s carrying ``Retry-After`` (whole seconds, so at least 1 s: every 429 pauses
the whole client); burst 10 also without ``Retry-After``. Bursts 10 and 30 are also run not told on a
key another client used just before (8 and 25 requests, one after another, as the run starts): the
server's bucket is not full when the client opens. All configurations run at the same time.

The simulator's counters are sampled every 0.25 s. Reported: the accepted (non-429) rate over the steady
window (from ``WARM`` seconds to the end) as a % of 10/s, and the share of answers that were 429, over the
whole run and after the first ``WARM`` seconds. The client's final adaptive rate is read from its limiter
(``client._limiter.rate``: private, read only, for diagnosis).

``--latency SECONDS`` puts every server that far away: each request waits that long at the server before
its limit is checked, so answers, 429s among them, come back that much later (on loopback they take about
a millisecond, and a client finds out at once that the server's bucket has run dry).
Run alone: ``python -m benchmarks.bench_rate [--quick] [--latency SECONDS]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

from kling_async import OmniRequest

from ._common import Row, arguments, finish, log, request_for, scaled_client, simulated
from ._server import ServerLimit

LIMIT = 10.0
SCALE = 0.05

SERVERS = (
    ("burst 1", ServerLimit(LIMIT, burst=1)),
    ("burst 3", ServerLimit(LIMIT, burst=3)),
    ("burst 10", ServerLimit(LIMIT, burst=10)),
    ("burst 30", ServerLimit(LIMIT, burst=30)),
    ("two windows", ServerLimit(windows=((50.0, 0.5), (LIMIT, 12.0)))),
)
# (name, the server's limit, the rate the client is told, requests another client sent just before)
CONFIGS: tuple[tuple[str, ServerLimit, float | None, int], ...] = (
    tuple(
        (f"{name}, {'told' if told else 'not told'}", limit, LIMIT if told else None, 0)
        for name, limit in SERVERS
        for told in (True, False)
    )
    + tuple(
        (f"burst 10, {label}, no Retry-After", dataclasses.replace(SERVERS[2][1], retry_after=False), rps, 0)
        for label, rps in (("told", LIMIT), ("not told", None))
    )
    + tuple(
        (f"burst {burst}, not told, {spent} just spent", ServerLimit(LIMIT, burst=burst), None, spent)
        for burst, spent in ((10, 8), (30, 25))
    )
)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    answered: int
    rate_limited: int
    limiter_rate: float | None


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    used_pct: float
    used_pct_all: float
    share_429: float
    share_429_late: float
    first_429s: int
    answered: int
    final_rate: float | None
    trace: str


def _endless() -> Iterator[OmniRequest]:
    i = 0
    while True:
        yield request_for(i)
        i += 1


def _at(samples: list[Sample], t: float) -> Sample:
    """The last sample taken at or before t."""
    best = samples[0]
    for sample in samples:
        if sample.at <= t:
            best = sample
    return best


async def run_config(
    name: str, limit: ServerLimit, rps: float | None, spent: int, *, duration: float, warm: float
) -> Result:
    samples: list[Sample] = []
    pair = simulated(limit, scale=SCALE, generation=(30.0, 120.0), seed=2, requests_per_second=rps)
    async with pair as (sim, client):
        # Another client on the key, just before this one: its requests take from the server's bucket.
        async with scaled_client(sim.url, SCALE, requests_per_second=1000.0, burst=spent or 1) as other:
            for _ in range(spent):
                await other.list_tasks(page_size=1)
        before = sim.counters
        answered_before = sum(before.responses_by_status.values())
        rate_limited_before = before.rate_limited
        start = time.monotonic()

        def sample(start: float) -> None:
            counters = sim.counters
            answered = sum(counters.responses_by_status.values()) - answered_before
            rate_limited = counters.rate_limited - rate_limited_before
            samples.append(Sample(time.monotonic() - start, answered, rate_limited, client._limiter.rate))

        async def sampler() -> None:
            while True:
                sample(start)
                await anyio.sleep(0.25)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            with anyio.move_on_after(duration):
                async for _ in client.map(_endless()):
                    pass
            sample(start)
            tg.cancel_scope.cancel()
        final_rate = client._limiter.rate
    end = samples[-1]
    mark = _at(samples, warm)
    window = end.at - mark.at
    accepted_late = (end.answered - end.rate_limited) - (mark.answered - mark.rate_limited)
    answered_late = end.answered - mark.answered
    return Result(
        name=name,
        used_pct=100.0 * accepted_late / window / LIMIT,
        used_pct_all=100.0 * (end.answered - end.rate_limited) / end.at / LIMIT,
        share_429=100.0 * end.rate_limited / max(1, end.answered),
        share_429_late=100.0 * (end.rate_limited - mark.rate_limited) / max(1, answered_late),
        first_429s=mark.rate_limited,
        answered=end.answered,
        final_rate=final_rate,
        trace=_trace(samples, end.at),
    )


def _trace(samples: list[Sample], end: float) -> str:
    """Per 5-second slice: accepted/s, 429s/s and the limiter's rate at the slice's end."""
    parts = []
    t = 0.0
    while t < end - 1e-6:
        a, b = _at(samples, t), _at(samples, min(t + 5.0, end))
        span = max(b.at - a.at, 1e-9)
        ok = (b.answered - b.rate_limited) - (a.answered - a.rate_limited)
        rate = "-" if b.limiter_rate is None else f"{b.limiter_rate:.1f}"
        parts.append(f"{t:.0f}s:{ok / span:.1f}ok/{(b.rate_limited - a.rate_limited) / span:.0f}x429/r{rate}")
        t += 5.0
    return " ".join(parts)


async def measure(quick: bool, latency: float = 0.0) -> list[Row]:
    duration, warm = (12.0, 6.0) if quick else (75.0, 30.0)
    away = f", the server {latency:g} s away" if latency else ""
    each = f"{duration:.0f} s each, limit {LIMIT:.0f}/s{away}"
    log(f"bench_rate: {len(CONFIGS)} configurations at once, {each}")
    results: list[Result] = []

    async def one(name: str, limit: ServerLimit, rps: float | None, spent: int) -> None:
        limit = dataclasses.replace(limit, latency=latency)
        results.append(await run_config(name, limit, rps, spent, duration=duration, warm=warm))

    async with anyio.create_task_group() as tg:
        for config in CONFIGS:
            tg.start_soon(one, *config)
    results.sort(key=lambda r: [c[0] for c in CONFIGS].index(r.name))
    bench = f"rate (sustained {LIMIT:.0f}/s, {duration:.0f} s{away})"
    rows: list[Row] = []
    for r in results:
        rate = "unpaced" if r.final_rate is None else f"{r.final_rate:.2f}/s"
        log(
            f"  rate {r.name:36s} used={r.used_pct:.1f}% after {warm:.0f}s ({r.used_pct_all:.1f}% overall)"
            f" 429s={r.share_429:.2f}% overall, {r.share_429_late:.2f}% after {warm:.0f}s"
            f" ({r.first_429s} in the first {warm:.0f}s, {r.answered} answers) final limiter rate {rate}"
        )
        log(f"    per 5 s (accepted/s, 429/s, limiter rate): {r.trace}")
        rows.append(
            Row(
                bench,
                f"rate used after {warm:.0f} s, {r.name}",
                "% of 10/s",
                r.used_pct,
                target=">= 95%",
                met=r.used_pct >= 95.0,
            )
        )
        rows.append(Row(bench, f"rate used, whole run, {r.name}", "% of 10/s", r.used_pct_all))
        rows.append(Row(bench, f"429 share, whole run, {r.name}", "%", r.share_429))
        rows.append(
            Row(
                bench,
                f"429 share after {warm:.0f} s, {r.name}",
                "%",
                r.share_429_late,
                target="<= 1%",
                met=r.share_429_late <= 1.0,
            )
        )
    return rows


def main() -> None:
    parser = arguments(__doc__, "12 s runs, steady window after 6 s")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each request waits at the server")
    args = parser.parse_args()
    # A status check that met 429 on every retry logs a warning; hundreds of them would bury the results.
    logging.getLogger("kling_async").setLevel(logging.ERROR)
    finish(asyncio.run(measure(args.quick, args.latency)), args.json)


if __name__ == "__main__":
    main()
