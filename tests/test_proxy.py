"""Proxies: the standard variables are honoured by default, proxy= sets one, file hosts never see the key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from kling_async import KlingClient, OmniRequest, RetryPolicy, TransportError
from kling_async.testing import Simulator
from tests.conftest import FAST_POLL, FAST_RETRY

pytestmark = pytest.mark.anyio

FOX = OmniRequest(prompt="a fox in snow")
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# Hop-by-hop headers a forwarding proxy must not pass on (RFC 9110 7.6.1), and framing aiohttp redoes.
_HOP = {
    "connection",
    "proxy-connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "upgrade",
}


@dataclass
class Proxy:
    """A forwarding HTTP proxy on loopback that keeps what it was asked to forward."""

    url: str = ""
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from no proxy variables, whatever the machine has, and leaves none behind."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    record = Proxy()
    upstream = aiohttp.ClientSession(trust_env=False, auto_decompress=False)

    async def forward(request: web.Request) -> web.Response:
        # A request to a proxy names the whole URL (absolute form), which aiohttp parses into request.url.
        record.seen.append((request.method, str(request.url), dict(request.headers)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with upstream.request(
            request.method, request.url, headers=headers, data=await request.read(), allow_redirects=False
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            return web.Response(status=answer.status, headers=kept, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    record.url = f"http://127.0.0.1:{port}"
    try:
        yield record
    finally:
        await runner.cleanup()
        await upstream.close()


async def _generate_and_download(client: KlingClient, folder: Path) -> Path:
    result = await client.generate(FOX)
    return await client.download(result, folder)


async def test_the_proxy_variables_route_api_and_file_requests_through_the_proxy(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """By default (trust_env=True) HTTP_PROXY carries every request; the file request has no key header."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with (
        Simulator(time_scale=0.001) as sim,
        KlingClient("sim-key", sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        path = await _generate_and_download(client, tmp_path)
        api, cdn = sim.url, sim.cdn_url
    assert path.stat().st_size > 0
    api_requests = [(m, u, h) for m, u, h in proxy.seen if u.startswith(api)]
    file_requests = [(m, u, h) for m, u, h in proxy.seen if u.startswith(cdn)]
    assert api_requests[0][:2] == ("POST", f"{api}/v1/ai/video/kling-v3-omni-std")
    assert len(file_requests) == 1
    assert len(api_requests) + len(file_requests) == len(proxy.seen)
    assert all(h["x-freepik-api-key"] == "sim-key" for _, _, h in api_requests)
    assert not any("sim-key" in value for value in file_requests[0][2].values())


async def test_an_explicit_proxy_is_used_without_the_environment(proxy: Proxy, tmp_path: Path) -> None:
    """proxy= routes API and file requests through that proxy even with trust_env=False."""
    async with (
        Simulator(time_scale=0.001) as sim,
        KlingClient(
            "sim-key", sim.url, poll=FAST_POLL, retry=FAST_RETRY, proxy=proxy.url, trust_env=False
        ) as client,
    ):
        await _generate_and_download(client, tmp_path)
        expected = sim.counters.posts + sim.counters.status_gets + sim.counters.downloads
    assert len(proxy.seen) == expected


async def test_trust_env_false_ignores_the_proxy_variables(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With trust_env=False, HTTP_PROXY is not read: requests go straight to the API."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with (
        Simulator(time_scale=0.001) as sim,
        KlingClient("sim-key", sim.url, retry=FAST_RETRY, trust_env=False) as client,
    ):
        await client.submit(FOX)
    assert proxy.seen == []


async def test_no_proxy_sends_the_hosts_it_names_direct(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY is honoured with the other variables: a host it lists is reached without the proxy."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with (
        Simulator(time_scale=0.001) as sim,
        KlingClient("sim-key", sim.url, retry=FAST_RETRY) as client,
    ):
        await client.submit(FOX)
    assert proxy.seen == []


async def test_an_unreachable_proxy_is_named_in_the_error() -> None:
    """A proxy that refuses connections: the error says it was the proxy, with its host and port."""
    async with Simulator() as sim:
        closed = sim.url
    port = closed.rsplit(":", 1)[1]
    async with KlingClient(
        "k", "http://127.0.0.1:8400", proxy=closed, trust_env=False, retry=RetryPolicy(attempts=1)
    ) as client:
        with pytest.raises(
            TransportError, match=f"could not connect to proxy 127.0.0.1:{port}: Connection refused"
        ):
            await client.list_tasks()
