"""Rate-limit headers on a 429 reach the RateLimited event and the limiter's repr."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp
import pytest
from aiohttp import web

from kling_async import KlingClient, OmniRequest, RateLimited
from kling_async._clock import SystemClock
from kling_async._limits import rate_limit_headers
from kling_async.testing import Simulator

from .conftest import FAST_POLL, FAST_RETRY, TIME_SCALE

pytestmark = pytest.mark.anyio

# What a gateway in front of the API might add to its 429s; X-Request-Id is not about the rate.
GATEWAY_429_HEADERS = {
    "RateLimit-Limit": "10",
    "RateLimit-Remaining": "0",
    "X-RateLimit-Reset": "1",
    "Retry-After": "0",
    "X-Request-Id": "req-7",
}
RATE_HEADERS = {name: value for name, value in GATEWAY_429_HEADERS.items() if name != "X-Request-Id"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A simulator whose 429s carry no Retry-After of their own (so no test waits a whole second)."""
    async with Simulator(time_scale=TIME_SCALE, retry_after=False) as simulator:
        yield simulator


@pytest.fixture
async def gateway(sim: Simulator) -> AsyncIterator[str]:
    """A loopback stand-in for a gateway: forwards everything to the simulator, adds headers to its 429s."""
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        async with session.request(
            request.method,
            sim.url + request.path_qs,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            data=await request.read(),
        ) as answer:
            body = await answer.read()
            headers = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
            if answer.status == 429:
                headers.update(GATEWAY_429_HEADERS)
            return web.Response(status=answer.status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        await session.close()


def _client(base_url: str) -> KlingClient:
    return KlingClient(api_key="sim-key", base_url=base_url, poll=FAST_POLL, retry=FAST_RETRY)


async def _rate_limited_events(base_url: str, sim: Simulator) -> tuple[list[RateLimited], str]:
    """Generate one video through ``base_url`` after one queued 429; the RateLimited events and repr."""
    sim.queue_fault("429", method="GET")
    async with _client(base_url) as client:
        events = client.events()
        await client.generate(OmniRequest(prompt="a fox in snow"))
        shown = repr(client)
    # The stream ends when the client closes, after what it buffered.
    return [event async for event in events if isinstance(event, RateLimited)], shown


async def test_a_429s_rate_limit_headers_ride_on_its_rate_limited_event(sim: Simulator, gateway: str) -> None:
    """RateLimit-*, X-RateLimit-* and Retry-After are on the event; other headers are not."""
    (event,), _ = await _rate_limited_events(gateway, sim)
    assert event.headers == RATE_HEADERS
    assert event.retry_after == 0.0


async def test_the_client_repr_shows_the_last_rate_limit_headers_seen(sim: Simulator, gateway: str) -> None:
    """The limiter in the client's repr shows what the server last said about its limit."""
    _, shown = await _rate_limited_events(gateway, sim)
    assert "429s=1" in shown
    for name, value in RATE_HEADERS.items():
        assert f"{name!r}: {value!r}" in shown
    assert "X-Request-Id" not in shown


async def test_a_429_without_rate_limit_headers_has_none_on_its_event(sim: Simulator) -> None:
    """The simulator's bare 429 (no Retry-After): the event's headers are empty, the repr shows none."""
    (event,), shown = await _rate_limited_events(sim.url, sim)
    assert event.headers == {}
    assert "429s=1" in shown
    assert "headers=" not in shown


def test_a_flood_of_rate_limit_headers_is_kept_small() -> None:
    """A hostile answer's hundred rate-limit headers of 8 KB each: 16 kept, each cut to 200 characters."""
    flood: Mapping[str, str] = {f"X-RateLimit-Bucket-{i}": "9" * 8000 for i in range(100)}
    kept = rate_limit_headers(flood)
    assert len(kept) == 16
    assert {len(value) for value in kept.values()} == {200}


class _ClockBehind(SystemClock):
    """A machine whose wall clock is 45 s behind (no NTP); its monotonic clock is fine."""

    def wall(self) -> float:
        return super().wall() - 45.0


async def test_an_http_date_retry_after_is_read_against_the_servers_date_not_a_clock_that_is_off() -> None:
    async with Simulator(time_scale=TIME_SCALE, retry_after="date") as sim:
        sim.queue_fault("429", method="GET")  # Retry-After: a date about a second ahead of the server's
        client = KlingClient(
            api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY, clock=_ClockBehind()
        )
        async with client:
            events = client.events()
            await client.generate(OmniRequest(prompt="a fox in snow"))
        (event,) = [event async for event in events if isinstance(event, RateLimited)]
    assert event.retry_after is not None
    assert event.retry_after <= 2.0  # not 46-47 s
