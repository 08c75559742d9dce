"""A transport that answers from a function: unit tests of code built on KlingClient, without a server."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .._transport import Response, StreamAnswer

__all__ = ["MockRequest", "MockTransport", "Response"]

_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class MockRequest:
    """What the client sent: ``url`` is the API path (``/v1/ai/...``) or, for a file, the whole URL."""

    method: str
    url: str
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


Handler = Callable[[MockRequest], Response | Awaitable[Response]]


class MockTransport:
    """Answers every request with ``handler(request)`` (a function or a coroutine function).

    ``KlingClient(api_key="k", transport=MockTransport(handler))``. The handler may raise
    ``TransportError`` to stand for a network failure. Integration tests belong on the ``Simulator``
    (real HTTP); this is for unit tests of your own code, as httpx's ``MockTransport`` is.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def _answer(self, request: MockRequest) -> Response:
        self.requests.append(request)
        answer = self.handler(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """The handler's answer to an API request."""
        return await self._answer(MockRequest(method, path, dict(params or {}), {}, body))

    @asynccontextmanager
    async def stream(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamAnswer]:
        """The handler's answer to a file GET, its body in chunks."""
        response = await self._answer(MockRequest("GET", url, {}, dict(headers or {})))

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(response.body), _CHUNK):
                yield response.body[start : start + _CHUNK]

        yield response.status, response.headers, chunks()
