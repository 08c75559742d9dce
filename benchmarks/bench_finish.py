"""Time to finish a batch under a rate limit whose burst is a fifth of its rate (issue 16's case).

600 tasks through ``client.map`` against an in-process simulator allowing 100 requests/s with a burst of
20 (``rate_limit=100, burst=20``, 429s with ``Retry-After``), generations 30-120 s at time scale 0.05
(1.5-6 s), every poll policy scaled alike. The floor is ``2N / R + the longest generation``: one POST and
one status GET per task at the server's rate, then the last generation (18 s for 600 tasks).

Clients, alternating, ``REPS`` runs each:
  not told    ``requests_per_second=None``: unpaced until the first 429, then the limiter finds the rate
  told        ``requests_per_second=100, burst=20``

Reported: the median wall time as a multiple of the floor (and the range), and the share of answers that
were 429. Run alone: ``python -m benchmarks.bench_finish [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from kling_async import KlingClient
from kling_async.testing import Simulator

from ._common import API_KEY, Row, finish, log, median, request_for, scaled_policy

LIMIT = 100.0
BURST = 20
SCALE = 0.05
GENERATION = (30.0, 120.0)
CLIENTS: tuple[tuple[str, float | None, int | None], ...] = (
    ("not told", None, None),
    ("told 100/s burst 20", LIMIT, BURST),
)


async def run_once(n: int, rps: float | None, burst: int | None, seed: int) -> tuple[float, float, float]:
    """One batch: (wall seconds, 429 share in %, answers per task)."""
    async with (
        Simulator(
            time_scale=SCALE,
            generation_seconds=GENERATION,
            rate_limit=LIMIT,
            burst=BURST,
            seed=seed,
        ) as sim,
        KlingClient(
            api_key=API_KEY,
            base_url=sim.url,
            poll=scaled_policy(SCALE),
            requests_per_second=rps,
            burst=burst,
        ) as client,
    ):
        start = time.perf_counter()
        done = 0
        async for _ in client.map(request_for(i) for i in range(n)):
            done += 1
        wall = time.perf_counter() - start
        assert done == n
        answered = sum(sim.counters.responses_by_status.values())
        return wall, 100.0 * sim.counters.rate_limited / max(1, answered), answered / n


async def measure(quick: bool) -> list[Row]:
    n, reps = (200, 1) if quick else (600, 3)
    floor = 2 * n / LIMIT + GENERATION[1] * SCALE
    log(f"bench_finish: {n} tasks, limit {LIMIT:.0f}/s burst {BURST}, floor {floor:.1f} s, {reps} runs each")
    walls: dict[str, list[float]] = {name: [] for name, _, _ in CLIENTS}
    shares: dict[str, list[float]] = {name: [] for name, _, _ in CLIENTS}
    for rep in range(reps):
        order = CLIENTS if rep % 2 == 0 else tuple(reversed(CLIENTS))
        for name, rps, burst in order:
            wall, share, per_task = await run_once(n, rps, burst, seed=rep)
            walls[name].append(wall)
            shares[name].append(share)
            log(
                f"  {name:20s} run {rep + 1}: {wall:.1f} s ({wall / floor:.2f}x floor), 429s {share:.2f}%,"
                f" {per_task:.2f} answers/task"
            )
    bench = f"finish ({n} tasks, {LIMIT:.0f}/s burst {BURST})"
    rows: list[Row] = []
    for name, _, _ in CLIENTS:
        wall = median(walls[name])
        spread = f"{min(walls[name]) / floor:.2f}-{max(walls[name]) / floor:.2f}x"
        rows.append(
            Row(
                bench,
                f"wall, {name} (runs {spread})",
                "s",
                wall,
                baseline="floor 2N/R + longest",
                base=floor,
                target="<= 1.10x",
                met=wall <= 1.10 * floor,
            )
        )
        rows.append(Row(bench, f"429 share, {name}", "%", median(shares[name])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 tasks, one run each")
    parser.add_argument("--json", action="store_true", help="print result rows as JSON (for run.py)")
    args = parser.parse_args()
    logging.getLogger("kling_async").setLevel(logging.ERROR)
    finish(asyncio.run(measure(args.quick)), args.json)


if __name__ == "__main__":
    main()
