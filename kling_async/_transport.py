"""The one module that talks to aiohttp's client; its exceptions become ours here.

API requests carry the key header and never follow redirects (a redirect must not carry the key to
another host). File downloads go through ``stream``, which never carries the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from ._errors import TransportError

__all__ = ["Response", "Timeouts", "Transport", "redact"]

_USER_AGENT = "kling-async/0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Per-request time limits, in seconds.

    Args:
        connect: to open a connection (a POST that fails here provably created nothing).
        read: the longest silence while reading an answer (catches a server that stops mid-body).
        total: the whole request, connection included (catches a body that trickles forever).
    """

    connect: float = 10.0
    read: float = 30.0
    total: float = 60.0


@dataclass(frozen=True, slots=True)
class Response:
    """A complete API answer."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Transport:
    """One pooled aiohttp session for the API and for file downloads."""

    def __init__(
        self,
        *,
        base_url: str,
        auth_header: tuple[str, str],
        timeouts: Timeouts,
        connection_limit: int,
        max_body: int = 4 * 1024 * 1024,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._auth = {auth_header[0]: auth_header[1]}
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._connection_limit = connection_limit
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the session; must run inside the event loop that will use it."""
        connector = aiohttp.TCPConnector(limit=self._connection_limit, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": _USER_AGENT},
            raise_for_status=False,
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the transport is closed")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one API request and read its whole answer.

        Raises:
            TransportError: no complete answer; ``request_sent`` is False only when the
                connection could not be opened, so the server cannot have seen the request.
        """
        session = self._require_session()
        headers = dict(self._auth)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with session.request(
                method,
                self._base_url + path,
                data=body,
                params=params,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                data = await self._read_capped(resp)
                return Response(resp.status, resp.headers, data)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportError(
                f"{method} {path}: could not connect: {exc.__class__.__name__}", request_sent=False
            ) from exc
        except TimeoutError as exc:
            raise TransportError(f"{method} {path}: timed out waiting for the answer") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{method} {path}: {_describe(exc)}") from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self._max_body:
            raise TransportError(f"answer too large: {resp.content_length} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_body:
                raise TransportError(f"answer too large: over {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @asynccontextmanager
    async def stream(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[tuple[int, CIMultiDictProxy[str], AsyncIterator[bytes]]]:
        """Open a file URL (never with the API key) and yield ``(status, headers, chunks)``."""
        session = self._require_session()
        try:
            async with session.get(url, headers=dict(headers or {})) as resp:
                yield resp.status, resp.headers, _chunks(resp)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportError(f"GET {redact(url)}: could not connect", request_sent=False) from exc
        except TimeoutError as exc:
            raise TransportError(f"GET {redact(url)}: timed out") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"GET {redact(url)}: {_describe(exc)}") from exc


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in resp.content.iter_chunked(256 * 1024):
        yield chunk


def _describe(exc: aiohttp.ClientError) -> str:
    text = str(exc)
    name = exc.__class__.__name__
    return f"{name}: {text}" if text else name


def redact(url: str) -> str:
    """A result URL without its query string (signed URLs carry credentials there)."""
    return url.split("?", 1)[0]
