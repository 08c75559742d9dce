"""Client CPU per finished task: submit N tasks and poll every one to completion.

The simulator runs in its own process (``benchmarks._server``) and every measurement runs in a fresh
client process, so ``time.process_time()`` around the run counts the client's CPU only. Each measurement
first runs a small warm-up batch with a throwaway client of the same kind (so one-time costs such as
first calls are not counted), then measures a fresh client on N tasks against a fresh simulator.

Variants:
  ours-gather    ``KlingClient.gather`` (the batch engine: list sweeping + detail of finished tasks)
  ours-handles   ``KlingClient.submit`` + ``await handle`` for every task at once (per-task polling)
  A              bare aiohttp + json, geometric poll schedule (the floor)
  B              httpx + pydantic v2, the same requests as A
  A-paced        A, its POSTs started at the pace of our limiter's opening (a diagnostic, see below)

Generations are 30-120 s at time scale 0.01 (0.3-1.2 s), and every poll policy is scaled alike.
Run alone: ``python -m benchmarks.bench_cpu [--quick] [--reps N] [--n N] [--opening-off]``.

``--pace-cost`` measures something else: the CPU of one create POST sent at a fixed pace (50 to 2,000 a
second, and unpaced), for A and for our client told that rate (``submit``, no polling; unpaced: not
told, past the opening). It separates
what sending slowly costs any client (each request wakes an idle event loop) from what our code costs
at the same pace.

This simulator has no rate limit, and our clients are not told one, so the limiter's paced opening (50
requests a second, doubling twelve times a second until a 429) paces the first seconds of every run.
``--opening-off`` is a diagnostic: every client of ours starts past the opening (unpaced until a 429, as
before the opening existed), to show what the opening costs here. ``A-paced`` shows the other side: the
same work spread over the same time costs the floor more CPU too (more event-loop wake-ups, colder
caches), so it separates what the opening's pace costs from what our code costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import time
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, TypeVar

from kling_async import KlingClient, _limits
from kling_async._limits import _OPEN, _OPEN_CLEAR

from ._common import (
    API_KEY,
    Row,
    Stopwatch,
    arguments,
    emit,
    fetch_counters,
    finish,
    log,
    median,
    request_for,
    run_worker,
    scaled_policy,
    sim_process,
)
from .baselines import AiohttpJsonClient, Finished, HttpxPydanticClient, geometric_schedule

VARIANTS = ("ours-gather", "ours-handles", "A", "B", "A-paced")
SCALE = 0.01
GENERATION = "30,120"
WARM_UP = 32


async def _run_variant(variant: str, url: str, n: int, first: int) -> int:
    """Run tasks first..first+n-1 with one fresh client of the variant; return how many completed."""
    policy = scaled_policy(SCALE)
    if variant == "ours-gather":
        async with KlingClient(api_key=API_KEY, base_url=url, poll=policy) as client:
            outcomes = await client.gather(request_for(i) for i in range(first, first + n))
            return sum(o.ok for o in outcomes)
    if variant == "ours-handles":
        async with KlingClient(api_key=API_KEY, base_url=url, poll=policy) as client:

            async def one(index: int) -> bool:
                handle = await client.submit(request_for(index))
                result = await handle
                return result.status == "COMPLETED"

            done = await asyncio.gather(*(one(i) for i in range(first, first + n)))
            return sum(done)
    baseline: AiohttpJsonClient | HttpxPydanticClient
    if variant in ("A", "A-paced"):
        baseline = AiohttpJsonClient(url, geometric_schedule(policy))
    elif variant == "B":
        baseline = HttpxPydanticClient(url, geometric_schedule(policy))
    else:
        raise ValueError(variant)
    async with baseline:
        runs: Iterator[Awaitable[Finished]] = (baseline.run_task(i) for i in range(first, first + n))
        if variant == "A-paced":
            start = time.monotonic()

            async def at_opening_pace(index: int) -> Finished:
                await asyncio.sleep(max(0.0, start + opening_send_time(index - first) - time.monotonic()))
                return await baseline.run_task(index)

            runs = (at_opening_pace(i) for i in range(first, first + n))
        finished = await asyncio.gather(*runs)
        return sum(f.status == "COMPLETED" for f in finished)


PACES: tuple[float | None, ...] = (None, 2000.0, 500.0, 100.0, 50.0)
PACE_SECONDS = 4.0  # how long each paced measurement sends for (the unpaced one sends as many)


def pace_count(pace: float | None) -> int:
    """POSTs in one pace measurement: PACE_SECONDS' worth, and as many as at the fastest pace unpaced."""
    return int(PACE_SECONDS * (pace if pace is not None else max(p for p in PACES if p is not None)))


async def _paced_posts(variant: str, url: str, pace: float | None, n: int, first: int) -> int:
    """Send n create POSTs at ``pace`` a second (None: as fast as the wire allows); return how many
    were answered with a task."""
    if variant == "ours":
        # Told the pace: the limiter paces, not the caller. Unpaced: not told, and past the opening (the
        # worker's ``--pace-worker`` start sets that), as A.
        async with KlingClient(api_key=API_KEY, base_url=url, requests_per_second=pace) as client:
            handles = await asyncio.gather(*(client.submit(request_for(i)) for i in range(first, first + n)))
            return len(handles)
    baseline = AiohttpJsonClient(url, geometric_schedule(scaled_policy(SCALE)))
    async with baseline:
        start = time.monotonic()

        async def post(index: int) -> str:
            if pace is not None:
                await asyncio.sleep(max(0.0, start + (index - first) / pace - time.monotonic()))
            return await baseline.create(index)

        return len(await asyncio.gather(*(post(i) for i in range(first, first + n))))


async def pace_worker(variant: str, url: str, pace: float | None) -> dict[str, Any]:
    n = pace_count(pace)
    await _paced_posts(variant, url, None, WARM_UP, first=1_000_000)
    gc.collect()
    with Stopwatch() as watch:
        answered = await _paced_posts(variant, url, pace, n, first=0)
    return {"variant": variant, "pace": pace, "n": n, "ok": answered, "cpu": watch.cpu, "wall": watch.wall}


_Cell = TypeVar("_Cell")


def rotated(cells: Sequence[_Cell], rep: int) -> list[_Cell]:
    """The cells in repetition ``rep``'s order: rotated, so that a noisy neighbour does not always hit
    the same one."""
    shift = rep % len(cells)
    return [*cells[shift:], *cells[:shift]]


async def in_fresh_simulator(rep: int, *args: str) -> dict[str, Any]:
    """One measurement: a fresh worker process of this module against a fresh simulator."""
    async with sim_process(time_scale=SCALE, generation=GENERATION, seed=rep) as sim:
        return await run_worker("benchmarks.bench_cpu", *args, "--url", sim.url, "--control", sim.control)


async def measure_pace_cost(reps: int) -> dict[tuple[str, float | None], list[float]]:
    """CPU per POST (us) by (variant, pace), each repetition in rotating order, a fresh process each."""
    cells = [("A", pace) for pace in PACES] + [("ours", pace) for pace in PACES]
    results: dict[tuple[str, float | None], list[float]] = {cell: [] for cell in cells}
    for rep in range(reps):
        for variant, pace in rotated(cells, rep):
            pace_args = ["--pace", str(pace)] if pace is not None else []
            result = await in_fresh_simulator(rep, "--pace-worker", variant, *pace_args)
            if result["ok"] != result["n"]:
                raise RuntimeError(f"{variant} at {pace}/s: {result['ok']} of {result['n']} POSTs answered")
            per_post = result["cpu"] / result["n"] * 1e6
            label = "unpaced" if pace is None else f"{pace:.0f}/s"
            log(
                f"  pace rep {rep + 1}/{reps} {variant:4s} {label:8s} cpu/POST={per_post:.0f}us"
                f" wall={result['wall']:.2f}s"
            )
            results[(variant, pace)].append(per_post)
    return results


def pace_rows(results: dict[tuple[str, float | None], list[float]], reps: int) -> list[Row]:
    bench = f"cpu by pace (create POSTs, median of {reps})"
    base = median(results[("A", None)])
    rows = []
    for pace in PACES:
        a = median(results[("A", pace)])
        ours = median(results[("ours", pace)])
        if pace is None:
            rows.append(Row(bench, "CPU/POST, A unpaced", "us", a))
            rows.append(Row(bench, "CPU/POST, ours unpaced (not told, past the opening)", "us", ours, "A", a))
            continue
        rows.append(Row(bench, f"CPU/POST, A at {pace:.0f}/s", "us", a, "A unpaced", base))
        rows.append(Row(bench, f"CPU/POST, ours told {pace:.0f}/s", "us", ours, f"A at {pace:.0f}/s", a))
    return rows


def start_past_the_opening() -> None:
    """In a worker process: our clients made from now on start unpaced, as before the opening existed
    (the first refill ends it), until a 429."""
    _limits._OPEN = _limits._OPEN_MAX


def opening_send_time(k: int) -> float:
    """When the limiter's opening lets the k-th request go, about: with requests queued and few on the
    wire it sends ``_OPEN * _OPEN_CLEAR**t`` a second, so ``_OPEN * (_OPEN_CLEAR**t - 1) / ln(_OPEN_CLEAR)``
    by time t (it grows four times slower until the first answer, a millisecond here, and slower still
    while more than four requests are on the wire)."""
    growth = math.log(_OPEN_CLEAR)
    return math.log1p(k * growth / _OPEN) / growth


async def worker(variant: str, url: str, control: str, n: int) -> dict[str, Any]:
    await _run_variant(variant, url, WARM_UP, first=1_000_000)
    before = await fetch_counters(control)
    gc.collect()
    with Stopwatch() as watch:
        ok = await _run_variant(variant, url, n, first=0)
    after = await fetch_counters(control)
    return {
        "variant": variant,
        "n": n,
        "ok": ok,
        "cpu": watch.cpu,
        "wall": watch.wall,
        "posts": after["posts"] - before["posts"],
        "status_gets": after["status_gets"] - before["status_gets"],
        "lists": after["lists"] - before["lists"],
    }


async def measure(n: int, reps: int, opening_off: bool) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for rep in range(reps):
        for variant in rotated(VARIANTS, rep):
            opening = ["--opening-off"] if opening_off else []
            result = await in_fresh_simulator(rep, "--worker", variant, "--n", str(n), *opening)
            if result["ok"] != n:
                raise RuntimeError(f"{variant}: only {result['ok']} of {n} tasks completed")
            requests = result["posts"] + result["status_gets"] + result["lists"]
            log(
                f"  cpu rep {rep + 1}/{reps} {variant:13s} cpu={result['cpu']:.2f}s"
                f" wall={result['wall']:.2f}s"
                f" cpu/task={result['cpu'] / n * 1e6:.0f}us requests/task={requests / n:.2f}"
                f" (status {result['status_gets'] / n:.2f}, list {result['lists'] / n:.3f})"
            )
            results[variant].append(result)
    return results


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians over the repetitions, per variant."""
    summary: dict[str, dict[str, float]] = {}
    for variant, runs in results.items():
        n = runs[0]["n"]
        summary[variant] = {
            "cpu_per_task_us": median(r["cpu"] / n * 1e6 for r in runs),
            "cpu_per_request_us": median(
                r["cpu"] / (r["posts"] + r["status_gets"] + r["lists"]) * 1e6 for r in runs
            ),
            "requests_per_task": median((r["posts"] + r["status_gets"] + r["lists"]) / n for r in runs),
            "status_per_task": median((r["status_gets"] + r["lists"]) / n for r in runs),
            "wall": median(r["wall"] for r in runs),
        }
    return summary


def per_rep_ratios(results: dict[str, list[dict[str, Any]]], variant: str, base: str = "A") -> list[float]:
    """The variant's CPU over the base's, within each repetition (the two ran minutes apart at most)."""
    return [r["cpu"] / b["cpu"] for r, b in zip(results[variant], results[base], strict=True)]


def rows_from(
    summary: dict[str, dict[str, float]], n: int, reps: int, ratios: dict[str, list[float]]
) -> list[Row]:
    bench = f"cpu ({n} tasks, median of {reps})"
    g, h, a, b, paced = (summary[v] for v in VARIANTS)
    ratio_a = g["cpu_per_task_us"] / a["cpu_per_task_us"]
    ratio_b = b["cpu_per_task_us"] / g["cpu_per_task_us"]
    # B saturates its core while submitting, so its first checks come late and it makes fewer requests
    # than its schedule asks for; this estimate charges B's CPU per request for A's requests per task.
    b_at_a = b["cpu_per_request_us"] * a["requests_per_task"]
    return [
        Row(
            bench,
            "CPU/task, gather",
            "us",
            g["cpu_per_task_us"],
            "A",
            a["cpu_per_task_us"],
            "<= 1.0x A",
            ratio_a <= 1.0,
        ),
        Row(
            bench,
            "CPU/task, gather",
            "us",
            g["cpu_per_task_us"],
            "B",
            b["cpu_per_task_us"],
            ">= 10x less than B",
            ratio_b >= 10,
            ratio_inverted=True,
        ),
        Row(
            bench,
            "CPU/task, gather, vs A paced like our opening (diagnostic)",
            "us",
            g["cpu_per_task_us"],
            "A-paced",
            paced["cpu_per_task_us"],
        ),
        Row(
            bench,
            "CPU/task, A paced like our opening, over A (what the pace costs)",
            "us",
            paced["cpu_per_task_us"],
            "A",
            a["cpu_per_task_us"],
        ),
        Row(
            bench,
            "CPU/task, gather, vs B estimated at A's requests/task",
            "us",
            g["cpu_per_task_us"],
            "B est.",
            b_at_a,
            ratio_inverted=True,
        ),
        *(
            Row(
                bench,
                f"CPU/task over A's in the same repetition, {name} (range"
                f" {min(ratios[variant]):.2f}-{max(ratios[variant]):.2f})",
                "x",
                median(ratios[variant]),
            )
            for name, variant in (("gather", "ours-gather"), ("handles", "ours-handles"))
        ),
        Row(
            bench,
            "CPU/task over A-paced's in the same repetition, gather (range"
            f" {min(ratios['paced']):.2f}-{max(ratios['paced']):.2f})",
            "x",
            median(ratios["paced"]),
        ),
        Row(bench, "CPU/task, handles", "us", h["cpu_per_task_us"], "A", a["cpu_per_task_us"]),
        Row(
            bench,
            "CPU/task, handles",
            "us",
            h["cpu_per_task_us"],
            "B",
            b["cpu_per_task_us"],
            ratio_inverted=True,
        ),
        Row(bench, "CPU/request, gather", "us", g["cpu_per_request_us"], "A", a["cpu_per_request_us"]),
        Row(
            bench,
            "CPU/request, gather",
            "us",
            g["cpu_per_request_us"],
            "B",
            b["cpu_per_request_us"],
            ratio_inverted=True,
        ),
        Row(bench, "CPU/request, handles", "us", h["cpu_per_request_us"], "A", a["cpu_per_request_us"]),
        Row(
            bench,
            "CPU/request, handles",
            "us",
            h["cpu_per_request_us"],
            "B",
            b["cpu_per_request_us"],
            ratio_inverted=True,
        ),
        Row(bench, "requests/task (all), gather", "req", g["requests_per_task"], "A", a["requests_per_task"]),
        Row(
            bench, "requests/task (all), handles", "req", h["requests_per_task"], "A", a["requests_per_task"]
        ),
        Row(bench, "requests/task (all), B", "req", b["requests_per_task"], "A", a["requests_per_task"]),
        Row(bench, "wall, gather", "s", g["wall"], "A", a["wall"]),
        Row(bench, "wall, handles", "s", h["wall"], "B", b["wall"]),
    ]


def main() -> None:
    parser = arguments(__doc__, "200 tasks, one repetition")
    parser.add_argument("--n", type=int, default=None, help="tasks per run (default 2000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--pace-worker", choices=("A", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--pace-cost", action="store_true", help="CPU per create POST at fixed paces, A and ours (diagnostic)"
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--control", help=argparse.SUPPRESS)
    parser.add_argument(
        "--opening-off", action="store_true", help="diagnostic: our clients start past the limiter's opening"
    )
    args = parser.parse_args()
    n = args.n or (200 if args.quick else 2000)
    if args.pace_worker:
        if args.pace is None:
            start_past_the_opening()
        emit(asyncio.run(pace_worker(args.pace_worker, args.url, args.pace)))
        return
    if args.pace_cost:
        reps = args.reps or (1 if args.quick else 3)
        log(f"bench_cpu --pace-cost: A and ours x {len(PACES)} paces x {reps} repetitions")
        finish(pace_rows(asyncio.run(measure_pace_cost(reps)), reps), args.json)
        return
    if args.worker:
        if args.opening_off:
            start_past_the_opening()
        emit(asyncio.run(worker(args.worker, args.url, args.control, n)))
        return
    reps = args.reps or (1 if args.quick else 3)
    opening = ", opening off (diagnostic)" if args.opening_off else ""
    log(f"bench_cpu: {n} tasks x {len(VARIANTS)} variants x {reps} repetitions{opening}")
    results = asyncio.run(measure(n, reps, args.opening_off))
    ratios = {variant: per_rep_ratios(results, variant) for variant in ("ours-gather", "ours-handles")}
    ratios["paced"] = per_rep_ratios(results, "ours-gather", base="A-paced")
    rows = rows_from(summarize(results), n, reps, ratios)
    if args.opening_off:
        for row in rows:
            row.bench += opening
    finish(rows, args.json)


if __name__ == "__main__":
    main()
