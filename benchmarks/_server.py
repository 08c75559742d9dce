"""A simulator in its own process, for benchmarks that must not share a CPU with the client.

Run as ``python -m benchmarks._server [options]``. When both servers listen it prints one JSON line on
stdout, ``{"url": API base URL, "control": control base URL}``, and serves until its stdin closes (the
parent went away) or it gets SIGTERM/SIGINT.

The control server (another port, so its requests are not counted by the simulator) answers
``GET /counters`` with what the simulator saw so far, plus ``in_flight``: tasks created and not finished,
and ``GET /tasks`` with every task's ``[created_at, finishes_at]`` by id (``time.monotonic()``, the
same clock in every process of the machine).

``ServerLimit`` is the rate limit a benchmark's server enforces, whether the simulator runs here or in the
benchmark's own process (``ServerLimit.simulator_options``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from kling_async.testing import Faults, Simulator


@dataclass(frozen=True, slots=True)
class ServerLimit:
    """The rate limit a simulator enforces over every API request; the default enforces none.

    Args:
        rate: requests a second (a token bucket), or None.
        burst: the bucket's capacity; None: ``max(1, int(rate))``, the simulator's default.
        windows: more limits at once, each ``(requests_per_second, seconds)``, averaged over its window.
        retry_after: what a 429 carries: True for ``Retry-After`` in seconds, "date", or False for none.
        latency: seconds every request waits at the server before the limit is checked (a distant server:
            its answers, 429s among them, come back that much later).
    """

    rate: float | None = None
    burst: int | None = None
    windows: tuple[tuple[float, float], ...] = ()
    retry_after: bool | Literal["date"] = True
    latency: float = 0.0

    def simulator_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Simulator``."""
        return {
            "rate_limit": self.rate,
            "burst": self.burst,
            "rate_windows": self.windows,
            "retry_after": self.retry_after,
            "faults": Faults(latency=self.latency),
        }

    def arguments(self) -> list[str]:
        """The same limit as command-line options of this module."""
        args = ["--retry-after", {True: "seconds", False: "none", "date": "date"}[self.retry_after]]
        if self.rate is not None:
            args += ["--rate-limit", str(self.rate)]
        if self.burst is not None:
            args += ["--burst", str(self.burst)]
        for rate, seconds in self.windows:
            args += ["--rate-window", f"{rate},{seconds}"]
        if self.latency:
            args += ["--latency", str(self.latency)]
        return args


def _parse_generation(text: str) -> float | tuple[float, float]:
    if "," in text:
        low, high = (float(part) for part in text.split(",", 1))
        return (low, high)
    return float(text)


def _parse_retry_after(text: str) -> bool | Literal["date"]:
    if text == "date":
        return "date"
    if text in ("seconds", "true", "yes"):
        return True
    if text in ("none", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"--retry-after: seconds, date or none, not {text!r}")


def _parse_window(text: str) -> tuple[float, float]:
    try:
        rate, seconds = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate-window: RATE,SECONDS, not {text!r}") from None
    return (rate, seconds)


def counters_of(sim: Simulator) -> dict[str, object]:
    """The simulator's counters as plain JSON-able values."""
    c = sim.counters
    now = time.monotonic()
    return {
        "posts": c.posts,
        "tasks_created": c.tasks_created,
        "status_gets": c.status_gets,
        "lists": c.lists,
        "rate_limited": c.rate_limited,
        "responses_by_status": {str(k): v for k, v in c.responses_by_status.items()},
        "max_concurrent_requests": c.max_concurrent_requests,
        "in_flight": sum(1 for t in sim.tasks.values() if t.finishes_at > now),
    }


async def serve(args: argparse.Namespace) -> None:
    limit = ServerLimit(args.rate_limit, args.burst, tuple(args.rate_window), args.retry_after, args.latency)
    sim = Simulator(
        time_scale=args.time_scale,
        generation_seconds=_parse_generation(args.generation),
        queue_seconds=args.queue_seconds,
        seed=args.seed,
        webhook_secret=args.webhook_secret,
        **limit.simulator_options(),
    )

    async def counters(_: web.Request) -> web.Response:
        return web.json_response(counters_of(sim))

    async def tasks(_: web.Request) -> web.Response:
        return web.json_response({t.task_id: [t.created_at, t.finishes_at] for t in sim.tasks.values()})

    control = web.Application()
    control.router.add_get("/counters", counters)
    control.router.add_get("/tasks", tasks)
    runner = web.AppRunner(control, access_log=None)
    async with sim:
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            control_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            sys.stdout.write(json.dumps({"url": sim.url, "control": control_url}) + "\n")
            sys.stdout.flush()
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)

            def wait_for_eof() -> None:
                sys.stdin.buffer.read()
                loop.call_soon_threadsafe(stop.set)

            # A daemon thread: one still blocked on stdin does not keep the process alive.
            threading.Thread(target=wait_for_eof, daemon=True).start()
            await stop.wait()
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--generation", default="30,120", help="seconds, fixed ('60') or a range ('30,120')")
    parser.add_argument("--queue-seconds", type=float, default=2.0)
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--burst", type=int, default=None)
    parser.add_argument(
        "--rate-window", type=_parse_window, action="append", default=[], help="RATE,SECONDS (repeatable)"
    )
    parser.add_argument("--retry-after", type=_parse_retry_after, default=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each request waits at the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--webhook-secret", default=None, help="sign a delivery for every status change")
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
