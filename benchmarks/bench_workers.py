"""Three workers sharing one PostgreSQL database under a server-enforced limit (DESIGN target 3, issue 15).

Three worker processes (``tests/scripts/rate_worker.py``) share a database with ``KlingClient(shared=...)``
and check task statuses as fast as their limiters let them, against one simulator that allows 10
requests a second (a token bucket with a burst of 10; 429s carry ``Retry-After``). Told the rate
(``requests_per_second=10`` in each) and not told, alternating. Reported: the share of the server's rate
the three used together over ``--window`` seconds once all were under way, and the share of all their
requests answered 429 over the whole run (start-up included), as medians and ranges. PostgreSQL is a
throwaway server on a unix socket (``KLING_TEST_POSTGRES_DSN`` when set, as in CI).
Run alone: ``python -m benchmarks.bench_workers [--quick]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from tests.postgres import fresh_database, server
from tests.test_postgres_rate import RATE, run_three_workers

from ._common import Row, arguments, finish, log, median

CASES = {"told": RATE, "not told": None}


async def measure(quick: bool, window: float) -> list[Row]:
    rounds = 1 if quick else 3
    used: dict[str, list[float]] = {case: [] for case in CASES}
    refused: dict[str, list[float]] = {case: [] for case in CASES}
    with server() as postgres:
        for n in range(rounds):
            for case in list(CASES) if n % 2 == 0 else list(CASES)[::-1]:
                with fresh_database(postgres, "kling_bench") as dsn, tempfile.TemporaryDirectory() as tmp:
                    share, refusals = await run_three_workers(dsn, Path(tmp), CASES[case], window=window)
                used[case].append(share)
                refused[case].append(refusals)
                log(f"  {case:9s} used {100 * share:5.1f}% of the rate, 429s {100 * refusals:4.2f}%")
    bench = f"3 workers, one PostgreSQL ({RATE:.0f}/s, {window:.0f} s, median of {rounds})"
    rows = []
    for case in CASES:
        share, refusals = 100 * median(used[case]), 100 * median(refused[case])
        span = f"runs {100 * min(used[case]):.1f}-{100 * max(used[case]):.1f}%"
        rows.append(Row(bench, f"rate used, {case} ({span})", "%", share, target=">= 95", met=share >= 95))
        span = f"runs {100 * min(refused[case]):.2f}-{100 * max(refused[case]):.2f}%"
        rows.append(
            Row(bench, f"429 share, {case} ({span})", "%", refusals, target="<= 1", met=refusals <= 1)
        )
    return rows


def main() -> None:
    parser = arguments(__doc__, "one round of each")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured in full swing")
    args = parser.parse_args()
    log("bench_workers: three workers sharing one PostgreSQL, against a 10 req/s limit")
    finish(anyio.run(measure, args.quick, args.window), args.json)


if __name__ == "__main__":
    main()
