"""Scale: N tasks in flight at once in one client process (the simulator in another process).

``client.gather`` over a lazy stream of N requests; every generation takes a fixed time, longer than
submitting all N takes, so all N are in flight together (``MEMORY_GENERATION`` for the memory run,
whose snapshot needs every task still in flight; ``GENERATION`` for the timing runs).

Memory, two ways, each in its own fresh process:
  * tracemalloc: Python allocations made after the client opened, measured at the moment all N tasks are
    in flight (the simulator says every task was created and none finished; the client has then held
    every task for at least ``SETTLE`` seconds), divided by N. Peak over the whole run is also shown
    (it includes the N outcomes gather returns).
  * RSS: resident set when all N tasks are in flight (after the same ``SETTLE``), and the peak resident
    set over the run (VmHWM, reset before it; it includes the N outcomes), each minus RSS before the
    run, divided by N; from the timing runs, which run without tracemalloc.
Time: wall and client CPU (``time.process_time()``) for N = 1,000 and N = 10,000; linear in N means
CPU per task stays flat (the wall time is mostly the fixed generation time).
Run alone: ``python -m benchmarks.bench_scale [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from kling_async import KlingClient, OmniRequest

from ._common import (
    API_KEY,
    Row,
    Stopwatch,
    arguments,
    emit,
    fetch_counters,
    finish,
    log,
    peak_rss_bytes,
    request_for,
    reset_peak_rss,
    rss_bytes,
    run_worker,
    scaled_policy,
    sim_process,
)

# Simulated 60 s generations at time scale 0.5: 30 real seconds each, longer than submitting 10,000
# without tracemalloc (4-24 s on a loaded 2-core machine).
SCALE = 0.5
GENERATION = "60"
# The memory run's generations: 120 real seconds. With tracemalloc on, submitting 10,000 took 39-63 s at
# load 4-7, so 30 s generations finished before the snapshot (2,020 of 10,000 still in flight).
MEMORY_GENERATION = "240"
SETTLE = 1.0


def _requests(n: int) -> Iterator[OmniRequest]:
    """N requests, made one at a time as the client pulls them (nothing materialised)."""
    return (request_for(i) for i in range(n))


async def _wait_all_created(control: str, n: int) -> dict[str, Any]:
    while True:
        counters = await fetch_counters(control)
        if counters["tasks_created"] >= n:
            return counters
        await asyncio.sleep(0.2)


async def worker_memory(url: str, control: str, n: int, scale: float) -> dict[str, Any]:
    async with KlingClient(api_key=API_KEY, base_url=url, poll=scaled_policy(scale)) as client:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        run = asyncio.ensure_future(client.gather(_requests(n)))
        await _wait_all_created(control, n)
        submitted_after = time.monotonic() - started
        await asyncio.sleep(SETTLE)
        gc.collect()
        in_flight_memory = tracemalloc.get_traced_memory()[0] - base
        counters = await fetch_counters(control)
        outcomes = await run
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    return {
        "n": n,
        "ok": sum(o.ok for o in outcomes),
        "in_flight_at_snapshot": counters["in_flight"],
        "submitted_after": submitted_after,
        "in_flight_bytes": in_flight_memory,
        "peak_bytes": peak,
    }


async def worker_time(url: str, control: str, n: int, scale: float) -> dict[str, Any]:
    async with KlingClient(api_key=API_KEY, base_url=url, poll=scaled_policy(scale)) as client:
        gc.collect()
        rss_before = rss_bytes()
        reset_peak_rss()
        before = await fetch_counters(control)
        run = asyncio.ensure_future(client.gather(_requests(n)))
        with Stopwatch() as watch:
            created = await _wait_all_created(control, n)
            submit_wall = watch.elapsed()
            # As the tracemalloc snapshot: the client has held every task for SETTLE seconds (it
            # waits for the generations anyway, so the wall and CPU figures do not move).
            await asyncio.sleep(SETTLE)
            rss_in_flight = rss_bytes()
            outcomes = await run
        after = await fetch_counters(control)
        peak = peak_rss_bytes()
    return {
        "n": n,
        "ok": sum(o.ok for o in outcomes),
        "wall": watch.wall,
        "cpu": watch.cpu,
        "submit_wall": submit_wall,
        "max_in_flight": created["in_flight"],
        "rss_delta_bytes": peak - rss_before,
        "rss_in_flight_bytes": rss_in_flight - rss_before,
        "status_requests": after["status_gets"] + after["lists"] - before["status_gets"] - before["lists"],
    }


async def measure(quick: bool) -> list[Row]:
    small, large = (100, 1000) if quick else (1000, 10_000)
    scale = 0.1 if quick else SCALE
    results: dict[str, dict[str, Any]] = {}
    for kind, n in (("memory", large), ("time", small), ("time", large)):
        generation = "30" if quick else MEMORY_GENERATION if kind == "memory" else GENERATION
        async with sim_process(time_scale=scale, generation=generation, queue_seconds=0.0) as sim:
            result = await run_worker(
                "benchmarks.bench_scale",
                "--worker",
                kind,
                "--url",
                sim.url,
                "--control",
                sim.control,
                "--n",
                str(n),
                "--scale",
                str(scale),
            )
        if result["ok"] != n:
            raise RuntimeError(f"{kind} {n}: only {result['ok']} of {n} tasks completed")
        log(f"  scale {kind} n={n}: {result}")
        results[f"{kind}-{n}"] = result
    mem, t_small, t_large = results[f"memory-{large}"], results[f"time-{small}"], results[f"time-{large}"]
    if mem["in_flight_at_snapshot"] != large:
        log(f"  WARNING: {mem['in_flight_at_snapshot']} of {large} tasks in flight at the memory snapshot")
    bench = f"scale ({small:,} vs {large:,} tasks)"
    per_task_small = t_small["cpu"] / small * 1e6
    per_task_large = t_large["cpu"] / large * 1e6
    kb = 1024.0
    in_flight_kb = mem["in_flight_bytes"] / large / kb
    rss_in_flight_kb = t_large["rss_in_flight_bytes"] / large / kb
    cpu_ratio = t_large["cpu"] / t_small["cpu"]
    return [
        Row(
            bench,
            f"memory/task in flight, tracemalloc, N={large:,}",
            "KB",
            in_flight_kb,
            target="<= 1 KB",
            met=in_flight_kb <= 1.0,
        ),
        Row(
            bench,
            f"memory/task, tracemalloc peak incl. outcomes, N={large:,}",
            "KB",
            mem["peak_bytes"] / large / kb,
        ),
        Row(
            bench,
            f"memory/task in flight, RSS delta, N={large:,}",
            "KB",
            rss_in_flight_kb,
            target="<= 1 KB",
            met=rss_in_flight_kb <= 1.0,
        ),
        Row(
            bench,
            f"memory/task in flight, RSS, N={small:,} -> {large:,} (what each task adds)",
            "KB",
            (t_large["rss_in_flight_bytes"] - t_small["rss_in_flight_bytes"]) / (large - small) / kb,
        ),
        Row(
            bench, f"memory/task, peak RSS delta, N={large:,}", "KB", t_large["rss_delta_bytes"] / large / kb
        ),
        Row(
            bench, f"memory/task, peak RSS delta, N={small:,}", "KB", t_small["rss_delta_bytes"] / small / kb
        ),
        Row(bench, f"wall, N={large:,}", "s", t_large["wall"], f"N={small:,}", t_small["wall"]),
        Row(
            bench,
            f"wall to submit all, N={large:,}",
            "s",
            t_large["submit_wall"],
            f"N={small:,}",
            t_small["submit_wall"],
        ),
        Row(
            bench,
            f"client CPU, N={large:,}",
            "s",
            t_large["cpu"],
            f"N={small:,}",
            t_small["cpu"],
            target=f"~{large // small}x (linear)",
            met=cpu_ratio <= 1.3 * large / small,
        ),
        Row(
            bench,
            f"CPU/task, N={large:,}",
            "us",
            per_task_large,
            f"N={small:,}",
            per_task_small,
            target="<= 1.3x (flat)",
            met=per_task_large <= 1.3 * per_task_small,
        ),
        Row(
            bench,
            f"status requests/task, N={large:,}",
            "req",
            t_large["status_requests"] / large,
            f"N={small:,}",
            t_small["status_requests"] / small,
        ),
    ]


def main() -> None:
    parser = arguments(__doc__, "100 vs 1,000 tasks of 3 real seconds")
    parser.add_argument("--worker", choices=("memory", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--control", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=SCALE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "memory":
        emit(asyncio.run(worker_memory(args.url, args.control, args.n, args.scale)))
        return
    if args.worker == "time":
        emit(asyncio.run(worker_time(args.url, args.control, args.n, args.scale)))
        return
    log("bench_scale: memory and time with many tasks in flight")
    finish(asyncio.run(measure(args.quick)), args.json)


if __name__ == "__main__":
    main()
