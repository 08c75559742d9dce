"""Downloads that never leave half a file at the target path.

A file is streamed to ``.<name>.part`` beside its target, checked against the size the server announced,
fsynced, and renamed over the target in one step. A broken transfer resumes from the partial file with a
``Range`` request (or starts again if the server ignores ranges). A result URL that has expired (403, 404
or 410 from the file host) is replaced by a fresh one from the task's status. An existing file with other
content is never overwritten: the new one gets a ``-2``, ``-3``... suffix.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from ._clock import Clock
from ._errors import DownloadError, KlingError, TransportError
from ._retry import RetryPolicy
from ._transport import Transport, redact

__all__ = ["download_file", "safe_file_name"]

_EXPIRED = frozenset({403, 404, 410})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 100
# Names Windows refuses whatever their extension.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
)
# How many times an expired URL is replaced by a fresh one before giving up.
_REFRESHES = 2


def safe_file_name(key: str, suffix: str = ".mp4") -> str:
    """A file name made from an item key, safe on every filesystem, distinct for distinct keys."""
    cleaned = _UNSAFE.sub("_", key).strip("._-")[:_MAX_NAME]
    if cleaned != key or not cleaned or cleaned.upper() in _RESERVED:
        # Two keys that clean to the same text must still get two files.
        cleaned = f"{cleaned or 'item'}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return cleaned + suffix


async def download_file(
    transport: Transport,
    url: str,
    target: Path,
    *,
    retry: RetryPolicy,
    clock: Clock,
    fresh_url: Callable[[], Awaitable[str]] | None = None,
) -> Path:
    """Download ``url`` to ``target`` atomically and return the path written (see the module docs).

    Raises:
        DownloadError: the file could not be fetched whole.
    """
    try:
        return await _download(transport, url, target, retry=retry, clock=clock, fresh_url=fresh_url)
    except OSError as exc:  # disk full, permissions, a path that is a folder: this file's error only
        raise DownloadError(f"cannot write {target}: {exc.strerror or exc}") from exc


async def _download(
    transport: Transport,
    url: str,
    target: Path,
    *,
    retry: RetryPolicy,
    clock: Clock,
    fresh_url: Callable[[], Awaitable[str]] | None,
) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    refreshes = 0
    attempt = 0
    first = clock.now()
    while True:
        attempt += 1
        try:
            status = await _fetch(transport, url, part)
        except TransportError as exc:
            error: KlingError = exc
        else:
            if status is None:
                return await anyio.to_thread.run_sync(_install, part, target)
            if status in _EXPIRED and fresh_url is not None and refreshes < _REFRESHES:
                refreshes += 1
                url = await fresh_url()
                continue
            error = DownloadError(f"GET {redact(url)}: HTTP {status}")
            if status < 500 and status != 429:
                raise error
        if attempt >= retry.attempts or clock.now() - first > retry.deadline:
            raise DownloadError(f"download of {target.name} failed after {attempt} tries: {error}") from error
        await clock.sleep(retry.backoff(attempt))


async def _fetch(transport: Transport, url: str, part: Path) -> int | None:
    """Fetch into ``part``, resuming it; None when complete, else the failing HTTP status."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    async with transport.stream(url, headers=headers) as (status, response_headers, chunks):
        if status == 416 and have:
            # The partial file is already whole (or longer than the file): start over to be sure.
            part.unlink()
            raise TransportError("the partial file does not fit the remote one; starting over")
        if status not in (200, 206):
            return status
        if status == 206:
            start, total = _content_range(response_headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise TransportError(
                    f"asked to resume at byte {have}, got a range from {start}; starting over"
                )
        else:
            have = 0
            length = response_headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with part.open("ab" if have else "wb") as out:
            async for chunk in chunks:
                out.write(chunk)
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise TransportError(f"incomplete body: {size} of {total} bytes")
    return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    if match is None:
        return None, None
    total = match.group(2)
    return int(match.group(1)), (int(total) if total != "*" else None)


def _install(part: Path, target: Path) -> Path:
    """Make the finished part file durable and move it to the target (or beside it, never over other data)."""
    with part.open("rb") as handle:
        os.fsync(handle.fileno())
    destination = target
    counter = 1
    while destination.exists():
        if _same_content(destination, part):
            part.unlink()
            return destination
        counter += 1
        destination = target.with_name(f"{target.stem}-{counter}{target.suffix}")
    os.replace(part, destination)
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return destination


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            block_a, block_b = fa.read(1 << 20), fb.read(1 << 20)
            if block_a != block_b:
                return False
            if not block_a:
                return True
