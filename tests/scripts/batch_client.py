"""A batch client run as its own process by the crash tests: BASE_URL JOURNAL OUT COUNT.

It prints one line per outcome (``ok <key>`` or ``error <key> <ErrorType>``) so the test can kill it
mid-batch and then run it again with the same journal.
"""

from __future__ import annotations

import sys

import anyio

from kling_async import Job, KlingClient, OmniRequest, PollPolicy, RetryPolicy


async def main(base_url: str, journal: str, out: str, count: int) -> None:
    jobs = [Job(OmniRequest(prompt=f"crash test clip {i}"), id=f"clip-{i:03d}") for i in range(count)]
    poll = PollPolicy(initial=0.05, maximum=0.1, timeout=60.0)
    retry = RetryPolicy(initial=0.01, maximum=0.05)
    async with KlingClient("sim-key", base_url, poll=poll, retry=retry, max_concurrency=8) as client:
        async for outcome in client.map(jobs, journal=journal, download=out):
            status = "ok" if outcome.ok else f"error {type(outcome.error).__name__}"
            print(status, outcome.key, flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
