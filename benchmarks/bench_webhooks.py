"""Webhooks against polling only, in one run: status requests per task and detection delay.

The simulator (in-process, so its ``finishes_at`` and ours share ``time.monotonic()``) signs a webhook for
every status change. ``webhooks``: a client that owns a ``WebhookReceiver`` resolves handles on delivery and
polls only as a safety net (``PollPolicy.safety_interval``, time-scaled). ``polling``: the same client
without a receiver. N tasks of a fixed 60 s generation arrive at a steady pace.

Detection delay = when the handle resolved minus the server's ``finishes_at`` (when it sends the delivery),
in milliseconds, mean and 95th percentile. Targets: at most 0.2 status requests per task and under 50 ms
from the delivery on loopback.
Run alone: ``python -m benchmarks.bench_webhooks [--quick]``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import anyio

from kling_async import WebhookReceiver
from kling_async.testing import Simulator

from ._common import Row, arguments, finish, log, mean, request_for, scaled_client

SECRET = "whsec_YmVuY2htYXJrLXdlYmhvb2stc2VjcmV0"


@dataclass(frozen=True, slots=True)
class Result:
    status_per_task: float
    delay_ms_mean: float
    delay_ms_p95: float
    delay_pct: float


async def run_mode(webhooks: bool, *, n: int, scale: float, span: float) -> Result:
    known: dict[str, float] = {}
    async with Simulator(time_scale=scale, generation_seconds=60.0, webhook_secret=SECRET, seed=2) as sim:
        receiver = WebhookReceiver(SECRET) if webhooks else None
        async with (
            scaled_client(sim.url, scale, webhooks=receiver) as client,
            anyio.create_task_group() as tg,
        ):

            async def one(index: int) -> None:
                handle = await client.submit(request_for(index))
                await handle
                known[handle.task_id] = time.monotonic()

            start = time.monotonic()
            for i in range(n):
                await anyio.sleep(max(0.0, start + span * i / n - time.monotonic()))
                tg.start_soon(one, i)
        tasks = sim.tasks
        counters = sim.counters
    delays = sorted(known[t] - tasks[t].finishes_at for t in known)
    return Result(
        status_per_task=(counters.status_gets + counters.lists) / n,
        delay_ms_mean=1000 * mean(delays),
        delay_ms_p95=1000 * delays[int(0.95 * (len(delays) - 1))],
        delay_pct=mean(
            100 * (known[t] - tasks[t].finishes_at) / (tasks[t].finishes_at - tasks[t].started_at)
            for t in known
        ),
    )


async def measure(quick: bool) -> list[Row]:
    scale = 0.005 if quick else 0.02
    n = 60 if quick else 300
    span = 2 * 60.0 * scale
    bench = f"webhooks ({n} tasks, 60 s, scale {scale})"
    hooked = await run_mode(True, n=n, scale=scale, span=span)
    polled = await run_mode(False, n=n, scale=scale, span=span)
    for name, r in (("webhooks", hooked), ("polling", polled)):
        log(
            f"  {name:9s} status/task={r.status_per_task:.3f} delay mean={r.delay_ms_mean:.1f} ms"
            f" p95={r.delay_ms_p95:.1f} ms ({r.delay_pct:.2f}% of generation)"
        )
    return [
        Row(bench, "status req/task, webhooks", "req", hooked.status_per_task, "polling",
            polled.status_per_task, "<= 0.2", hooked.status_per_task <= 0.2),
        Row(bench, "detection delay after delivery, mean", "ms", hooked.delay_ms_mean, "polling",
            polled.delay_ms_mean, "< 50 ms", hooked.delay_ms_mean < 50.0),
        Row(bench, "detection delay after delivery, p95", "ms", hooked.delay_ms_p95, "polling",
            polled.delay_ms_p95, "< 50 ms", hooked.delay_ms_p95 < 50.0),
    ]  # fmt: skip


def main() -> None:
    parser = arguments(__doc__, "60 tasks, time scale 0.005")
    args = parser.parse_args()
    log("bench_webhooks: webhooks against polling only")
    finish(asyncio.run(measure(args.quick)), args.json)


if __name__ == "__main__":
    main()
