"""The CDN side of the simulator: the sample video, signed expiring URLs, and byte-range answers."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from importlib import resources

from aiohttp import web

__all__ = ["UrlSigner", "file_response", "sample_video"]

# ASCII digits, at most 18 of them (any file's offset): int() would take other scripts' digits, and raises
# past 4,300 digits.
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
_PIECE = 1024  # bytes a paced file answer sends at a time


@functools.cache
def sample_video() -> bytes:
    """The packaged sample: a 1 s, 64x64 H.264 MP4, read on first use rather than at import."""
    return (resources.files("kling_async.testing") / "sample.mp4").read_bytes()


@functools.cache
def _etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"'


class UrlSigner:
    """Signs result URLs with an expiry (in Unix milliseconds), as CDN links are, and checks them."""

    def __init__(self, key: bytes, ttl: float | None) -> None:
        self._key = key
        self.ttl = ttl

    def _signature(self, task_id: str, expires: str) -> str:
        return hmac.new(self._key, f"{task_id}:{expires}".encode(), "sha256").hexdigest()[:32]

    def query(self, task_id: str) -> str:
        """The query string for a URL issued now: empty when URLs never expire."""
        if self.ttl is None:
            return ""
        expires = str(int((time.time() + self.ttl) * 1000))
        return f"?expires={expires}&sig={self._signature(task_id, expires)}"

    def allows(self, task_id: str, query: Mapping[str, str]) -> bool:
        """Whether a request's query carries a valid signature that has not expired."""
        if self.ttl is None:
            return True
        expires, signature = query.get("expires", ""), query.get("sig", "")
        if not expires.isdigit() or not hmac.compare_digest(signature, self._signature(task_id, expires)):
            return False
        return int(expires) > time.time() * 1000


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single `bytes=` range into (start, stop); None means ignore it and send the whole file.

    Raises:
        web.HTTPRequestRangeNotSatisfiable: the range starts past the end or asks for zero bytes.
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None  # malformed or several ranges: RFC 9110 lets a server ignore Range then
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        # "bytes=-0" asks for nothing, which no file can satisfy.
        start, stop = (size - min(suffix, size) if suffix else size), size
    else:
        start = int(first)
        stop = size if last == "" else min(size, int(last) + 1)
        if last != "" and int(last) < start:
            return None
    if start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, stop


async def file_response(
    request: web.Request, data: bytes, *, ranges: bool, cut_after: int | None, pace: float = 0.0
) -> web.StreamResponse:
    """Answer a GET or HEAD for `data`: whole or one range, optionally cut off after `cut_after` bytes,
    optionally sent in pieces of `_PIECE` bytes `pace` seconds apart (a slow link)."""
    headers = {"ETag": _etag(data)}
    status, start, stop = 200, 0, len(data)
    if ranges:
        headers["Accept-Ranges"] = "bytes"
        header = request.headers.get("Range")
        span = None if header is None else _byte_range(header, len(data))
        if span is not None:
            start, stop = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
    body = data[start:stop]
    whole = cut_after is None or cut_after >= len(body)
    if request.method == "HEAD" or (whole and not pace):
        return web.Response(body=body, status=status, headers=headers, content_type="video/mp4")
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = "video/mp4"
    response.content_length = len(body)
    await response.prepare(request)
    sent = body if whole else body[:cut_after]
    piece = _PIECE if pace else max(len(sent), 1)
    try:
        for offset in range(0, len(sent), piece):
            if offset:
                await asyncio.sleep(pace)
            await response.write(sent[offset : offset + piece])
    except ConnectionResetError:
        # The client hung up mid-file (gave up on a slow link): an ordinary end, not a server error for
        # aiohttp to log with its traceback.
        return response
    if whole:
        await response.write_eof()
        return response
    if request.transport is not None:
        # close() flushes what was written, then ends the connection short of Content-Length.
        request.transport.close()
    return response
