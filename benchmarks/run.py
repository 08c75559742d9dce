"""Run every benchmark and print one table: our numbers, the baselines' numbers and the ratios.

``python -m benchmarks.run [--quick] [--only NAME ...]``

Each benchmark runs in its own process (``python -m benchmarks.bench_NAME --json``), and starts its own
simulator processes, so that one benchmark's garbage, threads or CPU load cannot leak into the next.
Progress goes to stderr; the table goes to stdout. ``--quick`` is a smoke run of 2-3 minutes; the full
run takes over 25 minutes on 2 cores (``bench_makespan`` about 11, ``bench_requests`` about 8,
``bench_workers`` about 4).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import platform
import sys
import time

from ._common import ROOT, Row, format_table, log

BENCHMARKS = ("cpu", "requests", "rate", "makespan", "scale", "webhooks", "journal", "claims", "workers")


async def _run(name: str, quick: bool) -> list[Row]:
    args = [sys.executable, "-m", f"benchmarks.bench_{name}", "--json"]
    if quick:
        args.append("--quick")
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench_{name} exited {proc.returncode}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    return [Row.from_json(row) for row in data["rows"]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (2-3 min)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    args = parser.parse_args()
    sniffio = importlib.util.find_spec("sniffio") is not None
    if not sniffio:
        log(
            "WARNING: sniffio is not installed: httpcore (baseline B) then retries a failed import on every"
            " request, which makes B look slower than in a usual install (the openai SDK requires sniffio)."
        )
    started = time.perf_counter()
    rows: list[Row] = []
    for name in args.only or BENCHMARKS:
        t0 = time.perf_counter()
        log(f"== {name}")
        rows.extend(asyncio.run(_run(name, args.quick)))
        log(f"== {name} took {time.perf_counter() - t0:.0f} s")
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{command}  |  {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  |  Python"
        f" {platform.python_version()}, {os.cpu_count()} CPUs, load {load},"
        f" sniffio {'installed' if sniffio else 'absent'}  |"
        f" {time.perf_counter() - started:.0f} s"
    )
    print()
    print(format_table(rows))
    missed = [f"{row.bench}: {row.metric}" for row in rows if row.met is False]
    print()
    met = sum(row.met is True for row in rows)
    print(f"targets: {met} met, {len(missed)} missed")
    for line in missed:
        print(f"  missed: {line}")


if __name__ == "__main__":
    main()
