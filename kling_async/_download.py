"""Downloads that never leave half a file at the target path, never mix two files, never write through a link.

A file is streamed to ``.<name>.part`` beside its target, checked against the size the server announced,
fsynced, and renamed over the target in one step. An existing file with other content is never
overwritten: the new one gets a ``-2``, ``-3``... suffix.

- **Tied to its source.** Beside the part file, ``.<name>.part.json`` records what the part holds: its
  source (the task id, else the URL without its query string, which carries the signature), the size the
  server announced and its ETag and Last-Modified. A broken transfer resumes with ``Range`` (and
  ``If-Range`` when the ETag is strong) only when all still match, a validator the answer lacks included;
  any mismatch starts the file over. A part without its record is started over too (a crash between the
  two leaves nothing that could be resumed wrongly).
- **Exclusive, no links.** ``.<name>.lock`` is held (``flock``) for the whole download: a second download
  to the same target, in this process or another, fails at once with ``DownloadError``. Every one of
  these files is opened with ``O_NOFOLLOW``: a symbolic link planted at their path is refused, never
  followed.
- **Bounded by its own time.** A transfer silent for ``Timeouts.download_idle`` is resumed; the whole
  download (retries included) is bounded by ``Timeouts.download_deadline`` when set, never by the API
  request's ``total``; a read waits no longer than the time left. A try that took the part file past
  the most it ever held starts a fresh count of ``RetryPolicy`` attempts, so a big file on a link that
  breaks every minute still arrives, and one that breaks at the same byte every time does not loop.
- **Redirects**: followed only to the same scheme (``https`` to ``https``), at most 5 in a row; any other
  is a ``DownloadError``, as is a URL that cannot be parsed. Files are asked for with
  ``Accept-Encoding: identity``; a gzip or deflate body is inflated here (``max_bytes`` counts the inflated
  bytes) and must end with its stream's end, or the try failed.
- **Not an error page**: a 200 or 206 of ``text/*``, JSON or XML, or an empty file, is a failed try.
- **Disk full**: a part that filled the disk (or a quota, or the largest file allowed) is deleted.
- **Expired URLs**: a 403, 404 or 410 from the file host is answered by a fresh URL from the task's status.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit

import anyio
import msgspec

from ._clock import Clock
from ._errors import DownloadError, KlingError, TransportError
from ._retry import RetryPolicy
from ._transport import Transport, redact

__all__ = ["MAX_REDIRECTS", "download_file", "safe_file_name"]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_EXPIRED = frozenset({403, 404, 410})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# How a hashed name ends: 8 hex digits, a letter among them.
_HASHED = re.compile(r"-(?=[0-9]*[a-f])[0-9a-f]{8}\Z")
_MAX_NAME = 100
# Names Windows refuses whatever their extension.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
)
# How many times an expired URL is replaced by a fresh one before giving up.
_REFRESHES = 2
# O_NONBLOCK: opening a FIFO planted at our path must not hang (it is then refused as not a file).
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# What file hosts send as a body instead of the file: error pages (S3's XML, a CDN's HTML, JSON problems).
_PAGES = frozenset({"application/json", "application/xml", "application/problem+json"})
# A write refused for want of room: a resume cannot fit either, and the part holds space others need.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_INFLATED_PIECE = 256 * 1024  # the most one compressed chunk is inflated to at a time (a bomb stays small)


def safe_file_name(key: str, suffix: str = ".mp4") -> str:
    """A file name made from an item key, safe on every filesystem, distinct for distinct keys."""
    cleaned = _UNSAFE.sub("_", key).strip("._-")[:_MAX_NAME]
    if cleaned != key or not cleaned or cleaned.upper() in _RESERVED or _HASHED.search(cleaned):
        # Two keys that clean to the same text get two files; so does a key that ends like a hashed one.
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        # Digits alone would end like a clean key's number (shot-20240517), which keeps its name.
        cleaned = f"{cleaned or 'item'}-{'a' + digest[1:] if digest.isdigit() else digest}"
    return cleaned + suffix


class _PartInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a part file holds: the beginning of ``size`` bytes (None: unknown) of ``source``."""

    source: str
    size: int | None
    etag: str | None
    modified: str | None = None  # Last-Modified


async def download_file(
    transport: Transport,
    url: str,
    target: Path,
    *,
    retry: RetryPolicy,
    clock: Clock,
    fresh_url: Callable[[], Awaitable[str]] | None = None,
    source: str | None = None,
    deadline: float | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` to ``target`` atomically and return the path written (see the module docs).

    Args:
        transport: sends the GETs (never with the API key).
        url: the file's URL.
        target: the file to write (a ``-2``... suffix is added if another file is there).
        retry: attempts and backoff between tries that made no progress.
        clock: where the deadline and the backoff read time.
        fresh_url: gives a new URL when the file host says the old one expired.
        source: what the file is (the task id); by default the URL without its query string.
        deadline: seconds for the whole download, retries included; None for no limit.
        max_bytes: the largest file accepted; a larger one is a ``DownloadError`` and nothing is kept.

    Raises:
        DownloadError: the file could not be fetched whole, or written, or is being downloaded already.
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)):
        raise TypeError(f"max_bytes: a whole number of bytes, or None for no cap (got {max_bytes!r})")
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes: at least 0, or None for no cap (got {max_bytes})")
    parts = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Trying again cannot mend it: aiohttp refuses it each time, eight tries over 20 s.
        raise DownloadError(f"GET {redact(url)}: not an http(s) URL")
    if deadline is not None and not deadline > 0:
        raise ValueError(f"deadline: above 0 seconds, or None for no limit (got {deadline})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target):
            part = target.with_name(f".{target.name}.part")
            fd = _open_no_follow(part)
            try:
                job = _Download(
                    transport,
                    target,
                    fd,
                    source=source or redact(url),
                    clock=clock,
                    deadline=None if deadline is None else clock.now() + deadline,
                    max_bytes=max_bytes,
                )
                return await job.run(url, retry=retry, fresh_url=fresh_url)
            except BaseException as exc:
                if os.fstat(fd).st_size == 0 or _no_room(exc):  # nothing worth resuming: leave nothing behind
                    part.unlink(missing_ok=True)
                    target.with_name(f".{target.name}.part.json").unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
    except OSError as exc:  # disk full, permissions, a path that is a folder: this file's error only
        deleted = "; the partial file was deleted" if _no_room(exc) else ""
        raise DownloadError(f"cannot write {target}: {exc.strerror or exc}{deleted}") from exc


def _no_room(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NO_ROOM


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` for the download, or fail at once if another download holds it."""
    path = target.with_name(f".{target.name}.lock")
    while True:
        fd = _open_no_follow(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DownloadError(f"another download to {target} is in progress") from None
        # The previous holder unlinks the file before letting go: if ours is no longer the one at the
        # path, a third download may have created and locked a new one, so lock that instead.
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _open_no_follow(path: Path) -> int:
    """Open (creating) a regular file without following a link at its path."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DownloadError(f"{path} is a symbolic link; refusing to write through it") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DownloadError(f"{path} is not a regular file; refusing to write to it")
    return fd


class _Download:
    """One download's state: its part file (held open), the record of what it holds, its limits."""

    def __init__(
        self,
        transport: Transport,
        target: Path,
        fd: int,
        *,
        source: str,
        clock: Clock,
        deadline: float | None,
        max_bytes: int | None,
    ) -> None:
        self._transport = transport
        self._target = target
        self._fd = fd
        self._info_path = target.with_name(f".{target.name}.part.json")
        self._source = source
        self._clock = clock
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._info = self._read_info()
        if self._info is None or self._info.source != source:
            self._start_over()

    async def run(
        self, url: str, *, retry: RetryPolicy, fresh_url: Callable[[], Awaitable[str]] | None
    ) -> Path:
        refreshes = tries = failures = 0
        since = self._clock.now()
        # The most the part has held: bytes it gets again after a start over are no progress.
        most = self._size()
        while True:
            tries += 1
            self._check_deadline()
            try:
                status = await self._try(url)
            except DownloadError:  # what trying again cannot mend: a refused redirect, the size cap, a link
                raise
            except TransportError as exc:
                error: KlingError = exc
            else:
                if status is None:
                    path = await anyio.to_thread.run_sync(_install, self._fd, self._part, self._target)
                    self._info_path.unlink(missing_ok=True)
                    return path
                if status in _EXPIRED and fresh_url is not None and refreshes < _REFRESHES:
                    refreshes += 1
                    url = await fresh_url()
                    continue
                error = DownloadError(f"GET {redact(url)}: HTTP {status}")
                if status < 500 and status != 429:
                    raise error
            if self._size() > most:
                # Progress: the limits of RetryPolicy apply to tries in a row that made none.
                failures, since, most = 0, self._clock.now(), self._size()
            failures += 1
            if failures >= retry.attempts or self._clock.now() - since > retry.deadline:
                raise DownloadError(
                    f"download of {self._target.name} failed after {tries} tries: {error}"
                ) from error
            delay = retry.backoff(failures)
            if self._deadline is not None:
                delay = min(delay, max(0.0, self._deadline - self._clock.now()))
            await self._clock.sleep(delay)

    @property
    def _part(self) -> Path:
        return self._target.with_name(f".{self._target.name}.part")

    def _size(self) -> int:
        return os.fstat(self._fd).st_size

    def _check_deadline(self) -> None:
        if self._deadline is not None and self._clock.now() > self._deadline:
            raise self._late()

    def _late(self) -> DownloadError:
        return DownloadError(f"download of {self._target.name} not done by its deadline (download_deadline)")

    async def _try(self, url: str) -> int | None:
        """``_fetch``, cut short at the deadline (however long ``download_idle`` would let a read wait)."""
        if self._deadline is None:
            return await self._fetch(url)
        with self._clock.move_on_after(self._deadline - self._clock.now()):
            return await self._fetch(url)
        raise self._late()

    def _read_info(self) -> _PartInfo | None:
        try:
            fd = os.open(self._info_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DownloadError(
                    f"{self._info_path} is a symbolic link; refusing to read through it"
                ) from exc
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw = os.read(fd, 64 * 1024)
        finally:
            os.close(fd)
        try:
            return msgspec.json.decode(raw, type=_PartInfo)
        except msgspec.DecodeError:
            return None  # damaged or foreign: the part is started over

    def _write_info(self, info: _PartInfo) -> None:
        fd = _open_no_follow(self._info_path)
        try:
            os.ftruncate(fd, 0)
            _write_all(fd, msgspec.json.encode(info))
        finally:
            os.close(fd)
        self._info = info

    def _start_over(self) -> None:
        self._info_path.unlink(missing_ok=True)
        self._info = None
        os.ftruncate(self._fd, 0)

    async def _fetch(self, url: str) -> int | None:
        """One try: fetch into the part file, resuming it; None when complete, else the failing status."""
        have = self._size()
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            etag = self._info.etag if self._info is not None else None
            if etag is not None and not etag.startswith("W/"):
                headers["If-Range"] = etag  # a server that honours it sends the whole new file if it changed
        scheme = _split(url).scheme
        for _ in range(MAX_REDIRECTS + 1):
            async with self._transport.stream(url, headers=headers) as (status, answer, chunks):
                if status in _REDIRECTS:
                    url = self._redirect(url, scheme, answer.get("Location"))
                    continue
                if status == 416 and have:
                    # The part is already whole, or longer than the file: start over to be sure.
                    self._start_over()
                    raise TransportError("the partial file does not fit the remote one; starting over")
                if status not in (200, 206):
                    return status
                total, coding = self._accept(status, answer, have)
                self._check_size(total)
                await self._write(chunks, coding)
            self._check_complete(total)
            return None
        raise DownloadError(f"GET {redact(url)}: more than {MAX_REDIRECTS} redirects in a row")

    def _redirect(self, url: str, scheme: str, location: str | None) -> str:
        if not location:
            raise DownloadError(f"GET {redact(url)}: a redirect without a Location")
        _split(location, f"GET {redact(url)}: redirected to ")
        following = urljoin(url, location)
        if urlsplit(following).scheme != scheme:
            raise DownloadError(
                f"GET {redact(url)}: redirected to {redact(following)}; only {scheme} redirects are followed"
            )
        return following

    def _accept(self, status: int, answer: Mapping[str, str], have: int) -> tuple[int | None, str | None]:
        """Check the answer against the part file; start over when it is another file.

        Returns:
            The file's size if known, and the body's coding to undo (None: as is).
        """
        kind = answer.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if kind.startswith("text/") or kind in _PAGES:
            raise TransportError(f"HTTP {status} with a {kind} body: an error page, not the file")
        coding = _coding(answer.get("Content-Encoding", ""))
        etag, modified = answer.get("ETag"), answer.get("Last-Modified")
        if status == 206:
            start, total = _content_range(answer.get("Content-Range"))
            info = self._info
            if start != have:
                self._start_over()
                raise TransportError(
                    f"asked to resume at byte {have}, got a range from {start}; starting over"
                )
            if have == 0 and start == 0:  # a range we did not ask for, from the start: a new file
                self._write_info(_PartInfo(self._source, total, etag, modified))
                return total, None
            # A validator the part was recorded with must come back unchanged: a sloppy server that drops it
            # may be serving another version.
            if info is None or (
                (info.size is not None and total != info.size)
                or (info.etag is not None and etag != info.etag)
                or (info.modified is not None and modified != info.modified)
            ):
                self._start_over()
                raise TransportError("the remote file changed since the partial download; starting over")
            return total, None
        # A whole file: whatever the part held, it is replaced.
        os.ftruncate(self._fd, 0)
        length = answer.get("Content-Length")
        # Content-Length counts the encoded bytes: with a compressed body it is not the file's size.
        total = int(length) if length and length.isdigit() and coding is None else None
        self._write_info(_PartInfo(self._source, total, etag, modified))
        return total, coding

    def _check_size(self, total: int | None) -> None:
        if self._max_bytes is not None and total is not None and total > self._max_bytes:
            self._start_over()
            raise DownloadError(
                f"{self._target.name}: the file has {total} bytes, over max_bytes ({self._max_bytes})"
            )

    async def _write(self, chunks: AsyncIterator[bytes], coding: str | None) -> None:
        """Append the body to the part file, inflated when ``coding`` says so."""
        os.lseek(self._fd, 0, os.SEEK_END)
        size = self._size()
        # wbits 47: a gzip or a zlib header, told apart by its first bytes.
        inflater = None if coding is None else zlib.decompressobj(wbits=47)
        async for chunk in chunks:
            for piece in (chunk,) if inflater is None else _inflate(inflater, chunk):
                size += len(piece)
                if self._max_bytes is not None and size > self._max_bytes:
                    self._start_over()
                    raise DownloadError(
                        f"{self._target.name}: over max_bytes ({self._max_bytes} bytes); nothing kept"
                    )
                _write_all(self._fd, piece)
        # aiohttp checks the body's length, not that a compressed stream ended (it may be cut short).
        if inflater is not None and (not inflater.eof or inflater.unused_data):
            raise TransportError(f"the {coding} body does not end where its stream ends (cut short?)")

    def _check_complete(self, total: int | None) -> None:
        size = self._size()
        if size == 0:
            raise TransportError("an empty body, not a file")
        if total is not None and size != total:
            if size > total:
                self._start_over()
            raise TransportError(f"incomplete body: {size} of {total} bytes")


def name_in_url(url: str) -> str:
    """The key a URL's file is named by in a folder: its last path segment without ``.mp4`` (which
    ``safe_file_name`` adds back), so ``clip.mp4`` stays ``clip.mp4``.

    Raises:
        DownloadError: the URL cannot be parsed.
    """
    segment = _split(url).path.rsplit("/", 1)[-1]
    return segment[:-4] if segment.lower().endswith(".mp4") else segment


def _split(url: str, context: str = "GET ") -> SplitResult:
    """``urlsplit`` and its port, or a ``DownloadError`` naming the URL (trying again cannot mend it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise DownloadError(f"{context}{redact(url)}: not a valid URL ({exc})") from None
    return parts


def _coding(header: str) -> str | None:
    """The Content-Encoding to undo: None, ``gzip`` or ``deflate``; any other is a ``DownloadError``."""
    codings = [c.strip().lower() for c in header.split(",") if c.strip().lower() not in ("", "identity")]
    if not codings:
        return None
    if codings in (["gzip"], ["x-gzip"], ["deflate"]):
        return codings[0]
    raise DownloadError(f"the file host sent Content-Encoding {header!r}, which is not supported")


def _inflate(inflater: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    try:
        while data:
            yield inflater.decompress(data, _INFLATED_PIECE)
            data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise TransportError(f"a damaged compressed body: {exc}") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    if match is None:
        return None, None
    total = match.group(2)
    return int(match.group(1)), (int(total) if total != "*" else None)


def _install(fd: int, part: Path, target: Path) -> Path:
    """Make the finished part file (open as ``fd``) durable and move it to the target, or beside it."""
    os.fsync(fd)
    destination = target
    counter = 1
    while os.path.lexists(destination):
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
    if a.is_symlink() or not a.is_file() or a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            block_a, block_b = fa.read(1 << 20), fb.read(1 << 20)
            if block_a != block_b:
                return False
            if not block_a:
                return True
