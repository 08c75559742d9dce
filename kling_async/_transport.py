"""The transport seam: what the client and downloads need from HTTP, and the aiohttp implementation.

``Transport`` is the protocol; ``AiohttpTransport`` is the one module-level user of aiohttp's client, and
its exceptions become ours here. ``kling_async.testing.MockTransport`` is a handler-based fake of it.

API requests carry the key header and never follow redirects (a redirect must not carry the key to
another host). File downloads go through ``stream``, which never carries the key and never follows
redirects either: the download code decides which to follow.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._errors import ClientClosed, TransportError
from ._secret import Secret, redacted_str

__all__ = [
    "USER_AGENT",
    "AiohttpTransport",
    "Response",
    "StreamAnswer",
    "Timeouts",
    "TraceConfigs",
    "Transport",
    "check_headers",
    "package_version",
    "redact",
]

log = logging.getLogger("kling_async.http")


def package_version() -> str:
    """This package's version, from its installed metadata (the one place it is written: pyproject.toml)."""
    try:
        return metadata.version("kling-async")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


USER_AGENT = (
    f"kling-async/{package_version()} python/{sys.version_info[0]}.{sys.version_info[1]}"
    f" aiohttp/{aiohttp.__version__}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Time limits, in seconds: per API request, and for file downloads (which have their own).

    Args:
        connect: to open a connection (a POST that fails here provably created nothing).
        read: the longest silence while reading an API answer (catches a server that stops mid-body).
        total: a whole API request, connection included (catches a body that trickles forever).
            Downloads are never bound by it.
        download_idle: the longest silence while downloading a file; the transfer is then resumed.
        download_deadline: the most a whole download may take, retries and resumes included, or None
            for no limit (a download that keeps making progress is then never cut short).
    """

    connect: float = 10.0
    read: float = 30.0
    total: float = 60.0
    download_idle: float = 30.0
    download_deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "read", "total", "download_idle", "download_deadline"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise TypeError(f"Timeouts.{name}: a number of seconds (got {value!r})")
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"Timeouts.{name}: a finite number of seconds above 0 (got {value!r})")


def _headers(headers: Mapping[str, str] | None) -> CIMultiDictProxy[str]:
    if isinstance(headers, CIMultiDictProxy):
        return headers
    return CIMultiDictProxy(CIMultiDict(headers or {}))


@dataclass(frozen=True, slots=True)
class Response:
    """A complete API answer. ``headers`` look up case-insensitively, whatever mapping was given."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _headers(self.headers))


TraceConfigs = Iterable[aiohttp.TraceConfig]
"""aiohttp ``TraceConfig``s (the one aiohttp type in the client's signature)."""

StreamAnswer = tuple[int, Mapping[str, str], AsyncIterator[bytes]]
"""What ``Transport.stream`` yields: the status, the headers (case-insensitive), and the body's chunks."""


class Transport(Protocol):
    """What the client and the downloads call to reach the network (a seam: tests can swap it)."""

    async def open(self) -> None:
        """Get ready to send; runs inside the event loop that will use the transport."""

    async def close(self) -> None:
        """Release connections; the transport is not used after this."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one API request (with the key) to ``path`` under the base URL and read its whole answer.

        Raises:
            TransportError: no complete answer (``request_sent`` False when nothing left).
        """
        ...

    def stream(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[StreamAnswer]:
        """GET a file URL (never with the key, never following redirects) and yield its answer.

        The chunks are the body as sent: a ``Content-Encoding`` is left for the caller to undo.

        Raises:
            TransportError: while connecting or while reading the chunks.
        """
        ...


# RFC 9110 token characters for a header name; values must not carry control characters (CR/LF split
# a header in two, which would let a value smuggle in another header).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_headers(headers: Mapping[str, str], *, key_header: str) -> dict[str, str]:
    """Validate ``default_headers``: proper names, values without control characters, never the key's.

    Raises:
        ValueError: naming the header and the rule it breaks.
    """
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"default_headers: {name!r} is not a valid header name")
        if not isinstance(value, str) or _CONTROL.search(value):
            raise ValueError(f"default_headers[{name!r}]: a string without control characters")
        if name.lower() == key_header.lower():
            raise ValueError(
                f"default_headers[{name!r}]: this header carries the API key; pass the key as api_key="
            )
        checked[name] = value
    return checked


class AiohttpTransport:
    """One pooled aiohttp session for the API and for file downloads.

    Args:
        base_url: the API's address; API paths are appended to it.
        auth_header: the key's header name and the key, sent on API requests only.
        timeouts: the API request limits and the downloads' idle limit.
        connection_limit: connections open at once, API and files together.
        max_body: the largest API answer read, in bytes.
        proxy: a proxy URL for every request; None: from the environment when ``trust_env``.
        trust_env: honour ``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, as httpx does (read when the
            transport opens, then decided once per host: aiohttp's own ``trust_env`` would rescan the
            environment and ``~/.netrc`` in a worker thread on every request).
        default_headers: extra headers on every API request (validated by ``check_headers``).
        trace_configs: aiohttp ``TraceConfig``s given to the session (OpenTelemetry hooks in here).
    """

    def __init__(
        self,
        *,
        base_url: str,
        auth_header: tuple[str, str],
        timeouts: Timeouts,
        connection_limit: int,
        max_body: int = 4 * 1024 * 1024,
        proxy: str | None = None,
        trust_env: bool = True,
        default_headers: Mapping[str, str] | None = None,
        trace_configs: TraceConfigs | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        # A str whose repr is redacted: aiohttp's frames hold it as a local, and tracebacks show those.
        self._auth = {auth_header[0]: redacted_str(Secret(auth_header[1]))}
        checked = check_headers(default_headers or {}, key_header=auth_header[0])
        # Built once: aiohttp copies what it is given, so every request can pass the same dict.
        self._get_headers = {**checked, **self._auth}
        self._body_headers = {**self._get_headers, "Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        # A download is bound by silence, never by a total: a big file on a slow link takes what it takes
        # (the download code enforces its own optional deadline).
        self._file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.download_idle
        )
        self._connection_limit = connection_limit
        self._max_body = max_body
        self._proxy = proxy
        self._trust_env = trust_env
        self._env_proxies: dict[str, str] = {}
        self._proxy_by_origin: dict[tuple[str, str, int | None], str | None] = {}
        self._trace_configs = list(trace_configs or ())
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<AiohttpTransport base_url={self._base_url!r}>"

    async def open(self) -> None:
        """Create the session; must run inside the event loop that will use it."""
        connector = aiohttp.TCPConnector(limit=self._connection_limit, limit_per_host=0)
        if self._trust_env and self._proxy is None:
            self._env_proxies = urllib.request.getproxies_environment()
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": USER_AGENT},
            raise_for_status=False,
            trust_env=False,
            trace_configs=self._trace_configs or None,
        )

    def _proxy_for(self, url: URL) -> str | None:
        """The proxy for a URL: the explicit one, else the environment's for its scheme unless NO_PROXY
        names its host; decided once per origin."""
        if self._proxy is not None or not self._env_proxies:
            return self._proxy
        origin = (url.scheme, url.host or "", url.port)
        if origin not in self._proxy_by_origin:
            proxy = self._env_proxies.get(url.scheme)
            # proxy_bypass_environment is stdlib (NO_PROXY's rules), but missing from typeshed.
            bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
            if proxy is not None and bypass(
                f"{url.host}:{url.port}" if url.port else (url.host or ""), self._env_proxies
            ):
                proxy = None
            self._proxy_by_origin[origin] = proxy
        return self._proxy_by_origin[origin]

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ClientClosed("the KlingClient is closed (its connections with it)")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one API request and read its whole answer; log one INFO line for it.

        Raises:
            TransportError: no complete answer; ``request_sent`` is False only when the
                connection could not be opened, so the server cannot have seen the request.
        """
        session = self._session
        if session is None:
            raise ClientClosed("the KlingClient is closed (its connections with it)")
        url: str | URL = self._base_url + path
        if params:
            url = URL(url).extend_query(params)
        proxy = self._proxy
        if proxy is None and self._env_proxies:
            proxy = self._proxy_for(URL(url))
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=self._get_headers if body is None else self._body_headers,
                allow_redirects=False,
                proxy=proxy,
            ) as resp:
                length = resp.content_length
                if length is not None and length <= self._max_body:
                    # A declared length is what aiohttp reads, no more: one read, not a loop over chunks.
                    data = await resp.read()
                else:
                    data = await self._read_capped(resp)
                if log.isEnabledFor(logging.INFO):
                    _log_response(method, str(URL(url)), resp)
                return Response(resp.status, resp.headers, data)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportError(
                f"{method} {path}: {_connect_failure(exc, URL(url))}", request_sent=False
            ) from exc
        except TimeoutError as exc:
            raise TransportError(f"{method} {path}: timed out waiting for the answer") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{method} {path}: {_describe(exc)}") from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """An answer whose length is not declared, read up to the cap (or a declared one over it)."""
        length = resp.content_length
        if length is not None:
            raise TransportError(f"answer too large: {length} bytes")
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
    ) -> AsyncIterator[StreamAnswer]:
        """Open a file URL (never with the API key, never following redirects) and yield its answer.

        The body comes as sent, never inflated (aiohttp would not check that a gzip stream ends).
        """
        session = self._require_session()
        where = f"GET {redact(url)}"
        try:
            target = URL(url)
            response = await session.get(
                target,
                headers=dict(headers or {}),
                allow_redirects=False,
                timeout=self._file_timeout,
                proxy=self._proxy_for(target),
                auto_decompress=False,
            )
        # Not chained to aiohttp's errors: they quote the signed URL, and a traceback (a log's, Sentry's)
        # shows the cause. What they say is in the message, without the query.
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportError(f"{where}: {_connect_failure(exc, target)}", request_sent=False) from None
        except TimeoutError:
            raise TransportError(f"{where}: timed out") from None
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a URL aiohttp cannot use
            raise TransportError(f"{where}: {_describe(exc)}") from None
        async with response:
            _log_response("GET", redact(url), response)
            yield response.status, response.headers, _chunks(response, where)


async def _chunks(resp: aiohttp.ClientResponse, where: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(256 * 1024):
            yield chunk
    except TimeoutError:
        raise TransportError(f"{where}: no data for too long (download_idle)") from None
    except aiohttp.ClientError as exc:  # not chained: see ``stream``
        raise TransportError(f"{where}: {_describe(exc)}") from None


def _log_response(method: str, url: str, resp: aiohttp.ClientResponse) -> None:
    # httpx's line, so log tooling that knows httpx reads ours; the key is a header, never in the URL.
    log.info(
        'HTTP Request: %s %s "%d %s"',
        method,
        url,
        resp.status,
        resp.reason or "",
        extra={"method": method, "url": url, "status": resp.status},
    )


def _connect_failure(exc: aiohttp.ClientError, url: URL) -> str:
    """``could not connect to HOST:PORT: REASON``, naming the proxy when it was the proxy that failed."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        host, port = exc.host, exc.port
        reason = _reason(exc.os_error)
    else:
        host, port = url.host or "?", url.port
        reason = "timed out"
    proxy = "proxy " if isinstance(exc, aiohttp.ClientProxyConnectionError) else ""
    return f"could not connect to {proxy}{host}:{port}: {reason}"


def _reason(error: OSError) -> str:
    # asyncio words a refused connection "Connect call failed ('127.0.0.1', 9)"; the errno says it better.
    if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
        return os.strerror(error.errno)
    return error.strerror or str(error) or error.__class__.__name__


# A URL's query and fragment, wherever aiohttp's message quotes the URL (a signed URL's signature).
_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"?#<>]*)[?#][^\s'\"<>]*")
_MAX_DESCRIPTION = 300  # a parser's error can quote a whole body


def _describe(exc: Exception) -> str:
    """The exception's class and message, without any URL's query string, cut to a readable length."""
    text = _QUERY.sub(r"\1", str(exc))
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 3] + "..."
    name = exc.__class__.__name__
    return f"{name}: {text}" if text else name


def redact(url: str) -> str:
    """A result URL without its query string (signed URLs carry credentials there)."""
    return url.split("?", 1)[0]
