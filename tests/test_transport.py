"""The transport seam: MockTransport drives a client; the aiohttp transport's headers, logs, traces."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import math
import sys
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

import kling_async
from kling_async import (
    KlingClient,
    OmniRequest,
    RateLimitError,
    Timeouts,
    TransportError,
)
from kling_async._errors import api_error
from kling_async.testing import MockRequest, MockTransport, Response, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY

pytestmark = pytest.mark.anyio

FOX = OmniRequest(prompt="a fox in snow")


# -- MockTransport ----------------------------------------------------------------------------------


def _task(task_id: str, status: str, generated: tuple[str, ...] = ()) -> Response:
    body = {"data": {"task_id": task_id, "status": status, "generated": list(generated)}}
    return Response(200, {"Content-Type": "application/json"}, json.dumps(body).encode())


async def test_a_mock_transport_drives_a_client_from_submit_to_result(tmp_path: Path) -> None:
    """A handler answering POST and GET is all a client needs: no server, no network."""
    task_id = str(uuid.uuid4())
    video = b"not really an mp4"

    def handler(request: MockRequest) -> Response:
        if request.method == "POST":
            assert json.loads(request.body or b"{}")["prompt"] == "a fox in snow"
            return _task(task_id, "CREATED")
        if request.url.startswith("https://cdn.example"):
            return Response(200, {"Content-Length": str(len(video))}, video)
        return _task(task_id, "COMPLETED", ("https://cdn.example/v.mp4?sig=1",))

    transport = MockTransport(handler)
    async with KlingClient(api_key="k", poll=FAST_POLL, retry=FAST_RETRY, transport=transport) as client:
        result = await client.generate(FOX)
        path = await client.download(result, tmp_path)
    assert result.task_id == task_id
    assert path.read_bytes() == video
    assert [(r.method, r.url.split("?")[0]) for r in transport.requests] == [
        ("POST", "/v1/ai/video/kling-v3-omni-std"),
        ("GET", f"/v1/ai/video/kling-v3-omni/{task_id}"),
        ("GET", "https://cdn.example/v.mp4"),
    ]


async def test_a_mock_transport_takes_an_async_handler_and_its_errors_reach_the_caller() -> None:
    """An async handler works, and an API error status it returns becomes the typed error."""

    async def handler(request: MockRequest) -> Response:
        return Response(429, {"retry-after": "0"}, b'{"message": "slow down"}')

    retry = FAST_RETRY.__class__(attempts=1)
    async with KlingClient(api_key="k", retry=retry, transport=MockTransport(handler)) as client:
        with pytest.raises(RateLimitError, match="slow down"):
            await client.list_tasks()


def test_response_headers_look_up_case_insensitively() -> None:
    """Whatever mapping a handler gives, the client reads Retry-After as the aiohttp transport gives it."""
    assert Response(200, {"retry-after": "3"}).headers["Retry-After"] == "3"


# -- a recorder: a loopback server that keeps every request's headers ------------------------------------


@pytest.fixture
async def recorder() -> AsyncIterator[SimpleNamespace]:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        if request.path.startswith("/files/"):
            return web.Response(body=b"video bytes")
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", seen=seen)
    finally:
        await runner.cleanup()


def test_the_version_is_the_installed_distributions() -> None:
    """One version: kling_async.__version__ is read from the package metadata that pyproject.toml writes."""
    assert kling_async.__version__ == importlib.metadata.version("kling-async")


async def test_the_user_agent_names_the_package_python_and_aiohttp(
    recorder: SimpleNamespace, tmp_path: Path
) -> None:
    """API and file requests say kling-async/<version> python/<x.y> aiohttp/<x.y.z>."""
    expected = (
        f"kling-async/{kling_async.__version__} python/{sys.version_info[0]}.{sys.version_info[1]}"
        f" aiohttp/{aiohttp.__version__}"
    )
    async with KlingClient(api_key="k", base_url=recorder.url, trust_env=False) as client:
        await client.list_tasks()
        await client.download(f"{recorder.url}/files/v.mp4", tmp_path / "v.mp4")
    assert [headers["User-Agent"] for headers in recorder.seen] == [expected, expected]


async def test_default_headers_go_on_api_requests_and_never_to_file_hosts(
    recorder: SimpleNamespace, tmp_path: Path
) -> None:
    """default_headers ride every API request; a file URL (another host) gets neither them nor the key."""
    headers = {"X-Team": "studio-7"}
    async with KlingClient(
        api_key="k", base_url=recorder.url, default_headers=headers, trust_env=False
    ) as client:
        await client.list_tasks()
        await client.download(f"{recorder.url}/files/v.mp4", tmp_path / "v.mp4")
    api, file = recorder.seen
    assert api["X-Team"] == "studio-7"
    assert api["x-freepik-api-key"] == "k"
    assert "X-Team" not in file
    assert "x-freepik-api-key" not in {name.lower() for name in file}


@pytest.mark.parametrize("name", ["x-freepik-api-key", "X-Freepik-API-Key"])
def test_default_headers_cannot_replace_the_key_header(name: str) -> None:
    """A default header named like the key's (any case) is refused at construction, naming it."""
    with pytest.raises(ValueError, match=rf"default_headers\['{name}'\]: this header carries the API key"):
        KlingClient(api_key="k", default_headers={name: "other"})


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Note": "a\r\nX-Injected: 1"}, "without control characters"),
        ({"Bad Name": "v"}, "not a valid header name"),
    ],
)
def test_default_headers_that_would_break_a_request_are_refused(
    headers: dict[str, str], message: str
) -> None:
    """A header value with a line break (header injection) or a malformed name is a ValueError."""
    with pytest.raises(ValueError, match=message):
        KlingClient(api_key="k", default_headers=headers)


# -- logging and tracing -------------------------------------------------------------------------------


async def test_each_api_request_logs_one_info_line_as_httpx_does(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """One `HTTP Request: METHOD URL "STATUS REASON"` line per request, with extra fields, never the key
    and never a file URL's signed query string."""
    async with (
        Simulator(time_scale=0.001, url_ttl=60.0) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        base = sim.url
        with caplog.at_level(logging.INFO, logger="kling_async.http"):
            handle = await client.submit(FOX)
            result = await handle
            await client.download(result, tmp_path)
    lines = [r for r in caplog.records if r.name == "kling_async.http"]
    post, url = lines[0], f"{base}/v1/ai/video/kling-v3-omni-std"
    assert post.getMessage() == f'HTTP Request: POST {url} "200 OK"'
    assert [post.__dict__[k] for k in ("method", "url", "status")] == ["POST", url, 200]
    assert result.url is not None
    assert "?" in result.url
    assert lines[-1].getMessage() == f'HTTP Request: GET {result.url.split("?")[0]} "200 OK"'
    assert all(r.levelno == logging.INFO for r in lines)
    assert not any("sim-key" in r.getMessage() or "?" in r.getMessage() for r in lines)


async def test_trace_configs_see_every_request_of_the_client() -> None:
    """trace_configs are given to aiohttp's session: the hooks OpenTelemetry's instrumentation uses fire."""
    started: list[str] = []

    async def on_request_start(
        session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        started.append(params.method)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with (
        Simulator(time_scale=0.001) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url, trace_configs=[trace]) as client,
    ):
        await client.submit(FOX)
        await client.list_tasks()
    assert started == ["POST", "GET"]


# -- failures ----------------------------------------------------------------------------------------


async def test_a_refused_connection_names_host_port_and_reason() -> None:
    """Issue 13.7: `could not connect to 127.0.0.1:PORT: Connection refused`, not the exception's class."""
    async with Simulator() as sim:
        url = sim.url
    port = url.rsplit(":", 1)[1]
    retry = FAST_RETRY.__class__(attempts=1)
    async with KlingClient(api_key="k", base_url=url, retry=retry, trust_env=False) as client:
        with pytest.raises(TransportError) as caught:
            await client.list_tasks()
    assert str(caught.value).endswith(f"could not connect to 127.0.0.1:{port}: Connection refused")
    assert caught.value.request_sent is False


def test_api_errors_keep_the_answers_headers_read_only_and_case_insensitive() -> None:
    """APIError.headers: the answer's headers (rate-limit ones included), not writable."""
    error = api_error(429, b"{}", headers={"RateLimit-Remaining": "0", "Retry-After": "2"})
    assert isinstance(error, RateLimitError)
    assert error.headers["ratelimit-remaining"] == "0"
    with pytest.raises(TypeError):
        error.headers["Retry-After"] = "9"  # type: ignore[index]
    assert dict(api_error(500, b"").headers) == {}


@pytest.mark.parametrize("field", ["connect", "read", "total", "download_idle", "download_deadline"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_timeouts_refuse_values_that_are_not_positive_seconds(field: str, value: float) -> None:
    """Every Timeouts field must be a finite number of seconds above 0; the error names the field."""
    with pytest.raises(ValueError, match=rf"Timeouts\.{field}: a finite number of seconds above 0"):
        Timeouts(**{field: value})


async def _garbled_file_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers anything with a header line aiohttp's parser refuses (its error quotes the URL), and a
    long body after it."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nnot a header\r\n\r\n" + b"x" * 5000)
    await writer.drain()
    writer.close()


async def _file_hosts_error() -> tuple[TransportError, int]:
    """The error of a download whose host answers garbage to a signed URL, and the host's port."""
    server = await asyncio.start_server(_garbled_file_host, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/video.mp4?Signature=SECRET-SIG&Expires=1"
    async with KlingClient(api_key="k", base_url="http://127.0.0.1:9", trust_env=False) as client:
        with pytest.raises(TransportError) as caught:
            async with client._transport.stream(url):
                pass
    server.close()
    return caught.value, port


async def test_a_file_hosts_broken_answer_is_described_without_the_urls_signature() -> None:
    """The error quotes aiohttp's message, but never the signed URL's query string (SECURITY.md)."""
    error, port = await _file_hosts_error()
    assert f"127.0.0.1:{port}/video.mp4" in str(error)
    assert "SECRET-SIG" not in str(error)


async def test_a_file_hosts_error_keeps_the_urls_signature_out_of_its_traceback() -> None:
    """Rendered as a log or Sentry renders it, causes included: aiohttp's own errors quote the URL."""
    error, _ = await _file_hosts_error()
    assert "SECRET-SIG" not in "".join(traceback.format_exception(error))
