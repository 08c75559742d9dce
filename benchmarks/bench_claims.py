"""What a claim costs per item in the shared PostgreSQL journal, against the SQLite journal, in one run.

Each item goes through what the batch engine asks of its journal around one POST: ``lookup`` (None: a new
item), ``submitting`` (the claim, committed before the POST) and ``created`` (committed after it): three
durable calls. Two shapes, each on a fresh store: ``serial`` (one item after another: the latency a POST
waits for its claim) and ``concurrent`` (16 items at a time, as a batch's submitters run them). SQLite and
PostgreSQL runs alternate; medians over the repetitions. PostgreSQL is a throwaway server on a unix socket
(``KLING_TEST_POSTGRES_DSN`` when set, as in CI), so the figures leave out any network round trip: add
yours (one per call for a new item) for a database on another host.
Run alone: ``python -m benchmarks.bench_claims [--quick]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio

from kling_async._journal import BatchJournal, SQLiteJournal
from kling_async._journal_pg import PostgresJournal
from tests.postgres import fresh_database
from tests.postgres import server as postgres_server

from ._common import Row, arguments, finish, log, median

MODEL = "kling-v3-omni-std"
STORES = ("sqlite", "postgres")
SHAPES = {"serial": 1, "concurrent": 16}


def _request(i: int) -> bytes:
    return b'{"prompt":"a red fox in fresh snow, shot %d","duration":"5"}' % i


async def _item(journal: BatchJournal, i: int) -> None:
    key = f"clip-{i:05d}"
    assert await journal.lookup(key) is None
    await journal.submitting(key, MODEL, _request(i))
    await journal.created(key, f"task-{i}", "CREATED")


async def _items(journal: BatchJournal, n: int, width: int) -> float:
    """Run n items, ``width`` at a time; the wall time of the items alone (opening and closing excluded)."""
    limiter = anyio.Semaphore(width)

    async def one(i: int) -> None:
        async with limiter:
            await _item(journal, i)

    async with journal:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return time.perf_counter() - started


async def _run(store: str, server: str, n: int, width: int) -> float:
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            return await _items(SQLiteJournal(Path(folder) / "run.db"), n, width)
    with fresh_database(server, "kling_bench") as dsn:
        return await _items(PostgresJournal(dsn), n, width)


async def measure(quick: bool) -> list[Row]:
    n = 200 if quick else 1000
    reps = 1 if quick else 5
    walls: dict[tuple[str, str], list[float]] = {(s, shape): [] for s in STORES for shape in SHAPES}
    with postgres_server() as server:
        for rep in range(reps):
            order = STORES if rep % 2 == 0 else STORES[::-1]  # alternate, so neither always runs first
            for shape, width in SHAPES.items():
                for store in order:
                    wall = await _run(store, server, n, width)
                    walls[store, shape].append(wall)
                    log(f"  {store:8s} {shape:10s} {1e6 * wall / n:7.0f} us/item")
    bench = f"claims ({n} items, median of {reps})"
    rows = []
    for shape in SHAPES:
        ours = 1e6 * median(walls["postgres", shape]) / n
        base = 1e6 * median(walls["sqlite", shape]) / n
        metric = f"lookup + claim + created per item, {shape}"
        if shape == "concurrent":  # as a batch's submitters run: the pool and the shared statements count
            rows.append(Row(bench, metric, "us", ours, "SQLite journal", base, "<= 1.3x", ours <= 1.3 * base))
        else:
            rows.append(Row(bench, metric, "us", ours, "SQLite journal", base))
    return rows


def main() -> None:
    parser = arguments(__doc__, "200 items, one run of each")
    args = parser.parse_args()
    log("bench_claims: the PostgreSQL journal's claim against the SQLite journal, per item")
    finish(anyio.run(measure, args.quick), args.json)


if __name__ == "__main__":
    main()
