"""Client CPU per request through each layer of ours, against A's request (a diagnostic for issue 16 item 2).

``bench_cpu`` says how much more a whole batch costs than A; this says where a request's share of it goes.
One process (ours and A alike) sends ``--n`` requests of each kind, ``WIRE`` at a time, against a
simulator in another process, and times each kind with ``time.process_time()``; the kinds alternate in
every repetition, and the table shows medians. Each kind adds one layer to the one above it:

  status GET   A (``AiohttpJsonClient._call``: aiohttp + json), then our transport (``AiohttpTransport``),
               the pipeline (limiter, retry bookkeeping, error mapping: ``Pipeline.request``), the
               status decoded (``Pipeline.fetch_status``), and a handle's refresh (``TaskHandle.refresh``:
               the registry and the handle's bookkeeping)
  create POST  A (``AiohttpJsonClient.create``), our transport with the encoded body, then
               ``KlingClient.submit`` (validation done beforehand by both: the request objects are built
               outside the timing; encoding, the limiter, the sender that owns the POST, the handle)

Our client starts past the limiter's opening (as a batch is after its first second against a server
without a limit): what the opening's pace costs is ``bench_cpu``'s A-paced row. Private attributes of
the client are read to reach each layer; this is a diagnostic, not a target.
Run alone: ``python -m benchmarks.bench_layers [--quick] [--n N] [--reps N]``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import Awaitable, Callable

from kling_async import KlingClient
from kling_async._limits import Lane
from kling_async._models import encode_request

from ._common import (
    API_KEY,
    OMNI_CREATE,
    OMNI_FAMILY,
    WIRE,
    Row,
    Stopwatch,
    arguments,
    finish,
    log,
    median,
    request_for,
    scaled_policy,
    sim_process,
)
from .baselines import AiohttpJsonClient, geometric_schedule
from .bench_cpu import GENERATION, SCALE, rotated, start_past_the_opening

Send = Callable[[], Awaitable[object]]


async def _cpu_per_call(send: Send, n: int) -> float:
    """CPU microseconds per call of ``send``, ``n`` calls, ``WIRE`` at a time."""
    each, extra = divmod(n, WIRE)

    async def worker(calls: int) -> None:
        for _ in range(calls):
            await send()

    gc.collect()
    with Stopwatch() as watch:
        await asyncio.gather(*(worker(each + (i < extra)) for i in range(WIRE)))
    return watch.cpu / n * 1e6


async def measure(n: int, reps: int) -> dict[str, list[float]]:
    start_past_the_opening()
    indexes = itertools.count(1_000_000)
    async with (
        sim_process(time_scale=SCALE, generation=GENERATION, seed=0) as sim,
        AiohttpJsonClient(sim.url, geometric_schedule(scaled_policy(SCALE))) as a,
        KlingClient(api_key=API_KEY, base_url=sim.url, poll=scaled_policy(SCALE)) as client,
    ):
        handle = await client.submit(request_for(0))
        endpoint, task_id = handle._endpoint, handle.task_id
        path = f"{OMNI_FAMILY}/{task_id}"
        assert path == endpoint.status_path(task_id)
        transport, pipeline = client._transport, client._pipeline
        # Requests are built (and validated) outside the timing, for A's body and ours alike.
        requests = [request_for(i) for i in range(1, reps * n + 1)]
        posts = iter(requests)
        bodies = (encode_request(r) for r in requests)
        kinds: dict[str, Send] = {
            "GET, A": lambda: a._call("GET", path),
            "GET, transport": lambda: transport.request("GET", path),
            "GET, pipeline": lambda: pipeline.request("GET", path, lane=Lane.STATUS, task_id=task_id),
            "GET, fetch_status": lambda: pipeline.fetch_status(endpoint, task_id),
            "GET, handle.refresh": handle.refresh,
            "POST, A": lambda: a.create(next(indexes)),
            "POST, transport": lambda: transport.request("POST", OMNI_CREATE, body=next(bodies)),
            "POST, client.submit": lambda: client.submit(next(posts)),
        }
        results: dict[str, list[float]] = {kind: [] for kind in kinds}
        for rep in range(reps):
            for kind in rotated(list(kinds), rep):
                results[kind].append(await _cpu_per_call(kinds[kind], n))
            log(
                f"  layers rep {rep + 1}/{reps}: "
                + ", ".join(f"{k} {v[-1]:.0f}us" for k, v in results.items())
            )
    return results


def rows(results: dict[str, list[float]], n: int, reps: int) -> list[Row]:
    bench = f"cpu by layer ({n} requests a kind, median of {reps})"
    out: list[Row] = []
    for method in ("GET", "POST"):
        base = median(results[f"{method}, A"])
        for kind, values in results.items():
            if kind.startswith(method):
                label = f"CPU/request, {kind} (range {min(values):.0f}-{max(values):.0f})"
                out.append(Row(bench, label, "us", median(values), f"{method}, A", base))
    return out


def main() -> None:
    parser = arguments(__doc__, "500 requests a kind, 3 repetitions")
    parser.add_argument("--n", type=int, default=None, help="requests of each kind per repetition (4000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 9)")
    args = parser.parse_args()
    n = args.n or (500 if args.quick else 4000)
    reps = args.reps or (3 if args.quick else 9)
    log(f"bench_layers: {n} requests of each kind x {reps} repetitions")
    finish(rows(asyncio.run(measure(n, reps)), n, reps), args.json)


if __name__ == "__main__":
    main()
