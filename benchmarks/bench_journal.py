"""What the journal costs per item, and how long it can stall the event loop, in one run.

N items each go through ``submitting``, ``created``, ``status``, ``finished`` and ``downloaded`` (two durable
writes, three buffered ones) on a fresh SQLite file, then the journal is closed. Three variants, alternating:

- ``sync``: the synchronous ``Journal`` called on the event loop, one item after another (what the batch
  engine did before ``SQLiteJournal``), yielding to the loop between items;
- ``async-serial``: ``SQLiteJournal``, one item after another (each durable write waits for its thread hop);
- ``async-concurrent``: ``SQLiteJournal``, every item its own task, as a batch runs them (the worker commits
  what queued up meanwhile in one hop).

Clean runs give wall time and process CPU per item (the worker thread's CPU included). Stall runs add a
coroutine that sleeps 1 ms at a time and records the longest gap between its wake-ups, while another
connection (a thread standing in for a second process) holds the write lock for 0.3 s half-way through. A
control, ``no-journal``, runs the concurrent items with a journal that records nothing: its stalls are the
tasks' own. What ``async-concurrent`` adds to them is not SQLite waiting on the loop: thousands of items
queue up behind the one worker thread, and the garbage collector walks them all (with ``gc`` disabled, the
longest stall falls to about 15 ms), and the worker holds the GIL between SQLite calls. A batch whose POSTs
are paced by a rate limit does not build such a queue. Medians over the repetitions.
Run alone: ``python -m benchmarks.bench_journal [--quick]``.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread

from kling_async._journal import Journal, SQLiteJournal

from ._common import Row, arguments, finish, log, median

MODEL = "kling-v3-omni-std"
LOCK_SECONDS = 0.3
VARIANTS = ("sync", "async-serial", "async-concurrent")


def _request(i: int) -> bytes:
    return b'{"prompt":"a red fox in fresh snow, shot %d","duration":"5"}' % i


class _LockHolder:
    """Another connection that takes the write lock for ``LOCK_SECONDS``, from its own thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._held = threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        with closing(sqlite3.connect(self._path, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            self._held.set()
            time.sleep(LOCK_SECONDS)
            db.execute("ROLLBACK")

    async def start(self) -> None:
        """Start holding, and return once the lock is held (waiting off the loop)."""
        self._thread.start()
        await anyio.to_thread.run_sync(self._held.wait)

    def join(self) -> None:
        self._thread.join()


async def _sync(path: Path, n: int, at_half: Callable[[], Awaitable[None]]) -> None:
    with Journal(path) as journal:
        for i in range(n):
            if i == n // 2:
                journal.flush()  # else its open transaction holds the lock the other connection waits for
                await at_half()
            key = f"k{i}"
            journal.submitting(key, MODEL, _request(i))
            journal.created(key, f"task-{i}", "CREATED")
            journal.status(key, "IN_PROGRESS")
            journal.finished(key, "COMPLETED", [f"https://cdn.example/{i}.mp4"])
            journal.downloaded(key, f"videos/{key}.mp4")
            await anyio.lowlevel.checkpoint()


async def _item(journal: SQLiteJournal, i: int) -> None:
    key = f"k{i}"
    await journal.submitting(key, MODEL, _request(i))
    await journal.created(key, f"task-{i}", "CREATED")
    await journal.status(key, "IN_PROGRESS")
    await journal.finished(key, "COMPLETED", [f"https://cdn.example/{i}.mp4"])
    await journal.downloaded(key, f"videos/{key}.mp4")


async def _async_serial(path: Path, n: int, at_half: Callable[[], Awaitable[None]]) -> None:
    async with SQLiteJournal(path) as journal:
        for i in range(n):
            if i == n // 2:
                await at_half()
            await _item(journal, i)


async def _async_concurrent(path: Path, n: int, at_half: Callable[[], Awaitable[None]]) -> None:
    async with SQLiteJournal(path) as journal, anyio.create_task_group() as tg:
        for i in range(n):
            if i == n // 2:
                await at_half()
            tg.start_soon(_item, journal, i)
            # Items arrive a few at a time, as a batch's do (their POSTs are paced by the rate limiter).
            if i % 10 == 9:
                await anyio.lowlevel.checkpoint()


class _NoJournal:
    """A journal that records nothing: the control, for what the tasks alone cost the loop."""

    async def __aenter__(self) -> _NoJournal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def _call(self, *args: object) -> None:
        await anyio.lowlevel.checkpoint()

    submitting = created = status = finished = downloaded = _call


async def _no_journal(path: Path, n: int, at_half: Callable[[], Awaitable[None]]) -> None:
    async with _NoJournal() as journal, anyio.create_task_group() as tg:
        for i in range(n):
            if i == n // 2:
                await at_half()
            tg.start_soon(_item, journal, i)  # type: ignore[arg-type]  # duck-typed: the five calls
            if i % 10 == 9:
                await anyio.lowlevel.checkpoint()


RUNS: dict[str, Callable[[Path, int, Callable[[], Awaitable[None]]], Awaitable[None]]] = {
    "sync": _sync,
    "async-serial": _async_serial,
    "async-concurrent": _async_concurrent,
    "no-journal": _no_journal,
}


async def _clean(variant: str, n: int) -> tuple[float, float]:
    """Wall and CPU seconds for n items."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.db"
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await RUNS[variant](path, n, anyio.lowlevel.checkpoint)
        return time.perf_counter() - wall0, time.process_time() - cpu0


async def _stall(variant: str, n: int) -> float:
    """The longest the loop went without running a 1 ms ticker, with the lock held half-way through."""
    worst = 0.0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.db"
        holder = _LockHolder(path)
        Journal(path).close()  # the file must exist before the other connection locks it
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await RUNS[variant](path, n, holder.start)
            done.set()
        holder.join()
    return worst


async def measure(quick: bool) -> list[Row]:
    n = 300 if quick else 2000
    reps = 1 if quick else 5
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    stalls: dict[str, list[float]] = {v: [] for v in (*VARIANTS, "no-journal")}
    for rep in range(reps):
        order = VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]  # rotate, so no variant always runs first
        for variant in order:
            wall, cpu = await _clean(variant, n)
            walls[variant].append(wall)
            cpus[variant].append(cpu)
            stalls[variant].append(await _stall(variant, n))
            log(
                f"  {variant:16s} wall={1e6 * wall / n:6.0f}us/item cpu={1e6 * cpu / n:6.0f}us/item"
                f" stall={1e3 * stalls[variant][-1]:6.1f}ms"
            )
        stalls["no-journal"].append(await _stall("no-journal", n))
        log(f"  {'no-journal':16s} stall={1e3 * stalls['no-journal'][-1]:6.1f}ms")
    bench = f"journal ({n} items, median of {reps})"
    base_wall, base_cpu = 1e6 * median(walls["sync"]) / n, 1e6 * median(cpus["sync"]) / n
    base_stall = 1e3 * median(stalls["sync"])
    rows = []
    for variant in ("async-serial", "async-concurrent"):
        rows += [
            Row(bench, f"wall per item, {variant}", "us", 1e6 * median(walls[variant]) / n, "sync Journal",
                base_wall),
            Row(bench, f"CPU per item, {variant}", "us", 1e6 * median(cpus[variant]) / n, "sync Journal",
                base_cpu),
            Row(bench, f"longest loop stall, {variant}, {LOCK_SECONDS} s lock", "ms",
                1e3 * median(stalls[variant]), "sync Journal", base_stall, f"< {500 * LOCK_SECONDS:.0f} ms",
                median(stalls[variant]) < LOCK_SECONDS / 2),
        ]  # fmt: skip
    rows.append(
        Row(bench, "longest loop stall, no-journal (control)", "ms", 1e3 * median(stalls["no-journal"]))
    )
    return rows


def main() -> None:
    parser = arguments(__doc__, "300 items, one run of each")
    args = parser.parse_args()
    log("bench_journal: the async journal against the sync one, per item and in loop stalls")
    finish(anyio.run(measure, args.quick), args.json)


if __name__ == "__main__":
    main()
