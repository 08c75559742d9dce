"""A worker of the shared-rate tests, run as its own process: BASE_URL DSN STOP_FILE [RATE].

It shares the database DSN (``KlingClient(shared=...)``), told RATE requests a second or not told any,
creates one task, prints ``ready``, then checks that task's status from eight loops as fast as its
limiter lets it until STOP_FILE exists, and prints ``done <429s it saw>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from kling_async import KlingClient, OmniRequest, RetryPolicy


async def main(base_url: str, dsn: str, stop_file: str, rate: float | None) -> None:
    retry = RetryPolicy(initial=0.01, maximum=0.05, deadline=60.0)
    stop = Path(stop_file)
    async with KlingClient(
        "sim-key", base_url, shared=dsn, requests_per_second=rate, max_concurrency=8, retry=retry
    ) as client:
        handle = await client.submit(OmniRequest(prompt="a shared rate"))
        print("ready", flush=True)

        async def check() -> None:
            while not stop.exists():
                await handle.refresh()

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(check)
        print("done", client._limiter.rate_limited, flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else None)
