"""What the journal costs: the same batch with and without ``journal=``, in one run.

2,000 tasks (generations 30-120 s at time scale 0.01) go through ``client.gather`` against a simulator in
another process, alternately with and without a journal (a fresh SQLite file each time), three times each.
Reported: wall time and client CPU per task, medians, and the journal's share of both.
Run alone: ``python -m benchmarks.bench_journal [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from kling_async import KlingClient

from ._common import API_KEY, Row, finish, log, median, request_for, scaled_policy, sim_process


async def _one_run(url: str, n: int, scale: float, journal: Path | None) -> tuple[float, float]:
    requests = [request_for(i) for i in range(n)]
    async with KlingClient(API_KEY, url, poll=scaled_policy(scale)) as client:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        outcomes = await client.gather(requests, journal=journal)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if not all(o.ok for o in outcomes):
        raise RuntimeError("an item failed")
    return wall, cpu


async def measure(quick: bool) -> list[Row]:
    n = 200 if quick else 2000
    reps = 1 if quick else 3
    scale = 0.01
    walls: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    async with sim_process(time_scale=scale, generation="30,120") as sim:
        for rep in range(reps):
            for with_journal in (rep % 2 == 0, rep % 2 != 0):
                with tempfile.TemporaryDirectory() as folder:
                    journal = Path(folder) / "run.db" if with_journal else None
                    wall, cpu = await _one_run(sim.url, n, scale, journal)
                walls[with_journal].append(wall)
                cpus[with_journal].append(cpu)
                log(f"  journal={with_journal!s:5s} wall={wall:.2f}s cpu={cpu:.2f}s")
    bench = f"journal ({n} tasks, median of {reps})"
    wall_with, wall_without = median(walls[True]), median(walls[False])
    cpu_with, cpu_without = median(cpus[True]), median(cpus[False])
    return [
        Row(bench, "batch wall time, with journal", "s", wall_with, "without", wall_without, "~1.0x", None),
        Row(bench, "client CPU per task, with journal", "us", 1e6 * cpu_with / n, "without",
            1e6 * cpu_without / n, "", None),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 tasks, one run each")
    parser.add_argument("--json", action="store_true", help="print result rows as JSON (for run.py)")
    args = parser.parse_args()
    log("bench_journal: the same batch with and without a journal")
    finish(asyncio.run(measure(args.quick)), args.json)


if __name__ == "__main__":
    main()
